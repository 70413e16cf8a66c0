"""`ddn-train experiment=<name>`: an image DDN on the digits with the shared Trainer,
then the held-out reconstruction PSNR, the dead-node fraction of every layer on the
training set, and sample and reconstruction sheets."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ddn_policy.cli.train import start_trainer
from ddn_policy.images.generator import ImageGenerator, ImageGeneratorConfig, bits_per_image
from ddn_policy.models.image import image_preset
from ddn_policy.training.distributed import World
from ddn_policy.utils.io import atomic_write_bytes, atomic_write_text
from tasks.images import load_digits

KINDS = ("ddn", "diffusion")


def build_generator(exp: DictConfig | dict):
    """An ImageGenerator (kind ddn) or the diffusers baseline (kind diffusion)."""
    exp = OmegaConf.to_container(exp, resolve=True) if isinstance(exp, DictConfig) else exp
    kind = exp.get("kind", "ddn")
    if kind not in KINDS:
        raise ValueError(f"experiment.kind must be one of {KINDS}, got {kind!r}")
    if kind == "diffusion":
        from baselines.diffusion_image import DiffusionImageConfig, DiffusionImageModel

        return DiffusionImageModel(DiffusionImageConfig(**exp.get("model", {})))
    cond_channels = 0 if exp.get("condition", "none") == "none" else 1
    model = image_preset(exp["preset"], cond_channels=cond_channels, **exp.get("model", {}))
    return ImageGenerator(ImageGeneratorConfig(model, exp.get("condition", "none")))


def grid(images: torch.Tensor, columns: int) -> np.ndarray:
    """(N, 1, H, W) in [-1, 1] -> uint8 sheet with 2-pixel gaps, `columns` wide."""
    n, _, h, w = images.shape
    rows = -(-n // columns)
    sheet = np.full((rows * (h + 2) + 2, columns * (w + 2) + 2), 255, np.uint8)
    pixels = ((images[:, 0].clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()
    for i in range(n):
        r, c = divmod(i, columns)
        sheet[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + c * (w + 2) : 2 + c * (w + 2) + w] = (
            pixels[i]
        )
    return sheet


def save_png(path: Path, sheet: np.ndarray) -> None:
    atomic_write_bytes(path, iio.imwrite("<bytes>", sheet, extension=".png"))


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 2.0) -> torch.Tensor:
    """Per image; `peak` is the value range (2 for [-1, 1], 1 for [0, 1])."""
    mse = (a - b).square().flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(peak**2 / mse)


@torch.no_grad()
def dead_fractions(
    generator: ImageGenerator, images: torch.Tensor, batch: int = 500
) -> list[float]:
    """Per layer, the fraction of nodes that are the nearest for no training image."""
    codes = torch.cat(
        [generator.encode(images[i : i + batch]) for i in range(0, len(images), batch)]
    )
    ks = [layer.k for _, layer in generator.model.stages()]
    return [1.0 - len(torch.unique(codes[:, i])) / k for i, k in enumerate(ks)]


@torch.no_grad()
def reconstruct_all(generator: ImageGenerator, images: torch.Tensor, batch: int = 250):
    """Reconstructions of many images, `batch` at a time."""
    return torch.cat(
        [generator.reconstruct(images[i : i + batch]) for i in range(0, len(images), batch)]
    )


@torch.no_grad()
def report(generator: ImageGenerator, dataset: str, out: Path, seed: int) -> dict:
    generator.eval()
    train, test = load_digits(dataset, "train"), load_digits(dataset, "test")
    recon = reconstruct_all(generator, test.images)
    gen = torch.Generator().manual_seed(seed)
    shown = test.images[:: max(1, len(test) // 64)][:64]  # the test set is ordered by class
    if generator.conditional:
        samples = generator.sample(1, generator.condition(shown), generator=gen)[:, 0]
    else:
        samples = generator.sample(64, generator=gen)
    save_png(out / "samples.png", grid(samples, 8))
    save_png(
        out / "reconstructions.png",
        grid(torch.cat([shown[:32], recon[:: max(1, len(test) // 64)][:32]]), 8),
    )
    dead = dead_fractions(generator, train.images)
    result = {
        "test_psnr_db": float(psnr(recon, test.images).mean()),
        "bits_per_image": bits_per_image(generator.model),
        "dead_node_fraction_per_layer": dead,
        "max_dead_node_fraction": max(dead),
    }
    atomic_write_text(out / "eval.json", json.dumps(result, indent=2))
    return result


def train_images(cfg: DictConfig, world: World) -> dict:
    torch.manual_seed(cfg.seed)
    exp = cfg.experiment
    data = load_digits(exp.dataset, "train")
    generator = build_generator(exp)
    trainer = start_trainer(cfg, generator, data, world)
    out = trainer.out_dir
    if world.is_main:
        n = sum(p.numel() for p in generator.parameters())
        print(f"{exp.name}: {len(data)} images, {n} parameters", flush=True)
    summary = trainer.fit()
    if world.is_main:  # judged with the EMA weights the last checkpoint holds
        saved = out / "checkpoints" / "last" / "pretrained_model"
        if isinstance(generator, ImageGenerator):
            summary |= report(ImageGenerator.from_pretrained(saved), exp.dataset, out, cfg.seed)
        else:
            ema = type(generator).from_pretrained(saved)
            gen = torch.Generator().manual_seed(cfg.seed)
            save_png(out / "samples.png", grid(ema.sample(64, generator=gen), 8))
        atomic_write_text(out / "train_summary.json", json.dumps(summary, indent=2))
        print(json.dumps({k: v for k, v in summary.items() if "dead_node_fraction_per" not in k}))
    return summary
