"""Exact optical flow between the two frames of a scene: back-project every frame-1 pixel
with its depth, move it with its body's rigid transform, re-project into camera 2.

Flow is (du, dv) in pixels, u to the right and v down, so pixel (u, v) of frame 1 shows
the point that frame 2 shows at (u + du, v + dv).
"""

from __future__ import annotations

import numpy as np

from tasks.dense.scene import Pose, Scene

# A re-projected point is visible in frame 2 when frame 2's depth there agrees with its
# own depth within this fraction (plus a millimetre), and the same surface is there.
DEPTH_AGREEMENT = 0.02


def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres u (columns), v (rows), each (H, W)."""
    return np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)


def backproject(depth: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """(H, W) planar depth -> (H, W, 3) points in camera coordinates (x right, y up,
    looking down -z)."""
    u, v = pixel_grid(depth.shape[0])
    f, c = intrinsics[0, 0], intrinsics[0, 2]
    return np.stack([(u - c) * depth / f, -(v - c) * depth / f, -depth], axis=-1)


def project(points: np.ndarray, intrinsics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., 3) camera coordinates -> pixel positions (..., 2) as (u, v), depth (...)."""
    f, c = intrinsics[0, 0], intrinsics[0, 2]
    depth = -points[..., 2]
    safe = np.where(depth > 1e-9, depth, 1e-9)
    u = points[..., 0] * f / safe + c
    v = -points[..., 1] * f / safe + c
    return np.stack([u, v], axis=-1), depth


def world_points(depth: np.ndarray, intrinsics: np.ndarray, camera: Pose) -> np.ndarray:
    return camera.apply(backproject(depth, intrinsics))


def ground_truth_flow(
    scene: Scene, intrinsics: np.ndarray, first: dict, second: dict
) -> tuple[np.ndarray, np.ndarray]:
    """first/second: the renders of frames 1 and 2. Returns flow (H, W, 2) float32, exact
    wherever frame 1 has depth (0 on the sky), and visible (H, W) bool: the point is
    also seen in frame 2 (not occluded, not out of view)."""
    points = world_points(first["depth"], intrinsics, scene.cameras[0])  # (H, W, 3)
    moved = points.copy()
    for i, (pose1, pose2) in enumerate(scene.poses):
        mask = first["segment"] == i + 1
        moved[mask] = pose2.apply(pose1.inverse(points[mask]))  # the ground stays put
    pixels, depth2 = project(scene.cameras[1].inverse(moved), intrinsics)
    u, v = pixel_grid(first["depth"].shape[0])
    flow = np.stack([pixels[..., 0] - u, pixels[..., 1] - v], axis=-1).astype(np.float32)

    size = first["depth"].shape[0]
    col, row = np.floor(pixels[..., 0]).astype(int), np.floor(pixels[..., 1]).astype(int)
    inside = (col >= 0) & (col < size) & (row >= 0) & (row < size) & (depth2 > 0)
    col, row = np.clip(col, 0, size - 1), np.clip(row, 0, size - 1)
    seen = second["depth"][row, col]
    agrees = np.abs(seen - depth2) <= DEPTH_AGREEMENT * depth2 + 1e-3
    same = second["segment"][row, col] == first["segment"]
    visible = first["valid"] & inside & agrees & same
    return np.where(first["valid"][..., None], flow, 0.0).astype(np.float32), visible


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample image (H, W, C) at (u + du, v + dv) bilinearly: frame 2 pulled back onto
    frame 1's pixels (border pixels repeat)."""
    size = image.shape[0]
    u, v = pixel_grid(size)
    x = np.clip(u + flow[..., 0] - 0.5, 0, size - 1)
    y = np.clip(v + flow[..., 1] - 0.5, 0, size - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, size - 1), np.minimum(y0 + 1, size - 1)
    wx, wy = (x - x0)[..., None], (y - y0)[..., None]
    img = image.astype(np.float64)
    top = img[y0, x0] * (1 - wx) + img[y0, x1] * wx
    bottom = img[y1, x0] * (1 - wx) + img[y1, x1] * wx
    return top * (1 - wy) + bottom * wy


def photometric_error(first_rgb: np.ndarray, second_rgb: np.ndarray, flow, valid) -> float:
    """Mean absolute difference (0-255 scale) between frame 1 and frame 2 warped by flow,
    over valid pixels."""
    diff = np.abs(warp(second_rgb, flow) - first_rgb.astype(np.float64)).mean(-1)
    return float(diff[valid].mean()) if valid.any() else float("nan")
