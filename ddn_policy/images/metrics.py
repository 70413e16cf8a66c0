"""Sample-quality metrics computed offline in the feature space of the locally trained
digit classifier (not Inception: numbers are comparable only with each other)."""

from __future__ import annotations

import numpy as np
import torch
from scipy import linalg
from torch import Tensor


@torch.no_grad()
def features(classifier, images: Tensor, batch: int = 500) -> np.ndarray:
    return (
        torch.cat(
            [classifier.features(images[i : i + batch]) for i in range(0, len(images), batch)]
        )
        .double()
        .numpy()
    )


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) between Gaussian fits."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eps = 1e-6 * np.eye(len(mu_a))  # dead ReLU features make the covariances singular
    root = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    root = root.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2.0 * root))


def _radii(x: np.ndarray, k: int) -> np.ndarray:
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    return np.sort(d, axis=1)[:, k]  # column 0 is the point itself


def _covered(points: np.ndarray, support: np.ndarray, radii: np.ndarray) -> np.ndarray:
    d = np.sqrt(((points[:, None] - support[None]) ** 2).sum(-1))  # (P, S)
    return (d <= radii[None]).any(1)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Kynkaanniemi et al. 2019: precision = share of samples inside the real data's
    k-NN balls; recall = share of real points inside the samples' k-NN balls."""
    precision = _covered(fake, real, _radii(real, k)).mean()
    recall = _covered(real, fake, _radii(fake, k)).mean()
    return float(precision), float(recall)


def nearest_distance(samples: Tensor, reference: Tensor, batch: int = 250) -> Tensor:
    """Per sample, the pixel L2 distance to its nearest reference image (memorisation:
    compare with the same figure for held-out images against the training set)."""
    ref = reference.flatten(1)
    out = [
        torch.cdist(samples[i : i + batch].flatten(1), ref).min(1).values
        for i in range(0, len(samples), batch)
    ]
    return torch.cat(out)
