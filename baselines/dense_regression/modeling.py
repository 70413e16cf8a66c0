"""The deterministic dense baseline: the dense DDN's own condition encoder (same sizes)
followed by a convolutional head predicting the target directly with an L2 loss. Its
"hypotheses" are one prediction repeated, so every metric reads it like the others."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ddn_policy.models.dense import ConditionEncoder, DenseDDNConfig, regression_head


class DenseRegression(nn.Module):
    def __init__(self, cfg: DenseDDNConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = ConditionEncoder(cfg)
        self.head = regression_head(cfg)

    def forward(self, cond_image: Tensor) -> Tensor:
        return self.head(self.encoder(cond_image))  # (B, C, H, W)

    def loss(self, target: Tensor, cond_image: Tensor) -> tuple[Tensor, dict]:
        return F.mse_loss(self(cond_image), target), {}

    def sample(self, cond_image: Tensor, n: int, guide=None, generator=None, top_k: int = 2):
        """(B, n, C, H, W): the one prediction, n times."""
        if guide is not None:
            raise ValueError("a deterministic regressor has nothing to steer: pass guide=None")
        return self(cond_image)[:, None].expand(-1, n, -1, -1, -1)
