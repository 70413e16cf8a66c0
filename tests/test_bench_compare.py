"""ddn-bench comparison suites: finished runs are reused, changed settings re-run,
bad method names are refused."""

import os
import shutil

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ddn_policy.cli.refit import refit_checkpoint
from ddn_policy.evaluation import bench_compare

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


def suite_config(tmp_path, *overrides, suite="multimodal"):
    with initialize_config_dir(os.path.abspath(CONFIGS), version_base="1.3"):
        return compose(
            "bench",
            overrides=[
                f"suite={suite}",
                "suite.preset=tiny",
                "suite.steps=20",
                "suite.checkpoint_every=10",
                "suite.batch_size=32",
                "suite.episodes=2",
                "suite.periodic_episodes=2",
                "suite.num_envs=2",
                "suite.seeds=[0]",
                *(["suite.demos=[10]"] if suite == "multimodal" else []),
                "suite.run_methods=[mse]",
                "suite.threads=1",
                f"suite.cache_dir={tmp_path / 'cache'}",
                f"suite.results_dir={tmp_path / 'results'}",
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
    # the committed rows alone suffice: a new session's machine has no cache_dir
    shutil.rmtree(tmp_path / "cache")
    again, _ = bench_compare.compare(suite_config(tmp_path))
    assert again == rows
    assert len(list((tmp_path / "results" / "rows").glob("*-mse-*.json"))) == 1
    # a partial suite's table: the committed rows only, the missing seed neither trained nor faked
    partial, table = bench_compare.compare(
        suite_config(tmp_path, "suite.seeds=[0,1]", "suite.committed_only=true")
    )
    assert partial == rows and "| obstacle-reach | 10 | mse | 1 |" in table
    with pytest.raises(AssertionError, match="trained again"):  # new hash: a new run
        bench_compare.compare(suite_config(tmp_path, "suite.steps=30"))


def test_unknown_methods_and_policies_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"unknown methods \[.dp.\]; known: ddn, ddn_greedy"):
        bench_compare.compare(suite_config(tmp_path, "suite.run_methods=[dp]"))
    with pytest.raises(ValueError, match="method 'x' has policy='dp'; known: ddn, diffusion, mse"):
        bench_compare.compare(suite_config(tmp_path, "+suite.methods.x={policy: dp}"))


def test_settings_share_trainings_and_label_rows(tmp_path, monkeypatch):
    """metaworld-hard: the ood setting evaluates the multi-strategy trainings on new
    starts; rows carry the setting and the demonstrations' strategy mix."""
    monkeypatch.chdir(tmp_path)
    cfg = suite_config(
        tmp_path,
        "suite.tasks=[metaworld-hard/reach]",
        "suite.run_settings=[multi-strategy,ood]",
        "suite.settings.multi-strategy.demos=2",
        "suite.settings.ood.demos=2",
        "suite.steps=10",
        suite="metaworld-hard",
    )
    rows, table = bench_compare.compare(cfg)
    plain, ood = rows
    assert (plain["setting"], ood["setting"]) == ("multi-strategy", "ood")
    assert plain["config_hash"] == ood["config_hash"]  # one training, two evaluations
    assert plain["demo_route0"] == 0.5
    assert "| ood | metaworld-hard/reach | mse | 1 |" in table
    settings = bench_compare.training_settings(cfg.suite, "t", 10, "mse", 0, {"noise": "high"})
    assert "task.noise=high" in bench_compare.overrides_of(settings)
    assert "task_options" not in bench_compare.training_settings(cfg.suite, "t", 10, "mse", 0)


def test_a_method_can_train_its_own_policy_fields(tmp_path):
    cfg = suite_config(tmp_path)
    plain = bench_compare.training_settings(cfg.suite, "t", 10, "ddn", 0)
    own = bench_compare.training_settings(cfg.suite, "t", 10, "ddn", 0, None, {"model": {"k": 4}})
    assert plain["policy_overrides"] == {} and own["policy_overrides"] == {"model": {"k": 4}}
    assert "++policy.model.k=4" in bench_compare.overrides_of(own)


def test_a_refit_method_reuses_the_training_and_refits_each_checkpoint_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = suite_config(
        tmp_path,
        "+suite.methods.ddn_refit={policy: ddn, refit: true}",
        "suite.refit.max_epochs=5",
        "suite.run_methods=[ddn,ddn_refit]",
    )
    plain, refit = bench_compare.compare(cfg)[0]
    assert plain["config_hash"] == refit["config_hash"]  # one training, two methods
    assert "prior_nll_after_refit" not in plain
    assert refit["prior_nll_after_refit"] <= refit["prior_nll_before_refit"]
    saved = sorted((tmp_path / "cache").glob("*/checkpoints/[0-9]*/refit-*/pretrained_model"))
    assert len(saved) == 2  # the checkpoints at steps 10 and 20
    # rows lost, cache kept: the refitted models and their evaluations are reused
    shutil.rmtree(tmp_path / "results")
    monkeypatch.setattr(
        "ddn_policy.policies.ddn.modeling.refit_priors", lambda *a: pytest.fail("refitted twice")
    )
    assert bench_compare.compare(cfg)[0] == [plain, refit]
    # ddn-refit needs the training that wrote the checkpoint (its demonstrations)
    stray = tmp_path / "stray"
    shutil.copytree(saved[0], stray / "pretrained_model")
    with pytest.raises(FileNotFoundError, match="train_config.json not found"):
        refit_checkpoint(stray, {"max_epochs": 5}, tmp_path / "out")
    assert bench_compare.refit_settings(cfg.suite, {"refit": True})["max_epochs"] == 5
    no_block = bench_compare.refit_settings(OmegaConf.create({}), {"refit": True})
    assert no_block["max_epochs"] == 300  # a suite without a refit block: PriorRefitConfig's
    with pytest.raises(ValueError, match="refit=true.*policy='mse' has none"):
        bench_compare.compare(suite_config(tmp_path, "+suite.methods.x={policy: mse, refit: true}"))


def test_suite_inference_settings_reach_every_method_and_keep_its_trainings(tmp_path):
    """metaworld-hard-clip: the same trainings as metaworld-hard, evaluated with obs_clip;
    a method's own inference settings are kept beside (and over) the suite's."""
    plain, clip = (
        suite_config(tmp_path, suite=name).suite
        for name in ("metaworld-hard", "metaworld-hard-clip")
    )
    methods = bench_compare.with_suite_inference(
        OmegaConf.to_container(clip.methods), clip.inference
    )
    assert methods["mse"]["inference"] == {"obs_clip": 1.0}
    assert methods["dp_ddim10"]["inference"] == {
        "obs_clip": 1.0,
        "sampler": "ddim",
        "inference_steps": 10,
    }
    shared = OmegaConf.create({"temperature": 1.0})
    own = bench_compare.with_suite_inference(
        {"g": {"policy": "ddn", "inference": {"temperature": 0}}}, shared
    )
    assert own["g"]["inference"] == {"temperature": 0}
    unchanged = OmegaConf.to_container(plain.methods)
    assert bench_compare.with_suite_inference(unchanged, plain.inference) == unchanged
    setting = {"name": "multi-strategy", "demos": 10}
    plain_train, plain_row = bench_compare.row_settings(
        plain, "t", 10, 0, "mse", unchanged["mse"], setting
    )
    clip_train, clip_row = bench_compare.row_settings(
        clip, "t", 10, 0, "mse", methods["mse"], setting
    )
    assert plain_train == clip_train  # one training serves both suites
    assert plain_row.name != clip_row.name  # but its own evaluation
