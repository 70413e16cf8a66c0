"""ddn-bench suite=latency: every method at every batch and one training step of each
policy, with ratios to DDN from the same run (values are not asserted: timing stays out
of unit tests); the GPU script refuses a machine without CUDA."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from ddn_policy.evaluation.bench_policy import method_latency

ROOT = Path(__file__).resolve().parents[1]


def latency_config(*overrides):
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose(
            "bench",
            overrides=[
                "suite=latency",
                "suite.batches=[1,3]",
                "suite.warmup=1",
                "suite.calls=2",
                "suite.train_batch=8",
                "suite.train_warmup=0",
                "suite.train_calls=1",
                *overrides,
            ],
        )


def test_latency_rows_cover_every_method_and_batch_with_ratios_to_ddn():
    cfg = latency_config()
    rows, table = method_latency(cfg)
    methods = list(cfg.suite.methods)
    inference = [r for r in rows if not r["method"].startswith("train_step_")]
    assert sorted((r["method"], r["batch"]) for r in inference) == sorted(
        (m, b) for m in methods for b in (1, 3)
    )
    for batch in (1, 3):
        [ddn] = [r for r in inference if r["method"] == "ddn" and r["batch"] == batch]
        assert ddn["over_ddn"] == 1.0
        for r in inference:
            if r["batch"] == batch:
                assert r["ms_median"] > 0
                assert r["over_ddn"] == pytest.approx(r["ms_median"] / ddn["ms_median"])
    train = {r["method"]: r for r in rows if r["method"].startswith("train_step_")}
    assert set(train) == {f"train_step_{p}" for p in cfg.suite.policies}
    assert train["train_step_ddn"]["over_ddn"] == 1.0
    assert all(r["device"] == "cpu" for r in rows)
    assert "dp_ddpm100" in table and "over_ddn" in table


def test_a_method_naming_a_missing_policy_is_refused():
    cfg = latency_config("+suite.methods.ddn_big={policy: ddn_large}")
    with pytest.raises(ValueError, match="'ddn_large'.*suite.policies has ddn, diffusion, mse"):
        method_latency(cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU machine")
def test_gpu_script_refuses_a_machine_without_cuda(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_latency.sh"), str(tmp_path / "out")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "no CUDA device" in done.stderr
    assert not (tmp_path / "out").exists()  # nothing half-written
