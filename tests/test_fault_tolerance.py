"""Exact resume, kills in the middle of checkpoint writes, full disks, non-finite
steps, refused files, and data-parallel training under torchrun."""

import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from ddn_policy.cli import refuse_targets
from ddn_policy.data import MinMaxNormalizer, ReplayBuffer, ReplayBufferWriter, SequenceDataset
from ddn_policy.policies.factory import load_policy, make_policy
from ddn_policy.training import trainer as trainer_module
from ddn_policy.training.checkpoint import (
    CheckpointWriteError,
    latest_complete,
    optimizer_tensors,
    read_training_state,
)
from ddn_policy.training.distributed import RankBatches, World, state_digest, tensors_digest
from ddn_policy.training.trainer import NonFiniteTrainingError, TrainConfig, Trainer
from ddn_policy.utils.io import UnsafeFileError
from tasks import get_task
from tasks.demos import collect_demos

SPEC = get_task("obstacle-reach")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    path = tmp_path_factory.mktemp("demos") / "or.zarr"
    collect_demos(SPEC, ReplayBufferWriter(path), episodes=6, seed=0, progress=False)
    return path


def make_trainer(demos_path, out, policy="ddn", **train):
    torch.manual_seed(0)
    buffer = ReplayBuffer(demos_path)
    normalizer = MinMaxNormalizer.fit({"obs": buffer["obs"], "action": buffer["action"]})
    pol = make_policy({"name": policy, "preset": "tiny"}, SPEC, normalizer)
    dataset = SequenceDataset(buffer, list(range(buffer.num_episodes)), 2, 16, 8)
    cfg = TrainConfig(**{"steps": 30, "batch_size": 32, "log_every": 5, **train})
    return Trainer(pol, dataset, cfg, out)


def digests(trainer) -> tuple[str, str, str]:
    opt, _ = optimizer_tensors(trainer.optimizer)
    return (
        state_digest(trainer.policy.model),
        state_digest(trainer.ema.averaged),
        tensors_digest(opt),
    )


@pytest.mark.parametrize(
    "policy, train",
    [
        ("ddn", {}),
        # perturbed splits draw from the balancer's own stream, which must resume too
        ("ddn", {"balance_split_perturb": 0.05}),
        ("diffusion", {}),
    ],
)
def test_half_then_resume_equals_straight_bit_for_bit(demos, tmp_path, policy, train):
    # 292 windows / 32 = 9 batches an epoch: step 15 is in the middle of the 2nd epoch
    straight = make_trainer(demos, tmp_path / "a", policy, checkpoint_every=15, **train)
    straight.fit()
    half = tmp_path / "b" / "checkpoints"
    half.mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "00000015", half / "00000015")
    resumed = make_trainer(demos, tmp_path / "b", policy, checkpoint_every=15, **train)
    assert resumed.resume() and resumed.step == 15
    resumed.fit()
    assert digests(resumed) == digests(straight)
    if policy == "ddn":
        assert straight.balancer.total_splits > 0  # the statistics that resume must carry


def test_balancing_stops_at_balance_until(demos, tmp_path):
    trainer = make_trainer(demos, tmp_path, balance_until=0.5, log_every=1)
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    splits = {r["step"]: r["splits"] for r in records if "splits" in r}
    assert sum(n for step, n in splits.items() if step <= 15) > 0
    assert all(n == 0 for step, n in splits.items() if step > 15)
    with pytest.raises(ValueError, match="balance_until=0"):
        TrainConfig(balance_until=0)


def test_split_perturbation_reaches_the_balancer(demos, tmp_path):
    trainer = make_trainer(
        demos, tmp_path, balance_split_perturb=0.05, balance_half_life=10, seed=3
    )
    assert trainer.balancer.perturb == 0.05
    assert trainer.balancer.perturb_generator.initial_seed() == 3  # the training seed's
    assert trainer.balancer.retain == pytest.approx(0.5 ** (1 / 10))
    with pytest.raises(ValueError, match="balance_split_perturb=-1"):
        TrainConfig(balance_split_perturb=-1)


def test_one_process_data_order_is_the_plain_shuffled_loader():
    data = list(range(50))
    plain = DataLoader(
        data, batch_size=8, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(3)
    )
    shared = torch.Generator().manual_seed(3)  # the loader's base seed and the order
    ours = DataLoader(data, batch_sampler=RankBatches(50, 8, World(), shared), generator=shared)
    for _ in range(2):  # two epochs from one generator, as the Trainer draws them
        assert [b.tolist() for b in plain] == [b.tolist() for b in ours]
    ranks = [
        list(RankBatches(50, 8, World(r, 2), torch.Generator().manual_seed(3))) for r in (0, 1)
    ]
    for a, b in zip(*ranks, strict=True):  # each global batch split, never shared
        assert len(a) == len(b) == 8 and not set(a) & set(b)
    with pytest.raises(ValueError, match="batch_size=32 x 2 process"):
        RankBatches(50, 32, World(0, 2), torch.Generator())


def run_child(demos, out, steps, kill_at=None):
    args = [
        sys.executable,
        str(REPO / "tests" / "train_child.py"),
        str(demos),
        str(out),
        str(steps),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        args + ([str(kill_at)] if kill_at else []),
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    return done.returncode, done.stdout.strip()


def complete_steps(root: Path) -> set[int]:
    return {int(d.name) for d in root.iterdir() if d.name.isdigit() and (d / "COMPLETE").is_file()}


def renames_in_one_checkpoint(demos, out, monkeypatch) -> int:
    trainer, calls, real = make_trainer(demos, out, steps=1), [], os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: calls.append(b) or real(a, b))
    trainer.save()
    monkeypatch.undo()
    return len(calls)


def test_sigkill_at_every_rename_of_a_checkpoint_write_loses_nothing(demos, tmp_path, monkeypatch):
    renames = renames_in_one_checkpoint(demos, tmp_path / "count", monkeypatch)
    steps = 100
    rc, reference = run_child(demos, tmp_path / "straight", steps)
    assert rc == 0, reference
    out, kills, kept = tmp_path / "killed", 0, set()
    for kill_at in range(1, 40):  # the k-th rename inside a checkpoint write, until none is left
        rc, final = run_child(demos, out, steps, kill_at)
        root = out / "checkpoints"
        now = complete_steps(root)
        assert kept <= now, f"kill at rename {kill_at} lost complete checkpoints {kept - now}"
        kept = now
        newest = latest_complete(root, resumable=True)
        read_training_state(newest)  # every file matches its manifest
        assert (root / "last").resolve().name in {f"{s:08d}" for s in now}
        if rc == 0:
            break
        assert rc == -9, final
        kills += 1
    assert kills == renames >= 13  # each file, manifest, marker, directory and link rename
    assert final == reference  # the killed-and-resumed run ends where the straight one does


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(demos, tmp_path, monkeypatch):
    trainer = make_trainer(demos, tmp_path, steps=20, checkpoint_every=10)
    real, calls = trainer_module.save_tensors, []

    def failing(path, tensors):
        calls.append(path)
        if trainer.step == 20 and len(calls) > 5:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, tensors)

    monkeypatch.setattr(trainer_module, "save_tensors", failing)
    with pytest.raises(
        CheckpointWriteError, match=r"step 20 .*00000010 is intact: free disk space"
    ):
        trainer.fit()
    root = tmp_path / "checkpoints"
    assert complete_steps(root) == {10} and not list(root.glob(".tmp-*"))
    assert (root / "last").resolve().name == "00000010"
    monkeypatch.undo()
    again = make_trainer(demos, tmp_path, steps=20, checkpoint_every=10)
    assert again.resume() and again.step == 10
    again.fit()
    assert complete_steps(root) == {10, 20}


def poison(trainer, from_step):
    real = trainer.loss_forward

    def loss_forward(batch):
        loss, info = real(batch)
        return (loss * float("nan") if trainer.step + 1 >= from_step else loss), info

    trainer.loss_forward = loss_forward


def test_non_finite_steps_change_nothing_and_the_run_stops_after_enough(demos, tmp_path):
    clean = make_trainer(demos, tmp_path / "clean", steps=10, checkpoint_every=5)
    clean.fit()
    state, _ = read_training_state(tmp_path / "clean" / "checkpoints" / "00000005")
    poisoned = make_trainer(demos, tmp_path / "nan", steps=10, max_nonfinite_steps=10)
    poison(poisoned, from_step=6)
    poisoned.fit()  # steps 6..10 skipped: weights, balance counts and EMA stay at step 5
    for name, value in poisoned.policy.model.state_dict().items():
        assert torch.equal(value, state["model"][name]), name
    for name, value in poisoned.ema.averaged.state_dict().items():
        assert torch.equal(value, state["ema"][name]), name
    log = (tmp_path / "nan" / "log.jsonl").read_text()
    assert log.count('"skipped"') == 5

    stopping = make_trainer(
        demos, tmp_path / "stop", steps=10, checkpoint_every=2, max_nonfinite_steps=3
    )
    poison(stopping, from_step=4)
    with pytest.raises(NonFiniteTrainingError, match=r"3 steps in a row up to step 6 .*00000004"):
        stopping.fit()
    tensors, _ = read_training_state(latest_complete(tmp_path / "stop" / "checkpoints"))
    assert all(torch.isfinite(t).all() for t in tensors["model"].values())


def test_pickles_tampered_and_foreign_files_are_refused(demos, tmp_path):
    trainer = make_trainer(demos, tmp_path / "run", steps=5)
    trainer.fit()
    saved = tmp_path / "run" / "checkpoints" / "00000005" / "pretrained_model"
    assert load_policy(saved) is not None

    tampered = tmp_path / "tampered"
    shutil.copytree(saved, tampered)
    raw = bytearray((tampered / "model.safetensors").read_bytes())
    raw[-3] ^= 0xFF  # one weight byte: safetensors alone would load it silently
    (tampered / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(UnsafeFileError, match="changed after it was written"):
        load_policy(tampered)

    for kind, dump in (("pickle", pickle.dumps), ("zip archive", None)):
        foreign = tmp_path / f"foreign-{kind}"
        shutil.copytree(saved, foreign)
        (foreign / "manifest.json").unlink()  # a directory assembled by hand
        weights = foreign / "model.safetensors"
        state = trainer.policy.model.state_dict()
        weights.write_bytes(dump(state)) if dump else torch.save(state, weights)
        with pytest.raises(UnsafeFileError, match=f"is a (Python )?{kind}.*never unpickles"):
            load_policy(foreign)

    config = tmp_path / "config"
    shutil.copytree(saved, config)
    (config / "manifest.json").unlink()
    text = (
        (config / "config.json")
        .read_text()
        .replace('"action_horizon"', '"exec_cmd": 1, "action_horizon"')
    )
    (config / "config.json").write_text(text)
    with pytest.raises(UnsafeFileError, match="does not fit DDNPolicy.*exec_cmd"):
        load_policy(config)

    state = (
        tmp_path / "run" / "checkpoints" / "00000005" / "training_state" / "optimizer.safetensors"
    )
    state.write_bytes(state.read_bytes()[:-8])
    with pytest.raises(UnsafeFileError, match="optimizer.safetensors changed"):
        make_trainer(demos, tmp_path / "run", steps=5).resume()

    with pytest.raises(ValueError, match=r"cfg.policy._target_ is not allowed"):
        refuse_targets(OmegaConf.create({"policy": {"_target_": "os.system", "x": 1}}))


def test_two_torchrun_processes_split_identically(demos, tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "ddn_policy.cli.train",
        f"demos.path={demos}",
        "policy.preset=tiny",
        "steps=40",
        "batch_size=16",
        "eval.episodes=0",
        f"out_dir={out}",
        "train.log_every=10",
        "train.checkpoint_every=20",
        # perturbed splits draw random offsets; the ranks, seeded apart, must draw alike
        "train.balance_split_perturb=0.05",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    digests_by_rank = [r for r in records if "rank_state_sha256" in r][-1]["rank_state_sha256"]
    assert len(digests_by_rank) == 2 and digests_by_rank[0] == digests_by_rank[1]
    assert [r for r in records if "total_splits" in r][-1]["total_splits"] > 0
    assert complete_steps(out / "checkpoints") == {20, 40}  # rank 0 alone wrote them
    assert json.loads((out / "train_config.json").read_text())["world_size"] == 2


def test_checkpoints_written_before_manifests_and_rng_states_still_resume(demos, tmp_path):
    make_trainer(demos, tmp_path, steps=10, checkpoint_every=5).fit()
    state = tmp_path / "checkpoints" / "00000010" / "training_state"
    (state / "manifest.json").unlink()
    (state / "rng.safetensors").unlink()
    older = make_trainer(demos, tmp_path, steps=15, checkpoint_every=5)
    assert older.resume() and older.step == 10
    older.fit()
    assert older.step == 15


def test_a_second_writer_of_a_run_directory_is_refused_with_the_holder_named(tmp_path):
    from hydra import compose, initialize_config_dir

    from ddn_policy.cli.train import run
    from ddn_policy.utils.io import exclusive_dir

    run_dir = tmp_path / "run"
    holder = subprocess.Popen(  # another process holds the directory, as a stray training would
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom ddn_policy.utils.io import exclusive_dir\n"
            f"with exclusive_dir({str(run_dir)!r}):\n    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match=rf"in use by another run \(pid {holder.pid}\)"):
            with exclusive_dir(run_dir):
                pass
        with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
            cfg = compose("train", overrides=[f"out_dir={run_dir}", "task=obstacle-reach"])
        with pytest.raises(RuntimeError, match="in use by another training"):
            run(cfg)  # refused before it reads or writes anything
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    with exclusive_dir(run_dir):  # the lock went with its process
        pass
