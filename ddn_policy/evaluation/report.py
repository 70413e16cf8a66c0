"""Benchmark outputs: a JSON file and a markdown table, written atomically."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import torch

from ddn_policy.utils.io import atomic_write_text


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "processor": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def aggregate(rows: list[dict], keys: list[str], fields: list[str]) -> list[dict]:
    """One row per distinct value of `keys` (in order of first appearance): how many
    seeds it has and each field's "mean ± std" across them."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    out = []
    for values, rs in groups.items():
        agg = {**dict(zip(keys, values, strict=True)), "seeds": len(rs)}
        for f in fields:
            vals = [r[f] for r in rs if r.get(f) is not None]
            if vals:
                agg[f] = f"{np.mean(vals):.3g} ± {np.std(vals):.2g}"
        out.append(agg)
    return out


def write_report(out_dir: Path, name: str, payload: dict, table: str, command: str) -> None:
    out_dir = Path(out_dir)
    payload = {**payload, "machine": machine(), "command": command}
    atomic_write_text(out_dir / f"{name}.json", json.dumps(payload, indent=2))
    atomic_write_text(out_dir / f"{name}.md", f"# {name}\n\n`{command}`\n\n{table}")


def write_results(results_dir: Path, rows: list[dict], table: str, command: str) -> None:
    """results.json (a list of flat rows) and results.md (the table, the command and
    the machine) for the comparison suites."""
    results_dir = Path(results_dir)
    atomic_write_text(results_dir / "results.json", json.dumps(rows, indent=2))
    facts = ", ".join(f"{k} {v}" for k, v in machine().items())
    atomic_write_text(results_dir / "results.md", f"`{command}`\n\nMachine: {facts}\n\n{table}")
