"""2-D target densities on [-1, 1]^2, generated in code (paper Fig. 17).

Each density is an unnormalised function evaluated on a fine grid; the metric grid
(bins x bins) is its area average, and samples are drawn from the fine grid with
uniform jitter inside a cell, so the binned law of the samples is exactly the
metric-grid density.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

SUPERSAMPLE = 4  # fine cells per metric cell along each axis


def _gaussian(x, y):
    return np.exp(-0.5 * ((x / 0.35) ** 2 + (y / 0.25) ** 2))


def _rings(x, y):
    r = np.hypot(x, y)
    return sum(np.exp(-0.5 * ((r - radius) / 0.04) ** 2) for radius in (0.3, 0.72))


def _spiral(x, y):
    # Distance to the Archimedean spiral r = a*theta, measured along the radius.
    r, theta = np.hypot(x, y), np.arctan2(y, x)
    a = 0.85 / (3 * np.pi)
    turns = np.round((r / a - theta) / (2 * np.pi))
    nearest = a * (theta + 2 * np.pi * np.clip(turns, 0, 1))
    return np.exp(-0.5 * ((r - nearest) / 0.035) ** 2) * (r < 0.92)


def _checkerboard(x, y):
    cells = 4
    ix = np.floor((x + 1) / 2 * cells).astype(int)
    iy = np.floor((y + 1) / 2 * cells).astype(int)
    return ((ix + iy) % 2 == 0).astype(float)


def text_mask(text: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Inside-the-glyphs indicator of `text`, set in matplotlib's bundled DejaVu Sans
    Bold and scaled to fit [-0.9, 0.9]^2."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath

    font = FontProperties(family="DejaVu Sans", weight="bold")
    path = TextPath((0, 0), text, size=1.0, prop=font)
    verts = path.vertices
    lo, hi = verts.min(0), verts.max(0)
    scale = 1.8 / (hi - lo).max()
    centre = (lo + hi) / 2

    def mask(x, y):
        pts = np.stack([x.ravel(), y.ravel()], 1) / scale + centre
        return path.contains_points(pts).reshape(x.shape).astype(float)

    return mask


FUNCTIONS: dict[str, Callable] = {
    "gaussian": _gaussian,
    "rings": _rings,
    "spiral": _spiral,
    "checkerboard": _checkerboard,
}
DENSITIES = (*FUNCTIONS, "text")


class Density:
    """A named density: `grid(bins)` probabilities and `sample(n, rng)` points.

    Grid arrays are indexed [row = y, column = x] with y growing upwards from -1."""

    def __init__(self, name: str, bins: int = 100, text: str = "DDN"):
        if name not in DENSITIES:
            raise ValueError(f"unknown density {name!r}; known: {', '.join(DENSITIES)}")
        fn = text_mask(text) if name == "text" else FUNCTIONS[name]
        fine = bins * SUPERSAMPLE
        centres = (np.arange(fine) + 0.5) / fine * 2 - 1
        x, y = np.meshgrid(centres, centres)  # (fine, fine), row = y
        values = np.clip(fn(x, y), 0, None)
        if values.sum() <= 0:
            raise ValueError(f"density {name!r} is empty on the grid")
        self.name, self.bins, self.fine = name, bins, fine
        self.fine_p = values / values.sum()
        self.p = self.fine_p.reshape(bins, SUPERSAMPLE, bins, SUPERSAMPLE).sum((1, 3))

    def grid(self) -> np.ndarray:
        return self.p

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, 2) float32 points (x, y)."""
        cells = rng.choice(self.fine_p.size, size=n, p=self.fine_p.ravel())
        row, col = np.divmod(cells, self.fine)
        jitter = rng.random((n, 2))
        xy = (np.stack([col, row], 1) + jitter) / self.fine * 2 - 1
        return xy.astype(np.float32)
