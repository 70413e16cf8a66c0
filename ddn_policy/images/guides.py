"""Zero-shot conditional generation on images: scorers that rank a layer's K candidates
(B, K, 1, s, s) at that layer's resolution s, with no gradients. Combine several with
`ddn_policy.core.RankSum` (weighted ranks). Each guide holds one target per walk row:
to draw n samples per target, repeat the targets n times (`rows(targets, n)`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ddn_policy.core import SelectionContext

MASKS = ("half", "centre", "checkerboard")


def rows(targets: Tensor, n: int) -> Tensor:
    """(B, ...) -> (B*n, ...): each target once per sample drawn for it."""
    return targets.repeat_interleave(n, dim=0)


def shrink(x: Tensor, size: int) -> Tensor:
    return x if x.shape[-1] == size else F.adaptive_avg_pool2d(x, size)


def _check_rows(targets: Tensor, ctx: SelectionContext, what: str) -> None:
    if targets.shape[0] != ctx.batch:
        raise ValueError(
            f"the {what} guide holds {targets.shape[0]} targets but the walk has {ctx.batch} "
            "rows; repeat each target once per sample (ddn_policy.images.guides.rows)"
        )


class SuperResolution:
    """Agreement with a low-resolution image: the candidates and the target, both area
    averaged to min(layer size, target size), compared by mean squared error."""

    def __init__(self, low: Tensor):
        if low.dim() != 4 or low.shape[1] != 1:
            raise ValueError(f"low-resolution targets must be (B, 1, h, w), got {tuple(low.shape)}")
        self.low = low

    def __call__(self, candidates: Tensor, ctx: SelectionContext) -> Tensor:
        _check_rows(self.low, ctx, "super-resolution")
        size = min(candidates.shape[-1], self.low.shape[-1])
        c = shrink(candidates.flatten(0, 1), size).unflatten(0, candidates.shape[:2])
        t = shrink(self.low, size)[:, None]  # (B, 1, 1, s, s)
        return -(c - t).square().flatten(2).mean(2)


def inpainting_mask(kind: str, size: int = 32) -> Tensor:
    """(1, 1, size, size), 1 where the pixel is known: "half" (top half known),
    "centre" (the middle half of each side hidden), "checkerboard" (8-pixel squares)."""
    if kind not in MASKS:
        raise ValueError(f"mask must be one of {MASKS}, got {kind!r}")
    mask = torch.ones(size, size)
    if kind == "half":
        mask[size // 2 :] = 0
    elif kind == "centre":
        mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 0
    else:
        idx = torch.arange(size) // 8
        mask = ((idx[:, None] + idx[None, :]) % 2 == 0).float()
    return mask[None, None]


class Inpainting:
    """Agreement with the known pixels: squared error weighted by how much of each
    (area-averaged) pixel is known at the layer's resolution."""

    def __init__(self, known: Tensor, mask: Tensor):
        if known.dim() != 4 or mask.dim() != 4:
            raise ValueError("known images and mask must be (B, 1, H, W) and (B or 1, 1, H, W)")
        self.known, self.mask = known, mask.expand_as(known)

    def __call__(self, candidates: Tensor, ctx: SelectionContext) -> Tensor:
        _check_rows(self.known, ctx, "inpainting")
        size = candidates.shape[-1]
        weight = shrink(self.mask, size)  # (B, 1, s, s) fraction known
        known = shrink(self.known * self.mask, size) / weight.clamp_min(1e-6)
        err = (candidates - known[:, None]).square() * weight[:, None]
        return -err.flatten(2).sum(2) / weight.flatten(1).sum(1, keepdim=True).clamp_min(1e-6)


class ClassGuide:
    """log p(label | candidate) under any classifier of (N, 1, 32, 32) images; coarse
    candidates are upsampled to 32x32 first."""

    def __init__(self, classifier, labels: Tensor):
        self.classifier, self.labels = classifier, labels

    @torch.no_grad()
    def __call__(self, candidates: Tensor, ctx: SelectionContext) -> Tensor:
        _check_rows(self.labels, ctx, "class")
        b, k = candidates.shape[:2]
        flat = candidates.flatten(0, 1)  # (B*K, 1, s, s)
        if flat.shape[-1] != 32:
            flat = F.interpolate(flat, size=(32, 32), mode="bilinear", align_corners=False)
        logp = torch.log_softmax(self.classifier(flat), dim=1)  # (B*K, 10)
        return logp.unflatten(0, (b, k)).gather(2, self.labels[:, None, None].expand(b, k, 1))[
            ..., 0
        ]
