"""Picture sheets of dense predictions: input, truth, point estimate, hypotheses,
uncertainty and error side by side, one row per method. Depth and scalar maps use one
colour scale per row (from the truth), flow the usual hue = direction, saturation =
speed wheel."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.colors import hsv_to_rgb

GAP = 2  # white pixels between panels


def scalar_rgb(values: np.ndarray, lo: float, hi: float, cmap: str = "viridis") -> np.ndarray:
    """(H, W) -> (H, W, 3) uint8 through a matplotlib colour map on [lo, hi]."""
    scaled = np.clip((values - lo) / max(hi - lo, 1e-9), 0, 1)
    return (colormaps[cmap](scaled)[..., :3] * 255).astype(np.uint8)


def flow_rgb(flow: np.ndarray, scale: float) -> np.ndarray:
    """(2, H, W) pixels -> (H, W, 3) uint8: hue = direction, saturation = speed / scale."""
    angle = (np.arctan2(flow[1], flow[0]) / (2 * np.pi)) % 1.0
    speed = np.clip(np.hypot(flow[0], flow[1]) / max(scale, 1e-9), 0, 1)
    return (hsv_to_rgb(np.stack([angle, speed, np.ones_like(angle)], -1)) * 255).astype(np.uint8)


def panel(task: str, x: torch.Tensor, scale: tuple[float, float]) -> np.ndarray:
    """One (C, H, W) map in task units as RGB."""
    x = x.detach().cpu().numpy()
    if task == "depth":
        return scalar_rgb(x[0], *scale)
    if task == "flow":
        return flow_rgb(x, scale[1])
    return (np.clip(x.transpose(1, 2, 0), 0, 1) * 255).astype(np.uint8)


def method_row(task: str, image: np.ndarray, truth: torch.Tensor, out: dict, count: int = 4):
    """Panels for one method: input, truth, point, `count` hypotheses, uncertainty, error."""
    if task == "depth":
        scale = (float(truth.min()), float(truth.max()))
    elif task == "flow":
        scale = (0.0, float(truth.norm(dim=0).max()) or 1.0)
    else:
        scale = (0.0, 1.0)
    hyps = out["hypotheses"][:count]
    error = (out["point"] - truth).abs().mean(0).cpu().numpy()
    spread = out["uncertainty"].mean(0).cpu().numpy()
    top = max(float(error.max()), float(spread.max()), 1e-9)
    panels = [image, panel(task, truth, scale), panel(task, out["point"], scale)]
    panels += [panel(task, h, scale) for h in hyps]
    panels += [scalar_rgb(spread, 0, top, "magma"), scalar_rgb(error, 0, top, "magma")]
    return panels


def sheet(rows: list[list[np.ndarray]]) -> np.ndarray:
    """Rows of equal-sized (H, W, 3) panels -> one uint8 image with white gaps."""
    h, w = rows[0][0].shape[:2]
    columns = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + GAP) + GAP, columns * (w + GAP) + GAP, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, p in enumerate(row):
            y, x = GAP + r * (h + GAP), GAP + c * (w + GAP)
            out[y : y + h, x : x + w] = p
    return out
