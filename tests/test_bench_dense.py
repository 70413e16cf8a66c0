"""ddn-bench suite=dense end to end on a tiny budget: trains, scores, draws, resumes."""

import math
import os

import pytest
from hydra import compose, initialize_config_dir

from ddn_policy.evaluation.bench_dense import dense_suite

CONFIGS = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "configs"))


def test_dense_suite_scores_every_method_and_reuses_its_runs(tmp_path):
    with initialize_config_dir(CONFIGS, version_base="1.3"):
        cfg = compose(
            "bench",
            overrides=[
                "suite=dense",
                "suite.tasks=[depth]",
                "suite.methods=[ddn,ddn_refit,regression]",
                "suite.preset=tiny",
                "suite.steps=3",
                "suite.batch_size=4",
                "suite.data.train=8",
                "suite.data.test=4",
                f"suite.data.root={tmp_path / 'data'}",
                "suite.data.scene.size=16",
                "suite.eval.images=4",
                "suite.eval.batch=2",
                "suite.eval.k=3",
                "suite.eval.depth_points=5",
                "suite.eval.oracle_prefix=[0,99]",  # the central walk, and past every layer
                f"suite.cache_dir={tmp_path / 'cache'}",
                f"suite.results_dir={tmp_path / 'results'}",
            ],
        )
    rows, table = dense_suite(cfg)
    metrics = {(r["model"], r["metric"]) for r in rows}
    for model in ("ddn", "regression"):
        for metric in ("abs_rel", "abs_rel_aligned", "best_of_k_image", "middlebury_abs_rel"):
            assert (model, metric) in metrics
    assert ("ddn", "guided_abs_rel") in metrics and ("regression", "guided_abs_rel") not in metrics
    assert ("ddn", "ause") in metrics  # the regressor has no uncertainty to rank by
    for metric in (
        "oracle_abs_rel",
        "prior_nll_first_layer",
        "prior_nll_chance",
        "central_abs_rel",  # the one-walk point estimate
        "ms_per_image_central",
        "ms_per_image_central_same_run",
    ):
        assert ("ddn", metric) in metrics and ("regression", metric) not in metrics
    by_metric = {r["metric"]: r["value"] for r in rows if r["model"] == "ddn"}
    assert by_metric["prior_nll_chance"] == pytest.approx(math.log(8))  # the tiny preset's K
    assert by_metric["oracle_abs_rel"] <= by_metric["best_of_k_image"]
    # no nearest choice is the central walk; nearest choices on every layer, the oracle
    assert by_metric["oracle_prefix_0_abs_rel"] == pytest.approx(by_metric["central_abs_rel"])
    assert by_metric["oracle_prefix_99_abs_rel"] == pytest.approx(by_metric["oracle_abs_rel"])
    # the refitted DDN: the ddn training itself (no third training), scored like a model
    for metric in ("abs_rel", "central_abs_rel", "prior_nll_first_layer_after_refit"):
        assert ("ddn_refit", metric) in metrics
    refit = {r["metric"]: r["value"] for r in rows if r["model"] == "ddn_refit"}
    assert refit["prior_nll_mean_after_refit"] <= refit["prior_nll_mean_before_refit"]
    assert "| depth | abs_rel |" in table
    assert (tmp_path / "results" / "depth.png").is_file()
    runs = sorted(p.name for p in (tmp_path / "cache").iterdir())
    timed = {r["model"]: r["value"] for r in rows if r["metric"] == "ms_per_image_same_run"}
    assert set(timed) == {"ddn", "ddn_refit", "regression"} and min(timed.values()) > 0
    assert len(runs) == 2  # ddn (its refit inside it) and regression
    again, _ = dense_suite(cfg)  # everything cached: nothing retrained or re-scored
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == runs
    untimed = lambda rs: [r for r in rs if not r["metric"].endswith("same_run")]  # noqa: E731
    assert untimed(again) == untimed(rows)


def test_a_nested_model_setting_reaches_the_trained_model_over_the_preset():
    from ddn_policy.dense.train import predictor_config
    from ddn_policy.evaluation.bench_dense import train_overrides
    from ddn_policy.models.dense import dense_preset

    with initialize_config_dir(CONFIGS, version_base="1.3"):
        suite = compose(
            "bench",
            overrides=["suite=dense", "++suite.models.ddn.ddn.chain_dropout_per_sample=0.3"],
        ).suite
        overrides = train_overrides(suite, "depth", "ddn")
        assert "++experiment.model.ddn.chain_dropout_per_sample=0.3" in overrides
        config = predictor_config(compose("train", overrides=overrides).experiment)
    preset = dense_preset("small", image_size=32, channels=1, cond_channels=3)
    assert config.model.ddn.chain_dropout_per_sample == 0.3
    assert config.model.ddn.widths == preset.ddn.widths and config.model.ddn.k == preset.ddn.k


def test_an_unknown_method_is_refused_with_the_valid_names():
    with initialize_config_dir(CONFIGS, version_base="1.3"):
        cfg = compose("bench", overrides=["suite=dense", "suite.methods=[ddn,ddm]"])
    with pytest.raises(ValueError, match=r"unknown dense methods \['ddm'\].*ddn_refit"):
        dense_suite(cfg)
