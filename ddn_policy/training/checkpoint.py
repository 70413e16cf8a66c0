"""Checkpoints: safetensors + JSON in a directory written whole, then renamed into place.

<out>/checkpoints/<step>/pretrained_model/   the policy with EMA weights (for eval)
<out>/checkpoints/<step>/training_state/     live weights, EMA, optimizer, schedule
<out>/checkpoints/<step>/COMPLETE            written last
<out>/checkpoints/last -> <step>             replaced atomically
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from ddn_policy.utils.io import atomic_write_bytes, atomic_write_text

COMPLETE = "COMPLETE"


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Flatten an optimizer's per-parameter state into named tensors + JSON metadata."""
    tensors = {}
    index = {id(p): i for i, p in enumerate(p for g in opt.param_groups for p in g["params"])}
    for p, state in opt.state.items():
        for key, value in state.items():
            tensors[f"{index[id(p)]}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    return tensors, {"param_groups": groups}


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    params = [p for g in opt.param_groups for p in g["params"]]
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        i, key = name.split(".", 1)
        state.setdefault(int(i), {})[key] = value
    for i, s in state.items():
        opt.state[params[i]] = {k: v.to(params[i].device) for k, v in s.items()}
    for group, saved in zip(opt.param_groups, meta["param_groups"], strict=True):
        group.update({k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})


def write_checkpoint(root: Path, step: int, write_contents) -> Path:
    """Call write_contents(tmp_dir), then publish tmp_dir as root/<step> and point
    root/last at it. A crash at any point leaves the previous checkpoint as `last`."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{step:08d}"
    tmp = root / f".tmp-{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write_contents(tmp)
    atomic_write_text(tmp / COMPLETE, json.dumps({"step": step}))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    link_tmp = root / f".last-{os.getpid()}"
    if link_tmp.is_symlink() or link_tmp.exists():
        link_tmp.unlink()
    link_tmp.symlink_to(final.name)
    os.replace(link_tmp, root / "last")
    return final


def latest_complete(root: Path) -> Path | None:
    """The newest checkpoint directory that has its COMPLETE marker."""
    if not root.is_dir():
        return None
    done = [d for d in root.iterdir() if d.name.isdigit() and (d / COMPLETE).is_file()]
    return max(done, key=lambda d: int(d.name)) if done else None


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    atomic_write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))
