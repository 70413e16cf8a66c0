"""Checkpoints: safetensors + JSON in a directory written whole, then renamed into place.

<out>/checkpoints/<step>/pretrained_model/   the policy with EMA weights (for eval)
<out>/checkpoints/<step>/training_state/     live weights, EMA, optimizer, schedule,
                                             RNG states of every rank, data position,
                                             manifest.json (sha256 of each file)
<out>/checkpoints/<step>/COMPLETE            written last
<out>/checkpoints/last -> <step>             replaced atomically

A process killed at any instant leaves either the new checkpoint complete or a
`.tmp-*` directory that the next writer removes; the previous checkpoint is never
touched, so nothing complete is ever lost.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save

from ddn_policy.utils.io import (
    MANIFEST,
    atomic_write_bytes,
    atomic_write_text,
    directory_digests,
    read_json,
    read_safetensors,
    verify_digests,
)

COMPLETE = "COMPLETE"
TRAINING_STATE = "training_state"


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed; the previous complete checkpoint is intact."""


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Flatten an optimizer's per-parameter state into named tensors + JSON metadata."""
    tensors = {}
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):  # parameter order, not the order states were created
        for key, value in sorted(opt.state.get(p, {}).items()):
            tensors[f"{i}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    return tensors, {"param_groups": groups}


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    params = [p for g in opt.param_groups for p in g["params"]]
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        i, key = name.split(".", 1)
        state.setdefault(int(i), {})[key] = value
    if state and max(state) >= len(params):
        raise ValueError(
            f"the optimizer state holds {max(state) + 1} parameters, the model {len(params)}: "
            "this checkpoint belongs to another model; start a new out_dir"
        )
    for i, s in state.items():
        opt.state[params[i]] = {k: v.to(params[i].device) for k, v in s.items()}
    for group, saved in zip(opt.param_groups, meta["param_groups"], strict=True):
        group.update({k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})


def remove_stale(root: Path) -> None:
    """Leftovers of writers that were killed: unfinished checkpoints and link temps."""
    if not root.is_dir():
        return
    for aside in root.glob(".old-*"):  # a replaced checkpoint: restore it if the new one
        final = root / aside.name.split("-")[1]  # never arrived, else drop it
        if final.exists():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(aside, final)
    for leftover in list(root.glob(".tmp-*")) + list(root.glob(".last-*")):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def write_checkpoint(root: Path, step: int, write_contents) -> Path:
    """Call write_contents(tmp_dir), then publish tmp_dir as root/<step> and point
    root/last at it. A crash or a failed write at any point leaves the previous
    checkpoint complete and `last` pointing at it."""
    root.mkdir(parents=True, exist_ok=True)
    remove_stale(root)
    final = root / f"{step:08d}"
    tmp = root / f".tmp-{step:08d}-{os.getpid()}"
    try:
        tmp.mkdir()
        write_contents(tmp)
        state = tmp / TRAINING_STATE
        if state.is_dir():
            atomic_write_text(state / MANIFEST, json.dumps(directory_digests(state), indent=2))
        atomic_write_text(tmp / COMPLETE, json.dumps({"step": step}))
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_complete(root)
        hint = "free disk space, then " if err.errno == errno.ENOSPC else ""
        raise CheckpointWriteError(
            err.errno,
            f"could not write the checkpoint of step {step} under {root} ({err}); the "
            f"previous complete checkpoint {previous or '(none)'} is intact: {hint}rerun "
            "the same command to resume from it",
        ) from err
    if final.exists():  # the same step written again: keep the old one until replaced
        aside = root / f".old-{step:08d}-{os.getpid()}"
        os.replace(final, aside)
        os.replace(tmp, final)
        shutil.rmtree(aside)
    else:
        os.replace(tmp, final)
    link_tmp = root / f".last-{os.getpid()}"
    link_tmp.unlink(missing_ok=True)
    link_tmp.symlink_to(final.name)
    os.replace(link_tmp, root / "last")
    return final


def latest_complete(root: Path, resumable: bool = False) -> Path | None:
    """The newest checkpoint directory that has its COMPLETE marker (and, with
    `resumable`, its training state)."""
    if not root.is_dir():
        return None
    done = [
        d
        for d in root.iterdir()
        if d.name.isdigit()
        and (d / COMPLETE).is_file()
        and (not resumable or (d / TRAINING_STATE).is_dir())
    ]
    return max(done, key=lambda d: int(d.name)) if done else None


def read_training_state(ckpt: Path) -> tuple[dict[str, dict], dict]:
    """The tensors of every training_state/*.safetensors (by stem) and trainer_state.json,
    after checking each file against the manifest written with them."""
    state = ckpt / TRAINING_STATE
    manifest = state / MANIFEST
    if manifest.is_file():
        verify_digests(state, read_json(manifest), what=str(manifest))
    else:  # safetensors + JSON still cannot run code; only edits go unnoticed
        print(f"warning: {state} predates manifests; its files are not verified", flush=True)
    tensors = {p.stem: read_safetensors(p) for p in sorted(state.glob("*.safetensors"))}
    return tensors, read_json(state / "trainer_state.json")


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    atomic_write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return read_safetensors(path)
