"""`ddn-train task=<task> policy=ddn out_dir=DIR`: demonstrations (generated once and
cached), training with the shared Trainer, and a final evaluation of the EMA policy."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from ddn_policy.cli import CONFIG_DIR
from ddn_policy.data import MinMaxNormalizer, ReplayBuffer, ReplayBufferWriter, SequenceDataset
from ddn_policy.data.dataset import split_episodes
from ddn_policy.evaluation.plots import hypotheses_picture
from ddn_policy.evaluation.runner import run as run_episodes
from ddn_policy.evaluation.runner import summary_line
from ddn_policy.policies.factory import load_policy, make_policy
from ddn_policy.training.trainer import TrainConfig, Trainer
from tasks import TaskSpec, get_task
from tasks.demos import collect_demos

HORIZON_KEYS = ("obs_horizon", "pred_horizon", "action_horizon", "max_episode_steps")


def task_from_config(node) -> TaskSpec:
    """The task's spec, with any horizon the task config overrides."""
    spec = get_task(node.name)
    return replace(spec, **{k: node[k] for k in HORIZON_KEYS if k in node})


def demos_path(cfg: DictConfig, spec: TaskSpec) -> Path:
    if cfg.demos.path:
        return Path(cfg.demos.path)
    noise = "" if cfg.demos.noise is None else f"-noise{cfg.demos.noise}"
    safe = spec.name.replace("/", "_")
    path = Path("data") / f"{safe}-demos{cfg.demos.episodes}-seed{cfg.demos.seed}{noise}.zarr"
    if not path.exists():  # generated once, then reused by every method and seed
        tmp = path.with_name(f".{path.name}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        collect_demos(
            spec, ReplayBufferWriter(tmp), cfg.demos.episodes, cfg.demos.seed, cfg.demos.noise
        )
        tmp.rename(path)
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


def run(cfg: DictConfig) -> dict:
    torch.manual_seed(cfg.seed)
    spec = task_from_config(cfg.task)
    buffer = ReplayBuffer(demos_path(cfg, spec), required_keys=("obs", "action"))
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
    train_cfg = TrainConfig(
        **OmegaConf.to_container(cfg.train, resolve=True),
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        device=cfg.device,
    )
    out = Path(cfg.out_dir)
    trainer = Trainer(policy, dataset, train_cfg, out)
    if trainer.resume():
        print(f"resumed from step {trainer.step}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(
        json.dumps(OmegaConf.to_container(cfg, resolve=True), indent=2)
    )
    n_params = sum(p.numel() for p in policy.parameters())
    print(
        f"{spec.name}: {buffer.num_episodes} demos ({len(train_eps)} train, {len(val_eps)} "
        f"val), {len(dataset)} windows, {n_params} parameters",
        flush=True,
    )
    evaluate = None
    if cfg.eval.episodes:

        def evaluate(policy_dir, step):
            return evaluate_and_report(policy_dir, spec, cfg, out / "eval")

    summary = trainer.fit(evaluate)
    return summary


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
