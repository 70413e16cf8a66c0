"""DiffusionPolicy: Diffusion Policy (CNN, state observations) behind the same interface
as DDNPolicy. diffusers schedulers are used as they are: DDPMScheduler for training
(100 steps, squaredcos_cap_v2, epsilon prediction, clip_sample) and, for inference,
either that scheduler (DDPM-100) or a DDIMScheduler built from its config with fewer
steps (DDIM-10; DDIM-1 shows what one step costs a model not trained for it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from torch import Tensor

from baselines.diffusion_policy.unet import ConditionalUnet1D, UNetConfig, unet_preset
from ddn_policy.policies.base import ChunkPolicy, check_action_horizon

SAMPLERS = ("ddpm", "ddim")


@dataclass
class DiffusionPolicyConfig:
    model: UNetConfig  # the denoiser's sizes
    action_horizon: int = 8  # Ta, actions executed per chunk
    num_train_timesteps: int = 100  # diffusion steps of the training schedule
    beta_schedule: str = "squaredcos_cap_v2"  # diffusers beta schedule
    prediction_type: str = "epsilon"  # the denoiser predicts the noise
    clip_sample: bool = True  # clip the predicted clean chunk to [-1, 1] (normalised units)
    sampler: str = "ddpm"  # "ddpm" (all training steps) or "ddim"
    inference_steps: int = 100  # denoiser evaluations per chunk
    task: str | None = None  # the task it was trained on (ddn-eval's default)

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = UNetConfig(**self.model)
        check_action_horizon(self.action_horizon, self.model)
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got sampler={self.sampler!r}")
        if not 1 <= self.inference_steps <= self.num_train_timesteps:
            raise ValueError(
                f"need 1 <= inference_steps <= num_train_timesteps={self.num_train_timesteps}, "
                f"got inference_steps={self.inference_steps}"
            )
        if self.sampler == "ddpm" and self.inference_steps != self.num_train_timesteps:
            raise ValueError(
                f"sampler='ddpm' runs all {self.num_train_timesteps} training steps, got "
                f"inference_steps={self.inference_steps}; use sampler='ddim' for fewer"
            )


class DiffusionPolicy(ChunkPolicy):
    name = "diffusion"
    config_class = DiffusionPolicyConfig
    model_preset = staticmethod(unet_preset)

    def __init__(self, config: DiffusionPolicyConfig, normalizer):
        super().__init__(config, normalizer)
        self.train_scheduler = DDPMScheduler(
            num_train_timesteps=config.num_train_timesteps,
            beta_schedule=config.beta_schedule,
            prediction_type=config.prediction_type,
            clip_sample=config.clip_sample,
        )

    def build_model(self, model_cfg: UNetConfig) -> ConditionalUnet1D:
        return ConditionalUnet1D(model_cfg)

    def inference_scheduler(self) -> DDPMScheduler | DDIMScheduler:
        """A fresh scheduler set to the configured sampler and steps (set_timesteps
        mutates a scheduler, so none is shared between calls)."""
        cfg = self.train_scheduler.config
        if self.config.sampler == "ddpm":
            scheduler = DDPMScheduler.from_config(cfg)
        else:
            scheduler = DDIMScheduler.from_config(cfg)
        scheduler.set_timesteps(self.config.inference_steps)
        return scheduler

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        """batch: obs (B, To, Do), action (B, Tp, Da), environment units."""
        obs = self.normalizer.normalize("obs", batch["obs"])
        action = self.normalizer.normalize("action", batch["action"])
        noise = torch.randn_like(action)
        steps = torch.randint(
            0, self.config.num_train_timesteps, (len(action),), device=action.device
        )
        noisy = self.train_scheduler.add_noise(action, noise, steps)
        loss = F.mse_loss(self.model(noisy, steps, obs), noise)
        return loss, {}

    @torch.no_grad()
    def predict_chunks(
        self,
        obs,
        n: int = 1,
        guide=None,
        best_of: int | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict]:
        """obs (B, To, Do) in env units -> chunks (B, n, Tp, Da): n samples per row,
        denoised together as B*n rows (inference_steps network evaluations). A guide
        can only pick the best of `best_of` finished samples: the denoiser's
        intermediate states are not chunks a black-box scorer could rank."""
        obs = self.check_obs(obs)
        if best_of and guide is None:
            raise ValueError(f"best_of={best_of} needs a guide to rank the hypotheses by")
        draws = n * (best_of or 1)
        m = self.config.model
        obs_rows = obs.repeat_interleave(draws, dim=0)  # (B*draws, To, Do)
        obs_norm = self.normalize_obs(obs_rows)
        x = torch.randn(
            len(obs_rows), m.pred_horizon, m.action_dim, generator=generator, device=obs.device
        )
        scheduler = self.inference_scheduler()
        for t in scheduler.timesteps:
            steps = t.expand(len(x)).to(obs.device)
            eps = self.model(x, steps, obs_norm)
            x = scheduler.step(eps, t, x, generator=generator).prev_sample
        chunks = self.normalizer.unnormalize("action", x).unflatten(0, (len(obs), draws))
        if best_of:
            (chunks,) = self.keep_best(guide, chunks, obs_rows, n, best_of)
        return chunks, {"uncertainty": self.spread(chunks)}
