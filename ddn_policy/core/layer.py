"""Discrete Distribution Layer (DDL): one head proposes K candidate samples, one is chosen.

Samples are channel-first with any number of trailing spatial axes:
  vector (D,)   |  sequence (C, T)  |  map (C, H, W)
and the features that feed the layer share the spatial axes: (B, F, *spatial).

Node k owns row k of every per-node parameter (`weight`, `leak_weight`), so a split
copies rows and the fast sampling path gathers rows. There is no bias: a bias would be
a per-node parameter that the split rule would also have to copy, and the reference
has none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DISTANCES = ("l2", "l1")
DROPOUT_LOSSES = ("taken", "nearest")


def check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {name}={value}")


@dataclass
class LayerOutput:
    """What one layer hands to the network after choosing."""

    chosen: Tensor  # (B, C, *spatial) the selected candidate, fed to the next layer
    idx: Tensor  # (B,) long, the chosen node
    leak: Tensor | None  # (B, leak_features, *spatial) the chosen node's leak feature
    candidates: Tensor | None = None  # (B, K, C, *spatial) when all K were computed
    loss: Tensor | None = None  # scalar L2 loss on the taken candidate (training only)
    prior_loss: Tensor | None = None  # scalar cross-entropy of the selection prior


def pick(candidates: Tensor, idx: Tensor) -> Tensor:
    """(B, K, *S), (B,) -> (B, *S): row b's candidate idx[b]."""
    batch, k = candidates.shape[:2]
    flat_idx = torch.arange(batch, device=idx.device) * k + idx
    return candidates.flatten(0, 1).index_select(0, flat_idx)


def gathered_matmul(weight: Tensor, idx: Tensor, x: Tensor) -> Tensor:
    """(K, O, F) per-node weights, (B,) nodes, (B, F, S) -> (B, O, S): row b through
    node idx[b]'s matrix. Eager: gather then bmm (index_select, whose backward is
    index_add, far faster on CPU than indexing's). Compiling: one broadcast product and
    sum, which the compiler fuses into a kernel instead of a gather, a copy and a bmm."""
    if torch.compiler.is_compiling():
        return (weight[idx].unsqueeze(-1) * x.unsqueeze(1)).sum(2)  # (B, O, F, S) -> (B, O, S)
    return torch.bmm(weight.index_select(0, idx), x)


class DiscreteDistributionLayer(nn.Module):
    """K candidates from one bias-free pointwise head, plus the per-node statistics that
    the balancers (`SplitAndPrune`, `LossFreeBalance`) read and write.

    in_features: channels of the block features that feed this layer.
    sample_shape: (C, *spatial) of the samples this layer emits.
    k: number of candidates (nodes), >= 2.
    leak: pass half of the features through the chosen node's own weights and hand the
        result downstream, so later blocks see which node was chosen.
    leak_features: width of that leak output (default: the leak input width).
    learn_residual: add the previously chosen sample (resized) to every candidate.
    distance: metric that picks the nearest node ("l2" as the reference's DDL, "l1" as
        its 2-D toy); the loss is always L2.
    chain_dropout: probability that the whole batch takes random nodes at this layer
        (the reference's rule).
    chain_dropout_per_sample: probability that each sample independently takes a
        random node.
    chain_dropout_loss: where a dropped sample's L2 loss goes. "taken" (the reference):
        on the random candidate, which pulls every node toward the average of the
        condition's modes; "nearest": on the nearest candidate as usual, the random
        one only continues the walk (later stages still learn to recover from it).
    centroid_loss: weight of an extra L2 loss between the mean of the K candidates and
        the target (0: the reference's loss on the taken candidate alone). The nearest
        rule lets a conditional layer lower its loss by tiling the targets' marginal
        spread with condition-blind candidates; pinning the candidates' mean to each
        target makes them the condition's mean plus offsets, and leaves the spread free.
    init_range: if set, the candidate head's weights start U[-init_range, init_range];
        else fan-in uniform (the leak weights are always fan-in uniform).
    prior: add a learned selection prior, a K-way linear head on the (detached,
        spatially pooled) features trained with cross-entropy toward the node the
        nearest-target rule chose; sampling can then draw the node from its softmax.
    prior_trains_features: let the prior's cross-entropy reach the features too, so the
        trunk must encode what decides the nearest node (e.g. a scene's global motion,
        which nearest-only training never asks the coarsest candidates to depend on).
    prior_grid: the prior reads the features average-pooled to this many cells per
        spatial axis (1: the mean over positions). Deeper layers of an image DDN choose
        among refinements of where the strokes already are, which a mean cannot tell.
    """

    def __init__(
        self,
        in_features: int,
        sample_shape: tuple[int, ...],
        k: int,
        *,
        leak: bool = True,
        leak_features: int | None = None,
        learn_residual: bool = True,
        distance: str = "l2",
        chain_dropout: float = 0.0,
        chain_dropout_per_sample: float = 0.0,
        chain_dropout_loss: str = "taken",
        centroid_loss: float = 0.0,
        init_range: float | None = None,
        prior: bool = False,
        prior_trains_features: bool = False,
        prior_grid: int = 1,
    ):
        super().__init__()
        if int(k) != k or k < 2:
            raise ValueError(f"k must be an integer >= 2 (a layer needs a choice), got k={k}")
        sample_shape = tuple(int(s) for s in sample_shape)
        if not sample_shape or len(sample_shape) > 3 or min(sample_shape) < 1:
            raise ValueError(
                "sample_shape must be (D,), (C, T) or (C, H, W) with positive sizes, "
                f"got sample_shape={sample_shape}"
            )
        if in_features < 1:
            raise ValueError(f"in_features must be >= 1, got in_features={in_features}")
        if leak and in_features < 2:
            raise ValueError(
                f"leak=True splits the features in two and needs in_features >= 2, "
                f"got in_features={in_features}; pass leak=False"
            )
        if not centroid_loss >= 0:
            raise ValueError(f"centroid_loss must be >= 0, got centroid_loss={centroid_loss}")
        if int(prior_grid) != prior_grid or prior_grid < 1:
            raise ValueError(f"prior_grid must be an integer >= 1, got prior_grid={prior_grid}")
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got distance={distance!r}")
        check_probability("chain_dropout", chain_dropout)
        check_probability("chain_dropout_per_sample", chain_dropout_per_sample)
        if chain_dropout_loss not in DROPOUT_LOSSES:
            raise ValueError(
                f"chain_dropout_loss must be one of {DROPOUT_LOSSES}, "
                f"got chain_dropout_loss={chain_dropout_loss!r}"
            )

        self.k = int(k)
        self.sample_shape = sample_shape
        self.channels = sample_shape[0]
        self.spatial = sample_shape[1:]
        self.in_features = in_features
        self.leak_in = in_features // 2 if leak else 0
        self.head_in = in_features - self.leak_in
        self.leak_out = (leak_features or self.leak_in) if leak else 0
        self.learn_residual = learn_residual
        self.distance = distance
        self.chain_dropout = chain_dropout
        self.chain_dropout_per_sample = chain_dropout_per_sample
        self.chain_dropout_loss = chain_dropout_loss
        self.centroid_loss = centroid_loss

        # (K, C, head_in): node k's rows of the reference's 1x1 conv with K*C outputs.
        self.weight = nn.Parameter(torch.empty(self.k, self.channels, self.head_in))
        # (K, leak_out, leak_in): node k's private transform of the leak half.
        self.leak_weight = (
            nn.Parameter(torch.empty(self.k, self.leak_out, self.leak_in)) if leak else None
        )
        bound = init_range if init_range is not None else 1.0 / math.sqrt(self.head_in)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.leak_weight is not None:
            bound = 1.0 / math.sqrt(self.leak_in)
            nn.init.uniform_(self.leak_weight, -bound, bound)

        # (K, F) weight rows + (K,) bias: node k's logit. Detached input by default, so
        # the prior learns to predict the trunk's choices without steering the trunk.
        # The features are average-pooled to prior_grid cells per axis (at most the
        # layer's size) and flattened, so a grid > 1 lets the prior see where things are.
        self.prior_cells = tuple(min(int(prior_grid), s) for s in self.spatial)
        cells = math.prod(self.prior_cells)
        self.prior_head = nn.Linear(in_features * cells, self.k) if prior else None
        self.prior_trains_features = prior_trains_features

        # Balance statistics: buffers, so they travel with state_dict and .to(device).
        self.register_buffer("count", torch.zeros(self.k))  # times node k won
        self.register_buffer("near2", torch.zeros(self.k, self.k))  # [won, runner-up]
        self.register_buffer("loss_acc", torch.zeros(self.k))  # summed distance to k
        self.register_buffer("recent_count", torch.zeros(self.k))  # wins since last balance
        self.register_buffer("select_bias", torch.zeros(self.k))  # loss-free balance bias

    # ------------------------------------------------------------------ helpers
    def node_parameters(self) -> list[nn.Parameter]:
        """Parameters whose dim 0 is the node index (copied row-wise by a split)."""
        params = [self.weight, self.leak_weight]
        if self.prior_head is not None:
            params += [self.prior_head.weight, self.prior_head.bias]
        return [p for p in params if p is not None]

    @property
    def has_prior(self) -> bool:
        return self.prior_head is not None

    def prior_logits(self, h: Tensor) -> Tensor:
        """(B, K) selection-prior logits from features (B, F, *sp)."""
        if self.prior_head is None:
            raise ValueError("this layer was built with prior=False; rebuild it with prior=True")
        if torch.is_grad_enabled() and not self.prior_trains_features:
            h = h.detach()
        pooled = self.prior_inputs(h)
        head = self.prior_head
        if torch.compiler.is_compiling():  # a product and sum fuse into the next kernel
            return (pooled.unsqueeze(1) * head.weight).sum(-1) + head.bias  # (B, K, F) -> (B, K)
        # functional call: a module call costs more than this small matmul
        return F.linear(pooled, head.weight, head.bias)

    def prior_inputs(self, h: Tensor) -> Tensor:
        """What the prior head reads: features (B, F, *sp) average-pooled to the prior's
        cells and flattened, (B, F * prod(prior_cells))."""
        # features share the layer's spatial axes; one cell per position needs no pooling
        if self.prior_cells == self.spatial:
            return h.flatten(1)  # (B, F * prod(spatial))
        if math.prod(self.prior_cells) == 1:
            return h.mean(tuple(range(2, h.dim())))  # (B, F)
        pool = F.adaptive_avg_pool1d if len(self.spatial) == 1 else F.adaptive_avg_pool2d
        return pool(h, self.prior_cells).flatten(1)  # (B, F * prod(prior_cells))

    def _check_features(self, h: Tensor) -> None:
        if h.shape[1] != self.in_features or tuple(h.shape[2:]) != self.spatial:
            raise ValueError(
                f"features must be (B, {self.in_features}, *{self.spatial}), got {tuple(h.shape)}"
            )

    def _split_features(self, h: Tensor) -> tuple[Tensor, Tensor | None]:
        self._check_features(h)
        if self.leak_in == 0:
            return h, None
        return h[:, : self.head_in], h[:, self.head_in :]

    def resize(self, x: Tensor, *, area: bool) -> Tensor:
        """Resize (B, C, *spatial') to this layer's spatial size: area-average when
        shrinking targets, (bi)linear when growing the previous sample."""
        if tuple(x.shape[2:]) == self.spatial:
            return x
        if area:
            pool = F.adaptive_avg_pool1d if len(self.spatial) == 1 else F.adaptive_avg_pool2d
            return pool(x, self.spatial)
        mode = "linear" if len(self.spatial) == 1 else "bilinear"
        return F.interpolate(x, size=self.spatial, mode=mode, align_corners=False)

    def check_target(self, target: Tensor) -> None:
        expected = (self.channels, *("*" for _ in self.spatial))
        if target.dim() != len(self.sample_shape) + 1 or target.shape[1] != self.channels:
            raise ValueError(
                f"target must be (B, {', '.join(map(str, expected))}) to match sample shape "
                f"{self.sample_shape}, got {tuple(target.shape)}"
            )

    def _residual(self, prev: Tensor | None) -> Tensor | None:
        if not self.learn_residual or prev is None:
            return None
        return self.resize(prev, area=False)

    # ------------------------------------------------------------------ forward paths
    def candidates(self, h: Tensor, prev: Tensor | None) -> Tensor:
        """All K candidates: (B, F, *sp) -> (B, K, C, *sp)."""
        head, _ = self._split_features(h)
        flat = head.reshape(head.shape[0], self.head_in, -1)  # (B, F, S)
        out = self.weight.view(self.k * self.channels, self.head_in) @ flat  # (B, K*C, S)
        out = out.view(head.shape[0], self.k, *self.sample_shape)  # (B, K, C, *sp)
        residual = self._residual(prev)
        return out if residual is None else out + residual.unsqueeze(1)

    def take(self, h: Tensor, prev: Tensor | None, idx: Tensor) -> tuple[Tensor, Tensor | None]:
        """Only the chosen node (the fast sampling path): its candidate (B, C, *sp) and
        its leak feature (B, leak_out, *sp) or None, from row idx[b] of the per-node
        weights. Written for few dispatched ops: at batch 1 each op costs about as
        much as the arithmetic, and this runs once per layer per chunk."""
        self._check_features(h)
        batch = h.shape[0]
        flat = h if h.dim() == 3 else h.reshape(batch, self.in_features, -1)  # (B, F, S)
        head, leak_half = (
            flat.split([self.head_in, self.leak_in], 1) if self.leak_in else (flat, None)
        )
        residual = self._residual(prev)
        one_axis = len(self.spatial) == 1  # (B, C, T) samples need no view
        if one_axis and residual is not None and not torch.compiler.is_compiling():
            out = torch.baddbmm(residual, self.weight.index_select(0, idx), head)  # one op
        else:
            out = gathered_matmul(self.weight, idx, head).view(batch, *self.sample_shape)
            out = out if residual is None else out + residual
        if leak_half is None:
            return out, None
        return out, self._leak(leak_half, idx)

    def leak_take(self, h: Tensor, idx: Tensor) -> Tensor | None:
        """The chosen node's leak feature: (B, leak_out, *sp), or None without leak."""
        _, leak_half = self._split_features(h)
        if leak_half is None:
            return None
        return self._leak(leak_half.reshape(h.shape[0], self.leak_in, -1), idx)

    def _leak(self, leak_half: Tensor, idx: Tensor) -> Tensor:
        """(B, leak_in, S) leak features through each row's node -> (B, leak_out, *sp)."""
        leak = gathered_matmul(self.leak_weight, idx, leak_half)  # (B, leak_out, S)
        if len(self.spatial) == 1:  # already (B, leak_out, T): no view to dispatch
            return leak
        return leak.view(leak.shape[0], self.leak_out, *self.spatial)

    @torch.no_grad()
    def distances(self, candidates: Tensor, target: Tensor) -> Tensor:
        """(B, K) mean distance of every candidate to the target (resized to this layer)."""
        self.check_target(target)
        t = self.resize(target, area=True).unsqueeze(1)  # (B, 1, C, *sp)
        diff = candidates - t
        d = diff.square() if self.distance == "l2" else diff.abs()
        return d.flatten(2).mean(-1)

    def nearness(self, dist: Tensor) -> Tensor:
        """(B, K) the score whose smallest entry is "the nearest node" in training.
        Loss-free balance biases the choice in log-distance (scale-free); the bias is
        zero unless LossFreeBalance is used, and then this ranks as plain distance."""
        return dist.clamp_min(1e-12).log() - self.select_bias

    # ------------------------------------------------------------------ training
    def train_step(self, h: Tensor, prev: Tensor | None, target: Tensor) -> LayerOutput:
        """Nearest-candidate training with chain dropout; updates the statistics."""
        cands = self.candidates(h, prev)  # (B, K, C, *sp)
        dist = self.distances(cands, target)  # (B, K)
        batch = dist.shape[0]
        with torch.no_grad():
            ranked = self.nearness(dist).topk(2, dim=1, largest=False).indices  # (B, 2)
            nearest, second = ranked[:, 0], ranked[:, 1]
            self._record(nearest, second, dist)
            idx = nearest.clone()
            if self.chain_dropout > 0 and torch.rand(()) < self.chain_dropout:
                idx = torch.randint(self.k, (batch,), device=idx.device)
            if self.chain_dropout_per_sample > 0:
                drop = torch.rand(batch, device=idx.device) < self.chain_dropout_per_sample
                idx = torch.where(drop, torch.randint_like(idx, self.k), idx)
        chosen = pick(cands, idx)  # (B, C, *sp)
        trained = chosen if self.chain_dropout_loss == "taken" else pick(cands, nearest)
        target = self.resize(target, area=True)  # (B, C, *sp)
        loss = F.mse_loss(trained, target)
        if self.centroid_loss > 0:
            loss = loss + self.centroid_loss * F.mse_loss(cands.mean(1), target)
        prior_loss = F.cross_entropy(self.prior_logits(h), nearest) if self.has_prior else None
        return LayerOutput(chosen, idx, self.leak_take(h, idx), cands, loss, prior_loss)

    @torch.no_grad()
    def _record(self, nearest: Tensor, second: Tensor, dist: Tensor) -> None:
        ones = torch.ones_like(nearest, dtype=self.count.dtype)
        self.count.index_add_(0, nearest, ones)
        self.recent_count.index_add_(0, nearest, ones)
        self.near2.index_put_((nearest, second), ones, accumulate=True)
        self.loss_acc.add_(dist.sum(0).to(self.loss_acc.dtype))

    def extra_repr(self) -> str:
        return (
            f"k={self.k}, sample_shape={self.sample_shape}, in_features={self.in_features}, "
            f"leak={self.leak_in}->{self.leak_out}, learn_residual={self.learn_residual}, "
            f"distance={self.distance}, chain_dropout={self.chain_dropout}/"
            f"{self.chain_dropout_per_sample}, centroid_loss={self.centroid_loss}, "
            f"prior={self.has_prior}"
        )
