"""Metrics of dense prediction with hypotheses (conventions in shared/reference/anchors.md).

Point metrics: depth AbsRel, RMSE, delta1 (metric, or after a per-image least-squares
scale and shift as Marigold evaluates), flow EPE and Fl. Hypothesis metrics: best-of-K
at image level (the best whole hypothesis per image) and at pixel level (the best value
per pixel, an optimistic oracle), per-pixel CRPS (the fair estimator for small K),
coverage of per-pixel central intervals, sparsification curves and AUSE.

Maps are (B, C, H, W) in the task's units, hypotheses (B, K, C, H, W), masks (B, H, W).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check(pred: Tensor, truth: Tensor, mask: Tensor) -> None:
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and truth {tuple(truth.shape)} differ")
    if mask.shape != (truth.shape[0], *truth.shape[2:]) or mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be bool (B, H, W) = {(truth.shape[0], *truth.shape[2:])}, got "
            f"{mask.dtype} {tuple(mask.shape)}"
        )


def align_scale_shift(pred: Tensor, truth: Tensor, mask: Tensor) -> Tensor:
    """Per image, s * pred + t with (s, t) the least-squares fit to truth on the mask."""
    _check(pred, truth, mask)
    out = torch.empty_like(pred)
    for i in range(pred.shape[0]):
        p, t = pred[i, 0][mask[i]], truth[i, 0][mask[i]]
        design = torch.stack([p, torch.ones_like(p)], 1).double()  # (N, 2)
        s, shift = torch.linalg.lstsq(design, t.double()[:, None]).solution[:, 0]
        out[i] = (s * pred[i].double() + shift).to(pred.dtype)
    return out


def depth_errors(pred: Tensor, truth: Tensor, mask: Tensor) -> Tensor:
    """(B,) per-image AbsRel; the building block of best-of-K."""
    _check(pred, truth, mask)
    rel = (pred - truth).abs()[:, 0] / truth[:, 0].clamp_min(1e-6)
    return (rel * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)


def depth_metrics(pred: Tensor, truth: Tensor, mask: Tensor, aligned: bool = False) -> dict:
    """AbsRel, RMSE (metres), delta1 (fraction with max(p/t, t/p) < 1.25), over all valid
    pixels of the batch."""
    if aligned:
        pred = align_scale_shift(pred, truth, mask)
    _check(pred, truth, mask)
    p, t = pred[:, 0][mask], truth[:, 0][mask]
    p = p.clamp_min(1e-6)
    ratio = torch.maximum(p / t, t / p)
    return {
        "abs_rel": float(((p - t).abs() / t).mean()),
        "rmse": float((p - t).square().mean().sqrt()),
        "delta1": float((ratio < 1.25).float().mean()),
    }


def endpoint_errors(pred: Tensor, truth: Tensor) -> Tensor:
    """(B, H, W) per-pixel flow end-point error."""
    return (pred - truth).norm(dim=1)


def flow_metrics(pred: Tensor, truth: Tensor, mask: Tensor) -> dict:
    """EPE (pixels) and Fl (outliers: error > 3 px and > 5% of the true flow), valid pixels."""
    _check(pred, truth, mask)
    epe = endpoint_errors(pred, truth)[mask]
    magnitude = truth.norm(dim=1)[mask]
    outlier = (epe > 3.0) & (epe > 0.05 * magnitude)
    return {"epe": float(epe.mean()), "fl": float(outlier.float().mean())}


def pixel_errors(task: str, pred: Tensor, truth: Tensor) -> Tensor:
    """(B, H, W) per-pixel error: AbsRel for depth, EPE for flow, mean |diff| for colour."""
    if task == "depth":
        return (pred - truth).abs()[:, 0] / truth[:, 0].clamp_min(1e-6)
    if task == "flow":
        return endpoint_errors(pred, truth)
    return (pred - truth).abs().mean(1)


def best_of_k(task: str, hyps: Tensor, truth: Tensor, mask: Tensor) -> dict:
    """Image level: per image, the hypothesis with the lowest mean error; pixel level:
    per pixel, the lowest error of any hypothesis (never below the image level)."""
    b, k = hyps.shape[:2]
    flat = hyps.flatten(0, 1)  # (B*K, C, H, W)
    errors = pixel_errors(task, flat, truth.repeat_interleave(k, 0)).unflatten(0, (b, k))
    weights = mask[:, None].float()  # (B, 1, H, W)
    per_image = (errors * weights).flatten(2).sum(2) / weights.flatten(2).sum(2).clamp_min(1)
    return {
        "best_of_k_image": float(per_image.min(1).values.mean()),
        "best_of_k_pixel": float(errors.min(1).values[mask].mean()),
    }


def crps(hyps: Tensor, truth: Tensor, mask: Tensor) -> float:
    """Mean per-pixel CRPS with the fair (unbiased for finite K) ensemble estimator:
    E|X - y| - E|X - X'| / 2 with the second mean over distinct pairs."""
    k = hyps.shape[1]
    if k < 2:
        raise ValueError(f"CRPS needs at least 2 hypotheses, got {k}")
    skill = (hyps - truth[:, None]).abs().mean(1)  # (B, C, H, W)
    pairs = (hyps[:, :, None] - hyps[:, None]).abs().sum((1, 2)) / (k * (k - 1))
    score = (skill - 0.5 * pairs).mean(1)  # channels averaged: (B, H, W)
    return float(score[mask].mean())


def interval_coverage(hyps: Tensor, truth: Tensor, mask: Tensor, level: float = 0.8) -> float:
    """Fraction of (pixel, channel) truths inside the hypotheses' central `level` interval."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got level={level}")
    lo = hyps.quantile((1 - level) / 2, dim=1)
    hi = hyps.quantile((1 + level) / 2, dim=1)
    inside = ((truth >= lo) & (truth <= hi)).float().mean(1)  # (B, H, W)
    return float(inside[mask].mean())


def sparsification(errors: Tensor, uncertainty: Tensor, step: float = 0.02) -> dict:
    """Mean error of the pixels left after removing the most uncertain fraction, for
    fractions 0, step, ..., 1 - step; the oracle removes by the error itself. AUSE is the
    area between the two curves (both divided by the full mean error, as in Ilg et al.)."""
    errors, uncertainty = errors.flatten().double(), uncertainty.flatten().double()
    if errors.shape != uncertainty.shape or errors.numel() == 0:
        raise ValueError(f"need matching non-empty errors and uncertainties, got {errors.shape}")
    n = errors.numel()
    fractions = torch.arange(0.0, 1.0 - 1e-9, step, dtype=torch.float64)
    by_uncertainty = errors[uncertainty.argsort(descending=True)]
    by_error = errors.sort(descending=True).values

    def curve(ordered: Tensor) -> Tensor:
        tail_sums = ordered.flip(0).cumsum(0).flip(0)  # sum of ordered[i:]
        starts = (fractions * n).long().clamp_max(n - 1)
        return tail_sums[starts] / (n - starts).double()

    full = errors.mean().clamp_min(1e-12)
    ours, oracle = curve(by_uncertainty) / full, curve(by_error) / full
    return {
        "fractions": fractions.tolist(),
        "curve": ours.tolist(),
        "oracle": oracle.tolist(),
        "ause": float(torch.trapezoid(ours - oracle, fractions)),
    }
