"""Benchmarks of the task layer: expert success through the runner, runner overhead."""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from ddn_policy.data.replay_buffer import ReplayBufferWriter
from ddn_policy.evaluation.policies import ExpertPolicy, ZeroPolicy
from ddn_policy.evaluation.report import markdown_table
from ddn_policy.evaluation.runner import run
from tasks import get_task
from tasks.demos import collect_demos
from tasks.spec import eval_seed


def experts(cfg: DictConfig) -> tuple[dict, str]:
    """Scripted experts through the evaluation runner, on the evaluation starts."""
    s = cfg.suite
    rows = []
    for name in s.tasks:
        spec = get_task(name)
        info = run(
            ExpertPolicy(spec, seed=cfg.seed), spec, s.episodes, seed=cfg.seed, progress=False
        )
        agg = info["aggregated"]
        row = {
            "task": name,
            "expert_success": agg["pc_success"] / 100,
            "avg_steps": agg["avg_steps"],
        }
        if spec.has_route:
            row["route_0"] = agg["route_frequencies"].get("0", 0.0)
            row["switch_rate"] = agg["switch_rate"]
            with tempfile.TemporaryDirectory() as tmp:
                writer = ReplayBufferWriter(Path(tmp) / "demos.zarr")
                report = collect_demos(spec, writer, s.episodes, cfg.seed, progress=False)
            row["demo_route_0"] = report.route_counts.get(0, 0) / report.kept
        rows.append(row)
        print(f"{name}: expert success {row['expert_success']:.2f}", flush=True)
    payload = {"suite": "experts", "episodes": s.episodes, "rows": rows}
    cols = ["task", "expert_success", "avg_steps", "route_0", "switch_rate", "demo_route_0"]
    table = markdown_table(rows, cols)
    return payload, table


def _raw_steps(spec, episodes: int, seed: int, num_envs: int) -> tuple[float, int]:
    """A bare loop over the same episodes and the same number of live environments
    (several MuJoCo models side by side step slower than one: caches)."""
    envs = [spec.make_env() for _ in range(min(num_envs, episodes))]
    zero = np.zeros(spec.action_dim, dtype=np.float32)
    steps, elapsed = 0, 0.0
    for first in range(0, episodes, len(envs)):
        wave = envs[: min(len(envs), episodes - first)]
        start = time.perf_counter()
        for i, env in enumerate(wave):
            env.reset(seed=eval_seed(seed, first + i))
        live = list(wave)
        for _ in range(spec.max_episode_steps):
            still = []
            for env in live:
                _, _, terminated, truncated, _ = env.step(zero)
                steps += 1
                if not (terminated or truncated):
                    still.append(env)
            live = still
            if not live:
                break
        elapsed += time.perf_counter() - start
    for env in envs:
        env.close()
    return elapsed, steps


class NullEnv:
    """An environment whose step costs nothing: what remains is the runner's own work."""

    metadata: dict = {}

    def __init__(self, obs_dim: int):
        self.obs = np.zeros(obs_dim)

    def reset(self, seed=None):
        return self.obs, {}

    def step(self, action):
        return self.obs, 0.0, False, False, {"success": False}

    def close(self):
        pass


def _runner_seconds_per_step(spec, episodes: int, seed: int, num_envs: int) -> float:
    info = run(
        ZeroPolicy(spec.action_dim),
        spec,
        episodes,
        seed=seed,
        num_envs=num_envs,
        stop_on_success=False,
        progress=False,
    )
    return info["aggregated"]["eval_s"] / sum(r["steps"] for r in info["per_episode"])


def runner_overhead(cfg: DictConfig) -> tuple[dict, str]:
    """Seconds per environment step: a bare env.step loop against the runner driving a
    zero-action policy over the same episodes and environments (no videos, no early
    stop, environment construction excluded from both), best of `repeats` runs each.
    End-to-end ratios of two ~0.3 ms loops move by +-10% from run to run, so the runner's
    own cost is also measured on its own, with an environment that costs nothing."""
    s = cfg.suite
    rows = []
    for name in s.tasks:
        spec = get_task(name)
        null = replace(spec, make_env=lambda render_mode=None, d=spec.obs_dim: NullEnv(d))
        for num_envs in s.num_envs:
            own = min(
                _runner_seconds_per_step(null, s.episodes, cfg.seed, num_envs)
                for _ in range(s.repeats)
            )
            raw, runner = [], []
            for _ in range(s.repeats):
                raw_s, steps = _raw_steps(spec, s.episodes, cfg.seed, num_envs)
                raw.append(raw_s / steps)
                runner.append(_runner_seconds_per_step(spec, s.episodes, cfg.seed, num_envs))
            ratio = min(runner) / min(raw)
            rows.append(
                {
                    "task": name,
                    "num_envs": num_envs,
                    "steps": steps,
                    "raw_us_per_step": 1e6 * min(raw),
                    "runner_us_per_step": 1e6 * min(runner),
                    "overhead": ratio - 1.0,
                    "runner_own_us_per_step": 1e6 * own,
                    "own_overhead": own / min(raw),
                }
            )
            print(
                f"{name} num_envs={num_envs}: end-to-end {100 * (ratio - 1):+.1f}%, "
                f"runner's own work {100 * own / min(raw):.1f}% of a step",
                flush=True,
            )
    payload = {"suite": "runner", "episodes": s.episodes, "repeats": s.repeats, "rows": rows}
    cols = [
        "task",
        "num_envs",
        "steps",
        "raw_us_per_step",
        "runner_us_per_step",
        "overhead",
        "runner_own_us_per_step",
        "own_overhead",
    ]
    return payload, markdown_table(rows, cols)
