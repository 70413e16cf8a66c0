"""`ddn-eval checkpoint=DIR episodes=50 out_dir=DIR [guide=forbid_left] [best_of=8]
[hypotheses=64]`."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from ddn_policy.cli import CONFIG_DIR, refuse_targets
from ddn_policy.evaluation.plots import hypotheses_picture
from ddn_policy.evaluation.runner import run as run_episodes
from ddn_policy.evaluation.runner import summary_line
from ddn_policy.policies.factory import load_policy
from ddn_policy.policies.guides import make_guide
from tasks import get_task


def run(cfg: DictConfig) -> dict:
    policy = load_policy(cfg.checkpoint).to(cfg.device)
    task = cfg.task or policy.config.task
    if task is None:
        raise ValueError("the checkpoint names no task; pass task=<name>")
    spec = get_task(task)
    if cfg.sampling is not None:
        policy.set_inference(sampling=cfg.sampling)
    guide_cfg = OmegaConf.to_container(cfg.guide, resolve=True) if cfg.get("guide") else None
    policy.guide = make_guide(guide_cfg, spec.hand_obs, spec.action_to_position)
    policy.best_of = cfg.best_of
    policy.obs_clip = cfg.obs_clip
    info = run_episodes(
        policy,
        spec,
        cfg.episodes,
        seed=cfg.seed,
        videos=cfg.videos,
        out_dir=cfg.out_dir,
        num_envs=cfg.num_envs,
    )
    agg = info["aggregated"]
    print(f"{spec.name}: {summary_line(spec, agg)}", flush=True)
    if cfg.hypotheses:
        drawn = hypotheses_picture(
            policy, spec, Path(cfg.out_dir) / "hypotheses.png", cfg.hypotheses, cfg.seed
        )
        print(f"{cfg.hypotheses} hypotheses from the first state: {drawn}", flush=True)
    return info


@hydra.main(config_path=CONFIG_DIR, config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    refuse_targets(cfg)
    run(cfg)


if __name__ == "__main__":
    main()
