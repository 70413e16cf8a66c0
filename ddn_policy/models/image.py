"""Image DDNs: the single-shot coarse-to-fine generator and the recurrence form.

Single shot: stages at resolutions 1, 2, 4, ..., image_size, several per resolution,
each a residual conv block followed by its own DDL whose K candidates refine the
previous choice (learning residual). Recurrence: one small U-Net block and one DDL at
full size, applied num_steps times with shared weights (learning residual off, as the
reference's MNIST run). A condition image (low resolution, edge map) is resized into
every block, so each resolution sees it at its own scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddn_policy.core import DiscreteDistributionLayer, RecurrentDDN, SingleShotDDN
from ddn_policy.models.action import preset_fields

FORMS = ("single_shot", "recurrent")


@dataclass
class ImageDDNConfig:
    image_size: int = 32  # H = W of the samples, a power of 2
    channels: int = 1  # C, image channels
    cond_channels: int = 0  # channels of the condition image (0: unconditional)
    form: str = "single_shot"  # "single_shot" (coarse to fine) or "recurrent"
    # single_shot: DDLs at resolutions 1, 2, 4, ..., image_size (one entry each)
    stages: tuple[int, ...] = (1, 1, 2, 2, 2, 2)
    widths: tuple[int, ...] = (64, 64, 64, 48, 32, 16)  # single_shot: channels per resolution
    num_steps: int = 10  # recurrent: L, applications of the shared block and DDL
    unet_width: int = 32  # recurrent: channels at full size (2x at 1/2 and 1/4)
    k: int = 64  # candidates per layer
    leak: bool = True  # hand the chosen node's leak feature to the next block
    chain_dropout: float = 0.05  # per-batch probability of random choices (reference)
    chain_dropout_per_sample: float = 0.0  # per-sample probability of the same
    chain_dropout_loss: str = "taken"  # "taken" (reference) or "nearest" (core/layer.py)
    centroid_loss: float = 0.0  # weight of L2(mean of the K candidates, target) (core/layer.py)
    prior: bool = False  # learned selection prior per layer
    prior_trains_features: bool = False  # the prior's cross-entropy also trains the blocks
    prior_grid: int = 1  # the prior reads features pooled to this many cells per axis
    head_init: float | None = None  # init range of the DDL heads after the first
    groups: int = 8  # GroupNorm groups (capped by each width)

    def __post_init__(self):
        self.stages, self.widths = tuple(self.stages), tuple(self.widths)
        size = self.image_size
        if size < 1 or size & (size - 1):
            raise ValueError(f"image_size must be a power of 2, got image_size={size}")
        for name in ("channels", "num_steps", "unet_width", "groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {name}={getattr(self, name)}")
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got form={self.form!r}")
        levels = size.bit_length()  # resolutions 1, 2, ..., size
        if self.form == "single_shot":
            if len(self.stages) != levels or len(self.widths) != levels:
                raise ValueError(
                    f"stages and widths need one entry per resolution 1..{size} ({levels}), "
                    f"got stages={self.stages} widths={self.widths}"
                )
            if min(self.stages) < 0 or sum(self.stages) < 1 or min(self.widths) < 2:
                raise ValueError(
                    f"stages must be >= 0 with at least one DDL and widths >= 2, got "
                    f"stages={self.stages} widths={self.widths}"
                )
        if self.form == "recurrent" and size < 4:
            raise ValueError(f"the recurrent U-Net halves twice: image_size >= 4, got {size}")

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    @property
    def num_layers(self) -> int:
        return self.num_steps if self.form == "recurrent" else sum(self.stages)


def resize(x: Tensor | None, size: int, mode: str) -> Tensor | None:
    """(B, C, h, w) -> (B, C, size, size); area when shrinking, `mode` when growing."""
    if x is None or x.shape[-1] == size:
        return x
    if x.shape[-1] > size:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=(size, size), mode=mode)


def norm(width: int, groups: int) -> nn.GroupNorm:
    g = min(groups, width)
    while width % g:
        g -= 1
    return nn.GroupNorm(g, width)


class ConvResidual(nn.Module):
    def __init__(self, width: int, groups: int):
        super().__init__()
        self.body = nn.Sequential(
            norm(width, groups),
            nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1),
            norm(width, groups),
            nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1),
        )

    def forward(self, z: Tensor) -> Tensor:
        return z + self.body(z)


class ImageBlock(nn.Module):
    """h <- Res(Conv1x1([up(h), x_prev, leak, cond])) at this stage's resolution.
    Missing inputs (the first stage's h and leak) read as zeros, so every stage of a
    resolution has one code path."""

    def __init__(self, in_width, width, size, channels, leak_channels, cond_channels, groups):
        super().__init__()
        self.in_width, self.size, self.leak_channels = in_width, size, leak_channels
        total = in_width + channels + leak_channels + cond_channels
        self.proj = nn.Conv2d(total, width, 1)
        self.res = ConvResidual(width, groups)

    def forward(self, h, x, leak, cond):
        b, s = x.shape[0], self.size
        h = x.new_zeros(b, self.in_width, s, s) if h is None else resize(h, s, "nearest")
        parts = [h, resize(x, s, "bilinear")]
        if self.leak_channels:
            parts.append(
                x.new_zeros(b, self.leak_channels, s, s)
                if leak is None
                else resize(leak, s, "nearest")
            )
        if cond is not None:
            parts.append(resize(cond, s, "bilinear"))
        return self.res(self.proj(torch.cat(parts, 1)))


class UNetBlock(nn.Module):
    """The recurrence form's block: [h, x_prev, leak, cond] at full size through a
    two-level U-Net (stride-2 down, nearest up, skip connections)."""

    def __init__(self, width, channels, leak_channels, cond_channels, groups):
        super().__init__()
        self.width, self.leak_channels = width, leak_channels
        self.proj = nn.Conv2d(width + channels + leak_channels + cond_channels, width, 3, padding=1)
        self.enc0 = ConvResidual(width, groups)
        self.down1 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.enc1 = ConvResidual(2 * width, groups)
        self.down2 = nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1)
        self.mid = ConvResidual(2 * width, groups)
        self.up2 = nn.Conv2d(4 * width, 2 * width, 3, padding=1)
        self.dec1 = ConvResidual(2 * width, groups)
        self.up1 = nn.Conv2d(3 * width, width, 3, padding=1)
        self.dec0 = ConvResidual(width, groups)

    def forward(self, h, x, leak, cond):
        b, s = x.shape[0], x.shape[-1]
        parts = [x.new_zeros(b, self.width, s, s) if h is None else h, x]
        if self.leak_channels:
            parts.append(x.new_zeros(b, self.leak_channels, s, s) if leak is None else leak)
        if cond is not None:
            parts.append(resize(cond, s, "bilinear"))
        z0 = self.enc0(self.proj(torch.cat(parts, 1)))  # (B, w, s, s)
        z1 = self.enc1(self.down1(z0))  # (B, 2w, s/2, s/2)
        z2 = self.mid(self.down2(z1))  # (B, 2w, s/4, s/4)
        u1 = self.dec1(self.up2(torch.cat([F.interpolate(z2, scale_factor=2.0), z1], 1)))
        return self.dec0(self.up1(torch.cat([F.interpolate(u1, scale_factor=2.0), z0], 1)))


def image_layer(cfg: ImageDDNConfig, width: int, size: int, first: bool, residual=True):
    return DiscreteDistributionLayer(
        width,
        (cfg.channels, size, size),
        cfg.k,
        leak=cfg.leak,
        learn_residual=residual,
        prior=cfg.prior,
        prior_trains_features=cfg.prior_trains_features,
        prior_grid=cfg.prior_grid,
        chain_dropout=cfg.chain_dropout,
        chain_dropout_per_sample=cfg.chain_dropout_per_sample,
        chain_dropout_loss=cfg.chain_dropout_loss,
        centroid_loss=cfg.centroid_loss,
        init_range=None if first else cfg.head_init,
    )


def image_ddn(cfg: ImageDDNConfig) -> SingleShotDDN | RecurrentDDN:
    if cfg.form == "recurrent":
        leak = cfg.unet_width // 2 if cfg.leak else 0
        block = UNetBlock(cfg.unet_width, cfg.channels, leak, cfg.cond_channels, cfg.groups)
        layer = image_layer(cfg, cfg.unet_width, cfg.image_size, True, residual=False)
        return RecurrentDDN(block, layer, cfg.num_steps)
    blocks, layers = [], []
    prev_width, leak = cfg.widths[0], 0
    for level, (count, width) in enumerate(zip(cfg.stages, cfg.widths, strict=True)):
        size = 2**level
        for _ in range(count):
            blocks.append(
                ImageBlock(
                    prev_width, width, size, cfg.channels, leak, cfg.cond_channels, cfg.groups
                )
            )
            layers.append(image_layer(cfg, width, size, first=not layers))
            prev_width, leak = width, (width // 2 if cfg.leak else 0)
    return SingleShotDDN(blocks, layers)


# Size presets for 32x32 digits on a CPU budget; any field can be overridden.
IMAGE_PRESETS: dict[str, dict] = {
    "tiny": {"stages": (1, 1, 2, 2, 2, 2), "widths": (64, 64, 64, 48, 32, 16)},
    "small": {"stages": (1, 2, 3, 3, 3, 3), "widths": (128, 128, 128, 96, 64, 32)},
    # small's widths, more layers where the detail is (144-bit latent instead of 90)
    "base": {"stages": (1, 2, 4, 5, 6, 6), "widths": (128, 128, 128, 96, 64, 32)},
    # Taiji-DDN: binary choices, a long latent (one bit per layer)
    "taiji": {"k": 2, "stages": (2, 4, 6, 10, 10, 8), "widths": (64, 64, 64, 48, 32, 16)},
    # the reference's MNIST recurrence (one U-Net, one K=64 DDL, 10 steps), U-Net narrowed for CPU
    "recurrent": {"form": "recurrent", "num_steps": 10, "unet_width": 16},
}


def image_preset(name: str, **overrides) -> ImageDDNConfig:
    return ImageDDNConfig(**{**preset_fields(IMAGE_PRESETS, name), **overrides})
