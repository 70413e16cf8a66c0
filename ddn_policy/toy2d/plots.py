"""Pictures of the 2-D experiment: a PNG grid and a GIF of the optimisation."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save_grid(path: Path, rows: dict[str, dict[str, np.ndarray]], metrics: dict) -> None:
    """rows: {row label: {density: (bins, bins) histogram}}; one column per density."""
    labels = list(rows)
    densities = list(next(iter(rows.values())))
    fig, axes = plt.subplots(
        len(labels), len(densities), figsize=(2.2 * len(densities), 2.3 * len(labels))
    )
    axes = np.atleast_2d(axes)
    for r, label in enumerate(labels):
        for c, name in enumerate(densities):
            ax = axes[r, c]
            ax.imshow(rows[label][name], origin="lower", cmap="magma", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            kl = metrics.get(name, {}).get(label, {}).get("kl")
            ax.set_title(name if kl is None else f"{name}  KL {kl:.2f}", fontsize=8)
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_gif(path: Path, frames: dict[str, dict[str, list[np.ndarray]]], scale: int = 2) -> None:
    """frames: {method: {density: [hist per frame]}} -> rows = methods, columns = densities."""
    cmap = plt.get_cmap("magma")
    methods = list(frames)
    densities = list(frames[methods[0]])
    n = min(len(frames[m][d]) for m in methods for d in densities)
    images = []
    for t in range(n):
        rows = []
        for m in methods:
            panels = []
            for d in densities:
                h = frames[m][d][t][::-1]  # row 0 at the top of the image
                panel = cmap(h / max(h.max(), 1e-12))[..., :3]
                panel = np.kron(panel, np.ones((scale, scale, 1)))
                panels.append(np.pad(panel, ((2, 2), (2, 2), (0, 0)), constant_values=1.0))
            rows.append(np.concatenate(panels, axis=1))
        images.append((np.concatenate(rows, axis=0) * 255).astype(np.uint8))
    iio.imwrite(path, np.stack(images), duration=120, loop=0)
