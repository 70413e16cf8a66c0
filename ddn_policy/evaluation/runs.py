"""What the resumable suites share: trainings run as `ddn-train` subprocesses in their
own settings-keyed directories (resumed from their checkpoints when interrupted), and
evaluations cached as JSON beside them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ddn_policy.utils.io import atomic_write_text


def train_once(run_dir: Path, overrides: list[str], threads: int) -> Path:
    """`ddn-train <overrides> out_dir=run_dir` unless run_dir holds a finished training
    (its train_summary.json); returns run_dir."""
    if not (run_dir / "train_summary.json").is_file():
        command = [sys.executable, "-m", "ddn_policy.cli.train", *overrides, f"out_dir={run_dir}"]
        print(" ".join(command[2:]), flush=True)
        subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return run_dir


def cached(path: Path, compute):
    """compute() once; its rows (and nothing else) kept as JSON at path."""
    if path.is_file():
        return json.loads(path.read_text())
    rows = compute()
    atomic_write_text(path, json.dumps(rows, indent=2))
    return rows


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested settings as dotted command-line keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat
