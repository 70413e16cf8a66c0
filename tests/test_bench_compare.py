"""ddn-bench comparison suites: finished runs are reused, changed settings re-run,
bad method names are refused."""

import os

import pytest
from hydra import compose, initialize_config_dir

from ddn_policy.evaluation import bench_compare

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


def suite_config(tmp_path, *overrides):
    with initialize_config_dir(os.path.abspath(CONFIGS), version_base="1.3"):
        return compose(
            "bench",
            overrides=[
                "suite=multimodal",
                "suite.preset=tiny",
                "suite.steps=20",
                "suite.checkpoint_every=10",
                "suite.batch_size=32",
                "suite.episodes=2",
                "suite.periodic_episodes=2",
                "suite.num_envs=2",
                "suite.seeds=[0]",
                "suite.demos=[10]",
                "suite.run_methods=[mse]",
                "suite.threads=1",
                f"suite.cache_dir={tmp_path / 'cache'}",
                *overrides,
            ],
        )


def test_finished_runs_are_reused_and_changed_settings_rerun(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # demonstrations are cached under ./data
    rows, table = bench_compare.compare(suite_config(tmp_path))
    assert [r["method"] for r in rows] == ["mse"]
    assert len(rows[0]["periodic_success"]) == 2  # checkpoints at steps 10 and 20
    assert "| obstacle-reach | 10 | mse | 1 |" in table

    def no_training(*args, **kwargs):
        raise AssertionError("a cached run was trained again")

    monkeypatch.setattr(bench_compare.subprocess, "run", no_training)
    monkeypatch.setattr(bench_compare, "evaluate", no_training)
    again, _ = bench_compare.compare(suite_config(tmp_path))
    assert again == rows
    with pytest.raises(AssertionError, match="trained again"):  # new hash: a new run
        bench_compare.compare(suite_config(tmp_path, "suite.steps=30"))


def test_unknown_methods_and_policies_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"unknown methods \[.dp.\]; known: ddn, ddn_greedy"):
        bench_compare.compare(suite_config(tmp_path, "suite.run_methods=[dp]"))
    with pytest.raises(ValueError, match="method 'x' has policy='dp'; known: ddn, diffusion, mse"):
        bench_compare.compare(suite_config(tmp_path, "+suite.methods.x={policy: dp}"))
