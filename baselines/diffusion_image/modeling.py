"""The diffusion baseline for digits: diffusers' `UNet2DModel` trained with
`DDPMScheduler` (1000 steps, linear betas, epsilon prediction) on the same images as
the DDN, sampled with `DDIMScheduler` (10 or 50 steps), all used as they are. The
default size (about 0.9M parameters) matches the DDN `tiny` preset within 10%."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from torch import Tensor, nn

from ddn_policy.utils.io import UnsafeFileError, load_weights, read_model_dir, write_model_dir


@dataclass
class DiffusionImageConfig:
    block_out_channels: tuple[int, ...] = (32, 48, 64)  # U-Net widths at 32, 16, 8 px
    layers_per_block: int = 1  # ResNet blocks per level
    norm_num_groups: int = 8  # GroupNorm groups
    num_train_timesteps: int = 1000  # DDPM training steps
    beta_schedule: str = "linear"  # diffusers beta schedule
    inference_steps: int = 50  # DDIM steps when sampling

    def __post_init__(self):
        self.block_out_channels = tuple(self.block_out_channels)
        if not 1 <= self.inference_steps <= self.num_train_timesteps:
            raise ValueError(
                f"need 1 <= inference_steps <= {self.num_train_timesteps}, "
                f"got inference_steps={self.inference_steps}"
            )


class DiffusionImageModel(nn.Module):
    def __init__(self, config: DiffusionImageConfig):
        super().__init__()
        self.config = config
        levels = len(config.block_out_channels)
        self.model = UNet2DModel(
            sample_size=32,
            in_channels=1,
            out_channels=1,
            block_out_channels=config.block_out_channels,
            layers_per_block=config.layers_per_block,
            down_block_types=("DownBlock2D",) * levels,
            up_block_types=("UpBlock2D",) * levels,
            norm_num_groups=config.norm_num_groups,
        )
        self.train_scheduler = DDPMScheduler(
            num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule
        )

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        images = batch["image"]
        noise = torch.randn_like(images)
        steps = torch.randint(
            0, self.config.num_train_timesteps, (len(images),), device=images.device
        )
        noisy = self.train_scheduler.add_noise(images, noise, steps)
        return F.mse_loss(self.model(noisy, steps).sample, noise), {}

    @torch.no_grad()
    def sample(self, n: int, steps: int | None = None, generator=None, batch: int = 250) -> Tensor:
        """(n, 1, 32, 32) by DDIM with `steps` denoiser evaluations (default: config)."""
        out = []
        for start in range(0, n, batch):
            scheduler = DDIMScheduler.from_config(self.train_scheduler.config)
            scheduler.set_timesteps(steps or self.config.inference_steps)
            x = torch.randn(min(batch, n - start), 1, 32, 32, generator=generator)
            for t in scheduler.timesteps:
                x = scheduler.step(self.model(x, t).sample, t, x).prev_sample
            out.append(x.clamp(-1, 1))
        return torch.cat(out)

    def save_pretrained(self, directory: str | Path) -> None:
        config = {"name": "diffusion_image", **asdict(self.config)}
        write_model_dir(directory, config, {"model": self.model.state_dict()})

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> DiffusionImageModel:
        raw, tensors = read_model_dir(directory, ("model",), cls.__name__)
        if raw.pop("name", None) != "diffusion_image":
            raise UnsafeFileError(f"{directory}/config.json does not describe this baseline")
        model = cls(DiffusionImageConfig(**raw))
        load_weights(model.model, tensors["model"], Path(directory) / "model.safetensors")
        return model.eval()
