"""Rollouts: `run(policy, task, episodes, seed, videos=n)` -> metrics, eval_info.json, mp4s.

The policy interface is the one every method shares: `reset()` at the start of a batch
of episodes and `select_action(obs (B, obs_dim)) -> (B, action_dim)`. Episodes run in
waves of `num_envs` Gymnasium environments stepped side by side; an environment whose
episode has ended is not stepped again (Gymnasium's vector envs step every
sub-environment each call, which on Meta-World, where most episodes succeed within
100 of 500 steps, would cost several times the simulation).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from ddn_policy.utils.io import atomic_write_text
from tasks import TaskSpec, get_task
from tasks.spec import eval_seed


class Policy(Protocol):
    def reset(self) -> None: ...

    def select_action(self, obs: np.ndarray) -> np.ndarray: ...


@dataclass
class EpisodeTracker:
    """What one episode did, accumulated step by step."""

    episode: int
    seed: int
    has_route: bool = False  # the task reports info["route"]
    success: bool = False
    collision: bool = False
    sum_reward: float = 0.0
    max_reward: float = -np.inf
    steps: int = 0
    routes: list[int] = field(default_factory=list)  # decided routes, in the order seen
    frames: list[np.ndarray] = field(default_factory=list)

    def add(self, reward: float, info: dict) -> None:
        self.steps += 1
        self.sum_reward += float(reward)
        self.max_reward = max(self.max_reward, float(reward))
        self.success |= bool(info.get("success", False))
        self.collision |= bool(info.get("collision", False))
        route = int(info.get("route", -1))
        if route >= 0 and (not self.routes or self.routes[-1] != route):
            self.routes.append(route)

    def row(self) -> dict:
        row = {
            "episode": self.episode,
            "seed": self.seed,
            "success": self.success,
            "sum_reward": self.sum_reward,
            "max_reward": self.max_reward,
            "steps": self.steps,
        }
        if self.has_route:
            row["collision"] = self.collision
            row["route"] = self.routes[-1] if self.routes else None
            row["route_switches"] = max(len(self.routes) - 1, 0)
        return row


def aggregate(rows: list[dict], task: TaskSpec, wall_s: float) -> dict:
    agg = {
        "n_episodes": len(rows),
        "pc_success": 100.0 * float(np.mean([r["success"] for r in rows])),
        "avg_sum_reward": float(np.mean([r["sum_reward"] for r in rows])),
        "avg_max_reward": float(np.mean([r["max_reward"] for r in rows])),
        "avg_steps": float(np.mean([r["steps"] for r in rows])),
        "eval_s": wall_s,
    }
    if task.has_route:
        decided = [r["route"] for r in rows if r.get("route") is not None]
        # route tasks have two routes, 0 and 1 (the obstacle's sides, tasks/spec.py); one
        # never taken is reported as 0, not left out
        routes = sorted(set(decided) | {0, 1}) if decided else []
        agg["route_frequencies"] = {str(k): decided.count(k) / len(decided) for k in routes}
        agg["switch_rate"] = float(np.mean([r["route_switches"] > 0 for r in rows]))
        agg["collision_rate"] = float(np.mean([r["collision"] for r in rows]))
    return agg


def summary_line(task: TaskSpec, agg: dict) -> str:
    """`success 0.96 over 50 episodes; route 0: 0.64, route 1: 0.36; switch rate 0.00`."""
    line = f"success {agg['pc_success'] / 100:.2f} over {agg['n_episodes']} episodes"
    if task.has_route:
        split = ", ".join(f"route {k}: {v:.2f}" for k, v in agg["route_frequencies"].items())
        line += f"; {split or 'no route decided'}; switch rate {agg['switch_rate']:.2f}"
    return line


def write_video(path: Path, frames: list[np.ndarray], fps: int) -> None:
    import imageio.v2 as imageio

    tmp = path.with_name(f".{path.name}.tmp.mp4")
    imageio.mimwrite(tmp, frames, fps=fps, macro_block_size=1)
    tmp.replace(path)


def run(
    policy: Policy,
    task: TaskSpec | str,
    episodes: int,
    seed: int = 0,
    videos: int = 0,
    out_dir: str | Path | None = None,
    num_envs: int = 8,
    stop_on_success: bool = True,
    progress: bool = True,
) -> dict:
    """Evaluate `policy` on episodes with starts eval_seed(seed, 0..episodes-1); success
    is reaching success at any step. With out_dir, writes eval_info.json and
    eval_episode_<i>.mp4 for the first `videos` episodes. Returns the eval_info dict.
    The policy's own randomness (a DDN's sampled nodes) draws from torch's global
    generator, seeded here with `seed`, so the same checkpoint and seed give the same
    result whatever ran before in the process."""
    spec = get_task(task) if isinstance(task, str) else task
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got episodes={episodes}")
    if videos and out_dir is None:
        raise ValueError(f"videos={videos} needs an out_dir to write them to")
    torch.manual_seed(seed)
    n_envs = min(num_envs, episodes)
    envs = [spec.make_env(render_mode="rgb_array" if i < videos else None) for i in range(n_envs)]
    fps = int(envs[0].metadata.get("render_fps", 20))
    rows, video_paths = [], []
    start_time = time.perf_counter()
    bar = tqdm(total=episodes, desc=f"eval {spec.name}", disable=not progress)
    for first in range(0, episodes, n_envs):
        wave = [
            EpisodeTracker(e, eval_seed(seed, e), spec.has_route)
            for e in range(first, min(first + n_envs, episodes))
        ]
        obs = np.stack([envs[i].reset(seed=t.seed)[0] for i, t in enumerate(wave)]).astype(
            np.float32
        )
        for i, t in enumerate(wave):
            if t.episode < videos:
                t.frames.append(envs[i].render())
        active = np.ones(len(wave), dtype=bool)
        policy.reset()
        for _ in range(spec.max_episode_steps):
            actions = np.asarray(policy.select_action(obs))
            for i in np.flatnonzero(active):
                o, reward, terminated, truncated, info = envs[i].step(actions[i])
                obs[i] = o
                wave[i].add(reward, info)
                if wave[i].episode < videos:
                    wave[i].frames.append(envs[i].render())
                if terminated or truncated or (stop_on_success and wave[i].success):
                    active[i] = False
                    bar.update(1)
            if not active.any():
                break
        bar.update(int(active.sum()))
        for t in wave:
            rows.append(t.row())
            if t.frames:
                path = Path(out_dir) / f"eval_episode_{t.episode}.mp4"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_video(path, t.frames, fps)
                video_paths.append(str(path))
        bar.set_postfix(success=f"{np.mean([r['success'] for r in rows]):.2f}")
    bar.close()
    for env in envs:
        env.close()
    info = {
        "per_episode": rows,
        "aggregated": aggregate(rows, spec, time.perf_counter() - start_time),
        "video_paths": video_paths,
        "settings": {
            "task": spec.name,
            "episodes": episodes,
            "seed": seed,
            "first_start": eval_seed(seed, 0),
            "stop_on_success": stop_on_success,
            "num_envs": n_envs,
        },
    }
    if out_dir is not None:
        atomic_write_text(Path(out_dir) / "eval_info.json", json.dumps(info, indent=2))
    return info


__all__ = ["EpisodeTracker", "Policy", "aggregate", "run"]
