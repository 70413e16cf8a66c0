"""What a task is: an environment factory, a scripted expert, sizes, horizons, success."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np


class Expert:
    """A scripted demonstrator: `reset(rng, strategy)` at the start of an episode, then
    `act(obs) -> action`. `strategy` is the mode it commits to (a route), drawn from rng
    when not given; None for experts with a single mode."""

    strategy: int | None = None
    num_strategies: int = 1

    def reset(self, rng: np.random.Generator, strategy: int | None = None) -> None:
        raise NotImplementedError  # pragma: no cover - interface

    def act(self, obs: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class TaskSpec:
    """One task, as every command sees it."""

    name: str  # e.g. "metaworld/push", "obstacle-reach"
    make_env: Callable[..., gym.Env]  # make_env(render_mode=None); reset(seed=s) fixes the start
    make_expert: Callable[[float], Expert]  # make_expert(action_noise_std) -> Expert
    obs_dim: int  # length of the state observation vector
    action_dim: int  # length of the action vector
    max_episode_steps: int  # time limit of one episode
    obs_horizon: int = 2  # To: observations the policy sees
    pred_horizon: int = 16  # Tp: actions the policy predicts per chunk
    action_horizon: int = 8  # Ta: actions executed per chunk
    success_hold: int = 1  # demonstrations keep episodes whose success held this many steps
    has_route: bool = False  # info["route"] exists (multimodal tasks)
    # demonstrations show every strategy from each start, so the data is multimodal at
    # the same state (otherwise a few demonstrations let the start decide the strategy)
    paired_starts: bool = False
    hand_obs: tuple[int, int] = (0, 3)  # obs[a:b] is the hand (end-effector) position
    action_to_position: float = 0.01  # hand displacement per unit of action, per step
    # route tasks: first observation -> (obstacle centre xy, radius, unit xy vector towards
    # the route-0 side); pictures use it to draw the obstacle and name undecided sides
    obstacle: Callable[[np.ndarray], tuple[np.ndarray, float, np.ndarray]] | None = None

    def __post_init__(self):
        if not 1 <= self.action_horizon <= self.pred_horizon - self.obs_horizon + 1:
            raise ValueError(
                f"{self.name}: need 1 <= Ta <= Tp - To + 1, got To={self.obs_horizon}, "
                f"Tp={self.pred_horizon}, Ta={self.action_horizon}"
            )


# Demonstrations and evaluations draw starts from disjoint seed ranges, so no evaluation
# episode repeats a demonstrated start: run seed s, episode i.
SEED_STRIDE = 10_000
EVAL_SEED_OFFSET = 1_000_000


def demo_seed(seed: int, episode: int) -> int:
    return SEED_STRIDE * seed + episode


def eval_seed(seed: int, episode: int) -> int:
    return EVAL_SEED_OFFSET + SEED_STRIDE * seed + episode
