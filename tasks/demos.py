"""Scripted demonstrations: run the expert, keep the successful episodes, append them
to a replay buffer one whole episode at a time."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from ddn_policy.data.replay_buffer import ReplayBufferWriter
from tasks.spec import SEED_STRIDE, TaskSpec, demo_seed


@dataclass
class DemoReport:
    kept: int  # successful episodes written
    attempted: int  # episodes run
    route_counts: dict[int, int]  # committed route -> kept episodes (multimodal tasks)

    @property
    def expert_success(self) -> float:
        return self.kept / max(self.attempted, 1)


def rollout_expert(
    spec: TaskSpec, env, expert, seed: int, strategy: int | None = None
) -> tuple[dict, bool]:
    """One expert episode from start `seed`. Stops once success has held for
    `spec.success_hold` steps (the DP3 rule), or at termination or the time limit."""
    obs, _ = env.reset(seed=seed)
    expert.reset(np.random.default_rng(seed), strategy)
    rows = {"obs": [], "action": [], "reward": [], "success": []}
    held = 0
    for _ in range(spec.max_episode_steps):
        action = expert.act(obs)
        rows["obs"].append(obs)
        rows["action"].append(action)
        obs, reward, terminated, truncated, info = env.step(action)
        rows["reward"].append(reward)
        rows["success"].append(bool(info["success"]))
        held = held + 1 if info["success"] else 0
        if held >= spec.success_hold or terminated or truncated:
            break
    episode = {
        "obs": np.asarray(rows["obs"], dtype=np.float32),
        "action": np.asarray(rows["action"], dtype=np.float32),
        "reward": np.asarray(rows["reward"], dtype=np.float32),
        "success": np.asarray(rows["success"], dtype=bool),
    }
    if expert.num_strategies > 1:  # the strategy the expert committed to, per step
        episode["strategy"] = np.full(len(rows["obs"]), expert.strategy, dtype=np.int8)
    return episode, held >= spec.success_hold


def collect_demos(
    spec: TaskSpec,
    writer: ReplayBufferWriter,
    episodes: int,
    seed: int,
    noise_std: float | None = None,
    max_attempts: int | None = None,
    progress: bool = True,
) -> DemoReport:
    """Append `episodes` successful expert episodes to `writer`. Starts continue after
    the ones earlier runs on the same store used, so an appended run adds new starts."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got episodes={episodes}")
    max_attempts = max_attempts or 3 * episodes + 10
    if max_attempts > SEED_STRIDE:
        raise ValueError(f"max_attempts must be <= {SEED_STRIDE}, got {max_attempts}")
    env = spec.make_env()
    expert = spec.make_expert() if noise_std is None else spec.make_expert(noise_std)
    kept, attempted, routes = 0, 0, {}
    first = int(writer.attrs.get("next_demo_start", 0))  # starts a previous run used
    bar = tqdm(total=episodes, desc=f"demos {spec.name}", disable=not progress)
    # Multimodal experts draw each strategy with probability 1/K, in shuffled blocks of
    # K episodes, so the demonstrations are balanced rather than balanced on average;
    # with paired_starts a block's episodes share one start.
    schedule = np.random.default_rng(seed + first)
    block: list[int] = []
    block_start = first
    while kept < episodes:
        if attempted >= max_attempts:
            raise RuntimeError(
                f"{spec.name}: only {kept} of {episodes} expert episodes succeeded in "
                f"{attempted} attempts (expert success {kept / attempted:.2f})"
            )
        strategy = None
        if expert.num_strategies > 1:
            if not block:
                block = schedule.permutation(expert.num_strategies).tolist()
                block_start = first + attempted
            strategy = block.pop()
        paired = spec.paired_starts and strategy is not None
        start = demo_seed(seed, block_start if paired else first + attempted)
        episode, ok = rollout_expert(spec, env, expert, start, strategy)
        attempted += 1
        if ok:
            writer.add_episode(episode)
            writer.attrs["next_demo_start"] = first + attempted
            kept += 1
            if expert.num_strategies > 1:
                routes[int(expert.strategy)] = routes.get(int(expert.strategy), 0) + 1
            bar.update(1)
        bar.set_postfix(expert_success=f"{kept / attempted:.2f}")
    bar.close()
    env.close()
    return DemoReport(kept, attempted, routes)
