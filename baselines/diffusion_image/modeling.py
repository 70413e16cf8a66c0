"""The diffusion baseline for digits: diffusers' `UNet2DModel` trained with
`DDPMScheduler` (1000 steps, linear betas, epsilon prediction) on the same images as
the DDN, sampled with `DDIMScheduler` (10 or 50 steps), all used as they are. The
default size (about 0.9M parameters) matches the DDN `tiny` preset within 10%.

With cond_channels > 0 it is the conditional dense baseline: the condition image is
concatenated to the noisy sample at every denoiser call (as Marigold does), and
`sample(n, cond=...)` draws n samples per condition row."""

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
    image_size: int = 32  # H = W of the samples
    channels: int = 1  # C, channels of the samples
    cond_channels: int = 0  # channels of a condition image concatenated to the input

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
            sample_size=config.image_size,
            in_channels=config.channels + config.cond_channels,
            out_channels=config.channels,
            block_out_channels=config.block_out_channels,
            layers_per_block=config.layers_per_block,
            down_block_types=("DownBlock2D",) * levels,
            up_block_types=("UpBlock2D",) * levels,
            norm_num_groups=config.norm_num_groups,
        )
        self.train_scheduler = DDPMScheduler(
            num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule
        )

    def _denoise(self, x: Tensor, t, cond: Tensor | None) -> Tensor:
        return self.model(x if cond is None else torch.cat([x, cond], 1), t).sample

    def loss(self, target: Tensor, cond: Tensor | None = None) -> tuple[Tensor, dict]:
        """Epsilon-prediction loss of target (B, C, H, W) given cond (B, C_cond, H, W)."""
        noise = torch.randn_like(target)
        steps = torch.randint(
            0, self.config.num_train_timesteps, (len(target),), device=target.device
        )
        noisy = self.train_scheduler.add_noise(target, noise, steps)
        return F.mse_loss(self._denoise(noisy, steps, cond), noise), {}

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        return self.loss(batch["image"])

    @torch.no_grad()
    def sample(
        self,
        n: int,
        steps: int | None = None,
        generator=None,
        batch: int = 250,
        cond: Tensor | None = None,
    ) -> Tensor:
        """(n, C, H, W) by DDIM with `steps` denoiser evaluations (default: config), or
        (B, n, C, H, W) for a condition (B, C_cond, H, W): n samples per row."""
        c = self.config
        rows = None if cond is None else cond.repeat_interleave(n, 0)  # (B*n, C_cond, H, W)
        total = n if rows is None else len(rows)
        out = []
        for start in range(0, total, batch):
            scheduler = DDIMScheduler.from_config(self.train_scheduler.config)
            scheduler.set_timesteps(steps or c.inference_steps)
            size = min(batch, total - start)
            shape = (size, c.channels, c.image_size, c.image_size)
            x = torch.randn(shape, generator=generator).to(next(self.parameters()).device)
            part = None if rows is None else rows[start : start + size]
            for t in scheduler.timesteps:
                x = scheduler.step(self._denoise(x, t, part), t, x).prev_sample
            out.append(x.clamp(-1, 1) if cond is None else x)
        x = torch.cat(out)
        return x if cond is None else x.unflatten(0, (len(cond), n))

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
