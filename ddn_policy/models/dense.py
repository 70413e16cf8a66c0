"""Conditional dense DDN: an encoder of the condition image feeding a coarse-to-fine DDL
decoder (the image DDN of models/image.py with the encoder's features as its condition).

The encoder is a small U-Net that returns full-resolution features; every decoder block
area-pools them to its own resolution, so a 1x1 stage sees a global summary of the image
and a 64x64 stage sees local detail. K hypotheses are one batched walk: the encoder runs
once per image and its features are repeated, not recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor, nn

from ddn_policy.core.select import Selector
from ddn_policy.models.action import preset_fields
from ddn_policy.models.image import (
    ConvResidual,
    ImageDDNConfig,
    UNetBlock,
    image_ddn,
    norm,
    resize,
)


@dataclass
class DenseDDNConfig:
    cond_channels: int = 3  # channels of the condition image (RGB 3, an RGB pair 6, gray 1)
    encoder_width: int = 32  # encoder channels at full size (2x at 1/2 and 1/4)
    features: int = 16  # encoder output channels handed to every decoder block
    ddn: ImageDDNConfig = field(default_factory=ImageDDNConfig)  # the DDL decoder
    # a regression head on the features predicts the mean (L2, as the regression
    # baseline) and the decoder models the residual around it (CorrDiff's split): the
    # hypotheses spread around a point the network can name, not one drawn at random
    mean_head: bool = False

    def __post_init__(self):
        if isinstance(self.ddn, dict):
            self.ddn = ImageDDNConfig(**self.ddn)
        for name in ("cond_channels", "encoder_width", "features"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {name}={getattr(self, name)}")
        if self.ddn.cond_channels != self.features:
            raise ValueError(
                f"the decoder reads the encoder's features: ddn.cond_channels must equal "
                f"features={self.features}, got ddn.cond_channels={self.ddn.cond_channels}"
            )
        if self.ddn.image_size < 4:
            raise ValueError(
                f"the encoder halves twice: ddn.image_size >= 4, got {self.ddn.image_size}"
            )


class ConditionEncoder(nn.Module):
    """(B, C_in, H, W) -> (B, features, H, W): the recurrent image DDN's two-level U-Net
    block reading the condition image alone, then a 1x1 projection."""

    def __init__(self, cfg: DenseDDNConfig):
        super().__init__()
        w, g = cfg.encoder_width, cfg.ddn.groups
        self.unet = UNetBlock(w, cfg.cond_channels, 0, 0, g)
        self.out = nn.Sequential(norm(w, g), nn.SiLU(), nn.Conv2d(w, cfg.features, 1))

    def forward(self, image: Tensor) -> Tensor:
        return self.out(self.unet(None, image, None, None))  # (B, features, H, W)


def regression_head(cfg: DenseDDNConfig) -> nn.Module:
    """(B, features, H, W) -> (B, C, H, W): the regression baseline's head."""
    width = cfg.encoder_width
    return nn.Sequential(
        nn.Conv2d(cfg.features, width, 3, padding=1),
        ConvResidual(width, cfg.ddn.groups),
        nn.Conv2d(width, cfg.ddn.channels, 1),
    )


class DenseDDN(nn.Module):
    def __init__(self, cfg: DenseDDNConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = ConditionEncoder(cfg)
        self.mean = regression_head(cfg) if cfg.mean_head else None
        self.ddn = image_ddn(cfg.ddn)

    def encode(self, cond_image: Tensor) -> tuple[Tensor, Tensor | None]:
        """(features (B, F, H, W), the mean head's estimate (B, C, H, W) or None)."""
        features = self.encoder(cond_image)
        return features, None if self.mean is None else self.mean(features)

    def decoder_terms(self, cond_image: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """(goal, features): what the decoder is trained toward (the target, or its
        residual around the mean head's estimate) and its condition. A decoder walk
        toward `goal` gives x; x + target - goal is that walk in the target's terms."""
        features, mean = self.encode(cond_image)
        return (target if mean is None else target - mean), features

    def loss(self, target: Tensor, cond_image: Tensor) -> tuple[Tensor, dict]:
        """target (B, C, H, W) normalized, cond_image (B, C_in, H, W)."""
        features, mean = self.encode(cond_image)
        if mean is None:
            return self.ddn.loss(target, features)
        # the residual is taken around a detached mean so that the decoder's loss on its
        # chosen candidate never pulls the mean away from the L2 estimate
        loss, info = self.ddn.loss(target - mean.detach(), features)
        mean_loss = F.mse_loss(mean, target)
        return loss + mean_loss, {**info, "mean_loss": mean_loss.detach()}

    def sample(self, cond_image: Tensor, n: int, guide=None, generator=None, top_k: int = 2):
        """(B, n, C, H, W): n hypotheses per image as one walk of B*n rows."""
        features, mean = self.encode(cond_image)  # mean (B, C, H, W) or None
        if mean is None:
            return self.ddn.sample(n, features, guide, generator, top_k)
        if guide is not None and not isinstance(guide, Selector):
            guide = shifted_scorer(guide, mean.repeat_interleave(n, 0))  # rows (B*n, C, H, W)
        return self.ddn.sample(n, features, guide, generator, top_k) + mean[:, None]


def shifted_scorer(score, offset: Tensor):
    """A scorer of target-space candidates as a scorer of residual candidates: every
    layer's (B, K, C, h, w) candidates get the offset, area-pooled to h x w, added."""

    def scorer(candidates: Tensor, ctx) -> Tensor:
        return score(candidates + resize(offset, candidates.shape[-1], "area")[:, None], ctx)

    return scorer


# A conditional head samples from a learned selection prior, with per-sample chain
# dropout and small refining heads: the DDN policy's defaults (ddn-bench suite=sampling);
# uniform sampling picks candidates that no condition trained.
CONDITIONAL = {"prior": True, "chain_dropout": 0.0, "chain_dropout_per_sample": 0.05,
               "head_init": 0.01}  # fmt: skip

# Sizes for 64x64 scenes on a CPU budget; any field can be overridden.
DENSE_PRESETS: dict[str, dict] = {
    "tiny": {
        "encoder_width": 16,
        "features": 8,
        "ddn": {"stages": (1, 1, 1, 1, 1, 1, 1), "widths": (32, 32, 32, 32, 24, 16, 8), "k": 8},
    },
    "small": {
        "encoder_width": 32,
        "features": 16,
        "ddn": {"stages": (1, 1, 2, 2, 2, 2, 1), "widths": (64, 64, 64, 48, 32, 24, 16), "k": 16},
    },
}


def dense_preset(name: str, image_size: int = 64, channels: int = 1, **fields) -> DenseDDNConfig:
    """A preset's sizes for `channels` target channels at `image_size`, then `fields`."""
    sizes = preset_fields(DENSE_PRESETS, name)
    levels = image_size.bit_length()  # resolutions 1..image_size; presets list 1..64
    ddn = {
        **CONDITIONAL,
        **sizes["ddn"],
        "stages": sizes["ddn"]["stages"][:levels],
        "widths": sizes["ddn"]["widths"][:levels],
        "image_size": image_size,
        "channels": channels,
        "cond_channels": fields.get("features", sizes["features"]),
        **fields.pop("ddn", {}),
    }
    return DenseDDNConfig(**{**sizes, **fields, "ddn": ddn})
