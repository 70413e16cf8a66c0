"""Latency of one action chunk: the DDN policy against its own trunk without DDL heads."""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ddn_policy.data.normalizer import MinMaxNormalizer
from ddn_policy.evaluation.report import markdown_table
from ddn_policy.evaluation.timing import median_seconds
from ddn_policy.policies.factory import make_policy
from ddn_policy.policies.guides import MaxStep
from tasks import get_task


def trunk_only(policy, obs: torch.Tensor) -> torch.Tensor:
    """Encoder and every block, with the previous sample and leak held at zero and no
    DDL: what the same network costs as a plain regressor."""
    model = policy.model
    cond = model.encode_obs(policy.normalizer.normalize("obs", obs))
    h = None
    for block, layer in model.ddn.stages():
        x = cond.new_zeros(obs.shape[0], *layer.sample_shape)
        leak = (
            cond.new_zeros(obs.shape[0], layer.leak_out, *layer.spatial) if layer.leak_out else None
        )
        h = block(h, x, leak, cond)
    return h


@torch.inference_mode()
def _timings(policy, obs, guide, warmup: int, calls: int) -> dict[str, float]:
    calls_by_name = {
        "trunk_only": lambda: trunk_only(policy, obs),
        "ddn_1": lambda: policy.predict_chunks(obs, n=1),
        "ddn_64": lambda: policy.predict_chunks(obs, n=64),
        "ddn_guided_1": lambda: policy.predict_chunks(obs, n=1, guide=guide),
    }
    return {k: 1e3 * median_seconds(fn, warmup, calls) for k, fn in calls_by_name.items()}


def ddn_latency(cfg: DictConfig) -> tuple[dict, str]:
    s = cfg.suite
    spec = get_task(s.task)
    rng = np.random.default_rng(cfg.seed)
    normalizer = MinMaxNormalizer.fit(
        {
            "obs": rng.normal(size=(256, spec.obs_dim)),
            "action": rng.normal(size=(256, spec.action_dim)),
        }
    )
    rows = []
    for trunk in s.trunks:
        policy_cfg = OmegaConf.to_container(s.policy, resolve=True)
        policy_cfg.setdefault("model", {})["trunk"] = trunk
        policy = make_policy(policy_cfg, spec, normalizer).eval()
        guide = MaxStep(0.8)
        for batch in s.batches:
            obs = torch.randn(batch, spec.obs_horizon, spec.obs_dim)
            ms = _timings(policy, obs, guide, s.warmup, s.calls)
            row = {
                "trunk": trunk,
                "batch": batch,
                **{f"{k}_ms": v for k, v in ms.items()},
                "ddn_over_trunk": ms["ddn_1"] / ms["trunk_only"],
                "n64_over_n1": ms["ddn_64"] / ms["ddn_1"],
                "guided_over_random": ms["ddn_guided_1"] / ms["ddn_1"],
            }
            rows.append(row)
            print(
                f"{trunk} batch {batch}: ddn/trunk {row['ddn_over_trunk']:.2f}x, "
                f"64 hypotheses {row['n64_over_n1']:.2f}x, guided {row['guided_over_random']:.2f}x",
                flush=True,
            )
    payload = {
        "suite": "ddn_latency",
        "task": s.task,
        "settings": OmegaConf.to_container(s),
        "rows": rows,
    }
    cols = [
        "trunk",
        "batch",
        "trunk_only_ms",
        "ddn_1_ms",
        "ddn_64_ms",
        "ddn_guided_1_ms",
        "ddn_over_trunk",
        "n64_over_n1",
        "guided_over_random",
    ]
    return payload, markdown_table(rows, cols)
