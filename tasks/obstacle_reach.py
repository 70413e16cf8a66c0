"""`obstacle-reach`: a multimodal MuJoCo task of our own.

A disc must travel from the left of the arena to a goal on the right; a pillar stands
in between. Going above it ("left", route 0) or below it ("right", route 1) is equally
good. The expert commits to one route per episode with probability 1/2. A policy that
averages the two routes drives into the pillar, which ends the episode as a failure.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
from gymnasium.envs.mujoco import MujocoEnv

from tasks.spec import Expert, TaskSpec

XML_PATH = str(Path(__file__).parent / "assets" / "obstacle_reach.xml")
ENV_ID = "ddn/ObstacleReach-v0"
MAX_STEPS = 100  # 5 s at 20 Hz; the scripted expert needs 50-65 steps
GOAL_RADIUS = 0.06  # success when the disc centre is this close to the goal
PILLAR_RADIUS = 0.22  # as in assets/obstacle_reach.xml
ROUTE_ZONE = 0.35  # |x - pillar x| inside which the side of the pillar names the route
ROUTE_DEADBAND = 0.05  # |y - pillar y| below which the side is not yet decided
LEFT, RIGHT, UNDECIDED = 0, 1, -1


class ObstacleReachEnv(MujocoEnv):
    """Observation (8,): disc xy, disc velocity xy, goal xy, pillar xy.
    Action (2,) in [-1, 1]: force on the disc (its top speed is about 1 m/s).
    info: success, collision, route (0 left, 1 right, -1 undecided), distance."""

    metadata = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 20}

    def __init__(self, render_mode: str | None = None, width: int = 256, height: int = 256):
        obs_space = gym.spaces.Box(-np.inf, np.inf, (8,), np.float64)
        super().__init__(
            XML_PATH,
            frame_skip=5,
            observation_space=obs_space,
            render_mode=render_mode,
            width=width,
            height=height,
            camera_name="top",
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._agent_geom = self.model.geom("agent").id
        self._obstacle_geom = self.model.geom("obstacle").id
        self._obstacle_mocap = self.model.body_mocapid[self.model.body("obstacle").id]
        self._goal_mocap = self.model.body_mocapid[self.model.body("goal").id]
        self.route = UNDECIDED

    # positions -----------------------------------------------------------------
    @property
    def agent_xy(self) -> np.ndarray:
        return self.data.qpos[:2].copy()

    @property
    def goal_xy(self) -> np.ndarray:
        return self.data.mocap_pos[self._goal_mocap, :2].copy()

    @property
    def obstacle_xy(self) -> np.ndarray:
        return self.data.mocap_pos[self._obstacle_mocap, :2].copy()

    def _get_obs(self) -> np.ndarray:
        return np.concatenate([self.agent_xy, self.data.qvel[:2], self.goal_xy, self.obstacle_xy])

    def reset_model(self) -> np.ndarray:
        rng = self.np_random
        start = np.array([-0.8 + rng.uniform(-0.05, 0.05), rng.uniform(-0.1, 0.1)])
        goal = np.array([0.8 + rng.uniform(-0.05, 0.05), rng.uniform(-0.1, 0.1)])
        pillar = rng.uniform(-0.05, 0.05, 2)
        self.data.mocap_pos[self._goal_mocap, :2] = goal
        self.data.mocap_pos[self._obstacle_mocap, :2] = pillar
        self.set_state(start, np.zeros(2))
        self.route = UNDECIDED
        return self._get_obs()

    def _touching_obstacle(self) -> bool:
        pair = {self._agent_geom, self._obstacle_geom}
        return any(
            {int(c.geom1), int(c.geom2)} == pair for c in self.data.contact[: self.data.ncon]
        )

    def _update_route(self) -> None:
        dx, dy = self.agent_xy - self.obstacle_xy
        if abs(dx) < ROUTE_ZONE and abs(dy) > ROUTE_DEADBAND:
            self.route = LEFT if dy > 0 else RIGHT

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self.do_simulation(action, self.frame_skip)
        self._update_route()
        collision = self._touching_obstacle()
        distance = float(np.linalg.norm(self.agent_xy - self.goal_xy))
        reached = distance < GOAL_RADIUS
        success = reached and not collision
        reward = -distance + (10.0 if success else 0.0) - (10.0 if collision else 0.0)
        info = {
            "success": success,
            "collision": collision,
            "route": self.route,
            "distance": distance,
        }
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), reward, bool(reached or collision), False, info


class ObstacleReachExpert(Expert):
    """Commits to a route with probability 1/2, steers through a via-point beside the
    pillar, then to the goal; Gaussian action noise of `noise_std`."""

    clearance = 0.42  # via-point distance from the pillar centre (0.22 + 0.05 + margin)
    speed = 0.7  # cruise speed, m/s

    def __init__(self, noise_std: float = 0.05):
        self.noise_std = noise_std
        self.rng = np.random.default_rng(0)
        self.strategy = LEFT

    num_strategies = 2

    def reset(self, rng: np.random.Generator, strategy: int | None = None) -> None:
        self.rng = rng
        if strategy not in (None, LEFT, RIGHT):
            raise ValueError(f"strategy must be {LEFT} (left) or {RIGHT} (right), got {strategy}")
        self.strategy = strategy if strategy is not None else int(rng.random() < 0.5)

    def act(self, obs: np.ndarray) -> np.ndarray:
        pos, vel, goal, pillar = obs[0:2], obs[2:4], obs[4:6], obs[6:8]
        side = 1.0 if self.strategy == LEFT else -1.0
        via = pillar + np.array([0.0, side * self.clearance])
        target = via if pos[0] < pillar[0] - 0.05 else goal
        delta = target - pos
        dist = np.linalg.norm(delta)
        v_des = delta / max(dist, 1e-6) * min(self.speed, 3.0 * dist)
        action = v_des + 0.5 * (v_des - vel)
        action = action + self.rng.normal(0.0, self.noise_std, 2)
        return np.clip(action, -1.0, 1.0)


def register() -> None:
    if ENV_ID not in gym.registry:
        gym.register(ENV_ID, entry_point=ObstacleReachEnv, max_episode_steps=MAX_STEPS)


def obstacle_reach_spec() -> TaskSpec:
    register()
    return TaskSpec(
        name="obstacle-reach",
        make_env=lambda render_mode=None, **kw: gym.make(ENV_ID, render_mode=render_mode, **kw),
        make_expert=lambda noise_std=0.05: ObstacleReachExpert(noise_std),
        obs_dim=8,
        action_dim=2,
        max_episode_steps=MAX_STEPS,
        success_hold=1,  # reaching the goal ends the episode
        has_route=True,
        hand_obs=(0, 2),
        action_to_position=0.05,  # top speed ~1 m/s per unit action, 20 Hz control
        obstacle=lambda obs: (obs[6:8], PILLAR_RADIUS, np.array([0.0, 1.0])),  # left = +y
    )
