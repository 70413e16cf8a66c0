"""One real depth sample: scikit-image's copy of the Middlebury 2014 `Motorcycle` pair
(left image and true disparity, down-sampled 4x) turned into metric depth with its
calibration, cropped square and resized like our scenes. Used as an out-of-domain
evaluation of depth predictors trained on the rendered scenes."""

from __future__ import annotations

import numpy as np

# the calibration scikit-image documents for its 4x down-sampled copy
FOCAL_PX = 994.978
DOFFS_PX = 31.086  # x difference of the two principal points
BASELINE_M = 0.193001


def disparity_to_depth(disparity: np.ndarray) -> np.ndarray:
    """Metres; NaN where the disparity is missing (NaN or inf)."""
    depth = BASELINE_M * FOCAL_PX / (disparity + DOFFS_PX)
    return np.where(np.isfinite(disparity), depth, np.nan)


def _block_mean(x: np.ndarray, size: int) -> np.ndarray:
    """(S, S, ...) -> (size, size, ...) mean over equal blocks (S divisible by size)."""
    s = x.shape[0]
    return x.reshape(size, s // size, size, s // size, *x.shape[2:]).mean(axis=(1, 3))


def motorcycle(size: int = 64, min_valid: float = 0.5) -> dict[str, np.ndarray]:
    """rgb (size, size, 3) uint8, depth (size, size) float32 metres (0 where invalid),
    valid (size, size) bool (at least `min_valid` of the block has true depth),
    intrinsics (3, 3) float32 for the resized image."""
    try:
        from skimage.data import stereo_motorcycle
    except ImportError as err:
        raise ImportError(
            "the Middlebury sample ships with scikit-image: pip install -e '.[dense]'"
        ) from err
    left, _, disparity = stereo_motorcycle()
    height, width = disparity.shape
    side = (height // size) * size  # the largest centred square that blocks evenly
    top, start = (height - side) // 2, (width - side) // 2
    crop = (slice(top, top + side), slice(start, start + side))
    depth = disparity_to_depth(disparity.astype(np.float64))[crop]
    known = np.isfinite(depth)
    fraction = _block_mean(known.astype(np.float64), size)
    sums = _block_mean(np.where(known, depth, 0.0), size)
    valid = fraction >= min_valid
    mean_depth = np.where(valid, sums / np.maximum(fraction, 1e-9), 0.0)
    rgb = _block_mean(left[crop].astype(np.float64), size)
    scale = size / side
    fx = FOCAL_PX * scale
    cx = (311.193 - start) * scale
    cy = (254.877 - top) * scale
    return {
        "rgb": np.clip(np.round(rgb), 0, 255).astype(np.uint8),
        "depth": mean_depth.astype(np.float32),
        "valid": valid,
        "intrinsics": np.array([[fx, 0, cx], [0, fx, cy], [0, 0, 1]], dtype=np.float32),
    }
