"""Keeping every node in use: Split-and-Prune (the paper's rule) and loss-free balance.

Both read the statistics that `DiscreteDistributionLayer.train_step` records in the
layer's buffers and act after `optimizer.step()`. A split is mirrored into the
optimizer's per-row state (Adam/AdamW moments, SGD momentum) and into any mirror module
of the same structure (the EMA copy), so neither drifts from the live weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ddn_policy.core.layer import DiscreteDistributionLayer


def ddn_layers(model: nn.Module) -> list[tuple[str, DiscreteDistributionLayer]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, DiscreteDistributionLayer)]


@dataclass(frozen=True)
class SplitDecision:
    fire: bool
    split: int  # s: the most-chosen node, cloned
    prune: int  # d: the least-chosen node, overwritten by the clone


def split_decision(count: torch.Tensor, loss_acc: torch.Tensor) -> SplitDecision:
    """The reference rule. s = argmax count; d = argmin count, and among several
    never-chosen nodes the one farthest from the data (largest summed distance).
    Fire iff 2*|ps/2 - P| + pd < ps - pd  or  pd < P/2, with P = 1/K."""
    k = count.numel()
    total = float(count.sum())
    s = int(count.argmax())
    zero = count == 0
    if int(zero.sum()) > 1:
        d = int(torch.where(zero, loss_acc, torch.full_like(loss_acc, -float("inf"))).argmax())
    else:
        d = int(count.argmin())
    if total <= 0 or s == d:
        return SplitDecision(False, s, d)
    ps, pd, p = float(count[s]) / total, float(count[d]) / total, 1.0 / k
    fire = 2 * abs(ps / 2 - p) + pd < ps - pd or pd < p / 2
    return SplitDecision(fire, s, d)


@dataclass(frozen=True)
class SplitEvent:
    layer: str
    split: int
    prune: int


class SplitAndPrune:
    """After each optimizer step, at most one split/prune pair per layer.

    min_count: no decision for a layer until it has seen this many samples in total (a
        warm-up the reference lacks; 0 reproduces the reference, which splits from the
        first batch).
    half_life: the statistics forget, halving every `half_life` steps (0: kept since
        creation, as the reference). Counts since creation hide a node that stopped
        winning: one that won its share for most of training keeps a share above the
        prune threshold long after it died (digits-small-prior ended with 14% of its
        2x2 nodes chosen for no training image, each holding 0.6-1.2x the uniform share
        of the cumulative count).
    perturb: the clone and its source move apart by +-perturb times the RMS of the
        source's candidate weights (Linde-Buzo-Gray splitting of a codebook). 0 clones
        exactly, as the reference; then the twins tie on every input, the lower index
        wins each tie, and only chain dropout's random picks can pull them apart, which
        fails once the learning rate is near 0 (digits-small-prior-recent ended with
        its only dead nodes exact copies from splits in the last steps).
    seed: seeds the offsets' own stream; the trainer passes its training seed, so runs
        of different seeds split differently.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        mirrors: Sequence[nn.Module] = (),
        min_count: int = 0,
        half_life: float = 0,
        perturb: float = 0,
        seed: int = 0,
    ):
        if min_count < 0:
            raise ValueError(f"min_count must be >= 0, got min_count={min_count}")
        if not half_life >= 0:
            raise ValueError(
                f"half_life is in steps, >= 0 (0: never forget), got half_life={half_life}"
            )
        if not perturb >= 0:
            raise ValueError(
                f"perturb is a fraction of the weights' RMS, >= 0 (0: exact clones), "
                f"got perturb={perturb}"
            )
        self.perturb = perturb
        # Its own stream, the same on every data-parallel rank (each rank seeds its global
        # RNG apart for dropout): ranks take the same splits and must move the same way.
        self.perturb_generator = torch.Generator().manual_seed(seed)
        self.layers = ddn_layers(model)
        if not self.layers:
            raise ValueError("SplitAndPrune found no DiscreteDistributionLayer in the model")
        self.optimizer = optimizer
        self.mirrors = [dict(ddn_layers(m)) for m in mirrors]
        self.min_count = min_count
        self.retain = 0.5 ** (1.0 / half_life) if half_life > 0 else 1.0
        self.total_splits = 0

    @torch.no_grad()
    def step(self) -> list[SplitEvent]:
        events = []
        for name, layer in self.layers:
            if self.retain < 1.0:
                for stat in (layer.count, layer.near2, layer.loss_acc):
                    stat.mul_(self.retain)
            if float(layer.count.sum()) < max(self.min_count, 1):
                continue
            decision = split_decision(layer.count, layer.loss_acc)
            if decision.fire:
                self._apply(name, layer, decision.split, decision.prune)
                events.append(SplitEvent(name, decision.split, decision.prune))
        self.total_splits += len(events)
        return events

    def _apply(self, name: str, layer: DiscreteDistributionLayer, s: int, d: int) -> None:
        count, near2 = layer.count, layer.near2
        # d's wins go to the nodes that were runner-up when d won.
        share = near2[d].clone()
        share[d] = 0
        if share.sum() > 0:
            count.add_(count[d] * share / share.sum())
        count[d] = 0
        count[s] = count[d] = count[s] / 2
        near2[:, d] = 0
        near2[d] = 0
        near2[s] /= 2
        near2[d] = near2[s]
        layer.loss_acc[d] = layer.loss_acc[s]
        layer.select_bias[d] = layer.select_bias[s]
        for p in layer.node_parameters():
            copy_row(p, s, d)
            state = self.optimizer.state.get(p, {}) if self.optimizer is not None else {}
            for value in state.values():
                if isinstance(value, torch.Tensor) and value.shape == p.shape:
                    copy_row(value, s, d)
        copies = [layer] + [mirror[name] for mirror in self.mirrors]  # live weights first
        for twin in copies[1:]:
            for p in twin.node_parameters():
                copy_row(p, s, d)
        if self.perturb > 0:
            # The same offset in the live weights and every mirror, so the EMA's twins
            # separate the same way the trained ones do.
            row = layer.weight[s]
            noise = torch.randn(row.shape, generator=self.perturb_generator).to(row)
            offset = noise * row.pow(2).mean().sqrt() * self.perturb
            for twin in copies:
                twin.weight.data[s] += offset
                twin.weight.data[d] -= offset
        # Two identical prior logits would double the pair's probability: each clone
        # keeps half of what s had.
        for twin in copies:
            if twin.has_prior:
                twin.prior_head.bias.data[[s, d]] -= math.log(2.0)


def copy_row(t: torch.Tensor, src: int, dst: int) -> None:
    t.data[dst] = t.data[src]


class LossFreeBalance:
    """The blog's alternative without pruning: a per-node selection bias, raised for
    nodes chosen less than average since the last step and lowered for the others
    (MoE loss-free balancing, arXiv 2408.15664). The bias acts on log-distance, so
    `rate` is a fraction of a distance ratio and does not depend on the data's scale."""

    def __init__(self, model: nn.Module, rate: float = 0.01):
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got rate={rate}")
        self.layers = ddn_layers(model)
        if not self.layers:
            raise ValueError("LossFreeBalance found no DiscreteDistributionLayer in the model")
        self.rate = rate

    @torch.no_grad()
    def step(self) -> None:
        for _, layer in self.layers:
            load = layer.recent_count
            if load.sum() > 0:
                layer.select_bias.add_(self.rate * torch.sign(load.mean() - load))
                load.zero_()


STATISTICS = ("count", "near2", "loss_acc", "recent_count")  # what a training step adds to


class StepStatistics:
    """The balance statistics one training step adds, held aside so the step can be
    undone (a non-finite loss must not poison them) or summed over data-parallel ranks
    (so every rank's balancer sees the same global counts and takes the same split)."""

    def __init__(self, model: nn.Module):
        self.buffers = [getattr(m, n) for _, m in ddn_layers(model) for n in STATISTICS]
        self.before: list[torch.Tensor] = []

    @torch.no_grad()
    def begin(self) -> None:
        self.before = [b.clone() for b in self.buffers]

    @torch.no_grad()
    def undo(self) -> None:
        for b, old in zip(self.buffers, self.before, strict=True):
            b.copy_(old)

    @torch.no_grad()
    def sum_over(self, reduce_sum_) -> None:
        """Replace this rank's increments by their sum over ranks: `reduce_sum_(flat)`
        sums a flat tensor in place (an all-reduce)."""
        if not self.buffers:
            return
        delta = torch.cat(
            [(b - old).flatten() for b, old in zip(self.buffers, self.before, strict=True)]
        )
        reduce_sum_(delta)
        offset = 0
        for b, old in zip(self.buffers, self.before, strict=True):
            b.copy_(old + delta[offset : offset + b.numel()].view_as(b))
            offset += b.numel()


BALANCERS = ("split_prune", "loss_free", "none")


def make_balancer(
    kind: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    mirrors: Sequence[nn.Module] = (),
    min_count: int = 0,
    rate: float = 0.01,
    half_life: float = 0,
    perturb: float = 0,
    seed: int = 0,
):
    """One of SplitAndPrune, LossFreeBalance, or None (kind='none')."""
    if kind == "split_prune":
        return SplitAndPrune(
            model,
            optimizer,
            mirrors,
            min_count=min_count,
            half_life=half_life,
            perturb=perturb,
            seed=seed,
        )
    if kind == "loss_free":
        return LossFreeBalance(model, rate)
    if kind == "none":
        return None
    raise ValueError(f"balance must be one of {BALANCERS}, got balance={kind!r}")
