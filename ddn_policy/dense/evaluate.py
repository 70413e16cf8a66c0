"""Scoring a dense predictor on held-out scenes: point, hypothesis and uncertainty metrics,
guided versus free sampling, runtime per image. Every function returns flat rows
{"metric", "value", ...settings} for results.json."""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from ddn_policy.core.select import Central, Nearest, Prefix
from ddn_policy.dense.guides import ColorStrokes, PhotometricFlow, SparseDepth
from ddn_policy.dense.predictor import DensePredictor
from ddn_policy.evaluation.dense_metrics import (
    best_of_k,
    crps,
    depth_metrics,
    flow_metrics,
    interval_coverage,
    pixel_errors,
    sparsification,
)
from ddn_policy.images.train import psnr


def batches(data, count: int, size: int):
    """Collated batches of the first `count` samples of a DenseDataset."""
    for start in range(0, count, size):
        rows = [data[i] for i in range(start, min(start + size, count))]
        yield torch.utils.data.default_collate(rows)


def truth_of(task: str, batch: dict) -> tuple[Tensor, Tensor]:
    """(B, C, H, W) truth in task units and the (B, H, W) mask it is scored on."""
    if task == "depth":
        return batch["depth"][:, None].float(), batch["valid"]
    if task == "flow":
        return batch["flow"].permute(0, 3, 1, 2).float(), batch["valid"]
    color = batch["color"].permute(0, 3, 1, 2).float() / 255
    return color, torch.ones(color.shape[0], *color.shape[2:], dtype=torch.bool)


def make_guide(task: str, batch: dict, truth: Tensor, mask: Tensor, cfg: dict, seed: int):
    """The task's guide built from what a user would have: 50 measured depths, the
    frame pair itself, or a few colour strokes taken from the truth."""
    gen = torch.Generator().manual_seed(seed)
    if task == "depth":
        return SparseDepth.sample_from(truth[:, 0], mask, cfg["depth_points"], gen)
    if task == "flow":
        first, second = (batch[k].permute(0, 3, 1, 2).float() / 255 for k in ("rgb", "rgb2"))
        return PhotometricFlow(first, second)
    alpha = torch.zeros_like(truth[:, :1])
    size = truth.shape[-1]
    for b in range(truth.shape[0]):  # square dabs at random places
        for _ in range(cfg["strokes"]):
            r, c = torch.randint(0, size - 3, (2,), generator=gen).tolist()
            alpha[b, :, r : r + 3, c : c + 3] = 1.0
    return ColorStrokes(torch.cat([truth, alpha], 1))


def point_rows(task: str, point: Tensor, truth: Tensor, mask: Tensor) -> dict[str, float]:
    if task == "depth":
        metric = depth_metrics(point, truth, mask)
        aligned = depth_metrics(point, truth, mask, aligned=True)
        return metric | {f"{k}_aligned": v for k, v in aligned.items()}
    if task == "flow":
        return flow_metrics(point, truth, mask)
    return {"psnr": float(psnr(point, truth, peak=1.0).mean())}


def stroke_error(pred: Tensor, truth: Tensor, alpha: Tensor) -> float:
    """Alpha-weighted mean absolute colour error: how well strokes are respected."""
    diff = (pred - truth).abs().mean(1, keepdim=True)
    return float((alpha * diff).sum() / alpha.sum())


class ImageMeans:
    """Per-batch scores averaged with each batch weighted by its images, so batches of
    any size give the mean over images."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.images = 0

    def add(self, scores: dict[str, float], images: int) -> None:
        for k, v in scores.items():
            self.sums[k] = self.sums.get(k, 0.0) + v * images
        self.images += images

    def rows(self) -> list[dict]:
        return [{"metric": k, "value": v / self.images} for k, v in self.sums.items()]


def evaluate(predictor: DensePredictor, data, cfg: dict, seed: int = 0) -> list[dict]:
    """cfg: images, batch, hypotheses, depth_points, strokes, guided (bool), central
    (bool, optional: also score the DDN's one-walk central point estimate)."""
    task, method = predictor.config.task, predictor.config.method
    guided_ok = cfg["guided"] and method == "ddn"
    central_ok = cfg.get("central", False) and method == "ddn"
    means = ImageMeans()
    errors, spreads, seconds, central_seconds = [], [], 0.0, 0.0
    for i, batch in enumerate(batches(data, cfg["images"], cfg["batch"])):
        truth, mask = truth_of(task, batch)
        gen = torch.Generator().manual_seed(seed + i)
        start = time.perf_counter()
        out = predictor.predict(batch, n=cfg["hypotheses"], generator=gen)
        seconds += time.perf_counter() - start
        hyps, point = out["hypotheses"], out["point"]
        scores = point_rows(task, point, truth, mask)
        if central_ok:  # one walk (and one prior draw) per image instead of n
            start = time.perf_counter()
            centre = predictor.predict(batch, n=1, generator=gen, point="central")["point"]
            central_seconds += time.perf_counter() - start
            scores |= {f"central_{k}": v for k, v in point_rows(task, centre, truth, mask).items()}
        if task == "color":
            scores["best_of_k_psnr"] = float(
                psnr(hyps.flatten(0, 1), truth.repeat_interleave(hyps.shape[1], 0), peak=1.0)
                .view(hyps.shape[:2])
                .max(1)
                .values.mean()
            )
            pairs = (hyps[:, :, None] - hyps[:, None]).abs().mean((3, 4, 5))  # (B, n, n)
            n = hyps.shape[1]
            scores["diversity"] = float(pairs.sum((1, 2)).mean() / max(n * (n - 1), 1))
        scores |= best_of_k(task, hyps, truth, mask)
        if hyps.shape[1] > 1:
            scores["crps"] = crps(hyps, truth, mask)
            scores["coverage80"] = interval_coverage(hyps, truth, mask)
        pixel = pixel_errors(task, point, truth)  # (B, H, W)
        errors.append(pixel[mask])
        spreads.append(out["uncertainty"].mean(1)[mask])
        if guided_ok:
            guide = make_guide(task, batch, truth, mask, cfg, seed + i)
            steered = predictor.predict(batch, n=cfg["hypotheses"], guide=guide, generator=gen)
            for k, v in point_rows(task, steered["point"], truth, mask).items():
                scores[f"guided_{k}"] = v
            if task == "color":
                alpha = guide.weighted[:, 3:]
                scores["stroke_error_guided"] = stroke_error(steered["point"], truth, alpha)
                scores["stroke_error_free"] = stroke_error(point, truth, alpha)
        means.add(scores, truth.shape[0])
    rows = means.rows()
    spread = torch.cat(spreads)
    if float(spread.max()) > 0:  # a deterministic regressor has no uncertainty to rank by
        curve = sparsification(torch.cat(errors), spread)
        rows.append({"metric": "ause", "value": curve["ause"]})
    rows.append({"metric": "ms_per_image", "value": 1000 * seconds / means.images})
    if central_ok:
        ms = 1000 * central_seconds / means.images
        rows.append({"metric": "ms_per_image_central", "value": ms})
    return rows


@torch.no_grad()
def selection_rows(predictor: DensePredictor, data, cfg: dict) -> list[dict]:
    """Why a DDN's samples miss (DDN only). `oracle_*`: the point metrics of the
    nearest-candidate walk, which sees the truth: what the decoder can represent.
    `prior_nll_*`: cross-entropy of each layer's selection prior against that walk's
    node (first layer, mean over layers), beside `prior_nll_chance` = log K.
    `oracle_prefix_<m>_*` (cfg `oracle_prefix`: a list of m): the walk that takes the
    nearest node on the first m layers and the central node after; m = 0 is the central
    walk, m = L the oracle: how much of the point estimate's error the first m choices carry."""
    if predictor.config.method != "ddn":
        raise ValueError(f"selection_rows reads a DDN, got method={predictor.config.method!r}")
    task, ddn = predictor.config.task, predictor.model.ddn
    means = ImageMeans()
    for batch in batches(data, cfg["images"], cfg["batch"]):
        truth, mask = truth_of(task, batch)
        target = predictor.target(batch)
        goal, cond = predictor.model.decoder_terms(predictor.condition(batch), target)
        offset = target - goal  # the mean head's estimate, or zero: walks toward goal + it
        walk = ddn.walk(target.shape[0], Nearest(goal), cond)
        oracle = point_rows(task, predictor.to_units(walk.x + offset), truth, mask)
        scores = {f"oracle_{k}": v for k, v in oracle.items()}
        if walk.layer_logprob is not None and ddn.first_layer.has_prior:
            nll = -walk.layer_logprob.mean(0)  # (L,)
            scores |= {"prior_nll_first_layer": float(nll[0]), "prior_nll_mean": float(nll.mean())}
        for layers in cfg.get("oracle_prefix", ()):
            prefix = ddn.walk(target.shape[0], Prefix(Nearest(goal), Central(), layers), cond)
            rows_m = point_rows(task, predictor.to_units(prefix.x + offset), truth, mask)
            scores |= {f"oracle_prefix_{layers}_{k}": v for k, v in rows_m.items()}
        means.add(scores, truth.shape[0])
    rows = means.rows()
    if "prior_nll_mean" in means.sums:
        rows.append({"metric": "prior_nll_chance", "value": math.log(ddn.first_layer.k)})
    return rows
