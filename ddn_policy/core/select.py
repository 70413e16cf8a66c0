"""Selectors: how a layer picks one of its K candidates outside training.

Contract: `select(candidates, ctx) -> idx (B,)`. Candidates are (B, K, C, *spatial), or
None for selectors that set `needs_candidates = False` (the network then computes only
the chosen node: the fast path). A guide is any callable
`score(candidates, ctx) -> (B, K)`, higher is better, with no gradients needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ddn_policy.core.layer import DiscreteDistributionLayer

ScoreFn = Callable[[Tensor, "SelectionContext"], Tensor]


@dataclass
class SelectionContext:
    """What a selector may look at besides the candidates."""

    layer_index: int  # position of the layer in the stack (0-based)
    num_layers: int  # L, the length of the latent
    layer: DiscreteDistributionLayer  # gives k, sample shape, distances()
    batch: int  # B, rows being decided
    prev: Tensor  # (B, C, *sp') previously chosen sample
    cond: Tensor | None  # condition rows aligned with the batch
    generator: torch.Generator | None  # for reproducible random choices
    prior_logits: Tensor | None = None  # (B, K) the layer's selection prior, if it has one

    @property
    def k(self) -> int:
        return self.layer.k


class Selector:
    needs_candidates = True

    def start_walk(self, ks: list[int], batch: int, device, generator) -> None:
        """Called once before a walk's first layer with every layer's K: a selector
        may draw the whole walk's randomness at once (one op instead of one per layer)."""

    def select(self, candidates: Tensor | None, ctx: SelectionContext) -> Tensor:
        raise NotImplementedError


def _check_generator(gen: torch.Generator | None, device) -> torch.Generator | None:
    if gen is not None and gen.device.type != torch.device(device).type:
        raise ValueError(
            f"generator is on {gen.device} but sampling runs on {device}; "
            f"create it with torch.Generator(device='{torch.device(device).type}')"
        )
    return gen


def _randint(high: int, size: tuple[int, ...], ctx: SelectionContext, device) -> Tensor:
    return torch.randint(
        high, size, generator=_check_generator(ctx.generator, device), device=device
    )


class Uniform(Selector):
    """The paper's sampling rule: every node with probability 1/K."""

    needs_candidates = False

    def select(self, candidates, ctx):
        return _randint(ctx.k, (ctx.batch,), ctx, ctx.prev.device)


def draw(weights: Tensor, ctx: SelectionContext) -> Tensor:
    """One index per row with probability proportional to weights (B, K), by inverting
    the cumulative sum (a few small ops; torch.multinomial costs ~50 us per call)."""
    cdf = weights.cumsum(dim=1)  # (B, K)
    gen = _check_generator(ctx.generator, weights.device)
    u = torch.rand(weights.shape[0], 1, generator=gen, device=weights.device)
    return (cdf < u * cdf[:, -1:]).sum(dim=1).clamp_max(weights.shape[1] - 1)


class Prior(Selector):
    """Draw the node from the layer's learned selection prior, softmax(logits / T);
    temperature 0 takes the most probable node.

    Drawn by the Gumbel-max trick, argmax(logits / T + G) with G = -log(Exp(1)): exact,
    and the walk's noise for all layers is drawn in `start_walk`, so each layer adds
    only an add and an argmax (this runs once per layer per chunk)."""

    needs_candidates = False

    def __init__(self, temperature: float = 1.0):
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got temperature={temperature}")
        self.temperature = temperature
        self._gumbel: list[Tensor | None] = []  # this walk's unused noise, (B, K) per layer

    def start_walk(self, ks, batch, device, generator):
        self._gumbel = []
        if self.temperature == 0:
            return
        gen = _check_generator(generator, device)
        race = torch.empty(batch, sum(ks), device=device).exponential_(generator=gen)
        self._gumbel = list(race.log_().neg_().split(ks, dim=1))

    def select(self, candidates, ctx):
        if ctx.prior_logits is None:
            raise ValueError(
                "prior sampling was requested but this model was built without a selection "
                "prior (prior=False); sample with Uniform() or rebuild with prior=True"
            )
        logits = ctx.prior_logits
        if self.temperature == 0:
            return logits.argmax(dim=1)
        logits = logits if self.temperature == 1 else logits / self.temperature
        gumbel, i = None, ctx.layer_index
        if i < len(self._gumbel) and self._gumbel[i] is not None:
            # each layer's noise is used once: a later call outside a walk draws afresh
            gumbel, self._gumbel[i] = self._gumbel[i], None
        if gumbel is None or gumbel.shape != logits.shape:  # outside a walk
            gen = _check_generator(ctx.generator, logits.device)
            gumbel = torch.empty_like(logits).exponential_(generator=gen).log_().neg_()
        return (logits + gumbel).argmax(dim=1)


class Nearest(Selector):
    """Argmin distance to a target (training rule; encoding and reconstruction)."""

    def __init__(self, target: Tensor):
        self.target = target

    def select(self, candidates, ctx):
        if self.target.shape[0] != ctx.batch:
            raise ValueError(
                f"target batch {self.target.shape[0]} does not match the {ctx.batch} rows "
                "being sampled"
            )
        return ctx.layer.distances(candidates, self.target).argmin(dim=1)


class Central(Selector):
    """The candidate nearest the mean of the layer's K candidates (the mean weighted by
    the selection prior's probabilities when the layer has one and use_prior is set):
    a deterministic walk through the middle of every layer's hypotheses. Under squared
    L2 the candidate nearest the weighted mean is the weighted medoid, the candidate
    with the least expected squared distance to a draw, so the walk is a point estimate
    from one pass that stays on candidates the network trained (a mean of candidates
    would hand the next stage an input no training walk produced)."""

    def __init__(self, use_prior: bool = True):
        self.use_prior = use_prior

    def select(self, candidates, ctx):
        flat = candidates.flatten(2).float()  # (B, K, D)
        if self.use_prior and ctx.prior_logits is not None:
            weights = torch.softmax(ctx.prior_logits.float(), dim=1)  # (B, K)
        else:
            weights = flat.new_full(flat.shape[:2], 1.0 / ctx.k)
        mean = torch.einsum("bk,bkd->bd", weights, flat)  # (B, D)
        return (flat - mean[:, None]).square().mean(-1).argmin(dim=1)


class Prefix(Selector):
    """`first` decides the walk's first `layers` layers and `rest` the others. With
    Nearest(target) first and Central() after, the walk's error tells how much of a point
    estimate's error the coarse layers' choices carry (`oracle_prefix_*` in the dense
    evaluation)."""

    def __init__(self, first: Selector, rest: Selector, layers: int):
        if layers < 0:
            raise ValueError(f"layers must be >= 0 (how many layers `first` decides), got {layers}")
        self.first, self.rest, self.layers = first, rest, layers
        self.needs_candidates = first.needs_candidates or rest.needs_candidates

    def start_walk(self, ks, batch, device, generator):
        self.first.start_walk(ks, batch, device, generator)
        self.rest.start_walk(ks, batch, device, generator)

    def select(self, candidates, ctx):
        chosen = self.first if ctx.layer_index < self.layers else self.rest
        return chosen.select(candidates, ctx)


class FromCodes(Selector):
    """Replay a latent. Integer codes are node indices in [0, K); float codes u in [0, 1)
    map to int(K*u), so one seed decodes to the same sample whatever K is."""

    needs_candidates = False

    def __init__(self, codes: Tensor):
        if codes.dim() != 2:
            raise ValueError(f"codes must be (B, L), got shape {tuple(codes.shape)}")
        self.codes = codes

    def select(self, candidates, ctx):
        if self.codes.shape != (ctx.batch, ctx.num_layers):
            raise ValueError(
                f"codes must be (B, L) = ({ctx.batch}, {ctx.num_layers}), "
                f"got {tuple(self.codes.shape)}"
            )
        col = self.codes[:, ctx.layer_index]
        if col.is_floating_point():
            if ((col < 0) | (col >= 1)).any():
                raise ValueError(
                    f"float codes must lie in [0, 1), got values in "
                    f"[{col.min().item()}, {col.max().item()}] at layer {ctx.layer_index}"
                )
            return (col * ctx.k).long().clamp_max(ctx.k - 1).to(ctx.prev.device)
        if ((col < 0) | (col >= ctx.k)).any():
            raise ValueError(
                f"integer codes must lie in [0, K) = [0, {ctx.k}), got values in "
                f"[{col.min().item()}, {col.max().item()}] at layer {ctx.layer_index}"
            )
        return col.long().to(ctx.prev.device)


def checked_scores(score_fn: ScoreFn, candidates: Tensor, ctx: SelectionContext) -> Tensor:
    scores = score_fn(candidates, ctx)
    if not isinstance(scores, Tensor) or tuple(scores.shape) != (ctx.batch, ctx.k):
        got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(
            f"a guide must return scores of shape (B, K) = ({ctx.batch}, {ctx.k}), got {got}"
        )
    if scores.dtype.is_floating_point and torch.isnan(scores).any():
        raise ValueError(
            "a guide returned NaN scores; score forbidden candidates -inf, never NaN "
            f"(layer {ctx.layer_index}, {int(torch.isnan(scores).sum())} NaN of {scores.numel()})"
        )
    return scores.to(candidates.device, torch.float32)


def among_top_k(
    scores: Tensor, top_k: int, ctx: SelectionContext, prior_logits: Tensor | None = None
) -> Tensor:
    """Pick among the candidates scoring at least the top_k-th best score (ties kept, so
    a pass/fail constraint allows every passing candidate): uniformly, or by the
    selection prior restricted to them when its logits are given."""
    top_k = min(top_k, scores.shape[1])
    kth = scores.topk(top_k, dim=1).values[:, -1:]  # (B, 1)
    allowed = scores >= kth  # (B, K)
    if prior_logits is None:
        weights = allowed.float()
    else:
        masked = prior_logits.float().masked_fill(~allowed, float("-inf"))
        weights = torch.softmax(masked, dim=1)
    return draw(weights, ctx)


class Guided(Selector):
    """Zero-shot conditional generation: a black-box scorer ranks the K candidates and
    the layer picks among its top_k (2 keeps diversity; 1 is greedy). Among those it
    draws uniformly (the paper's rule), or by the layer's selection prior when the
    layer has one and use_prior is set, so constraints steer while the prior keeps the
    choice on the data."""

    def __init__(self, score_fn: ScoreFn, top_k: int = 2, use_prior: bool = True):
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got top_k={top_k}")
        self.score_fn = score_fn
        self.top_k = top_k
        self.use_prior = use_prior

    def select(self, candidates, ctx):
        scores = checked_scores(self.score_fn, candidates, ctx)
        logits = ctx.prior_logits if self.use_prior else None
        return among_top_k(scores, self.top_k, ctx, logits)


def ranks(scores: Tensor) -> Tensor:
    """(B, K) scores -> (B, K) ranks in [0, K-1], K-1 for the best."""
    return scores.argsort(dim=1).argsort(dim=1).to(torch.float32)


class RankSum:
    """A guide made of several guides: score = sum of weight * rank, so guides on
    unrelated scales (pixels, probabilities, metres) combine without tuning."""

    def __init__(self, guides: Sequence[tuple[ScoreFn, float]]):
        if not guides:
            raise ValueError("RankSum needs at least one (guide, weight) pair, got none")
        self.guides = list(guides)

    def __call__(self, candidates: Tensor, ctx: SelectionContext) -> Tensor:
        return sum(w * ranks(checked_scores(fn, candidates, ctx)) for fn, w in self.guides)


class Combined(Guided):
    """Several guides combined by weighted ranks, then chosen among the top_k."""

    def __init__(
        self, guides: Sequence[tuple[ScoreFn, float]], top_k: int = 2, use_prior: bool = True
    ):
        super().__init__(RankSum(guides), top_k, use_prior)


def prior_log_prob(candidates: Tensor, ctx: SelectionContext) -> Tensor:
    """A guide that scores each node by its log-probability under the layer's selection
    prior: beam search with it keeps the most probable paths."""
    if ctx.prior_logits is None:
        raise ValueError("prior_log_prob needs a model built with prior=True")
    return torch.log_softmax(ctx.prior_logits.float(), dim=1)


def as_selector(guide: Selector | ScoreFn | None, top_k: int = 2) -> Selector:
    """None -> Uniform; a Selector as is; any other callable -> Guided(callable, top_k)."""
    if guide is None:
        return Uniform()
    if isinstance(guide, Selector):
        return guide
    if callable(guide):
        return Guided(guide, top_k)
    raise ValueError(f"guide must be a Selector or a callable scorer, got {type(guide).__name__}")
