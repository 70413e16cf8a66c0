"""An image DDN ready for the shared Trainer: its condition, loss, latents and files.

`compute_loss({"image": (B, 1, 32, 32)})` derives the condition from the image itself
(a low-resolution copy or an edge map), so the data needs no second array and the
condition a model saw in training is the one `condition()` gives at sampling time.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddn_policy.models.image import ImageDDNConfig, image_ddn
from ddn_policy.utils.io import UnsafeFileError, load_weights, read_model_dir, write_model_dir
from tasks.images import check_images

CONDITIONS = ("none", "lowres", "edges")
LOWRES = 8  # side of the low-resolution condition


@dataclass
class ImageGeneratorConfig:
    model: ImageDDNConfig = field(default_factory=ImageDDNConfig)  # the DDN's sizes
    condition: str = "none"  # "none", "lowres" (8x8 area average) or "edges" (Sobel map)

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = ImageDDNConfig(**self.model)
        if self.condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {CONDITIONS}, got {self.condition!r}")
        wanted = 0 if self.condition == "none" else 1
        if self.model.cond_channels != wanted:
            raise ValueError(
                f"condition={self.condition!r} needs model.cond_channels={wanted}, "
                f"got {self.model.cond_channels}"
            )


def lowres(images: Tensor) -> Tensor:
    """(B, 1, 32, 32) -> (B, 1, 8, 8) area average: what super-resolution starts from."""
    return F.adaptive_avg_pool2d(images, LOWRES)


def edges(images: Tensor) -> Tensor:
    """(B, 1, 32, 32) -> (B, 1, 32, 32) in {-1, 1}: Sobel magnitude above a quarter of
    its per-image maximum."""
    kx = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]], device=images.device)
    kernels = torch.stack([kx, kx.T])[:, None]  # (2, 1, 3, 3)
    grad = F.conv2d(images, kernels, padding=1)  # (B, 2, H, W)
    mag = grad.norm(dim=1, keepdim=True)
    peak = mag.flatten(1).amax(1).clamp_min(1e-6)[:, None, None, None]
    return torch.where(mag > 0.25 * peak, 1.0, -1.0)


class ImageGenerator(nn.Module):
    def __init__(self, config: ImageGeneratorConfig):
        super().__init__()
        self.config = config
        self.model = image_ddn(config.model)

    @property
    def conditional(self) -> bool:
        return self.config.condition != "none"

    def condition(self, images: Tensor) -> Tensor | None:
        if self.config.condition == "lowres":
            return lowres(images)
        if self.config.condition == "edges":
            return edges(images)
        return None

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        images = batch["image"]
        loss, info = self.model.loss(images, self.condition(images))
        return loss, {k: v for k, v in info.items() if k in ("layer_losses", "prior_loss")}

    @torch.no_grad()
    def sample(self, n: int, cond: Tensor | None = None, guide=None, generator=None, top_k=2):
        """(n, 1, 32, 32) unconditional, or (B, n, 1, 32, 32) for B condition images."""
        if self.conditional and cond is None:
            raise ValueError(f"this generator is conditioned on {self.config.condition}: pass cond")
        return self.model.sample(n, cond, guide=guide, generator=generator, top_k=top_k)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """The discrete latent: (B, L) ints, the nearest node at every layer."""
        images = check_images(images)
        return self.model.encode(images, self.condition(images))

    @torch.no_grad()
    def decode(self, codes: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.model.decode(codes, cond)

    @torch.no_grad()
    def reconstruct(self, images: Tensor) -> Tensor:
        images = check_images(images)
        return self.model.reconstruct(images, self.condition(images))

    # ------------------------------------------------------------------ files
    def save_pretrained(self, directory: str | Path) -> None:
        write_model_dir(
            directory,
            {"name": "image_ddn", **asdict(self.config)},
            {"model": self.model.state_dict()},
        )

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> ImageGenerator:
        raw, tensors = read_model_dir(directory, ("model",), cls.__name__)
        if raw.pop("name", None) != "image_ddn":
            raise UnsafeFileError(f"{directory}/config.json does not describe an image DDN")
        try:
            generator = cls(ImageGeneratorConfig(**raw))
        except TypeError as err:
            raise UnsafeFileError(f"{directory}/config.json does not fit: {err}") from err
        load_weights(generator.model, tensors["model"], Path(directory) / "model.safetensors")
        return generator.eval()


def bits_per_image(model) -> float:
    """Length of the discrete latent in bits: sum over layers of log2 K."""
    return sum(math.log2(layer.k) for _, layer in model.stages())
