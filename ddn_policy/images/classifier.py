"""A small digit classifier trained here on the training split: it steers class-guided
sampling (the generator never saw labels) and gives the feature space of the Frechet
distance and precision/recall. It is not Inception: say so wherever its numbers appear.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddn_policy.utils.io import load_weights, read_model_dir, write_model_dir
from tasks.images import check_images, load_digits

FEATURES = 128


class DigitClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 16x16
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8
            nn.Conv2d(64, 128, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4
            nn.Flatten(),
            nn.Linear(128 * 16, FEATURES),
            nn.ReLU(),
        )
        self.head = nn.Linear(FEATURES, 10)

    def features(self, images: Tensor) -> Tensor:
        """(N, 1, 32, 32) -> (N, 128) penultimate activations."""
        return self.body(images)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.body(images))


def shifted(images: Tensor, generator: torch.Generator, pixels: int = 2) -> Tensor:
    """Random translations of up to `pixels` (background fill), so the classifier does
    not depend on exact centring, which generated digits need not share."""
    padded = F.pad(images, (pixels,) * 4, value=-1.0)
    n, size = images.shape[0], images.shape[-1]
    dx, dy = torch.randint(0, 2 * pixels + 1, (2, n), generator=generator)
    return torch.stack([padded[i, :, dy[i] : dy[i] + size, dx[i] : dx[i] + size] for i in range(n)])


def train_classifier(dataset: str = "mnist", epochs: int = 8, seed: int = 0) -> DigitClassifier:
    torch.manual_seed(seed)
    data = load_digits(dataset, "train")
    model = DigitClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=gen)
        for i in range(0, len(order), 128):
            idx = order[i : i + 128]
            loss = F.cross_entropy(model(shifted(data.images[idx], gen)), data.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: DigitClassifier, images: Tensor, labels: Tensor) -> float:
    return float((model(check_images(images)).argmax(1) == labels).float().mean())


def cached_classifier(
    cache: str | Path, dataset: str = "mnist", seed: int = 0, epochs: int = 8
) -> DigitClassifier:
    """The classifier trained once per (dataset, seed, epochs) and kept under `cache`."""
    path = Path(cache) / f"digit-classifier-{dataset}-s{seed}-e{epochs}"
    model = DigitClassifier()
    if (path / "manifest.json").is_file():
        _, tensors = read_model_dir(path, ("model",), "digit classifier")
        load_weights(model, tensors["model"], path / "model.safetensors")
        return model.eval()
    model = train_classifier(dataset, epochs, seed)
    test = load_digits(dataset, "test")
    config = {
        "dataset": dataset,
        "seed": seed,
        "test_accuracy": accuracy(model, test.images, test.labels),
    }
    write_model_dir(path, config, {"model": model.state_dict()})
    return model
