"""Diffusion Policy baseline (Chi et al., 2023): conditional 1-D U-Net + diffusers schedulers."""

from baselines.diffusion_policy.modeling import DiffusionPolicy, DiffusionPolicyConfig
from baselines.diffusion_policy.unet import ConditionalUnet1D, UNetConfig, unet_preset

__all__ = [
    "ConditionalUnet1D",
    "DiffusionPolicy",
    "DiffusionPolicyConfig",
    "UNetConfig",
    "unet_preset",
]
