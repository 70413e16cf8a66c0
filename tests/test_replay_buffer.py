from pathlib import Path

import numpy as np
import pytest
import zarr

from ddn_policy.data import (
    MinMaxNormalizer,
    ReplayBuffer,
    ReplayBufferError,
    ReplayBufferWriter,
    SequenceDataset,
    split_episodes,
)


def episode(n, start=0.0, obs_dim=3):
    t = np.arange(n, dtype=np.float32) + start
    return {
        "obs": np.stack([t] * obs_dim, 1),
        "action": np.stack([t, -t], 1),
        "success": np.arange(n) == n - 1,
    }


def test_round_trip_in_diffusion_policy_layout(tmp_path):
    path = tmp_path / "demo.zarr"
    w = ReplayBufferWriter(path)
    w.add_episode(episode(4))
    w.add_episode(episode(3, start=100))
    root = zarr.open_group(str(path), mode="r")
    assert root.metadata.zarr_format == 2
    assert root["meta/episode_ends"][:].tolist() == [4, 7]
    assert root["data/obs"].shape == (7, 3)
    buf = ReplayBuffer(path, required_keys=("obs", "action"))
    assert buf.num_episodes == 2 and buf.num_steps == 7
    np.testing.assert_array_equal(buf.episode(1)["action"][:, 0], [100, 101, 102])


def test_create_refuses_existing_and_append_adds(tmp_path):
    path = tmp_path / "demo.zarr"
    ReplayBufferWriter(path).add_episode(episode(2))
    with pytest.raises(ReplayBufferError, match="already exists; pass append=true"):
        ReplayBufferWriter(path, mode="create")
    ReplayBufferWriter(path, mode="append").add_episode(episode(5))
    assert ReplayBuffer(path).num_episodes == 2


def test_interrupted_append_leaves_no_half_episode(tmp_path):
    path = tmp_path / "demo.zarr"
    ReplayBufferWriter(path).add_episode(episode(4))
    # Simulate a kill after the data arrays grew but before episode_ends committed.
    root = zarr.open_group(str(path), mode="a")
    root["data/obs"].append(np.ones((3, 3), np.float32))
    root["data/action"].append(np.ones((3, 2), np.float32))
    assert ReplayBuffer(path).num_steps == 4  # readers see only committed episodes
    w = ReplayBufferWriter(path, mode="append")  # writers cut the orphan rows off
    assert zarr.open_group(str(path))["data/obs"].shape[0] == 4
    w.add_episode(episode(2, start=50))
    buf = ReplayBuffer(path)
    assert buf.episode(1)["obs"][:, 0].tolist() == [50, 51]


def test_torn_episode_end_record_is_dropped(tmp_path):
    path = tmp_path / "demo.zarr"
    ReplayBufferWriter(path).add_episode(episode(4))
    root = zarr.open_group(str(path), mode="a")
    root["data/obs"].append(np.ones((2, 3), np.float32))
    root["meta/episode_ends"].resize((2,))  # grown but its value never written (fill 0)
    with pytest.warns(UserWarning, match="unfinished last episode"):
        assert ReplayBuffer(path).num_episodes == 1


def test_bad_episodes_are_refused_before_anything_is_written(tmp_path):
    path = tmp_path / "demo.zarr"
    w = ReplayBufferWriter(path)
    w.add_episode(episode(3))
    bad = episode(3)
    bad["obs"][1, 2] = np.nan
    with pytest.raises(ReplayBufferError, match="obs holds NaN"):
        w.add_episode(bad)
    with pytest.raises(ReplayBufferError, match="share one length"):
        w.add_episode(
            {
                "obs": np.zeros((3, 3), np.float32),
                "action": np.zeros((2, 2), np.float32),
                "success": np.zeros(3, bool),
            }
        )
    with pytest.raises(ReplayBufferError, match="stores keys"):
        w.add_episode({"obs": np.zeros((3, 3), np.float32)})
    assert ReplayBuffer(path).num_steps == 3


def test_reader_names_missing_keys_bad_lengths_and_nan(tmp_path):
    path = tmp_path / "demo.zarr"
    w = ReplayBufferWriter(path)
    w.add_episode(episode(3))
    w.add_episode(episode(3))
    with pytest.raises(ReplayBufferError, match="lacks data/state"):
        ReplayBuffer(path, required_keys=("obs", "state"))
    root = zarr.open_group(str(path), mode="a")
    root["data/obs"][4, 0] = np.nan
    with pytest.raises(ReplayBufferError, match=r"data/obs holds NaN or inf in episode 1"):
        ReplayBuffer(path)
    root["data/action"].resize((5, 2))
    with pytest.raises(ReplayBufferError, match="data/action has 5 rows but episode_ends says 6"):
        ReplayBuffer(path, check_nan=False)
    with pytest.raises(ReplayBufferError, match="no replay buffer"):
        ReplayBuffer(tmp_path / "absent.zarr")


def test_windows_pad_with_edge_frames_like_diffusion_policy(tmp_path):
    path = tmp_path / "demo.zarr"
    w = ReplayBufferWriter(path)
    w.add_episode(episode(6))
    w.add_episode(episode(5, start=100))
    buf = ReplayBuffer(path)
    ds = SequenceDataset(buf, [0, 1], obs_horizon=2, pred_horizon=4, action_horizon=2)
    # starts -1 .. n - Tp + Ta - 1: 5 windows for n=6, 4 for n=5
    assert len(ds) == 9
    first = ds[0]
    assert first["obs"][:, 0].tolist() == [0, 0]  # history padded with the first frame
    assert first["action"][:, 0].tolist() == [0, 0, 1, 2]
    last = ds[4]  # episode 0, start 3: actions 3, 4, 5, 5 (last frame repeated)
    assert last["action"][:, 0].tolist() == [3, 4, 5, 5]
    assert ds[5]["obs"][:, 0].tolist() == [100, 100]  # never crosses episodes


def test_split_by_episode_and_normalizer_fit_on_train_only(tmp_path):
    train, val = split_episodes(10, 0.2, seed=0)
    assert len(val) == 2 and not set(train) & set(val) and sorted(train + val) == list(range(10))
    with pytest.raises(ValueError, match="val_fraction"):
        split_episodes(10, 1.0, seed=0)
    data = {"action": np.array([[0.0, 5.0, 1.0], [10.0, 5.0, 3.0]])}
    norm = MinMaxNormalizer.fit(data)
    import torch

    x = torch.tensor([[0.0, 5.0, 1.0], [10.0, 5.0, 3.0], [5.0, 5.0, 2.0]])
    y = norm.normalize("action", x)
    torch.testing.assert_close(y[:, 0], torch.tensor([-1.0, 1.0, 0.0]))
    torch.testing.assert_close(y[:, 1], torch.zeros(3))  # constant dim: shifted, not scaled
    torch.testing.assert_close(norm.unnormalize("action", y), x)
    again = MinMaxNormalizer.from_state_dict(norm.state_dict())
    torch.testing.assert_close(again.normalize("action", x), y)
    with pytest.raises(KeyError, match="no normalizer stats for 'obs'"):
        norm.normalize("obs", x)
    with pytest.raises(ValueError, match="not finite"):
        MinMaxNormalizer.fit({"obs": np.array([[np.inf], [1.0]])})


@pytest.fixture
def demo_cache(tmp_path, monkeypatch):
    """ddn-train's demonstration cache in an empty working dir: (the cli module whose
    collect_demos a test replaces, a config asking for 2 obstacle-reach episodes)."""
    from omegaconf import OmegaConf

    from ddn_policy.cli import train as train_cli

    monkeypatch.chdir(tmp_path)
    cfg = OmegaConf.create({"demos": {"path": None, "episodes": 2, "seed": 0, "noise": None}})
    return train_cli, cfg


def test_demos_generated_by_another_process_meanwhile_are_kept(tmp_path, monkeypatch, demo_cache):
    """Two suites side by side may generate the same demonstrations at once: each writes
    its own partial store, and the one that finishes second keeps the first one's store
    and removes its own partial store."""
    from tasks import get_task

    train_cli, cfg = demo_cache
    spec = get_task("obstacle-reach")
    final = tmp_path / "data" / "obstacle-reach-demos2-seed0.zarr"

    def collect_while_another_finishes(spec, writer, *args):
        final.mkdir(parents=True)  # the other process renamed its finished store here
        (final / "theirs").write_text("kept")
        writer.add_episode({"obs": np.zeros((3, spec.obs_dim)), "action": np.zeros((3, 2))})

    monkeypatch.setattr(train_cli, "collect_demos", collect_while_another_finishes)
    assert train_cli.demos_path(cfg, spec) == Path("data") / final.name
    assert (final / "theirs").read_text() == "kept"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [final.name]


def test_failed_demo_generation_leaves_no_partial_store(tmp_path, monkeypatch, demo_cache):
    from tasks import get_task

    train_cli, cfg = demo_cache

    def collect_and_fail(spec, writer, *args):
        writer.add_episode({"obs": np.zeros((3, spec.obs_dim)), "action": np.zeros((3, 2))})
        raise RuntimeError("expert failed")

    monkeypatch.setattr(train_cli, "collect_demos", collect_and_fail)
    with pytest.raises(RuntimeError, match="expert failed"):
        train_cli.demos_path(cfg, get_task("obstacle-reach"))
    assert list((tmp_path / "data").iterdir()) == []
