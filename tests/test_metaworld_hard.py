"""metaworld-hard: two strategies around a pillar, messy experts, out-of-distribution
starts, and the comparison suite's settings."""

import numpy as np
import pytest

from ddn_policy.data import ReplayBuffer, ReplayBufferWriter
from tasks import get_task
from tasks.demos import collect_demos, rollout_expert
from tasks.metaworld_hard import IN_RANGE, MIN_RANGE, OOD_MARGIN, HardVariant


def test_bad_options_name_the_valid_values():
    with pytest.raises(ValueError, match="strategy='middle' is not valid; valid: None, left"):
        get_task("metaworld-hard/push", strategy="middle")
    with pytest.raises(ValueError, match="noise='extreme' is not valid; valid: none, low, high"):
        get_task("metaworld-hard/push:noise-extreme")
    with pytest.raises(ValueError, match="layout='behind' is not valid; valid: ahead, side"):
        get_task("metaworld-hard/push", layout="behind")
    with pytest.raises(ValueError, match=r"unknown options \['speed'\]"):
        get_task("metaworld-hard/push", speed="fast")
    with pytest.raises(ValueError, match="takes no options"):
        get_task("metaworld/push", noise="high")


def test_variant_names_round_trip():
    spec = get_task("metaworld-hard/pick-place", noise="high", starts="ood")
    assert spec.name == "metaworld-hard/pick-place:noise-high:starts-ood"
    assert get_task(spec.name).name == spec.name
    assert HardVariant.parse("metaworld-hard/push").name == "metaworld-hard/push"


@pytest.mark.parametrize("layout", ["ahead", "side"])
@pytest.mark.parametrize("strategy", [0, 1])
def test_each_strategy_passes_the_pillar_on_its_side_and_succeeds(strategy, layout):
    spec = get_task("metaworld-hard/push", layout=layout)
    env, expert = spec.make_env(), spec.make_expert()
    episode, ok = rollout_expert(spec, env, expert, seed=3, strategy=strategy)
    assert ok and env.route == strategy
    assert set(episode["strategy"].tolist()) == {strategy}


@pytest.mark.parametrize("layout", ["ahead", "side"])
def test_the_averaged_path_hits_the_pillar_and_fails(layout):
    """Straight at the first target, as a policy averaging left and right would go."""
    spec = get_task("metaworld-hard/push", layout=layout)
    env = spec.make_env()
    obs, _ = env.reset(seed=3)
    target = obs[4:7] + np.array([0.0, 0.0, 0.2])
    for _ in range(200):
        action = np.r_[np.clip(10 * (target - obs[:3]), -1, 1), 0.0]
        obs, _, terminated, _, info = env.step(action)
        if terminated:
            break
    assert info["collision"] and not info["success"] and terminated


def test_side_layout_strategies_share_the_approach_then_fork():
    spec = get_task("metaworld-hard/pick-place", layout="side")
    env = spec.make_env()
    paths = []
    for strategy in (0, 1):
        episode, ok = rollout_expert(spec, env, spec.make_expert(), seed=5, strategy=strategy)
        assert ok and env.route == strategy
        paths.append(episode["obs"][:, :2])
    left, right = paths
    # the first 5 cm of the way are one path for both (the object settles < 1 mm apart)
    shared = int((np.linalg.norm(left - left[0], axis=1) < 0.05).sum())
    assert shared > 5
    np.testing.assert_allclose(left[:shared], right[:shared], atol=2e-3)
    assert np.abs(left[40] - right[40]).max() > 0.1  # then they fork


def test_starts_in_and_out_of_distribution():
    in_env = get_task("metaworld-hard/push").make_env()
    ood_env = get_task("metaworld-hard/push", starts="ood").make_env()
    space = in_env.env.unwrapped._random_reset_space
    low, high = space.low, space.high
    varying = (high - low) >= MIN_RANGE
    a, _ = in_env.reset(seed=7)
    b, _ = in_env.reset(seed=7)
    np.testing.assert_array_equal(a, b)
    for seed in range(10):
        in_env.reset(seed=seed)
        ood_env.reset(seed=seed)
        u_in = (in_env.env.unwrapped._last_rand_vec - low)[varying] / (high - low)[varying]
        u_ood = (ood_env.env.unwrapped._last_rand_vec - low)[varying] / (high - low)[varying]
        assert ((u_in >= IN_RANGE[0]) & (u_in <= IN_RANGE[1])).all()
        beyond = (u_ood < IN_RANGE[0] - OOD_MARGIN) | (u_ood > IN_RANGE[1] + OOD_MARGIN)
        assert beyond.any() and ((u_ood >= 0) & (u_ood <= 1)).all()


def test_noisy_expert_is_correlated_pauses_and_still_succeeds(tmp_path):
    clean = get_task("metaworld-hard/reach")
    noisy = get_task("metaworld-hard/reach", noise="high")
    env = clean.make_env()
    ep_clean, _ = rollout_expert(clean, env, clean.make_expert(), seed=1, strategy=0)
    ep_noisy, ok = rollout_expert(noisy, env, noisy.make_expert(), seed=1, strategy=0)
    assert ok
    n = min(len(ep_clean["action"]), len(ep_noisy["action"]))
    assert not np.allclose(ep_clean["action"][:n], ep_noisy["action"][:n])
    # OU noise: successive perturbations are strongly correlated
    expert = noisy.make_expert()
    expert.reset(np.random.default_rng(0), 0)
    noise = []
    for _ in range(400):
        expert._perturb(np.zeros(4))
        noise.append(expert._noise[0])
    noise = np.array(noise)
    assert np.corrcoef(noise[:-1], noise[1:])[0, 1] > 0.7
    paused = [np.allclose(expert._perturb(np.ones(4))[:3], 0.0) for _ in range(2000)]
    assert 0.02 < np.mean(paused) < 0.3
    report = collect_demos(noisy, ReplayBufferWriter(tmp_path / "d.zarr"), 2, 0, progress=False)
    assert report.kept == 2
    assert "strategy" in ReplayBuffer(tmp_path / "d.zarr").keys


def test_demonstrations_show_both_strategies_from_each_start(tmp_path):
    spec = get_task("metaworld-hard/reach")
    report = collect_demos(spec, ReplayBufferWriter(tmp_path / "d.zarr"), 4, 0, progress=False)
    assert report.route_counts == {0: 2, 1: 2}
    buf = ReplayBuffer(tmp_path / "d.zarr")
    firsts = [buf.episode(i) for i in range(4)]
    for a, b in (firsts[0:2], firsts[2:4]):  # a pair: one start, both strategies
        # same hand, object and goal positions (the object's settled pose differs by < 1 mm)
        np.testing.assert_allclose(
            a["obs"][0][[*range(7), 36, 37, 38]], b["obs"][0][[*range(7), 36, 37, 38]], atol=1e-3
        )
        assert {int(a["strategy"][0]), int(b["strategy"][0])} == {0, 1}
    assert not np.allclose(firsts[0]["obs"][0], firsts[2]["obs"][0])
