"""DDNPolicy: observation history in, action chunks out, one network pass per chunk.

`predict_chunks(obs, n)` draws n hypotheses per row as ONE batched forward; guides steer
every layer (and optionally pick the best of m full hypotheses). The observation
history, action queue and save/load come from ChunkPolicy (policies/base.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ddn_policy.core import Guided, Prior, Uniform
from ddn_policy.core.prior_refit import PriorRefitConfig, refit_priors
from ddn_policy.models.action import ActionDDN, ActionDDNConfig, preset
from ddn_policy.policies.base import ChunkPolicy, check_action_horizon

SAMPLING = ("prior", "uniform")


@dataclass
class DDNPolicyConfig:
    model: ActionDDNConfig  # the network (sizes, trunk, K, prior, chain dropout)
    action_horizon: int = 8  # Ta, actions executed per chunk
    sampling: str = "prior"  # "prior" (learned selection prior) or "uniform" (the paper's)
    temperature: float = 1.0  # prior softmax temperature; 0 takes the most probable node
    guide_top_k: int = 2  # guided layers pick among this many best (by the prior if any)
    # After an episode's first chunk, guide every layer towards the previous chunk's plan
    # for the overlapping steps (policies/guides.py Coherence): fewer mid-episode switches
    # of strategy; the prior picks among the guide_top_k most coherent candidates.
    coherence: bool = False
    hand_obs: tuple[int, int] = (0, 3)  # obs slice of the hand position (for guides)
    action_to_position: float = 0.01  # hand displacement per unit action (for guides)
    task: str | None = None  # the task it was trained on (ddn-eval's default)
    # torch.compile the unguided walk: about half the per-chunk time at batch 1 on CPU;
    # the first call of each batch size compiles (10-40 s). Guided walks and walks given a
    # generator stay eager (compiled random draws do not follow a torch.Generator).
    compile: bool = False

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = ActionDDNConfig(**self.model)
        self.hand_obs = tuple(self.hand_obs)
        m = self.model
        check_action_horizon(self.action_horizon, m)
        if self.sampling not in SAMPLING:
            raise ValueError(f"sampling must be one of {SAMPLING}, got sampling={self.sampling!r}")
        if self.sampling == "prior" and not m.prior:
            raise ValueError("sampling='prior' needs model.prior=True; use sampling='uniform'")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got temperature={self.temperature}")


class DDNPolicy(ChunkPolicy):
    name = "ddn"
    config_class = DDNPolicyConfig

    model_preset = staticmethod(preset)

    def build_model(self, model_cfg: ActionDDNConfig) -> ActionDDN:
        return ActionDDN(model_cfg)

    @classmethod
    def task_fields(cls, spec) -> dict:
        return {"hand_obs": spec.hand_obs, "action_to_position": spec.action_to_position}

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        """batch: obs (B, To, Do), action (B, Tp, Da), environment units."""
        obs = self.normalizer.normalize("obs", batch["obs"])
        action = self.normalizer.normalize("action", batch["action"])
        loss, info = self.model.loss(obs, action)
        return loss, {k: v for k, v in info.items() if k in ("layer_losses", "prior_loss")}

    def refit_prior(
        self, obs: Tensor, action: Tensor, cfg: PriorRefitConfig, episodes: Tensor | None = None
    ) -> list[dict]:
        """Refit the selection prior to the final weights on the training windows
        (obs (N, To, Do), action (N, Tp, Da), environment units; `episodes` (N,): hold
        out whole episodes). See ddn_policy/core/prior_refit.py."""
        self.eval()  # the network as it samples; only the prior heads change
        obs = self.normalizer.normalize("obs", obs)
        action = self.normalizer.normalize("action", action)
        with torch.no_grad():
            cond = self.model.encode_obs(obs)  # (N, cond_dim)
        return refit_priors(self.model.ddn, self.model.to_sample(action), cond, cfg, episodes)

    def _selector(self, guide, obs_rows: Tensor):
        if guide is None:
            if self.config.sampling == "prior":
                return Prior(self.config.temperature)
            return Uniform()

        def score(candidates: Tensor, ctx) -> Tensor:
            chunks = self.normalizer.unnormalize("action", self.model.from_sample(candidates))
            return guide(chunks, obs_rows)  # (R, K, Tp, Da) in env units -> (R, K)

        return Guided(score, self.config.guide_top_k)

    def _draw(self, obs: Tensor, draws: int, selector, generator=None):
        """obs (B, To, Do) env units -> chunks (B, draws, Tp, Da) env units, their path
        log-probabilities (B, draws) and layer entropies (B, draws, L)."""
        cond = self.model.encode_obs(self.normalize_obs(obs))  # (B, C)
        walk = self.model.ddn.sample(
            draws, cond, guide=selector, generator=generator, return_walk=True
        )
        chunks = self.normalizer.unnormalize("action", self.model.from_sample(walk.x))
        return chunks, walk.logprob, walk.entropy

    def _compiled_draw(self):
        """`_draw` compiled for the current unguided sampling settings, observation to
        chunk in one graph (kept per setting, so set_inference leaves no stale one)."""
        key = (self.config.sampling, self.config.temperature)
        cache = self.__dict__.setdefault("_compiled", {})
        if key not in cache:
            selector = self._selector(None, None)
            cache[key] = torch.compile(lambda obs, n: self._draw(obs, n, selector), dynamic=False)
        return cache[key]

    @torch.no_grad()
    def predict_chunks(
        self,
        obs,
        n: int = 1,
        guide=None,
        best_of: int | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict]:
        """obs (B, To, Do) in env units -> chunks (B, n, Tp, Da) in env units, drawn as
        one batched forward of B*n rows. `guide` (a chunk guide) steers every layer;
        with `best_of=m`, m hypotheses per returned chunk are drawn and the guide's best
        kept (cost: m times the rows, still one forward). info: uncertainty (B,) = mean
        std of the n hypotheses, logprob (B, n), entropy (B, n, L)."""
        obs = self.check_obs(obs)
        draws = n * (best_of or 1)
        if best_of and guide is None:
            raise ValueError(f"best_of={best_of} needs a guide to rank the hypotheses by")
        if self.config.compile and guide is None and generator is None:
            chunks, logprob, entropy = self._compiled_draw()(obs, draws)
        else:
            # the guide scores each row's candidates against that row's observation
            obs_rows = obs.repeat_interleave(draws, dim=0) if guide is not None else None
            selector = self._selector(guide, obs_rows)
            chunks, logprob, entropy = self._draw(obs, draws, selector, generator)
        if best_of:
            chunks, logprob, entropy = self.keep_best(
                guide, chunks, obs_rows, n, best_of, logprob, entropy
            )
        spread = self.spread(chunks)
        return chunks, {"uncertainty": spread, "logprob": logprob, "entropy": entropy}
