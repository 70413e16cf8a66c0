"""`metaworld-hard/<task>`: Meta-World tasks made discriminating for policy comparisons.

Clean scripted demonstrations are nearly unimodal, so every method scores near 1.0. Here:

- **Two strategies.** A pillar stands on the table halfway between the hand's start and
  the first thing the hand must reach (the object, or the goal for reach). The expert
  commits per episode to passing it on the left (strategy 0) or on the right (1) through
  a via-point, then hands over to Meta-World's scripted policy. Demonstrations show both
  strategies from every start (`TaskSpec.paired_starts`): with a few demonstrations at
  distinct starts a regressor would otherwise learn the start -> strategy map and never
  face two answers for one state. A policy that averages the two strategies drives into
  the pillar; touching it with the robot ends the episode as a failure. The pillar is
  not in the 39-D observation, but its place is a fixed function of the first
  observation (hand start and target), which the policy sees.
  `info["route"]` is the side the hand passed on (-1 before it reaches the pillar).
- **Two layouts.** `layout=ahead` (the default): the hand starts in front of the robot and
  the pillar stands only ~12 cm ahead of it, so the expert's first move is sideways and
  the two strategies share no path. `layout=side`: the hand starts 45 cm to the robot's
  left of the target, the expert drives straight at the pillar and forks `FORK_BACK`
  short of it, so every demonstration shares its first segment and the strategies split
  from one moving state (where an average of the two goes straight on, into the pillar).
- **Messy demonstrations.** `noise=low|high` adds temporally correlated
  (Ornstein-Uhlenbeck) action noise and occasional pauses to the expert; demonstrations
  are still kept only when they succeed.
- **Out-of-distribution starts.** Object and goal positions are drawn from the central
  half of the task's reset range (`starts=in`, demonstrations and in-distribution
  evaluation) or, for `starts=ood`, from the rest of the range at least `OOD_MARGIN` of
  the range's width beyond the central half in one coordinate or more.

Variants are task options: `get_task("metaworld-hard/push", noise="high")`, on the command
line `task=metaworld-hard/push task.noise=high`; the spec's name carries them
(`metaworld-hard/push:noise-high`, a form Hydra accepts as a plain value, e.g.
`ddn-eval task=metaworld-hard/push:starts-ood`) so demonstrations are cached per variant.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from tasks import HARD_PREFIX
from tasks.metaworld import MAX_STEPS, MetaWorldEnv, MetaWorldExpert
from tasks.spec import Expert, TaskSpec

# task -> which part of the reset vector the hand goes to first (the pillar stands
# halfway there): "object" = rand_vec[0:3], "goal" = rand_vec[3:6]
FIRST_TARGET = {"push": "object", "pick-place": "object", "reach": "goal", "assembly": "object"}
# Meta-World's reset redraws until object and goal are this far apart (xy); with a fixed
# reset vector that loop would never end, so starts closer than this are redrawn here
MIN_OBJECT_GOAL = {"push": 0.15, "pick-place": 0.15, "reach": 0.15, "assembly": 0.1}
# index = the strategy number recorded in data/strategy; left = -x, the robot's left
STRATEGIES = ("left", "right")
NOISE_LEVELS = {"none": 0.0, "low": 0.05, "high": 0.1}  # stationary std of the OU noise
STARTS = ("in", "ood")
LAYOUTS = ("ahead", "side")
AHEAD_AXES = (np.array([0.0, 1.0]), np.array([-1.0, 0.0]))  # layout ahead: +y, left = -x

# layout -> the hand's start; ahead: farther back than Meta-World's, to leave room
HAND_START = {"ahead": np.array([0.0, 0.4, 0.2]), "side": np.array([-0.45, 0.65, 0.2])}
CRUISE_HEIGHT = 0.2  # m, the hand's height until it is past the pillar
PILLAR_RADIUS = 0.03
PILLAR_HEIGHT = 0.35  # above the scripted policies' 0.2 m cruise height and the claws
# layout -> via-point's distance beside the pillar centre (side: the hand passes the
# pillar diagonally, and 0.12 lets the hand's mesh touch it)
VIA_CLEARANCE = {"ahead": 0.12, "side": 0.16}
VIA_AHEAD = 0.06  # and this far beyond it (towards the target)
FORK_BACK = 0.12  # side layout: the shared path ends this far short of the pillar centre
ROUTE_ZONE = 0.06  # distance along the way from the pillar inside which its side names the route
ROUTE_DEADBAND = 0.03  # distance aside from the pillar below which the side is not decided
IN_RANGE = (0.25, 0.75)  # the central half of each reset coordinate's range
OOD_MARGIN = 0.1  # out-of-distribution: this fraction of the range beyond the central half
MIN_RANGE = 0.02  # m; coordinates with a narrower reset range cannot be out of distribution
OU_THETA = 0.15  # mean reversion per step of the OU action noise
PAUSE_PROB = 0.01  # per step: chance that the expert starts a pause
PAUSE_STEPS = (5, 15)  # a pause holds the hand still this many steps


@dataclass(frozen=True)
class HardVariant:
    """One variant of a hard Meta-World task."""

    task: str  # Meta-World task name, one of FIRST_TARGET
    strategy: str | None = None  # only this strategy (None: each episode draws one)
    noise: str = "none"  # expert noise level, one of NOISE_LEVELS
    starts: str = "in"  # start distribution, one of STARTS
    layout: str = "ahead"  # where the hand starts and where the strategies fork, one of LAYOUTS

    def __post_init__(self):
        checks = {
            "task": (self.task, tuple(FIRST_TARGET)),
            "strategy": (self.strategy, (None, *STRATEGIES)),
            "noise": (self.noise, tuple(NOISE_LEVELS)),
            "starts": (self.starts, STARTS),
            "layout": (self.layout, LAYOUTS),
        }
        for name, (value, valid) in checks.items():
            if value not in valid:
                shown = ", ".join(str(v) for v in valid)
                raise ValueError(f"metaworld-hard: {name}={value!r} is not valid; valid: {shown}")

    @property
    def name(self) -> str:
        options = [
            f":{f.name}-{getattr(self, f.name)}"
            for f in fields(self)[1:]
            if getattr(self, f.name) != f.default
        ]
        return HARD_PREFIX + self.task + "".join(options)

    @classmethod
    def parse(cls, name: str, **options) -> HardVariant:
        """`metaworld-hard/push:noise-high` (and keyword options) -> HardVariant."""
        task, *items = name.removeprefix(HARD_PREFIX).split(":")
        for item in items:
            key, _, value = item.partition("-")
            options.setdefault(key, value)
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ValueError(f"metaworld-hard: unknown options {unknown}; valid: {list(OPTIONS)}")
        options = {k: (None if v in ("None", "null") else v) for k, v in options.items()}
        return cls(task, **options)


OPTIONS = tuple(f.name for f in fields(HardVariant)[1:])  # strategy, noise, starts, layout


def task_names() -> list[str]:
    return list(FIRST_TARGET)


def pillar_model_path(task: str) -> str:
    """The task's Meta-World scene with a pillar body added, written once to a temp dir."""
    import mujoco
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    original = ALL_V3_ENVIRONMENTS[f"{task}-v3"].model_name.fget(None)
    spec = mujoco.MjSpec.from_file(original)
    # the asset paths are relative to the original file; keep them valid from elsewhere
    spec.meshdir = spec.texturedir = str(Path(original).parent) + "/"
    pillar = spec.worldbody.add_body(name="ddn_pillar", pos=[0.0, 2.0, 0.0])  # off the table
    pillar.add_geom(
        name="ddn_pillar",
        type=mujoco.mjtGeom.mjGEOM_CYLINDER,
        size=[PILLAR_RADIUS, PILLAR_HEIGHT / 2, 0.0],
        pos=[0.0, 0.0, PILLAR_HEIGHT / 2],
        rgba=[0.8, 0.25, 0.2, 1.0],
    )
    spec.compile()  # to_xml writes compiled specs only
    xml = spec.to_xml()
    digest = hashlib.sha256(xml.encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / "ddn-policy-scenes" / f"{task}-pillar-{digest}.xml"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(xml)
        tmp.replace(path)
    return str(path)


def first_target(task: str, obs: np.ndarray) -> np.ndarray:
    """Where the hand goes first, read from an observation (object at 4:7, goal at 36:39)."""
    return obs[4:7] if FIRST_TARGET[task] == "object" else obs[36:39]


def pillar_xy(task: str, first_obs: np.ndarray) -> np.ndarray:
    """Halfway between the hand's start and its first target, from the first observation."""
    return 0.5 * (first_obs[:2] + first_target(task, first_obs)[:2])


def travel_axes(layout: str, task: str, first_obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit xy vectors (towards the target, towards the left strategy's side). ahead: +y
    and -x for every start, the axes the layout was built on; side: from the hand's start
    to the first target, and that turned a quarter anticlockwise."""
    if layout == "ahead":
        return AHEAD_AXES
    way = first_target(task, first_obs)[:2] - first_obs[:2]
    way = way / np.linalg.norm(way)
    return way, np.array([-way[1], way[0]])


def draw_start(
    rng: np.random.Generator, low: np.ndarray, high: np.ndarray, starts: str, min_separation: float
) -> np.ndarray:
    """A reset vector (object xyz, goal xyz) from the in- or out-of-distribution part of
    the range [low, high], object and goal at least `min_separation` apart in xy."""
    varying = (high - low) >= MIN_RANGE
    lo, hi = IN_RANGE
    for _ in range(10_000):
        u = rng.uniform(0.0, 1.0, low.shape)
        if starts == "in":
            u = np.where(varying, lo + (hi - lo) * u, u)
        elif not (((u < lo - OOD_MARGIN) | (u > hi + OOD_MARGIN)) & varying).any():
            continue
        vec = low + u * (high - low)
        if np.linalg.norm(vec[0:2] - vec[3:5]) >= min_separation:
            return vec
    raise RuntimeError(f"no {starts} start drawn in 10000 tries")  # pragma: no cover


class HardMetaWorldEnv(MetaWorldEnv):
    """A Meta-World task with a pillar to pass on either side and a chosen start range.
    info adds: collision (the robot touched the pillar: the episode ends, a failure) and
    route (0 passed on the left, 1 on the right, -1 not yet)."""

    def __init__(self, variant: HardVariant, render_mode: str | None = None, **kw):
        super().__init__(
            variant.task, render_mode=render_mode, model_path=pillar_model_path(variant.task), **kw
        )
        self.variant = variant
        inner = self.env.unwrapped
        inner.hand_init_pos = HAND_START[variant.layout].copy()
        self._model = inner.model
        self._pillar_body = self._model.body("ddn_pillar").id
        self._pillar_geom = self._model.geom("ddn_pillar").id
        robot_root = self._model.body_rootid[self._model.body("base").id]
        self._robot_geoms = set(
            np.flatnonzero(self._model.body_rootid[self._model.geom_bodyid] == robot_root).tolist()
        )
        self.route = -1
        self._pillar = np.zeros(2)
        self._axes = AHEAD_AXES  # set per episode by reset

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        import mujoco

        inner = self.env.unwrapped
        space = inner._random_reset_space
        rng = np.random.default_rng(seed)
        inner._last_rand_vec = draw_start(
            rng, space.low, space.high, self.variant.starts, MIN_OBJECT_GOAL[self.variant.task]
        )
        inner._freeze_rand_vec = True
        obs, info = self.env.reset()
        self._pillar = pillar_xy(self.variant.task, obs)
        self._axes = travel_axes(self.variant.layout, self.variant.task, obs)
        self._model.body_pos[self._pillar_body, :2] = self._pillar
        mujoco.mj_forward(self._model, inner.data)
        self.route = -1
        return obs, info

    def _collision(self) -> bool:
        data = self.env.unwrapped.data
        for c in data.contact[: data.ncon]:
            pair = {int(c.geom1), int(c.geom2)}
            if self._pillar_geom in pair and (pair - {self._pillar_geom}) & self._robot_geoms:
                return True
        return False

    def _update_route(self, hand_xy: np.ndarray) -> None:
        ahead, left = self._axes
        offset = hand_xy - self._pillar
        along, aside = offset @ ahead, offset @ left
        if abs(along) < ROUTE_ZONE and abs(aside) > ROUTE_DEADBAND:
            self.route = 0 if aside > 0 else 1

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        self._update_route(obs[:2])
        collision = self._collision()
        info.update(route=self.route, collision=collision)
        if collision:
            info["success"] = False
        return obs, reward, terminated or collision, truncated, info


class StrategyExpert(Expert):
    """Meta-World's scripted policy behind a via-point beside the pillar (left or right),
    with optional OU action noise and pauses."""

    num_strategies = len(STRATEGIES)

    def __init__(self, variant: HardVariant, gaussian_std: float = 0.0):
        self.variant = variant
        self.scripted = MetaWorldExpert(variant.task, gaussian_std)
        self.noise_std = NOISE_LEVELS[variant.noise]
        self.rng = np.random.default_rng(0)
        self.strategy = 0

    def reset(self, rng: np.random.Generator, strategy: int | None = None) -> None:
        if strategy is not None and strategy not in range(self.num_strategies):
            raise ValueError(
                f"strategy must be one of {list(range(self.num_strategies))} "
                f"({', '.join(STRATEGIES)}), got {strategy}"
            )
        fixed = self.variant.strategy
        if fixed is not None:
            strategy = STRATEGIES.index(fixed)
        self.rng = rng
        self.scripted.reset(rng)
        self.strategy = int(rng.integers(self.num_strategies)) if strategy is None else strategy
        self._via = None
        self._noise = np.zeros(3)
        self._pause = 0

    def act(self, obs: np.ndarray) -> np.ndarray:
        if self._via is None:  # the first observation fixes the pillar and the via-points
            layout = self.variant.layout
            pillar = pillar_xy(self.variant.task, obs)
            ahead, left = travel_axes(layout, self.variant.task, obs)
            beside = pillar + (1.0 if self.strategy == 0 else -1.0) * VIA_CLEARANCE[layout] * left
            if layout == "ahead":  # sideways first (the claws reach ahead of the hand)
                self._via = [np.array([beside[0], obs[1]]), beside + VIA_AHEAD * ahead]
            else:  # straight at the pillar, then diagonally out to beside it
                self._via = [pillar - FORK_BACK * ahead, beside, beside + VIA_AHEAD * ahead]
        action = self.scripted.act(obs)
        if self._via and np.linalg.norm(obs[:2] - self._via[0]) < 0.02:
            self._via.pop(0)  # reached; after the last one the scripted policy takes over
        if self._via:
            action[:2] = np.clip(10.0 * (self._via[0] - obs[:2]), -1.0, 1.0)
            action[2] = np.clip(10.0 * (CRUISE_HEIGHT - obs[2]), -1.0, 1.0)
        return self._perturb(action)

    def _perturb(self, action: np.ndarray) -> np.ndarray:
        if self.noise_std == 0.0:
            return action
        sigma = self.noise_std * np.sqrt(2 * OU_THETA - OU_THETA**2)  # stationary std
        self._noise += -OU_THETA * self._noise + sigma * self.rng.normal(size=3)
        if self._pause == 0 and self.rng.random() < PAUSE_PROB:
            self._pause = int(self.rng.integers(*PAUSE_STEPS, endpoint=True))
        action = action.copy()
        if self._pause > 0:
            self._pause -= 1
            action[:3] = 0.0
        else:
            action[:3] += self._noise
        return np.clip(action, -1.0, 1.0)


def hard_spec(name: str, **options) -> TaskSpec:
    variant = HardVariant.parse(name, **options)
    return TaskSpec(
        name=variant.name,
        make_env=lambda render_mode=None, **kw: HardMetaWorldEnv(variant, render_mode, **kw),
        make_expert=lambda noise_std=0.0: StrategyExpert(variant, noise_std),
        obs_dim=39,
        action_dim=4,
        max_episode_steps=MAX_STEPS,
        success_hold=3,
        has_route=True,
        paired_starts=variant.strategy is None,  # one strategy: no pairs to show
        obstacle=lambda obs: (
            pillar_xy(variant.task, obs),
            PILLAR_RADIUS,
            travel_axes(variant.layout, variant.task, obs)[1],
        ),
    )
