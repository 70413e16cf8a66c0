"""Black-box constraints on action chunks, in environment units, with no gradients.

A chunk guide scores hypotheses: `guide(chunks (R, K, Tp, Da), obs (R, To, Do)) ->
(R, K)`, higher is better. Positions along a chunk come from integrating the actions
from the observed hand position: pos_t = hand + scale * cumsum(action[:, :dims]) (the
task's `hand_obs` slice and `action_to_position` scale; Meta-World moves the hand
1/100 of the action per step, obstacle-reach's disc about 0.05 m per unit action).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ddn_policy.core.select import ranks


class ChunkGuide:
    def __call__(self, chunks: Tensor, obs: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError


class PathGuide(ChunkGuide):
    """Base for guides that look at the integrated hand path."""

    def __init__(self, hand_obs: tuple[int, int], action_to_position: float):
        self.hand = slice(*hand_obs)
        self.dims = hand_obs[1] - hand_obs[0]
        self.scale = action_to_position

    def path(self, chunks: Tensor, obs: Tensor) -> Tensor:
        """(R, K, Tp, dims): hand positions after each action of every hypothesis."""
        start = obs[:, -1, self.hand][:, None, None, :]  # (R, 1, 1, dims)
        return start + self.scale * chunks[..., : self.dims].cumsum(dim=2)


class WorkspaceBox(PathGuide):
    """Keep the hand path inside [low, high]: score = -total distance outside the box."""

    def __init__(self, low: Sequence[float], high: Sequence[float], **path):
        super().__init__(**path)
        self.low, self.high = torch.tensor(low), torch.tensor(high)

    def __call__(self, chunks, obs):
        p = self.path(chunks, obs)
        low, high = self.low.to(p), self.high.to(p)
        outside = (low - p).clamp_min(0) + (p - high).clamp_min(0)
        return -outside.sum(dim=(2, 3))


class KeepOutSpheres(PathGuide):
    """Keep the hand path out of spheres: score = -total penetration depth."""

    def __init__(self, centers: Sequence[Sequence[float]], radii: Sequence[float], **path):
        super().__init__(**path)
        self.centers, self.radii = torch.tensor(centers), torch.tensor(radii)

    def __call__(self, chunks, obs):
        p = self.path(chunks, obs)[..., None, :]  # (R, K, Tp, 1, dims)
        d = (p - self.centers.to(p)).norm(dim=-1)  # (R, K, Tp, S)
        return -(self.radii.to(p) - d).clamp_min(0).sum(dim=(2, 3))


class MaxStep(ChunkGuide):
    """Limit the size of each action: score = -total excess of |action| over `limit`."""

    def __init__(self, limit: float, dims: int | None = None):
        self.limit, self.dims = limit, dims

    def __call__(self, chunks, obs):
        a = chunks[..., : self.dims] if self.dims else chunks
        return -(a.norm(dim=-1) - self.limit).clamp_min(0).sum(dim=2)


class Attract(PathGuide):
    """Pull the end of the hand path towards a point: score = -final distance."""

    def __init__(self, point: Sequence[float], **path):
        super().__init__(**path)
        self.point = torch.tensor(point)

    def __call__(self, chunks, obs):
        end = self.path(chunks, obs)[:, :, -1]  # (R, K, dims)
        return -(end - self.point.to(end)).norm(dim=-1)


class ForbidRoute(PathGuide):
    """obstacle-reach: forbid passing the pillar on one side (0 = left, +y; 1 = right).
    Score = -how far the path goes to the forbidden side while short of the pillar."""

    def __init__(self, route: int, pillar_obs: tuple[int, int] = (6, 8), **path):
        super().__init__(**path)
        if route not in (0, 1):
            raise ValueError(f"route must be 0 (left) or 1 (right), got route={route}")
        self.side = 1.0 if route == 0 else -1.0
        self.pillar = slice(*pillar_obs)

    def __call__(self, chunks, obs):
        p = self.path(chunks, obs)  # (R, K, Tp, 2)
        pillar = obs[:, -1, self.pillar][:, None, None, :]
        before = (p[..., 0] < pillar[..., 0] + 0.3).float()
        wrong = (self.side * (p[..., 1] - pillar[..., 1])).clamp_min(0)
        return -(wrong * before).sum(dim=2)


class Coherence(ChunkGuide):
    """Stay with the previous plan: score = -squared distance between a hypothesis's
    first Tp - shift actions and the previous chunk's actions from `shift` on, the ones
    it had planned for the same steps (the previous chunk was predicted `shift` = Ta
    steps earlier). It commits an episode to the strategy of its first chunk, as the
    backward coherence of bidirectional decoding (Liu et al. 2024) does for diffusion
    policies by drawing many samples; a DDN ranks its K candidates at every layer."""

    def __init__(self, plan: Tensor, shift: int):
        if plan.dim() != 3 or not 0 < shift < plan.shape[1]:
            raise ValueError(
                f"Coherence needs a plan (B, Tp, Da) and 0 < shift < Tp, "
                f"got plan {tuple(plan.shape)} and shift={shift}"
            )
        self.plan, self.shift = plan, shift

    def __call__(self, chunks, obs):
        rows, plan = chunks.shape[0], self.plan.to(chunks)
        if rows % len(plan):
            raise ValueError(f"{rows} hypothesis rows for a plan of {len(plan)} rows")
        plan = plan.repeat_interleave(rows // len(plan), dim=0)  # rows are b-major
        overlap = plan.shape[1] - self.shift
        diff = chunks[:, :, :overlap] - plan[:, None, self.shift :]  # (R, K, overlap, Da)
        return -diff.square().sum(dim=(2, 3))


class RankCombination(ChunkGuide):
    """Weighted sum of ranks of several chunk guides (scale-free combination)."""

    def __init__(self, guides: Sequence[tuple[ChunkGuide, float]]):
        if not guides:
            raise ValueError("RankCombination needs at least one (guide, weight) pair")
        self.guides = list(guides)

    def __call__(self, chunks, obs):
        return sum(w * ranks(g(chunks, obs)) for g, w in self.guides)


GUIDES = {
    "workspace_box": WorkspaceBox,
    "keep_out_spheres": KeepOutSpheres,
    "max_step": MaxStep,
    "attract": Attract,
    "forbid_route": ForbidRoute,
}


def make_guide(spec: dict | None, hand_obs: tuple[int, int], action_to_position: float):
    """Build a guide from a config dict {"name": ..., **params}, or a list of them under
    "combine" with "weight"s. Path guides get the task's hand slice and scale."""
    if spec is None:
        return None
    spec = dict(spec)
    if "combine" in spec:
        parts = [
            (make_guide(p, hand_obs, action_to_position), float(p.get("weight", 1.0)))
            for p in spec["combine"]
        ]
        return RankCombination(parts)
    name = spec.pop("name", None)
    spec.pop("weight", None)
    if name not in GUIDES:
        raise ValueError(f"unknown guide {name!r}; known: {', '.join(GUIDES)}")
    cls = GUIDES[name]
    if issubclass(cls, PathGuide):
        spec.update(hand_obs=tuple(hand_obs), action_to_position=action_to_position)
    return cls(**spec)
