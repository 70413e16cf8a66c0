"""Policies from config, and back from disk, by the `name` in their config."""

from __future__ import annotations

import json
from pathlib import Path

from ddn_policy.data.normalizer import MinMaxNormalizer
from tasks import TaskSpec


def make_policy(cfg: dict, spec: TaskSpec, normalizer: MinMaxNormalizer):
    """cfg: the hydra `policy` node as a dict ({"name": "ddn", "preset": ..., ...})."""
    cfg = dict(cfg)
    name = cfg.pop("name")
    if name == "ddn":
        from ddn_policy.models.action import preset
        from ddn_policy.policies.ddn import DDNPolicy, DDNPolicyConfig

        model = preset(
            cfg.pop("preset", "small"),
            obs_dim=spec.obs_dim,
            action_dim=spec.action_dim,
            obs_horizon=spec.obs_horizon,
            pred_horizon=spec.pred_horizon,
            **cfg.pop("model", {}),
        )
        config = DDNPolicyConfig(
            model=model,
            action_horizon=spec.action_horizon,
            hand_obs=spec.hand_obs,
            action_to_position=spec.action_to_position,
            task=spec.name,
            **cfg,
        )
        return DDNPolicy(config, normalizer)
    raise ValueError(f"unknown policy {name!r}; known: ddn")


def load_policy(directory: str | Path):
    """A saved policy from a pretrained_model dir, or a checkpoint dir holding one."""
    d = Path(directory)
    if (d / "pretrained_model").is_dir():
        d = d / "pretrained_model"
    config = d / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{d} holds no config.json; pass a checkpoint directory")
    name = json.loads(config.read_text()).get("name")
    if name == "ddn":
        from ddn_policy.policies.ddn import DDNPolicy

        return DDNPolicy.from_pretrained(d)
    raise ValueError(f"{config} names an unknown policy type {name!r}")
