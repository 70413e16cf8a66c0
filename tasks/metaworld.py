"""Meta-World v3 (state observations, 39-D obs, 4-D actions), any MT1 task by name.

Meta-World's own `gym.make('Meta-World/MT1', ...)` draws the start from 50 pre-sampled
goals and ignores `reset(seed=...)`. Here the environment draws object and goal
positions from its task's continuous reset range with the reset seed, so episode i of
an evaluation is the same start on every machine and for every method.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from tasks.spec import Expert, TaskSpec

# Meta-World's 500-step limit; DP3-style short horizons (To=2, Tp=4, Ta=3 are the DP3
# paper's; we keep Diffusion Policy's CNN defaults scaled to Meta-World: To=2, Tp=16, Ta=8).
MAX_STEPS = 500


def task_names() -> list[str]:
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return sorted(name.removesuffix("-v3") for name in ALL_V3_ENVIRONMENTS)


class MetaWorldEnv(gym.Wrapper):
    """A Meta-World v3 task whose reset seed fixes the object and goal positions."""

    def __init__(
        self,
        task: str,
        render_mode: str | None = None,
        camera_name: str = "corner2",
        width: int = 256,
        height: int = 256,
        max_episode_steps: int = MAX_STEPS,
        model_path: str | None = None,
    ):
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS, MT50_V3_ARGS_KWARGS

        key = f"{task}-v3"
        if key not in ALL_V3_ENVIRONMENTS:
            raise ValueError(f"unknown Meta-World task {task!r}; known: {', '.join(task_names())}")
        env_class = ALL_V3_ENVIRONMENTS[key]
        if model_path is not None:  # the same task in a modified scene (tasks/metaworld_hard.py)
            env_class = type(env_class.__name__, (env_class,), {"model_name": model_path})
        env = env_class(
            render_mode=render_mode, camera_name=camera_name, width=width, height=height
        )
        kwargs = dict(MT50_V3_ARGS_KWARGS[key]["kwargs"])
        kwargs.pop("task_id", None)
        env._set_task_called = True
        env._set_task_inner(**kwargs)
        env._partially_observable = False  # goal position is part of the observation (MT1)
        if "sawyer_observation_space" in env.__dict__:
            del env.sawyer_observation_space  # cached for the goal-hidden layout: recompute
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True  # draw starts from env.np_random, seeded per episode
        env.seed(0)
        super().__init__(gym.wrappers.TimeLimit(env, max_episode_steps))
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (39,), np.float64)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self.env.unwrapped.seed(int(seed))
        obs, info = self.env.reset()
        return obs, info

    def render(self):
        frame = self.env.render()
        # Meta-World's cameras come out upside down through gymnasium's renderer.
        return None if frame is None else np.ascontiguousarray(frame[::-1])

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info["success"] = bool(info.get("success", 0.0))
        return obs, reward, terminated, truncated, info


class MetaWorldExpert(Expert):
    """The task's scripted policy from `metaworld.policies`, with optional Gaussian
    action noise (clipped to the action box)."""

    def __init__(self, task: str, noise_std: float = 0.0):
        from metaworld.policies import ENV_POLICY_MAP

        self.policy = ENV_POLICY_MAP[f"{task}-v3"]()
        self.noise_std = noise_std
        self.rng = np.random.default_rng(0)

    def reset(self, rng: np.random.Generator, strategy: int | None = None) -> None:
        self.rng = rng

    def act(self, obs: np.ndarray) -> np.ndarray:
        action = np.asarray(self.policy.get_action(obs), dtype=np.float64)
        if self.noise_std > 0:
            action = action + self.rng.normal(0.0, self.noise_std, action.shape)
        return np.clip(action, -1.0, 1.0)


def metaworld_spec(task: str) -> TaskSpec:
    if task not in task_names():
        raise ValueError(f"unknown Meta-World task {task!r}; known: {', '.join(task_names())}")
    return TaskSpec(
        name=f"metaworld/{task}",
        make_env=lambda render_mode=None, **kw: MetaWorldEnv(task, render_mode=render_mode, **kw),
        make_expert=lambda noise_std=0.0: MetaWorldExpert(task, noise_std),
        obs_dim=39,
        action_dim=4,
        max_episode_steps=MAX_STEPS,
        success_hold=3,
    )
