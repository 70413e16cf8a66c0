"""`ddn-train experiment=depth-ddn` (and flow-, color-, each with -regression and
-diffusion baselines): render the scene dataset once (cached under data/dense/, keyed by
its settings), train a DensePredictor with the shared Trainer, and score the final EMA
weights on the first test images."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ddn_policy.cli.train import start_trainer
from ddn_policy.dense.predictor import TASKS, DensePredictor, DensePredictorConfig
from ddn_policy.training.distributed import World
from ddn_policy.utils.io import atomic_write_text, settings_key
from tasks.dense import DenseDataset, SceneConfig, write_dataset

TRUTH_KEYS = {"depth": ("depth", "valid"), "flow": ("flow", "valid"), "color": ("color",)}


def dataset_path(data: DictConfig | dict, split: str, world: World | None = None) -> Path:
    """The rendered split for these data settings, written on first use (rank 0 writes,
    the other ranks wait)."""
    data = OmegaConf.to_container(data, resolve=True) if isinstance(data, DictConfig) else data
    scene = SceneConfig(**data.get("scene", {}))
    key = settings_key({"scene": data.get("scene", {}), "seed": data["seed"]})
    count = data[split]
    path = Path(data.get("root", "data/dense")) / f"scenes-{key}-{split}{count}.zarr"
    if world is not None and world.distributed:
        if world.is_main:
            dataset_path(data, split)
        torch.distributed.barrier()
        return path
    if not path.exists():
        write_dataset(path, count, scene, data["seed"], split)
    return path


def predictor_config(exp: DictConfig) -> DensePredictorConfig:
    model = OmegaConf.to_container(exp.model, resolve=True) if exp.get("model") else None
    return DensePredictorConfig(
        task=exp.task,
        method=exp.method,
        preset=exp.get("preset", "small"),
        image_size=exp.data.scene.get("size", 64) if "scene" in exp.data else 64,
        model=model or None,
    )


def train_dense(cfg: DictConfig, world: World) -> dict:
    torch.manual_seed(cfg.seed)
    exp = cfg.experiment
    config = predictor_config(exp)
    keys = TASKS[config.task][0] + TRUTH_KEYS[config.task]
    train = DenseDataset(dataset_path(exp.data, "train", world), keys)
    predictor = DensePredictor(config)
    trainer = start_trainer(cfg, predictor, train, world)
    if world.is_main:
        n = sum(p.numel() for p in predictor.parameters())
        print(f"{exp.name}: {len(train)} scenes, {n} parameters", flush=True)
    summary = trainer.fit()
    if world.is_main:
        atomic_write_text(trainer.out_dir / "train_summary.json", json.dumps(summary, indent=2))
    return summary
