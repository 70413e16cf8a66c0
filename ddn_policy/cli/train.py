"""`ddn-train task=<task> policy=ddn out_dir=DIR`: demonstrations (generated once and
cached), training with the shared Trainer, and a final evaluation of the EMA policy.
`ddn-train experiment=<name>` trains an image DDN instead (configs/experiment/).

The same command under `torchrun --nproc_per_node=N -m ddn_policy.cli.train ...` trains
data-parallel: rank 0 generates the demonstrations, writes checkpoints, logs and
evaluates; `batch_size` is per process."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from ddn_policy.cli import CONFIG_DIR, refuse_targets
from ddn_policy.data import MinMaxNormalizer, ReplayBuffer, ReplayBufferWriter, SequenceDataset
from ddn_policy.data.dataset import split_episodes
from ddn_policy.evaluation.plots import hypotheses_picture
from ddn_policy.evaluation.runner import run as run_episodes
from ddn_policy.evaluation.runner import summary_line
from ddn_policy.policies.factory import load_policy, make_policy
from ddn_policy.training.distributed import World, close_world, init_world, rank_device
from ddn_policy.training.trainer import TrainConfig, Trainer
from ddn_policy.utils.io import atomic_write_text, exclusive_dir
from tasks import TaskSpec, get_task
from tasks.demos import collect_demos

HORIZON_KEYS = ("obs_horizon", "pred_horizon", "action_horizon", "max_episode_steps")


def task_from_config(node) -> TaskSpec:
    """The task's spec (a variant where the config has options), with any horizon the
    task config overrides."""
    from tasks.metaworld_hard import OPTIONS  # the options of metaworld-hard variants

    spec = get_task(node.name, **{k: node[k] for k in OPTIONS if k in node})
    return replace(spec, **{k: node[k] for k in HORIZON_KEYS if k in node})


def demos_path(cfg: DictConfig, spec: TaskSpec, world: World | None = None) -> Path:
    if cfg.demos.path:
        return Path(cfg.demos.path)
    noise = "" if cfg.demos.noise is None else f"-noise{cfg.demos.noise}"
    safe = spec.name.replace("/", "_").replace(":", "_")
    path = Path("data") / f"{safe}-demos{cfg.demos.episodes}-seed{cfg.demos.seed}{noise}.zarr"
    if world is not None and world.distributed:  # rank 0 writes, the others wait for it
        if world.is_main:
            demos_path(cfg, spec)
        torch.distributed.barrier()
        return path
    if not path.exists():  # generated once, then reused by every method and seed
        # one partial store per process: suites running side by side may generate the
        # same demonstrations at once, and must not write into each other's store
        tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
        shutil.rmtree(tmp, ignore_errors=True)  # left by a killed process of the same pid
        try:
            collect_demos(
                spec, ReplayBufferWriter(tmp), cfg.demos.episodes, cfg.demos.seed, cfg.demos.noise
            )
        except BaseException:  # a failed or interrupted run leaves no partial store
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            tmp.rename(path)
        except OSError:
            if not path.exists():
                raise
            shutil.rmtree(tmp)  # another process finished the same store first
    return path


def evaluate_and_report(policy_dir: Path, spec: TaskSpec, cfg: DictConfig, out: Path) -> dict:
    policy = load_policy(policy_dir)
    info = run_episodes(
        policy,
        spec,
        cfg.eval.episodes,
        seed=cfg.seed,
        videos=cfg.eval.videos,
        out_dir=out,
        num_envs=cfg.eval.num_envs,
    )
    agg = info["aggregated"]
    if cfg.eval.hypotheses:
        agg["hypotheses"] = hypotheses_picture(
            policy, spec, out / "hypotheses.png", cfg.eval.hypotheses, cfg.seed
        )
    print(summary_line(spec, agg), flush=True)
    return agg


def start_trainer(cfg: DictConfig, model, dataset, world: World) -> Trainer:
    """The Trainer from the command's `train`, `steps`, `batch_size`, `seed` and
    `device`, resumed from out_dir's newest checkpoint if there is one; rank 0 records
    the resolved command config as train_config.json."""
    train_cfg = TrainConfig(
        **OmegaConf.to_container(cfg.train, resolve=True),
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        device=rank_device(cfg.device, world),
    )
    trainer = Trainer(model, dataset, train_cfg, Path(cfg.out_dir), world)
    if trainer.resume() and world.is_main:
        print(f"resumed from step {trainer.step}", flush=True)
    if world.is_main:
        config = OmegaConf.to_container(cfg, resolve=True) | {"world_size": world.size}
        atomic_write_text(trainer.out_dir / "train_config.json", json.dumps(config, indent=2))
    return trainer


def run(cfg: DictConfig) -> dict:
    world = init_world(cfg.device)
    # one writer per run directory: rank 0 writes it, the other ranks only read
    lock = exclusive_dir(cfg.out_dir, "training") if world.is_main else nullcontext()
    try:
        with lock:
            if cfg.get("experiment") is not None and cfg.experiment.get("kind") == "dense":
                from ddn_policy.dense.train import train_dense  # configs/experiment/depth-ddn

                return train_dense(cfg, world)
            if cfg.get("experiment") is not None:  # an image DDN (configs/experiment/)
                from ddn_policy.images.train import train_images

                return train_images(cfg, world)
            return train(cfg, world)
    finally:
        close_world(world)


def train(cfg: DictConfig, world: World) -> dict:
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    spec = task_from_config(cfg.task)
    buffer = ReplayBuffer(demos_path(cfg, spec, world), required_keys=("obs", "action"))
    train_eps, val_eps = split_episodes(buffer.num_episodes, cfg.val_fraction, cfg.seed)
    rows = [range(*buffer.episode_bounds(e)) for e in train_eps]
    index = [i for r in rows for i in r]
    normalizer = MinMaxNormalizer.fit(
        {"obs": buffer["obs"][index], "action": buffer["action"][index]}
    )
    dataset = SequenceDataset(
        buffer, train_eps, spec.obs_horizon, spec.pred_horizon, spec.action_horizon
    )
    policy = make_policy(OmegaConf.to_container(cfg.policy, resolve=True), spec, normalizer)
    trainer = start_trainer(cfg, policy, dataset, world)
    out = trainer.out_dir
    n_params = sum(p.numel() for p in policy.parameters())
    print(f"[rank {world.rank}/{world.size}] " if world.distributed else "", end="")
    print(
        f"{spec.name}: {buffer.num_episodes} demos ({len(train_eps)} train, {len(val_eps)} "
        f"val), {len(dataset)} windows, {n_params} parameters",
        flush=True,
    )
    evaluate = None
    if cfg.eval.episodes and world.is_main:

        def evaluate(policy_dir, step):
            return evaluate_and_report(policy_dir, spec, cfg, out / "eval")

    summary = trainer.fit(evaluate)
    if world.is_main:
        atomic_write_text(out / "train_summary.json", json.dumps(summary, indent=2))
    return summary


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    refuse_targets(cfg)
    run(cfg)


if __name__ == "__main__":
    main()
