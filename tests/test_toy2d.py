import json
import subprocess
import sys

import numpy as np
import pytest

from ddn_policy.toy2d.densities import DENSITIES, Density
from ddn_policy.toy2d.experiment import FreePointSettings, fit_free_points
from ddn_policy.toy2d.metrics import divergences, histogram


@pytest.mark.parametrize("name", DENSITIES)
def test_density_grid_is_a_distribution_and_samples_follow_it(name):
    d = Density(name, bins=20)
    p = d.grid()
    assert p.shape == (20, 20) and p.min() >= 0 and p.sum() == pytest.approx(1.0)
    pts = d.sample(40_000, np.random.default_rng(0))
    assert np.all(np.abs(pts) <= 1)
    assert divergences(p, histogram(pts, 20))["tv"] < 0.05


def test_unknown_density_lists_known_ones():
    with pytest.raises(ValueError, match="known: gaussian, rings"):
        Density("banana")


def test_divergences_are_zero_for_identical_and_positive_for_different():
    p = Density("rings", bins=30).grid()
    same = divergences(p, p)
    assert same["tv"] == pytest.approx(0) and same["hellinger"] == pytest.approx(0, abs=1e-7)
    assert same["js"] == pytest.approx(0, abs=1e-9)
    other = divergences(p, Density("gaussian", bins=30).grid())
    assert all(v > 0.05 for v in other.values())


def test_split_and_prune_beats_plain_descent_on_free_points():
    d = Density("spiral", bins=50)
    cfg = FreePointSettings(k=300, iterations=300, frames=3)
    kl = {}
    for method in ("gd", "split_prune"):
        pts, frames = fit_free_points(d, method, cfg, seed=0)
        assert pts.shape == (300, 2) and len(frames) == 3
        kl[method] = divergences(d.grid(), histogram(np.clip(pts, -1, 0.999), 50))["kl"]
    assert kl["gd"] > 2 * kl["split_prune"]


def test_command_writes_metrics_grid_and_gif(tmp_path):
    overrides = [
        f"out_dir={tmp_path}",
        "densities=[gaussian,text]",
        "bins=40",
        "points.k=100",
        "points.iterations=40",
        "points.frames=4",
        "network.steps=20",
        "network.k=8",
        "network.layers=2",
        "network.width=16",
    ]
    cmd = [sys.executable, "-m", "ddn_policy.cli.toy2d", *overrides]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {"gaussian", "text"}
    methods = {"gd", "split_prune", "loss_free", "real_samples", "ddn_network"}
    assert set(metrics["text"]) == methods
    assert {"kl", "js", "tv", "hellinger"} <= set(metrics["text"]["gd"])
    assert (tmp_path / "grid.png").stat().st_size > 1000
    assert (tmp_path / "optimisation.gif").stat().st_size > 1000
