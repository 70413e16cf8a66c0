"""Refit the selection priors of a trained DDN to its final weights.

During training each prior learns, online, which node is nearest under weights that
keep moving, and split-and-prune keeps renumbering the nodes; the sampler then uses the
EMA weights, whose nearest nodes are not those. After training, with the network frozen,
the nearest-node path of every training target is fixed, so each layer's prior head (a
linear map of pooled features) can be fitted to it directly: a small multinomial
regression per layer, stopped early on a held-out part of the training targets (the
heads are wide enough to memorise the training paths)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ddn_policy.core.layer import pick
from ddn_policy.core.network import DDNBase


@dataclass
class PriorRefitConfig:
    val_fraction: float = 0.1  # share of the targets held out to stop each layer's fit
    max_epochs: int = 300  # upper bound on passes over the fitting targets per layer
    patience: int = 20  # epochs without a better held-out NLL before a layer stops
    lr: float = 3e-3  # AdamW learning rate of the heads
    weight_decay: float = 1e-4  # AdamW weight decay of the heads
    batch_size: int = 500  # rows per step of the fit, and per forward when collecting
    seed: int = 0  # the held-out split and the batch order

    def __post_init__(self):
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(
                f"val_fraction must lie in (0, 1) to hold targets out, got {self.val_fraction}"
            )
        for name in ("max_epochs", "patience", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {name}={getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(
                f"need lr > 0 and weight_decay >= 0, got lr={self.lr}, "
                f"weight_decay={self.weight_decay}"
            )


@torch.no_grad()
def nearest_path_inputs(
    model: DDNBase, targets: Tensor, cond: Tensor | None = None, batch_size: int = 500
) -> tuple[list[Tensor], list[Tensor]]:
    """Per layer, what its prior head reads (N, P_l) and the nearest node (N,) along the
    nearest-node path of each target (what the prior is trained to predict)."""
    stages = list(model.stages())
    inputs, codes = [[] for _ in stages], [[] for _ in stages]
    for start in range(0, len(targets), batch_size):
        target = targets[start : start + batch_size]
        c = None if cond is None else cond[start : start + batch_size]
        h, x, leak = None, model._zeros(target.shape[0], target), None
        for i, (block, layer) in enumerate(stages):
            h = block(h, x, leak, c)
            cands = layer.candidates(h, x)  # (B, K, C, *sp)
            idx = layer.nearness(layer.distances(cands, target)).argmin(1)  # (B,)
            x, leak = pick(cands, idx), layer.leak_take(h, idx)
            inputs[i].append(layer.prior_inputs(h))
            codes[i].append(idx)
    return [torch.cat(v) for v in inputs], [torch.cat(v) for v in codes]


def _nll(head: torch.nn.Linear, inputs: Tensor, codes: Tensor) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(F.linear(inputs, head.weight, head.bias), codes))


def held_out_first(n: int, val_fraction: float, gen: torch.Generator, groups=None):
    """A random order of n rows whose first `n_val` rows are the held-out ones, and
    n_val. With `groups` (n ints, e.g. each action window's episode) whole groups are
    held out: windows of one episode overlap, so a window held out beside its
    neighbours would not test generalisation."""
    if groups is None:
        order = torch.randperm(n, generator=gen)
        return order, max(1, int(round(val_fraction * n)))
    groups = torch.as_tensor(groups)
    if groups.shape != (n,):
        raise ValueError(
            f"groups must hold one id per target, shape ({n},), got {tuple(groups.shape)}"
        )
    ids = groups.unique()
    ids = ids[torch.randperm(len(ids), generator=gen)]
    n_groups = max(1, int(round(val_fraction * len(ids))))
    held = torch.isin(groups, ids[:n_groups])
    order = torch.cat([held.nonzero().flatten(), (~held).nonzero().flatten()])
    return order, int(held.sum())


def refit_priors(
    model: DDNBase,
    targets: Tensor,
    cond: Tensor | None = None,
    cfg: PriorRefitConfig | None = None,
    groups: Tensor | None = None,
) -> list[dict]:
    """Fit every layer's prior head to the nearest-node paths of `targets` (network
    otherwise unchanged); returns per layer the held-out NLL before and after, the
    training NLL after, and the epochs kept. The model is changed in place. `groups`
    (one id per target): hold out whole groups instead of single targets."""
    cfg = cfg or PriorRefitConfig()
    if not model.has_prior:
        raise ValueError("this model has no selection prior to refit; build it with prior=True")
    layers = [layer for _, layer in model.stages()]
    if len({id(layer) for layer in layers}) != len(layers):
        raise ValueError(
            "this model applies one layer at several stages (the recurrence form), so its "
            "prior head cannot be fitted per stage; refit a single-shot model"
        )
    gen = torch.Generator().manual_seed(cfg.seed)
    order, n_val = held_out_first(len(targets), cfg.val_fraction, gen, groups)
    if n_val >= len(targets):
        raise ValueError(f"{len(targets)} targets leave none to fit after holding out {n_val}")
    was_training = model.training
    model.eval()
    inputs, codes = nearest_path_inputs(
        model,
        targets[order],
        None if cond is None else cond[order],
        cfg.batch_size,
    )
    report = []
    for i, ((_, layer), x, y) in enumerate(zip(model.stages(), inputs, codes, strict=True)):
        head = layer.prior_head
        fit_x, fit_y, val_x, val_y = x[n_val:], y[n_val:], x[:n_val], y[:n_val]
        before = _nll(head, val_x, val_y)
        # the trained head stays unless an epoch beats it on the held-out paths
        best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        best, best_epoch, epoch = before, 0, 0
        opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        for epoch in range(1, cfg.max_epochs + 1):
            perm = torch.randperm(len(fit_x), generator=gen)
            for start in range(0, len(fit_x), cfg.batch_size):
                rows = perm[start : start + cfg.batch_size]
                logits = F.linear(fit_x[rows], head.weight, head.bias)
                loss = F.cross_entropy(logits, fit_y[rows])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            held_out = _nll(head, val_x, val_y)
            if held_out < best:
                best, best_epoch = held_out, epoch
                best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
            elif epoch - best_epoch >= cfg.patience:
                break
        head.load_state_dict(best_state)
        report.append(
            {
                "layer": i,
                "val_nll_before": before,
                "val_nll_after": best,
                "fit_nll_after": _nll(head, fit_x, fit_y),
                "epochs_kept": best_epoch,
                "epochs_run": epoch,
            }
        )
    model.train(was_training)
    return report


def summary_rows(report: list[dict]) -> list[dict]:
    """A refit report as flat result rows: the held-out cross-entropy (nats) of the prior
    against the nearest-node paths before (as trained) and after the refit, at the first
    layer and as the mean over layers (`prior_nll_{first_layer,mean}_{before,after}_refit`)."""
    rows = []
    for when in ("before", "after"):
        values = [r[f"val_nll_{when}"] for r in report]
        for what, value in (("first_layer", values[0]), ("mean", sum(values) / len(values))):
            rows.append({"metric": f"prior_nll_{what}_{when}_refit", "value": value})
    return rows
