"""Guides for dense prediction, applied at sampling time with no gradients and no
retraining: every layer scores its K candidate maps (at that layer's resolution, in the
task's units) and picks among the best (core/select.py).

A dense guide is `guide(candidates, image) -> (R, K)` scores, higher is better, where
candidates are (R, K, C, h, w) in metres / pixels / sRGB and image (R,) says which input
image each row (hypothesis) belongs to. Measurements are given at full resolution and
brought to the layer's resolution inside the guide.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _at_resolution(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, C, H, W) -> (B, C, h, w): area average (the DDN's targets are pooled alike)."""
    return maps if tuple(maps.shape[-2:]) == size else F.adaptive_avg_pool2d(maps, size)


class SparseDepth:
    """A few measured depths (a lidar, a depth sensor's valid pixels): score = minus the
    mean absolute log-depth error at the measured pixels."""

    def __init__(self, pixels: Tensor, depths: Tensor, image_size: int):
        """pixels (B, P, 2) integer (u, v) = (column, row); depths (B, P) metres > 0."""
        if pixels.dim() != 3 or pixels.shape[-1] != 2 or depths.shape != pixels.shape[:2]:
            raise ValueError(
                f"pixels must be (B, P, 2) and depths (B, P), got {tuple(pixels.shape)} and "
                f"{tuple(depths.shape)}"
            )
        if pixels.min() < 0 or pixels.max() >= image_size:
            raise ValueError(f"pixel coordinates must lie in [0, {image_size}), got "
                             f"[{int(pixels.min())}, {int(pixels.max())}]")  # fmt: skip
        if not (depths > 0).all():
            raise ValueError("measured depths must be > 0 metres")
        self.pixels, self.log_depths, self.size = pixels.long(), depths.log(), image_size

    @classmethod
    def sample_from(cls, depth: Tensor, valid: Tensor, count: int, generator=None):
        """`count` random valid pixels of each (B, H, W) depth map."""
        pixels, values = [], []
        for d, v in zip(depth, valid, strict=True):
            rows, cols = torch.nonzero(v, as_tuple=True)
            if len(rows) < count:
                raise ValueError(f"an image has {len(rows)} valid pixels, fewer than {count}")
            pick = torch.randperm(len(rows), generator=generator)[:count]
            pixels.append(torch.stack([cols[pick], rows[pick]], 1))
            values.append(d[rows[pick], cols[pick]])
        return cls(torch.stack(pixels), torch.stack(values), depth.shape[-1])

    def __call__(self, candidates: Tensor, image: Tensor) -> Tensor:
        r, k, _, h, w = candidates.shape
        px = self.pixels[image]  # (R, P, 2)
        cols, rows = px[..., 0] * w // self.size, px[..., 1] * h // self.size
        flat = candidates[:, :, 0].flatten(2)  # (R, K, h*w)
        index = (rows * w + cols)[:, None].expand(r, k, -1)  # (R, K, P)
        values = flat.gather(2, index).clamp_min(1e-6).log()
        return -(values - self.log_depths[image][:, None]).abs().mean(-1)


class PhotometricFlow:
    """Brightness constancy: score = minus the mean L1 difference between frame 1 and
    frame 2 warped back by the candidate flow, at the layer's resolution."""

    def __init__(self, first: Tensor, second: Tensor):
        """first, second: (B, 3, H, W) float images of the pair."""
        if first.shape != second.shape or first.dim() != 4:
            raise ValueError(f"frames must both be (B, C, H, W), got {tuple(first.shape)} and "
                             f"{tuple(second.shape)}")  # fmt: skip
        self.first, self.second = first.float(), second.float()

    def __call__(self, candidates: Tensor, image: Tensor) -> Tensor:
        r, k, _, h, w = candidates.shape
        size = self.first.shape[-1]
        first = _at_resolution(self.first, (h, w))[image]  # (R, 3, h, w)
        second = _at_resolution(self.second, (h, w))[image]
        flow = candidates.flatten(0, 1) * (w / size)  # (R*K, 2, h, w) in this level's pixels
        ys, xs = torch.meshgrid(
            torch.arange(h, dtype=flow.dtype), torch.arange(w, dtype=flow.dtype), indexing="ij"
        )
        x = (xs + flow[:, 0] + 0.5) / w * 2 - 1  # grid_sample's [-1, 1], pixel centres
        y = (ys + flow[:, 1] + 0.5) / h * 2 - 1
        grid = torch.stack([x, y], -1)  # (R*K, h, w, 2)
        warped = F.grid_sample(
            second.repeat_interleave(k, 0), grid, align_corners=False, padding_mode="border"
        )
        error = (warped - first.repeat_interleave(k, 0)).abs().mean((1, 2, 3))
        return -error.view(r, k)


class ColorStrokes:
    """Colour scribbles: RGBA strokes (alpha 0 where the user drew nothing); score = minus
    the alpha-weighted L1 difference between candidate colours and the strokes."""

    def __init__(self, strokes: Tensor):
        """strokes (B, 4, H, W): sRGB in [0, 1] and alpha in [0, 1]."""
        if strokes.dim() != 4 or strokes.shape[1] != 4:
            raise ValueError(f"strokes must be RGBA (B, 4, H, W), got {tuple(strokes.shape)}")
        if strokes.min() < 0 or strokes.max() > 1:
            raise ValueError("stroke colours and alpha must lie in [0, 1]")
        alpha = strokes[:, 3:]
        self.weighted = torch.cat([strokes[:, :3] * alpha, alpha], 1)  # pools correctly

    def __call__(self, candidates: Tensor, image: Tensor) -> Tensor:
        h, w = candidates.shape[-2:]
        pooled = _at_resolution(self.weighted, (h, w))[image]  # (R, 4, h, w)
        alpha = pooled[:, None, 3:]  # (R, 1, 1, h, w)
        colour = pooled[:, None, :3] / alpha.clamp_min(1e-6)
        error = (alpha * (candidates - colour).abs()).sum((2, 3, 4))
        return -error / (3 * alpha.sum((2, 3, 4))).clamp_min(1e-6)
