"""Distances between the true density and a set of points, on a bins x bins grid."""

from __future__ import annotations

import numpy as np

# A KL is infinite wherever its second argument has an empty bin: that argument is
# mixed with this much of the uniform law first (the same floor for every method).
KL_UNIFORM_MIX = 1e-3


def histogram(points: np.ndarray, bins: int) -> np.ndarray:
    """(N, 2) points in [-1, 1]^2 -> (bins, bins) probabilities, row = y."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must be (N, 2), got {pts.shape}")
    h, _, _ = np.histogram2d(pts[:, 1], pts[:, 0], bins=bins, range=[[-1, 1], [-1, 1]])
    total = h.sum()
    return h / total if total > 0 else h


def _floored(q: np.ndarray) -> np.ndarray:
    return (1 - KL_UNIFORM_MIX) * q + KL_UNIFORM_MIX / q.size


def _kl(a: np.ndarray, b: np.ndarray) -> float:
    mask = a > 0
    return float(np.sum(a[mask] * np.log(a[mask] / b[mask])))


def divergences(p: np.ndarray, q: np.ndarray) -> dict[str, float]:
    """Divergences between the true grid density p and the binned points q.

    kl: KL(Q||P), points against truth. With K points in bins*bins cells most cells are
        empty for any method, so this is the direction that measures where the points
        are (a point far outside the density costs log(q/p_floor)); it is the one the
        targets use. kl_true_points: KL(P||Q), dominated by empty cells, for reference.
    js, tv, hellinger: symmetric and bounded, no floor needed."""
    p = p / p.sum()
    q = q / q.sum() if q.sum() > 0 else np.full_like(p, 1.0 / p.size)
    m = 0.5 * (p + q)
    return {
        "kl": _kl(q, _floored(p)),
        "kl_true_points": _kl(p, _floored(q)),
        "js": 0.5 * _kl(p, m) + 0.5 * _kl(q, m),
        "tv": float(0.5 * np.abs(p - q).sum()),
        "hellinger": float(np.sqrt(0.5 * np.sum((np.sqrt(p) - np.sqrt(q)) ** 2))),
    }
