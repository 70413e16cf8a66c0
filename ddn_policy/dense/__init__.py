"""Conditional dense prediction with DDN heads: depth, optical flow, colorization."""

from ddn_policy.dense.guides import ColorStrokes, PhotometricFlow, SparseDepth
from ddn_policy.dense.predictor import TASKS, DensePredictor, DensePredictorConfig

__all__ = [
    "TASKS",
    "ColorStrokes",
    "DensePredictor",
    "DensePredictorConfig",
    "PhotometricFlow",
    "SparseDepth",
]
