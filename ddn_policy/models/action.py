"""Action-chunk DDN: the DDN machine where Diffusion Policy puts its denoiser.

Input: the normalised observation history (B, To, Do). Output: chunks (B, Tp, Da).
Inside, samples are channel-first (Da, Tp) so a DDL's head is a pointwise conv over
time; every block sees the previous choice and leak and is FiLM-conditioned on the
encoded observations. Two trunks: temporal 1-D conv residual blocks (GroupNorm, Mish)
and residual MLP blocks over the flattened chunk (cheaper for very short chunks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddn_policy.core import SingleShotDDN
from ddn_policy.models.mlp import ResidualMLPBlock, stage_layer

TRUNKS = ("conv", "mlp")


@dataclass
class TrunkConfig:
    """The observation encoder and block stack shared by the DDN and the regression
    baseline (baselines/mse), so the two differ only in what follows each block."""

    obs_dim: int  # Do, state observation size
    action_dim: int  # Da, action size
    obs_horizon: int = 2  # To, observations conditioning a chunk
    pred_horizon: int = 16  # Tp, actions per chunk
    trunk: str = "conv"  # "conv" (temporal conv + FiLM) or "mlp" (flattened chunk)
    width: int = 128  # trunk channels (conv) or features (mlp)
    num_layers: int = 6  # L, residual blocks
    cond_dim: int = 128  # width of the observation encoding fed to FiLM / the MLP
    kernel_size: int = 5  # temporal kernel of the conv trunk
    groups: int = 8  # GroupNorm groups of the conv trunk

    def __post_init__(self):
        for name in (
            "obs_dim",
            "action_dim",
            "obs_horizon",
            "pred_horizon",
            "width",
            "num_layers",
            "cond_dim",
            "kernel_size",
            "groups",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {name}={getattr(self, name)}")
        if self.trunk not in TRUNKS:
            raise ValueError(f"trunk must be one of {TRUNKS}, got trunk={self.trunk!r}")
        if self.trunk == "conv" and self.width % self.groups:
            raise ValueError(
                f"width={self.width} must be divisible by groups={self.groups} (GroupNorm)"
            )
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd to keep Tp, got {self.kernel_size}")


@dataclass
class ActionDDNConfig(TrunkConfig):
    k: int = 32  # candidates per DDL (one DDL after each of the num_layers blocks)
    leak: bool = True  # hand the chosen node's leak feature to the next block
    prior: bool = True  # learned selection prior per DDL (see core/layer.py)
    prior_weight: float = 0.1  # weight of the prior's cross-entropy beside the L2 loss
    chain_dropout: float = 0.0  # per-batch probability of random choices in training
    chain_dropout_per_sample: float = 0.05  # per-sample probability of the same
    chain_dropout_loss: str = "taken"  # "taken" (reference) or "nearest" (core/layer.py)
    head_init: float | None = 0.01  # init range of the refining DDL heads (models/mlp.py)

    def __post_init__(self):
        super().__post_init__()
        if self.k < 2:
            raise ValueError(f"k must be >= 2, got k={self.k}")
        if self.head_init is not None and self.head_init <= 0:
            raise ValueError(f"head_init must be > 0 or None, got head_init={self.head_init}")
        if self.prior_weight < 0:
            raise ValueError(f"prior_weight must be >= 0, got {self.prior_weight}")


# Trunk sizes by preset name; the DDN adds its K. Baselines of the same name use the same
# trunk (regression) or are sized to the same parameter count (Diffusion Policy).
TRUNK_PRESETS = {
    "tiny": dict(width=32, num_layers=3, cond_dim=32),
    "small": dict(width=128, num_layers=6, cond_dim=128),
    "base": dict(width=256, num_layers=8, cond_dim=256),
}
DDN_K = {"tiny": 8, "small": 32, "base": 64}


def preset_fields(presets: dict[str, dict], name: str) -> dict:
    """The sizes of preset `name`, or an error listing the known names."""
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(presets)}")
    return presets[name]


def preset(name: str, **fields) -> ActionDDNConfig:
    """Size presets: tiny (CI), small (CPU default), base (Diffusion-Policy-like width)."""
    sizes = preset_fields(TRUNK_PRESETS, name)
    return ActionDDNConfig(**{**sizes, "k": DDN_K[name], **fields})


class ConvFiLMBlock(nn.Module):
    """h <- h + Mish(GN(Conv(FiLM(Mish(GN(Conv([h, x_prev, leak]))))))), over (B, C, Tp)."""

    def __init__(self, width, sample_channels, leak_dim, cond_dim, kernel_size, groups):
        super().__init__()
        self.width, self.leak_dim = width, leak_dim
        pad = kernel_size // 2
        self.inp = nn.Conv1d(width + sample_channels + leak_dim, width, kernel_size, padding=pad)
        self.norm1 = nn.GroupNorm(groups, width)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * width))
        self.out = nn.Conv1d(width, width, kernel_size, padding=pad)
        self.norm2 = nn.GroupNorm(groups, width)

    def forward(self, h: Tensor | None, x: Tensor, leak: Tensor | None, cond: Tensor) -> Tensor:
        batch, _, steps = x.shape
        if h is None:
            h = x.new_zeros(batch, self.width, steps)
        if leak is None and self.leak_dim:
            leak = x.new_zeros(batch, self.leak_dim, steps)
        z = torch.cat([h, x] + ([leak] if self.leak_dim else []), dim=1)  # (B, C_in, Tp)
        y = F.mish(self.norm1(self.inp(z)))
        scale, shift = self.film(cond).unsqueeze(-1).chunk(2, dim=1)  # 2 x (B, W, 1)
        y = y * (1 + scale) + shift
        return h + F.mish(self.norm2(self.out(y)))


class FlatMLPBlock(ResidualMLPBlock):
    """ResidualMLPBlock on the flattened chunk, with features shaped (B, W, 1) so its DDL
    sees a one-step 'sequence' holding the whole chunk."""

    def forward(self, h, x, leak, cond):
        h = h.squeeze(-1) if h is not None else None
        leak = leak.flatten(1) if leak is not None else None
        return super().forward(h, x.flatten(1), leak, cond).unsqueeze(-1)  # (B, W, 1)


def observation_encoder(cfg: TrunkConfig) -> nn.Module:
    """(B, To*Do) -> (B, cond_dim)."""
    return nn.Sequential(
        nn.Linear(cfg.obs_horizon * cfg.obs_dim, cfg.cond_dim),
        nn.Mish(),
        nn.Linear(cfg.cond_dim, cfg.cond_dim),
    )


def trunk_block(cfg: TrunkConfig, sample_channels: int, leak_dim: int) -> nn.Module:
    """One block reading (h, previous sample, leak, condition); a regressor has no
    previous sample or leak and passes sample_channels = leak_dim = 0."""
    if cfg.trunk == "conv":
        return ConvFiLMBlock(
            cfg.width, sample_channels, leak_dim, cfg.cond_dim, cfg.kernel_size, cfg.groups
        )
    return FlatMLPBlock(cfg.width, sample_channels, leak_dim, cfg.cond_dim)


class ActionDDN(nn.Module):
    """obs (B, To, Do) normalised -> condition; chunks (B, Tp, Da) normalised."""

    def __init__(self, cfg: ActionDDNConfig):
        super().__init__()
        self.cfg = cfg
        self.obs_encoder = observation_encoder(cfg)
        leak_dim = cfg.width // 2 if cfg.leak else 0
        if cfg.trunk == "conv":
            shape = (cfg.action_dim, cfg.pred_horizon)
        else:
            shape = (cfg.pred_horizon * cfg.action_dim, 1)
        blocks, layers = [], []
        for i in range(cfg.num_layers):  # interleaved: the init order fixes the weights
            blocks.append(trunk_block(cfg, shape[0], leak_dim))
            layers.append(stage_layer(cfg, cfg.width, shape, i))
        self.ddn = SingleShotDDN(blocks, layers)
        self.ddn.prior_weight = cfg.prior_weight

    def to_sample(self, chunks: Tensor) -> Tensor:
        """(B, Tp, Da) -> the DDN's channel-first sample."""
        if self.cfg.trunk == "conv":
            return chunks.transpose(1, 2)  # (B, Da, Tp)
        return chunks.flatten(1).unsqueeze(-1)  # (B, Tp*Da, 1)

    def from_sample(self, x: Tensor) -> Tensor:
        """The DDN's sample (..., C, T) -> chunks (..., Tp, Da)."""
        if self.cfg.trunk == "conv":
            return x.transpose(-1, -2)
        return x.squeeze(-1).unflatten(-1, (self.cfg.pred_horizon, self.cfg.action_dim))

    def encode_obs(self, obs: Tensor) -> Tensor:
        return self.obs_encoder(obs.flatten(1))  # (B, To*Do) -> (B, cond_dim)

    def loss(self, obs: Tensor, chunks: Tensor) -> tuple[Tensor, dict]:
        return self.ddn.loss(self.to_sample(chunks), self.encode_obs(obs))
