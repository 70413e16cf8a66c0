from baselines.diffusion_image.modeling import DiffusionImageConfig, DiffusionImageModel

__all__ = ["DiffusionImageConfig", "DiffusionImageModel"]
