"""`ddn-demos task=<name> episodes=N seed=S out=PATH.zarr`: scripted demonstrations."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ddn_policy.cli import CONFIG_DIR, refuse_targets
from ddn_policy.data.replay_buffer import ReplayBufferWriter
from tasks import get_task
from tasks.demos import collect_demos


def run(cfg: DictConfig):
    spec = get_task(cfg.task.name)
    writer = ReplayBufferWriter(cfg.out, mode="append" if cfg.append else "create")
    writer.attrs.update({"task": spec.name, "seed": int(cfg.seed)})
    report = collect_demos(spec, writer, cfg.episodes, cfg.seed, cfg.noise, cfg.max_attempts)
    line = (
        f"{spec.name}: kept {report.kept} of {report.attempted} expert episodes "
        f"(expert success {report.expert_success:.3f}); {writer.num_episodes} episodes in {cfg.out}"
    )
    if spec.has_route:
        total = sum(report.route_counts.values())
        split = ", ".join(
            f"route {r}: {c / total:.2f}" for r, c in sorted(report.route_counts.items())
        )
        line += f"; {split}"
    print(line, flush=True)
    return report


@hydra.main(config_path=CONFIG_DIR, config_name="demos", version_base="1.3")
def main(cfg: DictConfig) -> None:
    refuse_targets(cfg)
    run(cfg)


if __name__ == "__main__":
    main()
