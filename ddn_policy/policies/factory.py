"""Policies from config, and back from disk, by the `name` in their config."""

from __future__ import annotations

import importlib
from pathlib import Path

from ddn_policy.data.normalizer import MinMaxNormalizer
from ddn_policy.utils.io import read_json
from tasks import TaskSpec

# name -> "module:Class"; imported on use so the baselines' dependencies (diffusers)
# load only when a baseline is asked for
POLICIES = {
    "ddn": "ddn_policy.policies.ddn:DDNPolicy",
    "diffusion": "baselines.diffusion_policy:DiffusionPolicy",
    "mse": "baselines.mse:RegressionPolicy",
}


def policy_class(name: str):
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}")
    module, cls = POLICIES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_policy(cfg: dict, spec: TaskSpec, normalizer: MinMaxNormalizer):
    """cfg: the hydra `policy` node as a dict ({"name": "ddn", "preset": ..., ...})."""
    cfg = dict(cfg)
    return policy_class(cfg.pop("name")).from_task(cfg, spec, normalizer)


def load_policy(directory: str | Path):
    """A saved policy from a pretrained_model dir, or a checkpoint dir holding one."""
    d = Path(directory)
    if (d / "pretrained_model").is_dir():
        d = d / "pretrained_model"
    config = d / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{d} holds no config.json; pass a checkpoint directory")
    name = read_json(config).get("name")
    if name not in POLICIES:
        raise ValueError(f"{config} names an unknown policy type {name!r}")
    return policy_class(name).from_pretrained(d)
