"""Reference policies for the runner: random actions, and the scripted expert behind
the same `reset()` / `select_action(obs)` interface as the learned policies."""

from __future__ import annotations

import numpy as np

from tasks import TaskSpec


class RandomPolicy:
    """Uniform actions in [-1, 1]^action_dim."""

    def __init__(self, action_dim: int, seed: int = 0):
        self.action_dim = action_dim
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        pass

    def select_action(self, obs: np.ndarray) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, (obs.shape[0], self.action_dim)).astype(np.float32)


class ZeroPolicy(RandomPolicy):
    """All-zero actions: the cheapest possible policy, for timing the runner."""

    def select_action(self, obs: np.ndarray) -> np.ndarray:
        return np.zeros((obs.shape[0], self.action_dim), dtype=np.float32)


class ExpertPolicy:
    """One scripted expert per batch row, re-drawn (strategy, noise stream) at reset()."""

    def __init__(self, spec: TaskSpec, noise_std: float | None = None, seed: int = 0):
        self.spec, self.noise_std = spec, noise_std
        self.seeds = np.random.SeedSequence(seed)
        self.experts: list = []

    def reset(self) -> None:
        self.experts = []

    def _make(self):
        expert = (
            self.spec.make_expert()
            if self.noise_std is None
            else self.spec.make_expert(self.noise_std)
        )
        expert.reset(np.random.default_rng(self.seeds.spawn(1)[0]))
        return expert

    def select_action(self, obs: np.ndarray) -> np.ndarray:
        if len(self.experts) != obs.shape[0]:
            self.experts = [self._make() for _ in range(obs.shape[0])]
        return np.stack([e.act(o) for e, o in zip(self.experts, obs, strict=True)])
