"""Diffusion Policy's conditional temporal 1-D U-Net (Chi et al., 2023), the CNN variant.

The denoiser reads a noisy chunk (B, Tp, Da), the diffusion step and the flattened
observation history, and predicts the noise. Conditioning is FiLM in every residual
block on [step embedding, observations] ("global conditioning" in the paper). Down
path: two residual blocks per level, stride-2 conv between levels; up path mirrors it
with skip connections; the last level does not change the length, so Tp=16 with three
levels runs at 16 -> 8 -> 4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ddn_policy.models.action import preset_fields

# down_dims per preset, chosen so each has the parameter count of the DDN preset of the
# same name within 20% (tests/test_baselines.py checks this on the benchmark's tasks)
UNET_PRESETS = {
    "tiny": dict(down_dims=(16, 24), step_embed_dim=8),
    "small": dict(down_dims=(40, 80, 160), step_embed_dim=128),
    "base": dict(down_dims=(128, 256, 512), step_embed_dim=128),
}


@dataclass
class UNetConfig:
    obs_dim: int  # Do, state observation size
    action_dim: int  # Da, action size (the U-Net's input channels)
    obs_horizon: int = 2  # To, observations conditioning a chunk
    pred_horizon: int = 16  # Tp, actions per chunk (must be divisible by 2^(levels-1))
    down_dims: tuple[int, ...] = (40, 80, 160)  # channels per U-Net level
    step_embed_dim: int = 128  # sinusoidal diffusion-step embedding width
    kernel_size: int = 5  # temporal kernel of every conv
    groups: int = 8  # GroupNorm groups

    def __post_init__(self):
        self.down_dims = tuple(self.down_dims)
        for name in ("obs_dim", "action_dim", "obs_horizon", "pred_horizon", "step_embed_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {name}={getattr(self, name)}")
        if not self.down_dims or any(d % self.groups for d in self.down_dims):
            raise ValueError(
                f"down_dims={self.down_dims} must be non-empty and divisible by "
                f"groups={self.groups}"
            )
        stride = 2 ** (len(self.down_dims) - 1)
        if self.pred_horizon % stride:
            raise ValueError(
                f"pred_horizon={self.pred_horizon} must be divisible by {stride} for "
                f"{len(self.down_dims)} U-Net levels; use fewer down_dims or another Tp"
            )
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        if self.step_embed_dim % 2:
            raise ValueError(f"step_embed_dim must be even, got {self.step_embed_dim}")


def unet_preset(name: str, **fields) -> UNetConfig:
    return UNetConfig(**{**preset_fields(UNET_PRESETS, name), **fields})


def sinusoidal_embedding(steps: Tensor, dim: int) -> Tensor:
    """(B,) integer steps -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=steps.device) / (half - 1))
    angles = steps.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ConvNormMish(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel_size: int, groups: int):
        super().__init__(
            nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(groups, c_out),
            nn.Mish(),
        )


class FiLMResidualBlock(nn.Module):
    """x (B, C_in, T) -> (B, C_out, T); the condition sets a per-channel scale and shift
    between the two convs."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel_size: int, groups: int):
        super().__init__()
        self.conv1 = ConvNormMish(c_in, c_out, kernel_size, groups)
        self.conv2 = ConvNormMish(c_out, c_out, kernel_size, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        scale, shift = self.film(cond).unsqueeze(-1).chunk(2, dim=1)  # 2 x (B, C_out, 1)
        y = self.conv1(x) * scale + shift
        return self.conv2(y) + self.skip(x)


class ConditionalUnet1D(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        e = cfg.step_embed_dim
        self.step_encoder = nn.Sequential(nn.Linear(e, 4 * e), nn.Mish(), nn.Linear(4 * e, e))
        cond_dim = e + cfg.obs_horizon * cfg.obs_dim
        k, g = cfg.kernel_size, cfg.groups

        def block(c_in, c_out):
            return FiLMResidualBlock(c_in, c_out, cond_dim, k, g)

        dims = (cfg.action_dim, *cfg.down_dims)
        levels = list(zip(dims[:-1], dims[1:], strict=True))
        self.down = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(levels):
            last = i == len(levels) - 1
            resample = nn.Identity() if last else nn.Conv1d(c_out, c_out, 3, stride=2, padding=1)
            self.down.append(nn.ModuleList([block(c_in, c_out), block(c_out, c_out), resample]))
        mid = cfg.down_dims[-1]
        self.mid = nn.ModuleList([block(mid, mid), block(mid, mid)])
        self.up = nn.ModuleList()
        for c_in, c_out in reversed(levels[1:]):
            upsample = nn.ConvTranspose1d(c_in, c_in, 4, stride=2, padding=1)
            self.up.append(nn.ModuleList([block(2 * c_out, c_in), block(c_in, c_in), upsample]))
        start = cfg.down_dims[0]
        self.final = nn.Sequential(ConvNormMish(start, start, k, g), nn.Conv1d(start, dims[0], 1))

    def forward(self, noisy: Tensor, steps: Tensor, obs: Tensor) -> Tensor:
        """noisy (B, Tp, Da), steps (B,) ints, obs (B, To, Do) normalised -> (B, Tp, Da)."""
        step = self.step_encoder(sinusoidal_embedding(steps, self.cfg.step_embed_dim))
        cond = torch.cat([step, obs.flatten(1)], dim=-1)  # (B, E + To*Do)
        x = noisy.transpose(1, 2)  # (B, Da, Tp)
        skips = []
        for first, second, downsample in self.down:
            x = second(first(x, cond), cond)
            skips.append(x)
            x = downsample(x)
        for blk in self.mid:
            x = blk(x, cond)
        for first, second, upsample in self.up:
            x = torch.cat([x, skips.pop()], dim=1)  # (B, 2C, T)
            x = upsample(second(first(x, cond), cond))
        return self.final(x).transpose(1, 2)  # (B, Tp, Da)
