"""DDNPolicy: observation history in, action chunks out, one network pass per chunk.

Environment units at the interface, the normalizer inside. `predict_chunks(obs, n)`
draws n hypotheses per row as ONE batched forward; `select_action(obs)` runs the model
only when its receding-horizon queue is empty and executes actions [To-1, To-1+Ta).
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save
from torch import Tensor, nn

from ddn_policy.core import Guided, Prior, Uniform
from ddn_policy.data.normalizer import MinMaxNormalizer
from ddn_policy.models.action import ActionDDN, ActionDDNConfig
from ddn_policy.utils.io import atomic_write_bytes, atomic_write_text

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
NORMALIZER_FILE = "normalizer.safetensors"
SAMPLING = ("prior", "uniform")


@dataclass
class DDNPolicyConfig:
    model: ActionDDNConfig  # the network (sizes, trunk, K, prior, chain dropout)
    action_horizon: int = 8  # Ta, actions executed per chunk
    sampling: str = "prior"  # "prior" (learned selection prior) or "uniform" (the paper's)
    temperature: float = 1.0  # prior softmax temperature; 0 takes the most probable node
    guide_top_k: int = 2  # guided layers choose uniformly among this many best candidates
    hand_obs: tuple[int, int] = (0, 3)  # obs slice of the hand position (for guides)
    action_to_position: float = 0.01  # hand displacement per unit action (for guides)
    task: str | None = None  # the task it was trained on (ddn-eval's default)
    name: str = field(default="ddn", init=False)  # policy type, recorded in config.json

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = ActionDDNConfig(**self.model)
        self.hand_obs = tuple(self.hand_obs)
        m = self.model
        if not 1 <= self.action_horizon <= m.pred_horizon - m.obs_horizon + 1:
            raise ValueError(
                f"need 1 <= action_horizon <= Tp - To + 1 = {m.pred_horizon - m.obs_horizon + 1},"
                f" got action_horizon={self.action_horizon}"
            )
        if self.sampling not in SAMPLING:
            raise ValueError(f"sampling must be one of {SAMPLING}, got sampling={self.sampling!r}")
        if self.sampling == "prior" and not m.prior:
            raise ValueError("sampling='prior' needs model.prior=True; use sampling='uniform'")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got temperature={self.temperature}")


class DDNPolicy(nn.Module):
    def __init__(self, config: DDNPolicyConfig, normalizer: MinMaxNormalizer):
        super().__init__()
        self.config = config
        self.model = ActionDDN(config.model)
        self.normalizer = normalizer
        self.reset()

    # ------------------------------------------------------------------ training
    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        """batch: obs (B, To, Do), action (B, Tp, Da), environment units."""
        obs = self.normalizer.normalize("obs", batch["obs"])
        action = self.normalizer.normalize("action", batch["action"])
        loss, info = self.model.loss(obs, action)
        return loss, {k: v for k, v in info.items() if k in ("layer_losses", "prior_loss")}

    # ------------------------------------------------------------------ inference
    def _check_obs(self, obs) -> Tensor:
        m = self.config.model
        obs = torch.as_tensor(obs)
        if not obs.is_floating_point():
            raise ValueError(f"observations must be floating point, got dtype {obs.dtype}")
        if obs.dim() != 3 or obs.shape[1:] != (m.obs_horizon, m.obs_dim):
            raise ValueError(
                f"obs must be (B, To, Do) = (B, {m.obs_horizon}, {m.obs_dim}), "
                f"got {tuple(obs.shape)}"
            )
        device = next(self.parameters()).device
        return obs.to(device, torch.float32)

    def _selector(self, guide, obs_rows: Tensor):
        if guide is None:
            if self.config.sampling == "prior":
                return Prior(self.config.temperature)
            return Uniform()

        def score(candidates: Tensor, ctx) -> Tensor:
            chunks = self.normalizer.unnormalize("action", self.model.from_sample(candidates))
            return guide(chunks, obs_rows)  # (R, K, Tp, Da) in env units -> (R, K)

        return Guided(score, self.config.guide_top_k)

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
        obs = self._check_obs(obs)
        draws = n * (best_of or 1)
        if best_of and guide is None:
            raise ValueError(f"best_of={best_of} needs a guide to rank the hypotheses by")
        cond = self.model.encode_obs(self.normalizer.normalize("obs", obs))  # (B, C)
        obs_rows = obs.repeat_interleave(draws, dim=0)  # (B*draws, To, Do)
        walk = self.model.ddn.sample(
            draws,
            cond,
            guide=self._selector(guide, obs_rows),
            generator=generator,
            return_walk=True,
        )
        chunks = self.normalizer.unnormalize("action", self.model.from_sample(walk.x))
        logprob, entropy = walk.logprob, walk.entropy  # (B, draws), (B, draws, L)
        if best_of:
            scores = guide(chunks.flatten(0, 1)[:, None], obs_rows).view(-1, n, best_of)
            pick = scores.argmax(-1)  # (B, n)
            rows, cols = torch.arange(len(pick))[:, None], torch.arange(n)

            def best(t: Tensor) -> Tensor:  # (B, n*m, ...) -> (B, n, ...)
                return t.unflatten(1, (n, best_of))[rows, cols, pick]

            chunks, logprob, entropy = best(chunks), best(logprob), best(entropy)
        spread = chunks.std(dim=1, unbiased=False).mean(dim=(1, 2)) if n > 1 else None
        return chunks, {"uncertainty": spread, "logprob": logprob, "entropy": entropy}

    def reset(self) -> None:
        self._history: deque[Tensor] = deque(maxlen=self.config.model.obs_horizon)
        self._queue: deque[Tensor] = deque()
        self.calls = 0  # network passes since reset (for tests and latency accounting)

    @torch.no_grad()
    def select_action(self, obs) -> np.ndarray:
        """obs (B, Do) of the current step -> actions (B, Da); a chunk is predicted only
        when the queue of executable actions is empty."""
        obs = torch.as_tensor(np.asarray(obs), dtype=torch.float32)
        if obs.dim() != 2 or obs.shape[1] != self.config.model.obs_dim:
            raise ValueError(
                f"select_action expects (B, {self.config.model.obs_dim}), got {tuple(obs.shape)}"
            )
        if not self._history:
            self._history.extend([obs] * self.config.model.obs_horizon)
        self._history.append(obs)
        if not self._queue:
            history = torch.stack(list(self._history), dim=1)  # (B, To, Do)
            chunks, _ = self.predict_chunks(history, n=1, guide=self.guide, best_of=self.best_of)
            start = self.config.model.obs_horizon - 1
            executed = chunks[:, 0, start : start + self.config.action_horizon]  # (B, Ta, Da)
            self._queue.extend(executed.transpose(0, 1).cpu())
            self.calls += 1
        return self._queue.popleft().numpy()

    guide = None  # a chunk guide applied by select_action (set by ddn-eval guide=...)
    best_of: int | None = None  # with a guide: hypotheses drawn per executed chunk

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path) -> None:
        """config.json, model.safetensors, normalizer.safetensors; no pickle."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_text(d / CONFIG_FILE, json.dumps(asdict(self.config), indent=2))
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        atomic_write_bytes(d / WEIGHTS_FILE, save(tensors))
        atomic_write_bytes(d / NORMALIZER_FILE, save(self.normalizer.state_dict()))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> DDNPolicy:
        d = Path(directory)
        missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE, NORMALIZER_FILE) if not (d / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{d} is not a saved DDNPolicy: missing {', '.join(missing)}")
        raw = json.loads((d / CONFIG_FILE).read_text())
        if raw.pop("name", "ddn") != "ddn":
            raise ValueError(f"{d / CONFIG_FILE} describes a different policy type")
        normalizer = MinMaxNormalizer.from_state_dict(load_file(str(d / NORMALIZER_FILE)))
        policy = cls(DDNPolicyConfig(**raw), normalizer)
        policy.model.load_state_dict(load_file(str(d / WEIGHTS_FILE)))
        return policy.eval()
