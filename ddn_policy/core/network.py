"""DDN networks: a stack of (block, DDL) stages walked from a zero sample.

Block contract: `block(h, x_prev, leak, cond) -> h`, where h is None at the first stage,
x_prev is the sample chosen by the previous stage (zeros before the first), leak is the
previous stage's leak feature or None, and the output is (B, F, *spatial) at the spatial
size of the DDL that follows. The same walk serves training (nearest), sampling
(uniform, guided, codes) and beam search; only the choice differs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ddn_policy.core.layer import DiscreteDistributionLayer, pick
from ddn_policy.core.select import (
    FromCodes,
    Nearest,
    Prior,
    ScoreFn,
    SelectionContext,
    Selector,
    Uniform,
    as_selector,
    checked_scores,
)


def path_log_probs(logits: list[Tensor | None], codes: Tensor, ks: list[int]):
    """Per-layer log-probability of the chosen nodes and entropy of each layer's choice
    distribution, (B, L) each: the prior's softmax where a layer has one, else 1/K."""
    if all(lg is not None for lg in logits) and len(set(ks)) == 1:
        logp = torch.log_softmax(torch.stack(logits, 1), dim=-1, dtype=torch.float32)  # (B, L, K)
        chosen = logp.gather(2, codes[..., None]).squeeze(2)
        return chosen, -(logp.exp() * logp).sum(-1)
    chosen, entropy = [], []
    for i, (lg, k) in enumerate(zip(logits, ks, strict=True)):
        if lg is None:
            logk = torch.full(codes.shape[:1], math.log(k), device=codes.device)
            chosen.append(-logk)
            entropy.append(logk)
        else:
            logp = torch.log_softmax(lg.float(), dim=1)
            chosen.append(logp.gather(1, codes[:, i : i + 1]).squeeze(1))
            entropy.append(-(logp.exp() * logp).sum(1))
    return torch.stack(chosen, 1), torch.stack(entropy, 1)


@dataclass
class Trace:
    """Every stage's candidates and choices, for plots and tree pictures."""

    candidates: list[Tensor] = field(default_factory=list)  # L x (B, K, C, *sp)
    chosen: list[Tensor] = field(default_factory=list)  # L x (B, C, *sp)


@dataclass
class WalkResult:
    x: Tensor  # (B, *S) final samples
    codes: Tensor  # (B, L) chosen nodes
    logprob: Tensor  # (B,) log-probability of the path (prior, or uniform 1/K per layer)
    entropy: Tensor  # (B, L) entropy of each layer's choice distribution, in nats
    trace: Trace | None = None
    layer_logprob: Tensor | None = None  # (B, L) log-probability of each layer's choice


@dataclass
class BeamResult:
    samples: Tensor  # (B, W, *S) best first
    codes: Tensor  # (B, W, L)
    scores: Tensor  # (B, W) cumulative score of each path


class DDNBase(nn.Module):
    """Shared walk. Subclasses define `stages()` (L pairs of block and layer).

    prior_weight: weight of the selection priors' cross-entropy beside the L2 loss.
    """

    num_layers: int
    prior_weight: float = 0.1

    @property
    def has_prior(self) -> bool:
        return all(layer.has_prior for _, layer in self.stages())

    def default_selector(self) -> Selector:
        """Prior sampling when every layer has a prior, else the paper's uniform rule."""
        return Prior() if self.has_prior else Uniform()

    def stages(self) -> Iterator[tuple[nn.Module, DiscreteDistributionLayer]]:
        raise NotImplementedError

    @property
    def first_layer(self) -> DiscreteDistributionLayer:
        return next(self.stages())[1]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one final sample (the last stage's)."""
        *_, (_, last) = self.stages()
        return last.sample_shape

    def _zeros(self, batch: int, like: Tensor | None) -> Tensor:
        ref = next(self.parameters())
        device = like.device if like is not None else ref.device
        return torch.zeros(batch, *self.first_layer.sample_shape, device=device, dtype=ref.dtype)

    def _check_cond(self, cond: Tensor | None, batch: int | None = None) -> None:
        if cond is not None and batch is not None and cond.shape[0] != batch:
            raise ValueError(f"cond has batch {cond.shape[0]} but the input has batch {batch}")

    def _check_sample(self, x: Tensor, name: str) -> None:
        if tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(
                f"{name} must be (B, {', '.join(map(str, self.sample_shape))}), "
                f"got {tuple(x.shape)}"
            )

    # ------------------------------------------------------------------ training
    def loss(self, target: Tensor, cond: Tensor | None = None) -> tuple[Tensor, dict]:
        """Mean over layers of the L2 loss on the taken candidate."""
        self._check_sample(target, "target")
        self._check_cond(cond, target.shape[0])
        h, x, leak = None, self._zeros(target.shape[0], target), None
        losses, prior_losses, codes = [], [], []
        for block, layer in self.stages():
            h = block(h, x, leak, cond)
            out = layer.train_step(h, x, target)
            x, leak = out.chosen, out.leak
            losses.append(out.loss)
            codes.append(out.idx)
            if out.prior_loss is not None:
                prior_losses.append(out.prior_loss)
        layer_losses = torch.stack(losses)
        total = layer_losses.mean()
        info = {"layer_losses": layer_losses.detach(), "codes": torch.stack(codes, 1), "x": x}
        if prior_losses:
            prior = torch.stack(prior_losses).mean()
            total = total + self.prior_weight * prior
            info["prior_loss"] = prior.detach()
        return total, info

    # ------------------------------------------------------------------ inference walk
    def walk(
        self,
        batch: int,
        selector: Selector,
        cond: Tensor | None = None,
        generator: torch.Generator | None = None,
        trace: bool = False,
    ) -> WalkResult:
        """Run all stages choosing with `selector`. All K candidates are computed only
        when the selector or the trace needs them; otherwise only the chosen node's."""
        self._check_cond(cond, batch)
        h, x, leak = None, self._zeros(batch, cond), None
        codes, all_logits = [], []
        ks = [layer.k for _, layer in self.stages()]
        selector.start_walk(ks, batch, x.device, generator)
        rec = Trace() if trace else None
        for i, (block, layer) in enumerate(self.stages()):
            h = block(h, x, leak, cond)
            logits = layer.prior_logits(h) if layer.has_prior else None
            ctx = SelectionContext(i, self.num_layers, layer, batch, x, cond, generator, logits)
            if selector.needs_candidates or trace:
                cands = layer.candidates(h, x)  # (B, K, C, *sp)
                idx = selector.select(cands, ctx)
                new_x = pick(cands, idx)
                if rec is not None:
                    rec.candidates.append(cands)
                    rec.chosen.append(new_x)
                new_leak = layer.leak_take(h, idx)
            else:
                idx = selector.select(None, ctx)
                new_x, new_leak = layer.take(h, x, idx)
            x, leak = new_x, new_leak
            codes.append(idx)
            all_logits.append(logits)
        codes = torch.stack(codes, 1)  # (B, L)
        logp, entropy = path_log_probs(all_logits, codes, ks)
        return WalkResult(x, codes, logp.sum(1), entropy, rec, logp)

    def sample(
        self,
        n: int = 1,
        cond: Tensor | None = None,
        guide: Selector | ScoreFn | None = None,
        generator: torch.Generator | None = None,
        top_k: int = 2,
        trace: bool = False,
        return_walk: bool = False,
    ):
        """n samples as ONE batched walk: (n, *S) without a condition, (B, n, *S) with one
        (each condition row repeated n times). `guide`: None (the default selector: the
        prior if the model has one, else uniform), a Selector (e.g. Uniform() for the
        paper's rule), or a scorer callable (uniform among its top_k).
        return_walk=True (or trace=True) returns the WalkResult with codes,
        log-probabilities and entropies, reshaped like x."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got n={n}")
        selector = self.default_selector() if guide is None else as_selector(guide, top_k)
        rows = cond if cond is None or n == 1 else cond.repeat_interleave(n, dim=0)  # (B*n, *cond)
        res = self.walk(n if cond is None else rows.shape[0], selector, rows, generator, trace)
        if cond is not None:
            grid = (cond.shape[0], n)
            names = ("x", "codes", "logprob", "entropy", "layer_logprob")
            for name in names:  # (B*n, ...) -> (B, n, ...)
                setattr(res, name, getattr(res, name).unflatten(0, grid))
        return res if (trace or return_walk) else res.x

    def encode(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """The latent of x: (B, L) ints, the nearest node at every layer."""
        self._check_sample(x, "x")
        return self.walk(x.shape[0], Nearest(x), cond).codes

    def decode(self, codes: Tensor, cond: Tensor | None = None) -> Tensor:
        """Sample for given codes (ints in [0, K), or floats in [0, 1)): (B, *S)."""
        return self.walk(codes.shape[0], FromCodes(codes), cond).x

    def reconstruct(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        self._check_sample(x, "x")
        return self.walk(x.shape[0], Nearest(x), cond).x

    @torch.no_grad()
    def beam_search(
        self, score_fn: ScoreFn, width: int, cond: Tensor | None = None, batch: int = 1
    ) -> BeamResult:
        """Keep the `width` best partial paths through the latent tree, ranked by the
        cumulative (summed over layers) score of their choices. With a condition, one
        search per condition row."""
        if width < 1:
            raise ValueError(f"width must be >= 1, got width={width}")
        if cond is not None:
            batch = cond.shape[0]
            cond = cond.repeat_interleave(width, dim=0)  # (B*W, *cond)
        rows = batch * width
        h, x, leak = None, self._zeros(rows, cond), None
        total = torch.full((batch, width), float("-inf"), device=x.device)
        total[:, 0] = 0.0  # all beams start at the root: keep one live copy
        codes = torch.zeros(rows, 0, dtype=torch.long, device=x.device)  # (B*W, layers so far)
        for i, (block, layer) in enumerate(self.stages()):
            h = block(h, x, leak, cond)
            cands = layer.candidates(h, x)  # (B*W, K, C, *sp)
            logits = layer.prior_logits(h) if layer.has_prior else None
            ctx = SelectionContext(i, self.num_layers, layer, rows, x, cond, None, logits)
            scores = checked_scores(score_fn, cands, ctx)  # (B*W, K)
            k = layer.k
            expanded = (total.reshape(rows, 1) + scores).reshape(batch, width * k)
            total, flat = expanded.topk(min(width, width * k), dim=1)  # (B, W)
            parent, idx = flat // k, flat % k
            src = (torch.arange(batch, device=x.device)[:, None] * width + parent).reshape(-1)
            idx = idx.reshape(-1)
            h, cands = h[src], cands[src]
            cond = cond[src] if cond is not None else None
            x = pick(cands, idx)
            leak = layer.leak_take(h, idx)
            codes = torch.cat([codes[src], idx[:, None]], 1)
        samples = x.unflatten(0, (batch, width))  # (B, W, *S)
        return BeamResult(samples, codes.unflatten(0, (batch, width)), total)


class SingleShotDDN(DDNBase):
    """Coarse-to-fine generator: every block has its own DDL."""

    def __init__(self, blocks: Sequence[nn.Module], layers: Sequence[DiscreteDistributionLayer]):
        super().__init__()
        if len(blocks) != len(layers) or not blocks:
            raise ValueError(
                f"need one block per layer and at least one of each, got {len(blocks)} "
                f"blocks and {len(layers)} layers"
            )
        self.blocks = nn.ModuleList(blocks)
        self.layers = nn.ModuleList(layers)
        self.num_layers = len(layers)

    def stages(self):
        return zip(self.blocks, self.layers, strict=True)


class RecurrentDDN(DDNBase):
    """Recurrence iteration: one block and one DDL with shared weights, applied L times."""

    def __init__(self, block: nn.Module, layer: DiscreteDistributionLayer, num_steps: int):
        super().__init__()
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got num_steps={num_steps}")
        self.block = block
        self.layer = layer
        self.num_layers = num_steps

    def stages(self):
        return ((self.block, self.layer) for _ in range(self.num_layers))
