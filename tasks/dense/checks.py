"""Checks of the scene generator against geometry known in closed form."""

from __future__ import annotations

import numpy as np

from tasks.dense.flow import world_points
from tasks.dense.scene import Pose, SceneConfig, SceneGenerator, look_at


def sphere_residual(size: int = 64, radius: float = 0.15) -> float:
    """Largest |distance to the centre - radius| / radius over the pixels of a sphere
    rendered alone on the ground, its depth back-projected to world points (MuJoCo
    draws spheres as polygon meshes, so a small residual remains)."""
    generator = SceneGenerator(SceneConfig(size=size, min_objects=1, max_objects=1), seed=0)
    scene = generator.sample(np.random.default_rng(0))
    centre = np.array([0.0, 0.0, radius])
    scene.shapes, scene.sizes[:] = ["sphere"], radius
    scene.poses = [(Pose(centre, np.eye(3)),) * 2]
    eye = np.array([0.0, -1.2, 0.8])
    scene.cameras = (Pose(eye, look_at(eye, centre)),) * 2
    render = generator.render(scene, 0)
    points = world_points(render["depth"], generator.intrinsics(scene), scene.cameras[0])
    on_sphere = render["segment"] == 1
    distance = np.linalg.norm(points[on_sphere] - centre, axis=-1)
    return float(np.abs(distance - radius).max() / radius)
