"""Dense-prediction datasets written once per (config, seed, split) into zarr (format 2).

One sample = one scene rendered three times: frame 1, frame 2 (objects and camera moved)
and frame 1 with every object in a fixed-lightness palette colour. Stored per sample:

  rgb (H, W, 3) uint8      frame 1            rgb2 (H, W, 3) uint8   frame 2
  depth (H, W) float32     planar metres      valid (H, W) bool      depth exists
  segment (H, W) int16     -1 sky, 0 ground, 1+i object i
  flow (H, W, 2) float32   frame 1 -> 2, px, wherever depth exists (0 on the sky)
  flow_valid (H, W) bool   the point is visible in frame 2 (not occluded, in view)
  color (H, W, 3) uint8    palette render     gray (H, W) uint8      its L* * 255/100
  intrinsics (3, 3) float32

The store is written under a temporary name and renamed when complete, so a path that
exists always holds a whole dataset.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import zarr
from tqdm import tqdm

from tasks.dense.color import srgb_to_lab
from tasks.dense.flow import ground_truth_flow
from tasks.dense.scene import SceneConfig, SceneGenerator

KEYS = ("rgb", "rgb2", "depth", "valid", "segment", "flow", "flow_valid", "color", "gray",
        "intrinsics")  # fmt: skip
CHUNK = 64  # samples per zarr chunk
SPLIT_SEEDS = {"train": 0, "test": 1}  # scene streams of the splits never overlap


def render_sample(generator: SceneGenerator, rng: np.random.Generator) -> dict[str, np.ndarray]:
    scene = generator.sample(rng)
    first, second = generator.render(scene, 0), generator.render(scene, 1)
    colored = generator.render(scene, 0, colors=True)
    intrinsics = generator.intrinsics(scene)
    flow, flow_valid = ground_truth_flow(scene, intrinsics, first, second)
    lightness = srgb_to_lab(colored["rgb"])[..., 0]
    return {
        "rgb": first["rgb"],
        "rgb2": second["rgb"],
        "depth": first["depth"].astype(np.float32),
        "valid": first["valid"],
        "segment": first["segment"],
        "flow": flow,
        "flow_valid": flow_valid,
        "color": colored["rgb"],
        "gray": np.clip(np.round(lightness * 2.55), 0, 255).astype(np.uint8),
        "intrinsics": intrinsics.astype(np.float32),
    }


def write_dataset(
    path: str | Path, count: int, cfg: SceneConfig, seed: int, split: str, progress: bool = True
) -> Path:
    """Render `count` samples of `split` into a new store at `path`."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_SEEDS)}, got split={split!r}")
    if count < 1:
        raise ValueError(f"count must be >= 1, got count={count}")
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; remove it or choose another path")
    for stale in path.parent.glob(f".tmp-{path.name}-*"):  # left by a killed writer
        shutil.rmtree(stale, ignore_errors=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    generator = SceneGenerator(cfg, seed)
    rng = np.random.default_rng([seed, SPLIT_SEEDS[split]])
    root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
    arrays, pending = None, []
    try:
        for i in tqdm(range(count), desc=f"dense {split}", disable=not progress):
            sample = render_sample(generator, rng)
            if arrays is None:
                arrays = {
                    k: root.create_array(
                        k, shape=(count, *v.shape), chunks=(CHUNK, *v.shape), dtype=v.dtype
                    )
                    for k, v in sample.items()
                }
            pending.append(sample)
            if len(pending) == CHUNK or i == count - 1:  # whole chunks: each written once
                start = i + 1 - len(pending)
                for k, arr in arrays.items():
                    arr[start : i + 1] = np.stack([p[k] for p in pending])
                pending = []
        root.attrs.update(
            {"config": json.loads(json.dumps(asdict(cfg))), "seed": seed, "split": split,
             "count": count}
        )  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


class DenseDataset:
    """A written store, every array loaded into memory (64x64 x 10k is ~1 GB)."""

    def __init__(self, path: str | Path, keys: tuple[str, ...] = KEYS):
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(
                f"no dense dataset at {self.path}; write one with tasks.dense.write_dataset"
            )
        root = zarr.open_group(str(self.path), mode="r")
        missing = [k for k in keys if k not in root]
        if missing:
            raise KeyError(
                f"{self.path} lacks {missing} (has {sorted(root.array_keys())}); "
                "it was not written by this version: delete it and write it again"
            )
        self.attrs = dict(root.attrs)
        self.arrays = {k: root[k][:] for k in keys}
        self.count = len(next(iter(self.arrays.values())))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {k: v[i] for k, v in self.arrays.items()}
