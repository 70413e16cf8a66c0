import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ddn_policy.data import ReplayBuffer, ReplayBufferWriter
from ddn_policy.evaluation.policies import ExpertPolicy, RandomPolicy
from ddn_policy.evaluation.runner import run
from tasks import get_task, known_tasks
from tasks.demos import collect_demos


def test_every_known_task_has_a_hydra_config():
    configs = Path(__file__).parents[1] / "configs" / "task"
    names = {str(p.relative_to(configs).with_suffix("")) for p in configs.rglob("*.yaml")}
    assert names == set(known_tasks())


def test_unknown_task_lists_known_ones():
    with pytest.raises(ValueError, match="known tasks: obstacle-reach, metaworld/assembly"):
        get_task("metaworld/fly")


def test_obstacle_reach_start_is_fixed_by_the_seed_and_pillar_ends_episode():
    spec = get_task("obstacle-reach")
    env = spec.make_env()
    a, _ = env.reset(seed=3)
    b, _ = env.reset(seed=3)
    c, _ = env.reset(seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    # Driving straight at the pillar: a collision, a terminated failure.
    env.reset(seed=3)
    for _ in range(spec.max_episode_steps):
        _, _, terminated, truncated, info = env.step(np.array([1.0, 0.0]))
        if terminated or truncated:
            break
    assert info["collision"] and not info["success"] and terminated


def test_obstacle_reach_expert_succeeds_on_both_routes():
    spec = get_task("obstacle-reach")
    env, expert = spec.make_env(), spec.make_expert()
    for strategy in (0, 1):
        obs, _ = env.reset(seed=11)
        expert.reset(np.random.default_rng(0), strategy)
        routes = set()
        for _ in range(spec.max_episode_steps):
            obs, _, terminated, truncated, info = env.step(expert.act(obs))
            if info["route"] >= 0:
                routes.add(info["route"])
            if terminated or truncated:
                break
        assert info["success"] and routes == {strategy}


def test_metaworld_start_is_fixed_by_the_seed():
    spec = get_task("metaworld/reach")
    env = spec.make_env()
    a, _ = env.reset(seed=5)
    b, _ = env.reset(seed=5)
    c, _ = env.reset(seed=6)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a[-3:], c[-3:])  # goal moved
    assert a.shape == (39,) and env.action_space.shape == (4,)


def test_demos_are_successful_balanced_and_appendable(tmp_path):
    spec = get_task("obstacle-reach")
    path = tmp_path / "or.zarr"
    report = collect_demos(spec, ReplayBufferWriter(path), episodes=6, seed=0, progress=False)
    assert report.kept == 6 and report.expert_success > 0.9
    assert report.route_counts == {0: 3, 1: 3}
    buf = ReplayBuffer(path, required_keys=("obs", "action", "reward", "success", "strategy"))
    for e in range(buf.num_episodes):
        ep = buf.episode(e)
        assert ep["success"][-1] and len(set(ep["strategy"].tolist())) == 1
    first_obs = buf["obs"][0].copy()
    collect_demos(spec, ReplayBufferWriter(path, "append"), 2, seed=0, progress=False)
    buf = ReplayBuffer(path)
    assert buf.num_episodes == 8
    starts = [buf.episode(e)["obs"][0] for e in range(8)]
    assert len({tuple(s.round(6)) for s in starts}) == 8  # appended runs add new starts
    np.testing.assert_array_equal(buf["obs"][0], first_obs)


def test_runner_with_expert_and_random_policies(tmp_path):
    spec = get_task("obstacle-reach")
    info = run(
        ExpertPolicy(spec), spec, episodes=6, seed=0, out_dir=tmp_path, num_envs=4, progress=False
    )
    agg = info["aggregated"]
    assert agg["pc_success"] == 100.0 and agg["switch_rate"] == 0.0
    assert set(agg["route_frequencies"]) <= {"0", "1"}
    rows = json.loads((tmp_path / "eval_info.json").read_text())["per_episode"]
    assert [r["episode"] for r in rows] == list(range(6))
    assert {"seed", "success", "sum_reward", "max_reward", "steps", "route"} <= set(rows[0])
    rand = run(RandomPolicy(2), spec, episodes=4, seed=0, progress=False)
    assert rand["aggregated"]["pc_success"] == 0.0
    # same seed, same starts: the expert's rows repeat exactly
    again = run(ExpertPolicy(spec), spec, episodes=6, seed=0, num_envs=4, progress=False)
    assert again["per_episode"] == info["per_episode"]


def test_runner_writes_a_video(tmp_path):
    spec = get_task("obstacle-reach")
    info = run(
        ExpertPolicy(spec), spec, episodes=2, seed=0, videos=1, out_dir=tmp_path, progress=False
    )
    assert info["video_paths"] == [str(tmp_path / "eval_episode_0.mp4")]
    assert (tmp_path / "eval_episode_0.mp4").stat().st_size > 1000


def test_ddn_demos_command(tmp_path):
    out = tmp_path / "d.zarr"
    cmd = [
        sys.executable,
        "-m",
        "ddn_policy.cli.demos",
        "task=obstacle-reach",
        "episodes=3",
        f"out={out}",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "expert success 1.000" in res.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "pass append=true" in again.stderr
    assert ReplayBuffer(out).num_episodes == 3


def test_a_route_never_taken_is_reported_as_zero():
    from ddn_policy.evaluation.runner import aggregate

    spec = get_task("obstacle-reach")
    rows = [
        {
            "success": True,
            "sum_reward": 1.0,
            "max_reward": 1.0,
            "steps": 10,
            "route": 1,
            "route_switches": 0,
            "collision": False,
        }
    ] * 3
    agg = aggregate(rows, spec, wall_s=1.0)
    assert agg["route_frequencies"] == {"0": 0.0, "1": 1.0}
