"""The procedural dense-prediction scenes: exact depth, exact flow, fixed-lightness
colours, atomic dataset writes."""

import numpy as np
import pytest

from tasks.dense import DenseDataset, SceneConfig, SceneGenerator, write_dataset
from tasks.dense import dataset as dataset_module
from tasks.dense.checks import sphere_residual
from tasks.dense.color import palette, srgb_to_lab
from tasks.dense.flow import ground_truth_flow, photometric_error, world_points


@pytest.fixture(scope="module")
def generator():
    return SceneGenerator(SceneConfig(size=64), seed=0)


def still(scene):
    """The scene with frame 2 equal to frame 1."""
    scene.poses = [(first, first) for first, _ in scene.poses]
    scene.cameras = (scene.cameras[0], scene.cameras[0])
    return scene


def test_depth_backprojects_onto_the_analytic_sphere_and_the_ground(generator):
    assert sphere_residual(64) < 0.02  # MuJoCo draws the sphere as a fine polygon mesh
    scene = generator.sample(np.random.default_rng(0))
    render = generator.render(scene, 0)
    points = world_points(render["depth"], generator.intrinsics(scene), scene.cameras[0])
    on_ground = render["segment"] == 0
    assert on_ground.sum() > 500
    assert np.abs(points[on_ground][:, 2]).max() < 1e-3  # the ground plane is z = 0
    assert (render["depth"][render["segment"] == -1] == 0).all()  # sky: no depth


def test_ground_truth_flow_warps_frame_two_onto_frame_one(generator):
    rng = np.random.default_rng(1)
    truth, identity, visible, occluded = [], [], [], 0
    for _ in range(8):
        scene = generator.sample(rng)
        first, second = generator.render(scene, 0), generator.render(scene, 1)
        flow, valid = ground_truth_flow(scene, generator.intrinsics(scene), first, second)
        truth.append(photometric_error(first["rgb"], second["rgb"], flow, valid))
        identity.append(photometric_error(first["rgb"], second["rgb"], 0 * flow, valid))
        visible.append(valid.sum() / first["valid"].sum())
        occluded += int((first["valid"] & ~valid).sum())
    # what remains is shading of turned objects, moving shadows and 64-px aliasing
    assert np.mean(truth) < 0.35 * np.mean(identity)
    assert 0.6 < np.mean(visible) < 1.0 and occluded > 0


def test_a_still_scene_has_zero_flow_everywhere_it_has_depth(generator):
    scene = still(generator.sample(np.random.default_rng(2)))
    first, second = generator.render(scene, 0), generator.render(scene, 1)
    flow, valid = ground_truth_flow(scene, generator.intrinsics(scene), first, second)
    assert np.abs(flow).max() < 1e-3
    assert valid.sum() >= 0.99 * first["valid"].sum()


def test_palette_colours_share_one_lightness_and_the_gray_input_hides_them(generator):
    colours = palette(60.0, 30.0, 8)
    lab = srgb_to_lab(colours)
    assert np.allclose(lab[:, 0], 60.0, atol=0.05)
    assert len({tuple(np.round(c, 3)) for c in colours}) == 8
    scene = generator.sample(np.random.default_rng(3))
    render = generator.render(scene, 0, colors=True)
    assert render["rgb"].shape == (64, 64, 3) and render["rgb"].dtype == np.uint8


def test_dataset_round_trip_and_refusals(tmp_path):
    cfg = SceneConfig(size=16, max_objects=3)
    (tmp_path / ".tmp-d.zarr-99999").mkdir()  # what a killed writer leaves
    path = write_dataset(tmp_path / "d.zarr", 5, cfg, seed=0, split="test", progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["d.zarr"]
    data = DenseDataset(path)
    assert len(data) == 5 and data.attrs["split"] == "test"
    sample = data[4]
    assert sample["flow"].shape == (16, 16, 2) and sample["gray"].dtype == np.uint8
    assert (sample["depth"][~sample["valid"]] == 0).all()
    with pytest.raises(FileExistsError, match="already exists"):
        write_dataset(path, 5, cfg, seed=0, split="test", progress=False)
    with pytest.raises(KeyError, match="normals"):
        DenseDataset(path, keys=("rgb", "normals"))
    with pytest.raises(ValueError, match="split='val'"):
        write_dataset(tmp_path / "e.zarr", 5, cfg, seed=0, split="val", progress=False)


def test_an_interrupted_write_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []
    real = dataset_module.render_sample

    def failing(generator, rng):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("renderer lost")
        return real(generator, rng)

    monkeypatch.setattr(dataset_module, "render_sample", failing)
    with pytest.raises(RuntimeError, match="renderer lost"):
        write_dataset(tmp_path / "d.zarr", 5, SceneConfig(size=16), 0, "train", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_bad_scene_settings_name_the_value():
    with pytest.raises(ValueError, match="min_objects=3, max_objects=2"):
        SceneConfig(min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="fovy_deg"):
        SceneConfig(fovy_deg=(60.0, 30.0))
    with pytest.raises(ValueError, match="frame=2"):
        generator = SceneGenerator(SceneConfig(size=16), seed=0)
        generator.render(generator.sample(np.random.default_rng(0)), frame=2)


def test_middlebury_motorcycle_becomes_metric_depth():
    from tasks.dense.middlebury import (
        BASELINE_M,
        DOFFS_PX,
        FOCAL_PX,
        disparity_to_depth,
        motorcycle,
    )

    assert disparity_to_depth(np.array([100.0]))[0] == pytest.approx(
        BASELINE_M * FOCAL_PX / (100.0 + DOFFS_PX)
    )
    assert np.isnan(disparity_to_depth(np.array([np.inf, np.nan]))).all()
    sample = motorcycle(64)
    assert sample["rgb"].shape == (64, 64, 3) and sample["rgb"].dtype == np.uint8
    depth = sample["depth"][sample["valid"]]
    assert sample["valid"].mean() > 0.9
    assert 1.0 < np.median(depth) < 5.0 and depth.min() > 0.5  # a motorcycle 2-3 m away
    assert (sample["depth"][~sample["valid"]] == 0).all()
