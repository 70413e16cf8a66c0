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
    cond = model.encode_obs(policy.normalize_obs(obs))  # the input path of the policy's walk
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
    """Median ms of each call. With policy.config.compile the trunk is compiled too, so the
    ratio compares like with like; guided walks are eager either way."""
    trunk = lambda o: trunk_only(policy, o)  # noqa: E731
    if policy.config.compile:
        trunk = torch.compile(trunk, dynamic=False)
    calls_by_name = {
        "trunk_only": lambda: trunk(obs),
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
    for trunk, compiled in [(t, c) for c in s.compile for t in s.trunks]:
        policy_cfg = OmegaConf.to_container(s.policy, resolve=True)
        policy_cfg.setdefault("model", {})["trunk"] = trunk
        policy_cfg["compile"] = compiled
        policy = make_policy(policy_cfg, spec, normalizer).eval()
        guide = MaxStep(0.8)
        for batch in s.batches:
            obs = torch.randn(batch, spec.obs_horizon, spec.obs_dim)
            ms = _timings(policy, obs, guide, s.warmup, s.calls)
            row = {
                "trunk": trunk,
                "compiled": compiled,
                "batch": batch,
                **{f"{k}_ms": v for k, v in ms.items()},
                "ddn_over_trunk": ms["ddn_1"] / ms["trunk_only"],
                "n64_over_n1": ms["ddn_64"] / ms["ddn_1"],
                "guided_over_random": ms["ddn_guided_1"] / ms["ddn_1"],
            }
            rows.append(row)
            print(
                f"{trunk}{' compiled' if compiled else ''} batch {batch}: "
                f"ddn/trunk {row['ddn_over_trunk']:.2f}x, "
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
        "compiled",
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


# ---------------------------------------------------------------- DDN vs the baselines
def _train_step_seconds(policy, spec, batch: int, warmup: int, calls: int) -> float:
    """Median seconds of one optimizer step (forward, backward, AdamW) at `batch`."""
    gen = torch.Generator().manual_seed(0)
    data = {
        "obs": torch.randn(batch, spec.obs_horizon, spec.obs_dim, generator=gen),
        "action": torch.randn(batch, spec.pred_horizon, spec.action_dim, generator=gen),
    }
    device = next(policy.parameters()).device
    data = {k: v.to(device) for k, v in data.items()}
    policy.train()
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)

    def step():
        loss, _ = policy.compute_loss(data)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    seconds = median_seconds(step, warmup, calls, synchronize=device.type == "cuda")
    policy.eval()
    return seconds


def method_latency(cfg: DictConfig) -> tuple[list[dict], str]:
    """Per-chunk inference time of every method at each batch, and one training step,
    timed in one process on one device with the same thread count; ratios to DDN
    (random sampling) from the same run."""
    s = cfg.suite
    spec = get_task(s.task)
    device = torch.device(s.device)
    rng = np.random.default_rng(cfg.seed)
    normalizer = MinMaxNormalizer.fit(
        {
            "obs": rng.normal(size=(256, spec.obs_dim)),
            "action": rng.normal(size=(256, spec.action_dim)),
        }
    )
    policies = {
        name: make_policy(OmegaConf.to_container(p, resolve=True), spec, normalizer)
        .to(device)
        .eval()
        for name, p in s.policies.items()
    }
    guide = MaxStep(0.8)
    sync = device.type == "cuda"
    variants = []  # (method, policy name, inference settings, predict_chunks kwargs)
    for name, v in OmegaConf.to_container(s.methods).items():
        if v["policy"] not in policies:
            raise ValueError(
                f"latency method {name!r} uses policy {v['policy']!r}; "
                f"suite.policies has {', '.join(policies)}"
            )
        kwargs = {"n": v.get("hypotheses", 1)}
        if v.get("guided", False):
            kwargs["guide"] = guide
        variants.append((name, v["policy"], v.get("inference", {}), kwargs))
    rows = []
    for batch in s.batches:
        obs = torch.randn(batch, spec.obs_horizon, spec.obs_dim, device=device)
        timings = {}
        for name, policy_name, inference, kwargs in variants:
            policy = policies[policy_name]
            policy.set_inference(**inference)
            with torch.inference_mode():
                seconds = median_seconds(
                    lambda policy=policy, kwargs=kwargs, obs=obs: policy.predict_chunks(
                        obs, **kwargs
                    ),
                    s.warmup,
                    s.calls,
                    synchronize=sync,
                )
            timings[name] = seconds
        for name, policy_name, _, _ in variants:
            params = sum(p.numel() for p in policies[policy_name].model.parameters())
            rows.append(
                {
                    "suite": "latency",
                    "task": s.task,
                    "method": name,
                    "batch": batch,
                    "ms_median": 1e3 * timings[name],
                    "over_ddn": timings[name] / timings[s.reference],
                    "params": params,
                    "device": s.device,
                    "threads": torch.get_num_threads(),
                }
            )
            print(
                f"batch {batch} {name}: {1e3 * timings[name]:.2f} ms "
                f"({timings[name] / timings[s.reference]:.1f}x DDN)",
                flush=True,
            )
    train_seconds = {
        name: _train_step_seconds(p, spec, s.train_batch, s.train_warmup, s.train_calls)
        for name, p in policies.items()
    }
    for name, seconds in train_seconds.items():
        rows.append(
            {
                "suite": "latency",
                "task": s.task,
                "method": f"train_step_{name}",
                "batch": s.train_batch,
                "ms_median": 1e3 * seconds,
                "over_ddn": seconds / train_seconds["ddn"],
                "device": s.device,
                "threads": torch.get_num_threads(),
            }
        )
        print(f"train step {name}: {1e3 * seconds:.1f} ms", flush=True)
    cols = ["method", "batch", "ms_median", "over_ddn", "params"]
    return rows, markdown_table(rows, cols)
