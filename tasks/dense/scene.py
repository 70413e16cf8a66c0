"""Procedural MuJoCo scenes with exact depth, segmentation, optical flow and colour.

One MuJoCo model holds a pool of object slots, procedural textures and lights; a scene
re-poses, re-shapes, re-textures and hides slots by writing model fields, so one
offscreen renderer (an OpenGL context costs ~0.3 s) serves every scene of a dataset.

Camera convention (MuJoCo's): the camera looks down its -z axis, x right, y up; pixel
(u, v) has its centre at (u + 0.5, v + 0.5) with row 0 at the top of the image. Depth is
planar: the distance along the optical axis, not along the ray.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from tasks.dense.color import palette

SHAPES = {"sphere": 2, "capsule": 3, "ellipsoid": 4, "cylinder": 5, "box": 6}  # mjtGeom
HIDDEN_GROUP = 5  # geom group that the renderer is told not to draw


def _range(name: str, value) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not lo <= hi:
        raise ValueError(f"{name} must be (low, high) with low <= high, got {name}={value}")
    return lo, hi


@dataclass
class SceneConfig:
    size: int = 64  # image height and width (pixels)
    min_objects: int = 2  # objects per scene, drawn uniformly in [min, max]
    max_objects: int = 6  # object slots of the model
    textures: int = 16  # procedural textures in the pool (objects and ground)
    object_size: tuple[float, float] = (0.06, 0.2)  # half-size range of an object (m)
    spread: float = 0.5  # objects' centres lie in [-spread, spread]^2 on the ground (m)
    camera_distance: tuple[float, float] = (1.3, 2.2)  # from the look-at point (m)
    elevation_deg: tuple[float, float] = (20.0, 60.0)  # camera above the ground plane
    fovy_deg: tuple[float, float] = (35.0, 55.0)  # vertical field of view
    lights: int = 3  # light slots; each scene switches on 1..lights
    move: float = 0.1  # largest object translation between the flow frames (m)
    turn_deg: float = 15.0  # largest object rotation between the flow frames
    camera_move: float = 0.08  # largest camera translation between the flow frames (m)
    camera_turn_deg: float = 3.0  # largest camera rotation between the flow frames
    palette_lightness: float = 60.0  # CIELAB L* of every colorization colour
    palette_chroma: float = 30.0  # CIELAB chroma of the colorization colours
    palette_hues: int = 8  # colours in the colorization palette (evenly spaced hues)
    zfar: float = 12.0  # far clipping plane (m); background pixels have no depth

    def __post_init__(self):
        for name in ("object_size", "camera_distance", "elevation_deg", "fovy_deg"):
            setattr(self, name, _range(name, getattr(self, name)))
        if self.size < 8:
            raise ValueError(f"size must be >= 8 pixels, got size={self.size}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(
                "need 1 <= min_objects <= max_objects, got "
                f"min_objects={self.min_objects}, max_objects={self.max_objects}"
            )
        for name in ("textures", "lights", "palette_hues"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {name}={getattr(self, name)}")
        if not 0 < self.palette_lightness < 100:
            raise ValueError(
                f"palette_lightness is a CIELAB L* in (0, 100), got {self.palette_lightness}"
            )


@dataclass
class Pose:
    pos: np.ndarray  # (3,) world position
    mat: np.ndarray  # (3, 3) rotation, columns = the frame's axes in world coordinates

    def apply(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) local -> world."""
        return points @ self.mat.T + self.pos

    def inverse(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) world -> local."""
        return (points - self.pos) @ self.mat


def rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues: (3,) axis, radians -> (3, 3)."""
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Camera rotation (columns x, y, z) looking from eye to target, world z up."""
    back = eye - target
    back = back / np.linalg.norm(back)
    right = np.cross([0.0, 0.0, 1.0], back)
    right = right / np.linalg.norm(right)
    return np.stack([right, np.cross(back, right), back], axis=1)


def random_turn(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    return rotation(rng.normal(size=3), np.deg2rad(rng.uniform(-max_deg, max_deg)))


@dataclass
class Scene:
    """Everything that fixes one scene; `objects` poses for frame 1 and frame 2."""

    shapes: list[str]  # per object
    sizes: np.ndarray  # (N, 3) MuJoCo geom sizes
    poses: list[tuple[Pose, Pose]]  # per object: frame 1, frame 2
    textures: np.ndarray  # (N,) texture index of each object
    tints: np.ndarray  # (N, 4) rgba tint of each object's material
    palette_colors: np.ndarray  # (N, 3) sRGB colour of each object in the colour render
    ground_tint: np.ndarray  # (4,) rgba tint of the ground's checker
    lights: list[tuple[np.ndarray, np.ndarray, float]]  # position, direction, intensity
    cameras: tuple[Pose, Pose]  # frame 1, frame 2
    fovy_deg: float

    @property
    def num_objects(self) -> int:
        return len(self.shapes)


class SceneGenerator:
    """Draws scenes and renders them: `sample(rng)`, then `render(scene, frame, colors)`."""

    def __init__(self, cfg: SceneConfig | None = None, seed: int = 0):
        os.environ.setdefault("MUJOCO_GL", "osmesa")
        import mujoco

        self.mujoco = mujoco
        self.cfg = cfg = cfg or SceneConfig()
        self.texture_rng = np.random.default_rng(seed)  # the pool is part of the dataset
        self.model = mujoco.MjModel.from_xml_string(self._xml())
        self.data = mujoco.MjData(self.model)
        self.renderer = mujoco.Renderer(self.model, cfg.size, cfg.size)
        self.option = mujoco.MjvOption()
        self.option.geomgroup[HIDDEN_GROUP] = 0
        self.palette = palette(cfg.palette_lightness, cfg.palette_chroma, cfg.palette_hues)
        self.ground_material = self.model.material("ground").id
        self.object_geoms = [self.model.geom(f"object{i}").id for i in range(cfg.max_objects)]
        self.textured = [
            [self.model.material(f"slot{i}-tex{t}").id for t in range(cfg.textures)]
            for i in range(cfg.max_objects)
        ]
        self.flat = [self.model.material(f"slot{i}-flat").id for i in range(cfg.max_objects)]

    # ------------------------------------------------------------------ the model
    def _xml(self) -> str:
        cfg, rng = self.cfg, self.texture_rng
        textures = []
        for i in range(cfg.textures):
            kind = ["checker", "gradient", "flat"][i % 3]
            c1, c2 = rng.uniform(0.1, 0.9, 3), rng.uniform(0.1, 0.9, 3)
            mark = f'mark="random" random="{rng.uniform(0.02, 0.2):.3f}" markrgb="1 1 1"'
            textures.append(
                f'<texture name="tex{i}" type="cube" builtin="{kind}" width="32" height="32" '
                f'rgb1="{" ".join(f"{v:.3f}" for v in c1)}" '
                f'rgb2="{" ".join(f"{v:.3f}" for v in c2)}" {mark}/>'
            )
        ground = (
            '<texture name="ground" type="2d" builtin="checker" width="64" height="64" '
            'rgb1="0.55 0.55 0.55" rgb2="0.35 0.35 0.35" mark="random" random="0.05" '
            'markrgb="0.8 0.8 0.8"/>'
        )
        # The renderer's context copies each material's texture when it is made, so a
        # slot switches texture by switching material: one per (slot, texture), plus a
        # flat one per slot for the colour render; a slot's tint is its materials' rgba.
        # No specular light: highlights move with the viewpoint and would make the flow
        # frames disagree photometrically where the geometry is exact.
        matte = 'specular="0" shininess="0"'
        materials = [f'<material name="ground" texture="ground" texrepeat="6 6" {matte}/>']
        materials += [
            f'<material name="slot{i}-tex{t}" texture="tex{t}" {matte}/>'
            for i in range(cfg.max_objects)
            for t in range(cfg.textures)
        ]
        materials += [f'<material name="slot{i}-flat" {matte}/>' for i in range(cfg.max_objects)]
        bodies = [
            f'<body name="object{i}" mocap="true" pos="0 0 0.2">'
            f'<geom name="object{i}" type="sphere" size="0.1" material="slot{i}-flat" '
            f'group="{HIDDEN_GROUP}"/></body>'
            for i in range(cfg.max_objects)
        ]
        lights = [
            f'<light name="light{i}" pos="0 0 3" dir="0 0 -1" castshadow="true"/>'
            for i in range(cfg.lights)
        ]
        return f"""
<mujoco>
  <visual>
    <global offwidth="{cfg.size}" offheight="{cfg.size}"/>
    <map znear="0.02" zfar="{cfg.zfar}"/>
    <headlight ambient="0.25 0.25 0.25" diffuse="0.1 0.1 0.1" specular="0 0 0"/>
    <quality shadowsize="1024"/>
  </visual>
  <statistic extent="1" center="0 0 0"/>
  <asset>{ground}{"".join(textures)}{"".join(materials)}</asset>
  <worldbody>
    {"".join(lights)}
    <geom name="ground" type="plane" size="1.5 1.5 0.1" material="ground"/>
    {"".join(bodies)}
    <camera name="camera" pos="0 -2 1" xyaxes="1 0 0 0 0.5 0.87" fovy="45"/>
  </worldbody>
</mujoco>"""

    # ------------------------------------------------------------------ drawing a scene
    def sample(self, rng: np.random.Generator) -> Scene:
        cfg = self.cfg
        n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
        shapes = [str(s) for s in rng.choice(list(SHAPES), n)]
        sizes = rng.uniform(*cfg.object_size, (n, 3))
        poses = []
        for shape, size in zip(shapes, sizes, strict=True):
            if shape in ("sphere",):
                size[1:] = size[0]
            if shape in ("capsule", "cylinder"):
                size[2] = 0.0
            extent = size.max() + (size[1] if shape == "capsule" else 0.0)
            lift = rng.uniform(0.5, 1.0) * extent  # may sink into the ground: depth stays exact
            centre = np.array([*rng.uniform(-cfg.spread, cfg.spread, 2), lift])
            first = Pose(centre, random_turn(rng, 180.0))
            step = rng.uniform(-cfg.move, cfg.move, 3) * np.array([1.0, 1.0, 0.3])
            second = Pose(centre + step, random_turn(rng, cfg.turn_deg) @ first.mat)
            poses.append((first, second))
        lights = []
        for _ in range(int(rng.integers(1, cfg.lights + 1))):
            pos = np.array([*rng.uniform(-2, 2, 2), rng.uniform(2, 4)])
            direction = np.array([*rng.uniform(-0.3, 0.3, 2), 0.0]) - pos
            lights.append((pos, direction / np.linalg.norm(direction), rng.uniform(0.3, 0.7)))
        target = np.array([*rng.uniform(-0.2, 0.2, 2), 0.0])
        azimuth = rng.uniform(0, 2 * np.pi)
        elevation = np.deg2rad(rng.uniform(*cfg.elevation_deg))
        distance = rng.uniform(*cfg.camera_distance)
        eye = target + distance * np.array(
            [np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth),
             np.sin(elevation)]
        )  # fmt: skip
        first_cam = Pose(eye, look_at(eye, target))
        second_cam = Pose(
            eye + rng.uniform(-cfg.camera_move, cfg.camera_move, 3),
            random_turn(rng, cfg.camera_turn_deg) @ first_cam.mat,
        )
        return Scene(
            shapes=shapes,
            sizes=sizes,
            poses=poses,
            textures=rng.integers(0, cfg.textures, n),
            tints=np.concatenate([rng.uniform(0.6, 1.0, (n, 3)), np.ones((n, 1))], axis=1),
            palette_colors=self.palette[rng.integers(0, len(self.palette), n)],
            ground_tint=np.array([*rng.uniform(0.6, 1.0, 3), 1.0]),
            lights=lights,
            cameras=(first_cam, second_cam),
            fovy_deg=float(rng.uniform(*cfg.fovy_deg)),
        )

    def _pose_model(self, scene: Scene, frame: int, colors: bool) -> None:
        m, d, mj = self.model, self.data, self.mujoco
        for i, geom in enumerate(self.object_geoms):
            body = m.geom_bodyid[geom]
            mocap = m.body_mocapid[body]
            if i >= scene.num_objects:
                m.geom_group[geom] = HIDDEN_GROUP
                continue
            m.geom_group[geom] = 0
            m.geom_type[geom] = SHAPES[scene.shapes[i]]
            m.geom_size[geom] = scene.sizes[i]
            m.geom_rbound[geom] = float(np.linalg.norm(scene.sizes[i])) * 2
            pose = scene.poses[i][frame]
            d.mocap_pos[mocap] = pose.pos
            quat = np.zeros(4)
            mj.mju_mat2Quat(quat, pose.mat.reshape(-1))
            d.mocap_quat[mocap] = quat
            if colors:  # the colour render: flat palette colours, no texture
                material = self.flat[i]
                m.mat_rgba[material] = [*scene.palette_colors[i], 1.0]
            else:
                material = self.textured[i][int(scene.textures[i])]
                m.mat_rgba[material] = scene.tints[i]
            m.geom_matid[geom] = material
        m.mat_rgba[self.ground_material] = scene.ground_tint
        for i in range(m.nlight):
            on = i < len(scene.lights)
            m.light_active[i] = on
            if on:
                pos, direction, intensity = scene.lights[i]
                m.light_pos[i], m.light_dir[i] = pos, direction
                m.light_diffuse[i] = intensity
                m.light_specular[i] = 0.0
        camera = scene.cameras[frame]
        m.cam_pos[0] = camera.pos
        quat = np.zeros(4)
        mj.mju_mat2Quat(quat, camera.mat.reshape(-1))
        m.cam_quat[0] = quat
        m.cam_fovy[0] = scene.fovy_deg
        mj.mj_forward(m, d)

    # ------------------------------------------------------------------ rendering
    def render(self, scene: Scene, frame: int = 0, colors: bool = False) -> dict[str, np.ndarray]:
        """rgb (H, W, 3) uint8, depth (H, W) float32 planar metres (0 where invalid),
        valid (H, W) bool, segment (H, W) int16: -1 background, 0 ground, 1+i object i."""
        if frame not in (0, 1):
            raise ValueError(f"frame must be 0 or 1 (the two flow frames), got frame={frame}")
        self._pose_model(scene, frame, colors)
        r = self.renderer
        r.update_scene(self.data, camera="camera", scene_option=self.option)
        rgb = r.render().copy()
        r.enable_depth_rendering()
        r.update_scene(self.data, camera="camera", scene_option=self.option)
        depth = r.render().astype(np.float32)
        r.disable_depth_rendering()
        r.enable_segmentation_rendering()
        r.update_scene(self.data, camera="camera", scene_option=self.option)
        geom = r.render()[..., 0].copy()
        r.disable_segmentation_rendering()
        segment = np.full(geom.shape, -1, dtype=np.int16)
        segment[geom == self.model.geom("ground").id] = 0
        for i, g in enumerate(self.object_geoms[: scene.num_objects]):
            segment[geom == g] = i + 1
        valid = segment >= 0
        return {"rgb": rgb, "depth": np.where(valid, depth, 0.0), "valid": valid,
                "segment": segment}  # fmt: skip

    def intrinsics(self, scene: Scene) -> np.ndarray:
        """(3, 3) pinhole matrix in pixels (principal point at the image centre)."""
        size = self.cfg.size
        focal = (size / 2) / np.tan(np.deg2rad(scene.fovy_deg) / 2)
        return np.array([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1]])
