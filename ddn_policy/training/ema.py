"""Exponential moving average of the weights, with Diffusion Policy's warm-up schedule.

torch's AveragedModel holds the copy; only the decay rule is ours. Buffers are not
averaged (use_buffers=False): balance statistics are counts, not weights.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel


def ema_decay(step: int, power: float = 0.75, max_decay: float = 0.9999) -> float:
    """1 - (1 + step)^-power, capped: 0 at the first update (a plain copy), then rising."""
    return min(max_decay, max(0.0, 1.0 - (1.0 + step) ** -power))


class EMA:
    """`ema.update(model)` after each optimizer step; `ema.module` is the averaged copy
    (pass it to SplitAndPrune(mirrors=[ema.module]) so splits reach it too)."""

    def __init__(self, model: nn.Module, power: float = 0.75, max_decay: float = 0.9999):
        if not 0.0 <= max_decay < 1.0:
            raise ValueError(f"max_decay must be in [0, 1), got max_decay={max_decay}")

        def average(avg: Tensor, new: Tensor, num_averaged: Tensor | int) -> Tensor:
            decay = ema_decay(int(num_averaged), power, max_decay)
            return decay * avg + (1.0 - decay) * new

        self.averaged = AveragedModel(model, avg_fn=average, use_buffers=False)

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    def update(self, model: nn.Module) -> None:
        self.averaged.update_parameters(model)

    @torch.no_grad()
    def copy_buffers_from(self, model: nn.Module) -> None:
        """Bring the copy's buffers (balance statistics) up to the live model's."""
        for mine, live in zip(self.module.buffers(), model.buffers(), strict=True):
            mine.copy_(live)
