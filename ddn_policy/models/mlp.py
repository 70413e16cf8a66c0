"""Residual-MLP blocks for vector samples, and a SingleShotDDN built from them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ddn_policy.core import DiscreteDistributionLayer, SingleShotDDN


class ResidualMLPBlock(nn.Module):
    """h <- h + MLP([LayerNorm(h), x_prev, leak, cond]) for vector samples (B, D).

    Only the trunk h is normalised: a LayerNorm over the concatenation would erase the
    scale of a small condition (at the first stage, where h is zero, LN of [0, ..., c]
    keeps only sign(c)). A missing h (first stage) or leak (no previous layer) reads
    as zeros, so every stage has the same input width and the same code path.
    """

    def __init__(self, width: int, sample_dim: int, leak_dim: int, cond_dim: int, mult: int = 2):
        super().__init__()
        self.width, self.leak_dim = width, leak_dim
        in_dim = width + sample_dim + leak_dim + cond_dim
        self.norm = nn.LayerNorm(width)
        self.net = nn.Sequential(
            nn.Linear(in_dim, mult * width),
            nn.Mish(),
            nn.Linear(mult * width, width),
        )

    def forward(self, h: Tensor | None, x: Tensor, leak: Tensor | None, cond: Tensor | None):
        batch = x.shape[0]
        if h is None:
            h = x.new_zeros(batch, self.width)
        parts = [self.norm(h), x]
        if self.leak_dim:
            parts.append(leak if leak is not None else x.new_zeros(batch, self.leak_dim))
        if cond is not None:
            parts.append(cond.flatten(1))
        return h + self.net(torch.cat(parts, dim=1))


@dataclass
class MLPDDNConfig:
    sample_dim: int  # D, size of one vector sample
    cond_dim: int = 0  # width of the flattened condition (0: unconditional)
    width: int = 128  # feature width of the residual trunk
    num_layers: int = 4  # L, stages (block + DDL)
    k: int = 16  # candidates per layer
    leak: bool = True  # hand the chosen node's leak feature to the next block
    learn_residual: bool = True  # candidates refine the previous choice
    chain_dropout: float = 0.0  # per-batch probability of random choices in training
    chain_dropout_per_sample: float = 0.0  # per-sample probability of the same
    chain_dropout_loss: str = "taken"  # "taken" (reference) or "nearest" (core/layer.py)
    prior: bool = False  # learned selection prior per layer (sampling draws from it)
    head_init: float | None = None  # init range of the DDL heads after the first (see below)

    def __post_init__(self):
        for name in ("sample_dim", "width", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {name}={getattr(self, name)}")
        if self.head_init is not None and self.head_init <= 0:
            raise ValueError(f"head_init must be > 0 or None, got head_init={self.head_init}")
        if self.cond_dim < 0:
            raise ValueError(f"cond_dim must be >= 0, got cond_dim={self.cond_dim}")


def mlp_ddn(cfg: MLPDDNConfig) -> SingleShotDDN:
    """A SingleShotDDN over vectors with one residual-MLP block per DDL."""
    leak_dim = cfg.width // 2 if cfg.leak else 0
    blocks, layers = [], []
    for i in range(cfg.num_layers):
        blocks.append(ResidualMLPBlock(cfg.width, cfg.sample_dim, leak_dim, cfg.cond_dim))
        layers.append(stage_layer(cfg, cfg.width, (cfg.sample_dim,), i))
    return SingleShotDDN(blocks, layers)


def stage_layer(cfg, in_features: int, sample_shape: tuple[int, ...], index: int):
    """The DDL of stage `index`, configured from any model config that carries k, leak,
    prior, chain_dropout, chain_dropout_per_sample, chain_dropout_loss and head_init
    (MLPDDNConfig, ActionDDNConfig). With a condition, a node is trained only where it
    is nearest (or drawn by chain dropout); elsewhere it keeps its initial offset from
    the previous choice, and sampling may draw it. `head_init` keeps those offsets
    small in the refining stages; the first stage places the coarse modes and keeps
    the fan-in default."""
    return DiscreteDistributionLayer(
        in_features,
        sample_shape,
        cfg.k,
        leak=cfg.leak,
        learn_residual=getattr(cfg, "learn_residual", True),
        prior=cfg.prior,
        chain_dropout=cfg.chain_dropout,
        chain_dropout_per_sample=cfg.chain_dropout_per_sample,
        chain_dropout_loss=cfg.chain_dropout_loss,
        init_range=cfg.head_init if index > 0 else None,
    )
