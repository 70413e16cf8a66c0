"""The images suite end to end on 3-step trainings (slow: five subprocess trainings and
two classifiers; run with -m slow)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

CONFIGS = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "configs"))


@pytest.mark.slow
def test_images_suite_writes_rows_and_pictures_and_resumes_from_its_cache(tmp_path):
    results, cache = tmp_path / "results", tmp_path / "cache"
    command = [
        sys.executable,
        "-m",
        "ddn_policy.cli.bench",
        "suite=images",
        f"suite.cache_dir={cache}",
        f"suite.results_dir={results}",
        "suite.experiments=[digits-tiny,digits-diffusion,digits-lowres]",
        "suite.zscg_models=[digits-tiny]",
        "suite.steps=2",
        "suite.classifier_epochs=1",
        "suite.eval.samples=30",
        "suite.eval.per_task=20",
        "suite.eval.ddim_steps=[2]",
        "suite.timing_batch=4",
        f"out_dir={tmp_path}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command, check=True, env=env, capture_output=True)
    rows = json.loads((results / "results.json").read_text())
    metrics = {(r["model"], r.get("task"), r["metric"]) for r in rows}
    assert ("digits-tiny", None, "classifier_fd") in metrics
    assert ("digits-tiny", "class-guided", "requested_class_share") in metrics
    assert ("digits-diffusion", None, "ms_per_image") in metrics
    assert ("digits-lowres", None, "condition_mse") in metrics
    assert (results / "zscg-digits-tiny-super-resolution.png").is_file()
    again = subprocess.run(command, check=True, env=env, capture_output=True, text=True)
    assert "ddn_policy.cli.train" not in again.stdout  # every training came from the cache
    timed = {(r["model"], r["sampler"]) for r in rows if r["metric"] == "ms_per_image_same_run"}
    assert timed == {("digits-tiny", "DDN"), ("digits-diffusion", "DDIM-2")}  # unconditional

    def cached_rows(rs):  # the back-to-back timings are measured again on every run
        return [r for r in rs if r["metric"] != "ms_per_image_same_run"]

    rerun = json.loads((results / "results.json").read_text())
    assert cached_rows(rerun) == cached_rows(rows)


def test_each_image_experiment_sets_its_own_balancing_horizon(monkeypatch, tmp_path):
    """The suite passes no balance override: the experiment's yaml decides, so the
    reference rule (1.0) and the settled variant (0.7) both reach the training."""
    from ddn_policy.evaluation import bench_images

    seen = {}
    monkeypatch.setattr(bench_images, "train_once", lambda d, o, t: seen.setdefault(d.name, o))
    suite = OmegaConf.create(
        {"steps": 5, "batch_size": 4, "seed": 0, "cache_dir": str(tmp_path), "threads": 1}
    )
    horizons = {}
    for name, expected in (("digits-small-prior", 1.0), ("digits-small-prior-settle", 0.7)):
        bench_images.train(name, suite)
        (overrides,) = [o for d, o in seen.items() if d.startswith(name + "-s0")]
        assert not any(o.startswith("train.balance_until") for o in overrides)
        with initialize_config_dir(CONFIGS, version_base="1.3"):
            horizons[name] = compose("train", overrides=overrides).train.balance_until
        assert horizons[name] == expected


def test_refit_writes_a_loadable_model_once_and_reuses_it(monkeypatch, tmp_path):
    from ddn_policy.core import prior_refit
    from ddn_policy.evaluation import bench_images
    from ddn_policy.images.generator import ImageGenerator
    from tests.test_images import generator

    run_dir = tmp_path / "digits-x"
    trained = generator(prior=True)
    trained.save_pretrained(run_dir / "checkpoints" / "last" / "pretrained_model")
    suite = OmegaConf.create(
        {"refit": {"val_fraction": 0.25, "max_epochs": 3, "patience": 2, "batch_size": 8}}
    )
    calls, real = [], prior_refit.refit_priors

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(prior_refit, "refit_priors", counted)
    images = torch.rand(16, 1, 32, 32) * 2 - 1
    first = bench_images.refit("digits-x", run_dir, suite, images)
    again = bench_images.refit("digits-x", run_dir, suite, images)
    assert first == again and len(calls) == 1
    assert len(json.loads((first / "refit_report.json").read_text())) == trained.model.num_layers
    report = json.loads((first / "refit_report.json").read_text())
    rows = {r["metric"]: r["value"] for r in prior_refit.summary_rows(report)}
    assert rows["prior_nll_mean_after_refit"] <= rows["prior_nll_mean_before_refit"]
    assert set(rows) == {
        f"prior_nll_{w}_{t}_refit" for w in ("first_layer", "mean") for t in ("before", "after")
    }
    refitted = ImageGenerator.from_pretrained(first / "checkpoints" / "last" / "pretrained_model")
    heads = {k for k, v in trained.model.state_dict().items()
             if not torch.equal(v, refitted.model.state_dict()[k])}  # fmt: skip
    assert all(".prior_head." in k for k in heads)


def test_a_second_training_seed_keeps_the_feature_classifier(monkeypatch):
    """FDs of training seeds 0 and 1 must share one feature space: the classifiers follow
    suite.classifier_seed, not suite.seed."""
    from ddn_policy.images import classifier

    seen = []

    class Stop(Exception):
        pass

    def record(cache_dir, dataset, seed, epochs):
        seen.append(seed)
        if len(seen) == 2:
            raise Stop

    monkeypatch.setattr(classifier, "cached_classifier", record)
    from ddn_policy.evaluation.bench_images import images_suite

    with initialize_config_dir(CONFIGS, version_base="1.3"):
        cfg = compose("bench", overrides=["suite=images", "suite.seed=1"])
    with pytest.raises(Stop):
        images_suite(cfg)
    assert seen == [0, 1]  # the guide classifier and the judge, as for training seed 0
