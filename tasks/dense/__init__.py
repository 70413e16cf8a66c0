"""Procedural MuJoCo scenes for conditional dense prediction (depth, flow, colorization)."""

from tasks.dense.dataset import KEYS, DenseDataset, render_sample, write_dataset
from tasks.dense.scene import SceneConfig, SceneGenerator

__all__ = ["KEYS", "DenseDataset", "SceneConfig", "SceneGenerator", "render_sample",
           "write_dataset"]  # fmt: skip
