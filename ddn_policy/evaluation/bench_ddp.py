"""`ddn-bench suite=ddp`: training throughput of one process against data-parallel
processes under torchrun, on the same machine in one run (samples per second; every
process draws `batch_size` windows a step, so N processes see N times the data)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ddn_policy.evaluation.report import markdown_table


def train_command(s: DictConfig, processes: int, out: Path) -> list[str]:
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    return [
        *launcher,
        "-m",
        "ddn_policy.cli.train",
        f"task={s.task}",
        f"policy={s.policy}",
        f"policy.preset={s.preset}",
        f"steps={s.steps}",
        f"batch_size={s.batch_size}",
        f"demos.episodes={s.demos}",
        "eval.episodes=0",
        f"train.log_every={s.steps}",
        f"out_dir={out}",
    ]


def data_parallel(cfg: DictConfig) -> tuple[dict, str]:
    s = cfg.suite
    rows = []
    for processes, threads in s.layouts:
        out = Path(s.run_dir) / f"{processes}x{threads}"
        shutil.rmtree(out, ignore_errors=True)  # a timing is only meaningful from step 0
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run(train_command(s, processes, out), check=True, env=env)
        summary = json.loads((out / "train_summary.json").read_text())
        rows.append(
            {
                "processes": processes,
                "threads_per_process": threads,
                "batch_per_process": s.batch_size,
                "samples_per_second": summary["samples_per_second"],
                "ranks_identical": summary.get("ranks_identical", True),
            }
        )
        print(rows[-1], flush=True)
    base = next(r for r in rows if (r["processes"], r["threads_per_process"]) == tuple(s.baseline))
    for r in rows:
        r["throughput_ratio"] = r["samples_per_second"] / base["samples_per_second"]
    payload = {"suite": "ddp", "settings": OmegaConf.to_container(s), "rows": rows}
    columns = [
        "processes",
        "threads_per_process",
        "batch_per_process",
        "samples_per_second",
        "throughput_ratio",
        "ranks_identical",
    ]
    return payload, markdown_table(rows, columns)
