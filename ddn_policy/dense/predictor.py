"""A conditional dense predictor for the shared Trainer: depth from RGB, flow from an RGB
pair, colour from gray. It owns the mapping between dataset arrays and the network's
normalized condition and target, so every caller speaks in the dataset's units (metres,
pixels of flow, sRGB in [0, 1]).

`predict(batch, n)` returns n hypotheses from one batched walk, their per-pixel median
(the point estimate) and their per-pixel spread (the uncertainty map). The baselines sit
behind the same interface (`method`): a regressor with the same encoder (its n
hypotheses are one prediction repeated) and a diffusers denoiser with the condition
concatenated (n DDIM samples: an ensemble, as Marigold).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from baselines.diffusion_image.modeling import DiffusionImageConfig
from ddn_policy.core.prior_refit import PriorRefitConfig, refit_priors
from ddn_policy.core.select import Central
from ddn_policy.models.dense import DenseDDN, DenseDDNConfig, dense_preset
from ddn_policy.utils.io import UnsafeFileError, load_weights, read_model_dir, write_model_dir

# task -> (condition arrays, condition channels, target channels)
TASKS = {"depth": (("rgb",), 3, 1), "flow": (("rgb", "rgb2"), 6, 2), "color": (("gray",), 1, 3)}
# the DDN and the two baselines of the same interface (loss, sample)
METHODS = ("ddn", "regression", "diffusion")
# point estimates: the hypotheses' per-pixel median, or the DDN's central walk
POINTS = ("median", "central")


@dataclass
class DensePredictorConfig:
    task: str = "depth"  # "depth" (RGB -> metres), "flow" (RGB pair -> px), "color" (gray)
    method: str = "ddn"  # "ddn", "regression" (same encoder, L2) or "diffusion" (diffusers)
    preset: str = "small"  # DENSE_PRESETS entry that sizes `model` when it is not given
    image_size: int = 64  # H = W of the dataset's images
    # the network: a DenseDDNConfig for ddn and regression (which uses its encoder sizes),
    # a DiffusionImageConfig for diffusion; None or a dict: the preset at this size with
    # the dict's fields over it (e.g. {"ddn": {"chain_dropout_per_sample": 0.5}})
    model: DenseDDNConfig | DiffusionImageConfig | None = None
    depth_centre: float = 2.0  # metres; log-depth is normalized around log(depth_centre)
    depth_scale: float = 0.5  # ... and divided by this (natural-log units)
    sky_depth: float = 6.0  # metres: the training target where there is no depth
    flow_scale: float = 4.0  # pixels of flow per unit of the network's target

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {sorted(TASKS)}, got task={self.task!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got method={self.method!r}")
        _, cond_channels, channels = TASKS[self.task]
        if self.method == "diffusion":
            self.model = diffusion_config(self.model, self.image_size, channels, cond_channels)
            return
        if self.model is None or isinstance(self.model, dict):  # fields over the preset
            fields = {"cond_channels": cond_channels, **(self.model or {})}
            self.model = dense_preset(self.preset, self.image_size, channels, **fields)
        if (self.model.cond_channels, self.model.ddn.channels) != (cond_channels, channels):
            raise ValueError(
                f"task={self.task!r} needs model.cond_channels={cond_channels} and "
                f"model.ddn.channels={channels}, got {self.model.cond_channels} and "
                f"{self.model.ddn.channels}"
            )
        if self.model.ddn.image_size != self.image_size:
            raise ValueError(
                f"model.ddn.image_size={self.model.ddn.image_size} differs from "
                f"image_size={self.image_size}"
            )
        for name in ("depth_centre", "depth_scale", "sky_depth", "flow_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {name}={getattr(self, name)}")


def diffusion_config(model, image_size: int, channels: int, cond_channels: int):
    """The diffusion baseline's config for this task: given sizes, or ~0.5M parameters
    (the dense DDN `tiny`-`small` range), with the task's channels and image size."""
    fields = dict(model) if isinstance(model, dict) else dict(asdict(model)) if model else {}
    fields.setdefault("block_out_channels", (32, 48, 64))
    fields.setdefault("num_train_timesteps", 1000)
    fields.setdefault("inference_steps", 10)  # DDIM-10, the sampler
    fields |= {"image_size": image_size, "channels": channels, "cond_channels": cond_channels}
    return DiffusionImageConfig(**fields)


def build_head(config: DensePredictorConfig) -> nn.Module:
    if config.method == "ddn":
        return DenseDDN(config.model)
    if config.method == "regression":
        from baselines.dense_regression import DenseRegression

        return DenseRegression(config.model)
    return DiffusionHead(config.model)


class DiffusionHead(nn.Module):
    """The diffusers baseline behind the dense head interface (loss, sample)."""

    def __init__(self, config: DiffusionImageConfig):
        super().__init__()
        from baselines.diffusion_image import DiffusionImageModel

        self.diffusion = DiffusionImageModel(config)

    def loss(self, target: Tensor, cond_image: Tensor) -> tuple[Tensor, dict]:
        return self.diffusion.loss(target, cond_image)

    def sample(self, cond_image: Tensor, n: int, guide=None, generator=None, top_k: int = 2):
        if guide is not None:
            raise ValueError("the diffusion baseline takes no DDN guide: pass guide=None")
        return self.diffusion.sample(n, generator=generator, cond=cond_image)


def _unit_image(x: Tensor) -> Tensor:
    """uint8 (B, H, W, C) or (B, H, W) -> float (B, C, H, W) in [-1, 1]."""
    if x.dtype != torch.uint8:
        raise ValueError(f"condition images must be uint8 (0-255) as stored, got {x.dtype}")
    x = x.float() / 127.5 - 1.0
    return x[:, None] if x.dim() == 3 else x.permute(0, 3, 1, 2)


class DensePredictor(nn.Module):
    def __init__(self, config: DensePredictorConfig):
        super().__init__()
        self.config = config
        self.model = build_head(config)

    # ------------------------------------------------------------------ data mapping
    def condition(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, C_in, H, W) in [-1, 1] from the dataset's condition arrays."""
        keys, _, _ = TASKS[self.config.task]
        missing = [k for k in keys if k not in batch]
        if missing:
            raise KeyError(
                f"task={self.config.task!r} needs batch keys {list(keys)}; missing {missing}"
            )
        images = [_unit_image(batch[k]) for k in keys]
        size = self.config.image_size
        for k, image in zip(keys, images, strict=True):
            if tuple(image.shape[-2:]) != (size, size):
                raise ValueError(
                    f"{k} must be {size}x{size} (image_size), got {tuple(image.shape[-2:])}"
                )
        return torch.cat(images, 1)

    def target(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, C, H, W) normalized training target from the dataset's truth."""
        cfg = self.config
        if cfg.task == "depth":
            depth = torch.where(batch["valid"], batch["depth"], cfg.sky_depth)
            return ((depth.log() - math.log(cfg.depth_centre)) / cfg.depth_scale)[:, None]
        if cfg.task == "flow":
            return batch["flow"].permute(0, 3, 1, 2) / cfg.flow_scale
        return _unit_image(batch["color"])

    def to_units(self, x: Tensor) -> Tensor:
        """Network output (..., C, H, W) -> metres, pixels or sRGB in [0, 1]."""
        cfg = self.config
        if cfg.task == "depth":
            return (x * cfg.depth_scale + math.log(cfg.depth_centre)).exp()
        if cfg.task == "flow":
            return x * cfg.flow_scale
        return ((x + 1) / 2).clamp(0, 1)

    # ------------------------------------------------------------------ training, inference
    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        loss, info = self.model.loss(self.target(batch), self.condition(batch))
        return loss, {
            k: v for k, v in info.items() if k in ("layer_losses", "prior_loss", "mean_loss")
        }

    @torch.no_grad()
    def predict(
        self,
        batch: dict[str, Tensor],
        n: int = 8,
        guide=None,
        generator=None,
        top_k: int = 2,
        point: str = "median",
    ) -> dict:
        """hypotheses (B, n, C, H, W), point (B, C, H, W), uncertainty (B, C, H, W) = the
        hypotheses' per-pixel standard deviation; all in the task's units. `guide`: a
        dense guide (dense/guides.py) steering every layer, each choosing among its top_k
        candidates; it costs one scoring of all K candidates per layer, still one
        network pass. `point`: "median", the hypotheses' per-pixel median, or "central"
        (DDN, unguided), one more walk that takes at every layer the candidate nearest
        the prior-weighted mean of the K (core.select.Central)."""
        if point not in POINTS:
            raise ValueError(f"point must be one of {POINTS}, got point={point!r}")
        if point == "central" and (self.config.method != "ddn" or guide is not None):
            raise ValueError(
                "point='central' walks a DDN's candidates without a guide; got "
                f"method={self.config.method!r} and guide={guide!r}: use point='median'"
            )
        score = None if guide is None else self._score(guide, n)
        cond = self.condition(batch)
        hyps = self.to_units(self.model.sample(cond, n, score, generator, top_k))
        spread = hyps.std(dim=1) if n > 1 else torch.zeros_like(hyps[:, 0])
        if point == "central":
            centre = self.to_units(self.model.sample(cond, 1, Central(), generator))[:, 0]
        else:
            centre = hyps.median(dim=1).values
        return {"hypotheses": hyps, "point": centre, "uncertainty": spread}

    def refit_prior(
        self, batch: dict[str, Tensor], cfg: PriorRefitConfig, chunk: int = 250
    ) -> list[dict]:
        """Refit the DDN's selection prior to its final weights on training scenes
        (`batch`: the dataset's arrays, condition and truth, all N scenes); only the prior
        heads change. Returns the per-layer report of core.prior_refit.refit_priors."""
        if self.config.method != "ddn":
            raise ValueError(
                f"only a DDN has a selection prior to refit, got method={self.config.method!r}"
            )
        self.eval()  # the network as it samples
        with torch.no_grad():
            rows = range(0, len(next(iter(batch.values()))), chunk)
            parts = [{k: v[i : i + chunk] for k, v in batch.items()} for i in rows]
            terms = [self.model.decoder_terms(self.condition(p), self.target(p)) for p in parts]
            goal = torch.cat([g for g, _ in terms])  # (N, C, H, W)
            cond = torch.cat([f for _, f in terms])  # (N, F, H, W)
        return refit_priors(self.model.ddn, goal, cond, cfg)

    def _score(self, guide, n: int):
        """A dense guide as the core's scorer: candidates in task units, and the input
        image of each row (the walk repeats every image n times, consecutively)."""

        def score(candidates: Tensor, ctx) -> Tensor:
            image = torch.arange(ctx.batch, device=candidates.device) // n
            return guide(self.to_units(candidates), image)

        return score

    # ------------------------------------------------------------------ files
    def save_pretrained(self, directory: str | Path) -> None:
        write_model_dir(
            directory,
            {"name": "dense_predictor", **asdict(self.config)},
            {"model": self.state_dict()},
        )

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> DensePredictor:
        raw, tensors = read_model_dir(directory, ("model",), cls.__name__)
        if raw.pop("name", None) != "dense_predictor":
            raise UnsafeFileError(f"{directory}/config.json does not describe a dense predictor")
        try:
            predictor = cls(DensePredictorConfig(**raw))
        except TypeError as err:
            raise UnsafeFileError(f"{directory}/config.json does not fit: {err}") from err
        load_weights(predictor, tensors["model"], Path(directory) / "model.safetensors")
        return predictor.eval()
