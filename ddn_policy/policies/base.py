"""What every chunk policy shares: environment units at the interface with the
normalizer inside, the observation history and receding-horizon action queue of
`select_action`, best-of-n under a guide, and save/load as JSON + safetensors.

A subclass sets `name` and `config_class` (a dataclass with `model`, `action_horizon`
and `task`; `model` carries obs_dim, action_dim, obs_horizon, pred_horizon), builds
`self.model` in `build_model`, and implements `compute_loss` and `predict_chunks`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ddn_policy.data.normalizer import MinMaxNormalizer
from ddn_policy.policies.guides import Coherence, RankCombination
from ddn_policy.utils.io import (
    CONFIG_FILE,
    UnsafeFileError,
    load_weights,
    read_model_dir,
    write_model_dir,
)


def check_action_horizon(action_horizon: int, model_cfg) -> None:
    """Executed actions start at index To-1 of the chunk, so Ta <= Tp - To + 1."""
    limit = model_cfg.pred_horizon - model_cfg.obs_horizon + 1
    if not 1 <= action_horizon <= limit:
        raise ValueError(
            f"need 1 <= action_horizon <= Tp - To + 1 = {limit}, "
            f"got action_horizon={action_horizon}"
        )


class ChunkPolicy(nn.Module):
    name: str = ""
    config_class: type = object

    def __init__(self, config, normalizer: MinMaxNormalizer):
        super().__init__()
        self.config = config
        self.model = self.build_model(config.model)
        self.normalizer = normalizer
        self.reset()

    def build_model(self, model_cfg) -> nn.Module:
        raise NotImplementedError

    @staticmethod
    def model_preset(name: str, **fields):
        """The model config of size preset `name` with `fields` overriding it."""
        raise NotImplementedError

    @classmethod
    def task_fields(cls, spec) -> dict:
        """Policy-config fields a task decides (beside horizons and the task name)."""
        return {}

    @classmethod
    def from_task(cls, cfg: dict, spec, normalizer: MinMaxNormalizer):
        """cfg: the hydra `policy` node without its name: {preset, model: {...}, ...}."""
        cfg = dict(cfg)
        model = cls.model_preset(
            cfg.pop("preset", "small"),
            obs_dim=spec.obs_dim,
            action_dim=spec.action_dim,
            obs_horizon=spec.obs_horizon,
            pred_horizon=spec.pred_horizon,
            **cfg.pop("model", {}),
        )
        config = cls.config_class(
            model=model,
            action_horizon=spec.action_horizon,
            task=spec.name,
            **cls.task_fields(spec),
            **cfg,
        )
        return cls(config, normalizer)

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        """batch: obs (B, To, Do), action (B, Tp, Da) in environment units."""
        raise NotImplementedError

    def predict_chunks(self, obs, n=1, guide=None, best_of=None, generator=None):
        """obs (B, To, Do) -> chunks (B, n, Tp, Da) in env units, and an info dict."""
        raise NotImplementedError

    def set_inference(self, **settings) -> None:
        """Change inference fields of the config (a DDN's sampling or temperature, a
        diffusion sampler and its steps); the config's validation runs again. `obs_clip`
        is every policy's and not part of the saved config."""
        if "obs_clip" in settings:
            self.obs_clip = settings.pop("obs_clip")
        self.config = replace(self.config, **settings)

    guide = None  # a chunk guide applied by select_action (set by ddn-eval guide=...)
    best_of: int | None = None  # with a guide: hypotheses drawn per executed chunk
    _obs_clip: float | None = None

    @property
    def obs_clip(self) -> float | None:
        """At inference, clamp normalised observations to [-obs_clip, obs_clip] (None: no
        clamp). The min-max range comes from the demonstrations; with a few starts it can
        be narrower than the starts a policy meets (metaworld-hard/reach: goal y spans
        1.9 cm in 10 demonstrations, in-distribution goals normalise to -4)."""
        return self._obs_clip

    @obs_clip.setter
    def obs_clip(self, value: float | None) -> None:
        # checked when set (set_inference, ddn-eval), not on every chunk
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if value is not None and not (number and value > 0):
            raise ValueError(f"obs_clip must be a number > 0 or None, got obs_clip={value!r}")
        self._obs_clip = value

    def normalize_obs(self, obs: Tensor) -> Tensor:
        """Observations (..., Do) in env units -> the network's input, clamped if set."""
        obs = self.normalizer.normalize("obs", obs)
        if self.obs_clip is None:
            return obs
        return obs.clamp(-self.obs_clip, self.obs_clip)

    # ------------------------------------------------------------------ helpers
    def check_obs(self, obs) -> Tensor:
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
        if obs.device == device and obs.dtype == torch.float32:
            return obs  # the common case costs no dispatch
        return obs.to(device, torch.float32)

    @staticmethod
    def keep_best(guide, chunks: Tensor, obs_rows: Tensor, n: int, best_of: int, *extra):
        """chunks (B, n*m, Tp, Da) drawn m=best_of per kept chunk -> the guide's best of
        each group of m: (B, n, Tp, Da); `extra` tensors (B, n*m, ...) follow the pick."""
        scores = guide(chunks.flatten(0, 1)[:, None], obs_rows).view(-1, n, best_of)
        pick = scores.argmax(-1)  # (B, n)
        rows, cols = torch.arange(len(pick))[:, None], torch.arange(n)

        def best(t: Tensor) -> Tensor:  # (B, n*m, ...) -> (B, n, ...)
            return t.unflatten(1, (n, best_of))[rows, cols, pick]

        return (best(chunks), *(best(t) for t in extra))

    @staticmethod
    def spread(chunks: Tensor) -> Tensor | None:
        """Uncertainty per row: mean std of the n hypotheses (None for n = 1)."""
        return chunks.std(dim=1, unbiased=False).mean(dim=(1, 2)) if chunks.shape[1] > 1 else None

    # ------------------------------------------------------------------ acting
    def reset(self) -> None:
        self._history: deque[Tensor] = deque(maxlen=self.config.model.obs_horizon)
        self._queue: deque[Tensor] = deque()
        self._plan: Tensor | None = None  # the last chunk, (B, Tp, Da), with coherence
        self.calls = 0  # chunk predictions since reset (for tests and latency accounting)

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
            chunks, _ = self.predict_chunks(
                history, n=1, guide=self._chunk_guide(), best_of=self.best_of
            )
            if getattr(self.config, "coherence", False):
                self._plan = chunks[:, 0]  # (B, Tp, Da)
            start = self.config.model.obs_horizon - 1
            executed = chunks[:, 0, start : start + self.config.action_horizon]  # (B, Ta, Da)
            self._queue.extend(executed.transpose(0, 1).cpu())
            self.calls += 1
        return self._queue.popleft().numpy()

    def _chunk_guide(self):
        """The user's guide, and with `config.coherence` after an episode's first chunk,
        Coherence with the previous chunk (ranks summed when both are set)."""
        if self._plan is None or not getattr(self.config, "coherence", False):
            return self.guide
        coherence = Coherence(self._plan, self.config.action_horizon)
        if self.guide is None:
            return coherence
        return RankCombination([(self.guide, 1.0), (coherence, 1.0)])

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path) -> None:
        """config.json, model.safetensors, normalizer.safetensors and a manifest of
        their sha256 (written last); no pickle."""
        write_model_dir(
            directory,
            {"name": self.name, **asdict(self.config)},
            {"model": self.model.state_dict(), "normalizer": self.normalizer.state_dict()},
        )

    @classmethod
    def from_pretrained(cls, directory: str | Path):
        """Safetensors and JSON only; a directory with a manifest must match it."""
        d = Path(directory)
        raw, tensors = read_model_dir(d, ("model", "normalizer"), cls.__name__)
        name = raw.pop("name", None)
        if name != cls.name:
            raise ValueError(
                f"{d / CONFIG_FILE} describes policy {name!r}, not {cls.name!r}; "
                "load it with ddn_policy.policies.factory.load_policy"
            )
        normalizer = MinMaxNormalizer.from_state_dict(tensors["normalizer"])
        try:
            policy = cls(cls.config_class(**raw), normalizer)
        except TypeError as err:  # an unknown or missing field
            raise UnsafeFileError(f"{d / CONFIG_FILE} does not fit {cls.__name__}: {err}") from err
        load_weights(policy.model, tensors["model"], d / "model.safetensors")
        return policy.eval()
