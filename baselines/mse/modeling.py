"""RegressionPolicy: the DDN's observation encoder and blocks (models/action.py) with
one output head instead of a DDL per block; L2 loss on the chunk. It has no sample to
refine and no leak, so its blocks read only the trunk and the condition. It averages
the modes of a multimodal demonstrator, which is what the benchmark shows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddn_policy.models.action import (
    TRUNK_PRESETS,
    TrunkConfig,
    observation_encoder,
    preset_fields,
    trunk_block,
)
from ddn_policy.policies.base import ChunkPolicy, check_action_horizon


def trunk_preset(name: str, **fields) -> TrunkConfig:
    """The DDN preset's trunk, without its DDLs."""
    return TrunkConfig(**{**preset_fields(TRUNK_PRESETS, name), **fields})


class ChunkRegressor(nn.Module):
    """obs (B, To, Do) normalised -> chunk (B, Tp, Da) normalised."""

    def __init__(self, cfg: TrunkConfig):
        super().__init__()
        self.cfg = cfg
        self.obs_encoder = observation_encoder(cfg)
        self.blocks = nn.ModuleList(
            trunk_block(cfg, sample_channels=0, leak_dim=0) for _ in range(cfg.num_layers)
        )
        if cfg.trunk == "conv":
            self.head = nn.Conv1d(cfg.width, cfg.action_dim, 1)
        else:
            self.head = nn.Conv1d(cfg.width, cfg.pred_horizon * cfg.action_dim, 1)

    def forward(self, obs: Tensor) -> Tensor:
        cond = self.obs_encoder(obs.flatten(1))  # (B, cond_dim)
        steps = self.cfg.pred_horizon if self.cfg.trunk == "conv" else 1
        empty = cond.new_zeros(len(cond), 0, steps)  # no previous sample: (B, 0, T)
        h = None
        for block in self.blocks:
            h = block(h, empty, None, cond)  # (B, W, T)
        out = self.head(h)  # conv: (B, Da, Tp); mlp: (B, Tp*Da, 1)
        if self.cfg.trunk == "conv":
            return out.transpose(1, 2)
        return out.squeeze(-1).unflatten(-1, (self.cfg.pred_horizon, self.cfg.action_dim))


@dataclass
class RegressionPolicyConfig:
    model: TrunkConfig  # the trunk (same fields and presets as the DDN's)
    action_horizon: int = 8  # Ta, actions executed per chunk
    task: str | None = None  # the task it was trained on (ddn-eval's default)

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = TrunkConfig(**self.model)
        check_action_horizon(self.action_horizon, self.model)


class RegressionPolicy(ChunkPolicy):
    name = "mse"
    config_class = RegressionPolicyConfig
    model_preset = staticmethod(trunk_preset)

    def build_model(self, model_cfg: TrunkConfig) -> ChunkRegressor:
        return ChunkRegressor(model_cfg)

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        obs = self.normalizer.normalize("obs", batch["obs"])
        action = self.normalizer.normalize("action", batch["action"])
        return F.mse_loss(self.model(obs), action), {}

    @torch.no_grad()
    def predict_chunks(self, obs, n=1, guide=None, best_of=None, generator=None):
        """The one prediction, repeated n times (a regressor has no hypotheses; its
        uncertainty is 0 and a guide has nothing to choose from)."""
        obs = self.check_obs(obs)
        chunk = self.normalizer.unnormalize("action", self.model(self.normalize_obs(obs)))
        chunks = chunk[:, None].expand(-1, n, -1, -1)  # (B, n, Tp, Da)
        return chunks, {"uncertainty": self.spread(chunks)}
