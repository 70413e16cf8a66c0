"""The dense DDN predictor: trains with the shared Trainer on rendered scenes for each
task, gives K hypotheses in the task's units, saves and loads, refuses bad input."""

import json
from pathlib import Path

import pytest
import torch

from ddn_policy.dense import (
    ColorStrokes,
    DensePredictor,
    DensePredictorConfig,
    PhotometricFlow,
    SparseDepth,
)
from ddn_policy.training.trainer import TrainConfig, Trainer
from tasks.dense import DenseDataset, SceneConfig, write_dataset

SIZE = 16


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    path = tmp_path_factory.mktemp("dense") / "train.zarr"
    write_dataset(path, 48, SceneConfig(size=SIZE, max_objects=3), 0, "train", progress=False)
    return DenseDataset(path)


def batch_of(data, rows):
    return torch.utils.data.default_collate([data[i] for i in rows])


@pytest.fixture(scope="module")
def trained(scenes, tmp_path_factory):
    """task -> (predictor trained 80 steps, its logged losses), trained once per module."""
    cache = {}

    def get(task):
        if task not in cache:
            torch.manual_seed(0)
            config = DensePredictorConfig(task=task, preset="tiny", image_size=SIZE)
            predictor = DensePredictor(config)
            out = tmp_path_factory.mktemp(task)
            cfg = TrainConfig(steps=80, batch_size=16, lr=3e-3, warmup_steps=5, log_every=5)
            Trainer(predictor, scenes, cfg, out).fit()
            records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
            # the L2 part (the prior's cross-entropy is on another scale)
            losses = [sum(r["layer_losses"]) for r in records if "layer_losses" in r]
            cache[task] = (predictor.eval(), losses)
        return cache[task]

    return get


def reconstruction_error(predictor, batch) -> float:
    """Mean squared error of the nearest-candidate walk to the normalized target: the
    training loss without chain dropout's random picks, which keep the logged loss noisy."""
    target = predictor.target(batch)
    with torch.no_grad():
        cond = predictor.model.encoder(predictor.condition(batch))
        return float((predictor.model.ddn.reconstruct(target, cond) - target).pow(2).mean())


@pytest.mark.parametrize("task", ["depth", "flow", "color"])
def test_training_lowers_the_loss_and_predicts_in_task_units(scenes, trained, task):
    predictor, losses = trained(task)
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3])
    torch.manual_seed(0)  # the trained model's initial weights
    untrained = DensePredictor(DensePredictorConfig(task=task, preset="tiny", image_size=SIZE))
    batch = batch_of(scenes, range(16))
    assert reconstruction_error(predictor, batch) < 0.6 * reconstruction_error(untrained, batch)
    out = predictor.predict(batch_of(scenes, [0, 1]), n=4)
    channels = {"depth": 1, "flow": 2, "color": 3}[task]
    assert out["hypotheses"].shape == (2, 4, channels, SIZE, SIZE)
    assert out["point"].shape == out["uncertainty"].shape == (2, channels, SIZE, SIZE)
    assert (out["uncertainty"] >= 0).all()
    if task == "depth":
        assert (out["point"] > 0).all()  # metres
    if task == "color":
        assert 0 <= out["point"].min() and out["point"].max() <= 1


def guided_and_free(predictor, batch, guide, n=8):
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    guided = predictor.predict(batch, n=n, guide=guide, generator=gen())["hypotheses"]
    free = predictor.predict(batch, n=n, generator=gen())["hypotheses"]
    return guided, free


def test_sparse_depth_points_pull_the_hypotheses_onto_the_measurements(scenes, trained):
    predictor, _ = trained("depth")
    batch = batch_of(scenes, range(4))
    guide = SparseDepth.sample_from(
        batch["depth"], batch["valid"], 10, torch.Generator().manual_seed(0)
    )
    guided, free = guided_and_free(predictor, batch, guide)

    def point_error(hyps):  # mean |log error| at the measured pixels: the guide's own score
        rows = torch.arange(4).repeat_interleave(8)  # the image of each hypothesis
        return -guide(hyps.flatten(0, 1)[:, None], rows).mean()

    assert point_error(guided) < 0.7 * point_error(free)


def test_colour_strokes_are_respected(scenes, trained):
    predictor, _ = trained("color")
    batch = batch_of(scenes, range(4))
    truth = batch["color"].permute(0, 3, 1, 2).float() / 255  # (B, 3, H, W)
    alpha = torch.zeros(4, 1, SIZE, SIZE)
    alpha[:, :, 4:8, 4:8] = alpha[:, :, 10:13, 9:12] = 1.0
    guide = ColorStrokes(torch.cat([truth, alpha], 1))
    guided, free = guided_and_free(predictor, batch, guide)

    def stroke_error(hyps):
        return ((hyps - truth[:, None]).abs() * alpha[:, None]).sum() / (alpha.sum() * 3 * 8)

    assert stroke_error(guided) < 0.8 * stroke_error(free)


def test_photometric_guidance_makes_the_flow_explain_the_second_frame(scenes, trained):
    predictor, _ = trained("flow")
    batch = batch_of(scenes, range(4))
    first, second = (batch[k].permute(0, 3, 1, 2).float() / 255 for k in ("rgb", "rgb2"))
    guide = PhotometricFlow(first, second)
    guided, free = guided_and_free(predictor, batch, guide)
    rows = torch.arange(4).repeat_interleave(8)
    guided_error = -guide(guided.flatten(0, 1)[:, None], rows).mean()
    free_error = -guide(free.flatten(0, 1)[:, None], rows).mean()
    assert guided_error < 0.9 * free_error


@pytest.mark.parametrize("method", ["regression", "diffusion"])
def test_baselines_train_and_predict_through_the_same_interface(scenes, tmp_path, method):
    torch.manual_seed(0)
    config = DensePredictorConfig(task="depth", method=method, preset="tiny", image_size=SIZE)
    if method == "diffusion":
        config = DensePredictorConfig(
            task="depth",
            method=method,
            image_size=SIZE,
            model={"block_out_channels": (16, 32), "inference_steps": 4},
        )
    predictor = DensePredictor(config)
    cfg = TrainConfig(steps=60, batch_size=16, lr=3e-3, warmup_steps=5, log_every=5)
    Trainer(predictor, scenes, cfg, tmp_path).fit()
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    losses = [json.loads(line)["loss"] for line in lines if '"loss"' in line]
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3])
    out = predictor.eval().predict(batch_of(scenes, [0, 1]), n=3)
    assert out["hypotheses"].shape == (2, 3, 1, SIZE, SIZE)
    spread = out["uncertainty"].mean()
    assert spread == 0 if method == "regression" else spread > 0  # an ensemble differs
    with pytest.raises(ValueError, match="guide=None"):
        predictor.predict(batch_of(scenes, [0]), n=2, guide=lambda c, i: c.mean((2, 3, 4)))
    with pytest.raises(ValueError, match=f"method='{method}'"):  # no candidates to walk
        predictor.predict(batch_of(scenes, [0]), n=2, point="central")


@pytest.mark.parametrize("method", ["ddn", "ddn_mean_head", "diffusion"])
def test_save_and_load_give_identical_hypotheses(scenes, tmp_path, method):
    model = {
        "ddn": None,
        "ddn_mean_head": {"mean_head": True},
        "diffusion": {"block_out_channels": (16, 32), "inference_steps": 2},
    }[method]
    config = DensePredictorConfig(
        task="flow",
        method=method.removesuffix("_mean_head"),
        preset="tiny",
        image_size=SIZE,
        model=model,
    )
    predictor = DensePredictor(config)
    predictor.eval().save_pretrained(tmp_path)
    loaded = DensePredictor.from_pretrained(tmp_path)
    assert loaded.config == predictor.config
    batch = batch_of(scenes, [2, 3])
    a = predictor.predict(batch, n=3, generator=torch.Generator().manual_seed(1))
    b = loaded.predict(batch, n=3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a["hypotheses"], b["hypotheses"])


def test_mean_head_learns_the_mean_and_the_decoder_models_the_residual(scenes, tmp_path):
    torch.manual_seed(0)
    model = {"mean_head": True}
    config = DensePredictorConfig(task="flow", preset="tiny", image_size=SIZE, model=model)
    predictor = DensePredictor(config)
    cfg = TrainConfig(steps=80, batch_size=16, lr=3e-3, warmup_steps=5, log_every=5)
    Trainer(predictor, scenes, cfg, tmp_path).fit()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    mean_losses = [r["mean_loss"] for r in records if "mean_loss" in r]
    assert sum(mean_losses[-3:]) < 0.8 * sum(mean_losses[:3])
    batch = batch_of(scenes, range(8))
    net = predictor.eval().model
    with torch.no_grad():
        cond, target = predictor.condition(batch), predictor.target(batch)
        goal, features = net.decoder_terms(cond, target)
        mean = target - goal  # the mean head's estimate
        gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
        hyps = net.sample(cond, 4, generator=gen())  # (8, 4, 2, H, W)
        draws = net.ddn.sample(4, features, generator=gen())
        torch.testing.assert_close(hyps, draws + mean[:, None])  # the decoder's draws, shifted
        # the decoder's nearest walk toward the residual improves on the mean alone
        walked = net.ddn.reconstruct(goal, features) + mean
    assert (walked - target).square().mean() < 0.8 * (mean - target).square().mean()


def test_shifted_scorer_scores_candidates_in_the_targets_terms():
    from ddn_policy.models.dense import shifted_scorer

    offset = torch.randn(3, 2, 8, 8)  # (rows, C, H, W)
    seen = []

    def score(candidates, ctx):
        seen.append(candidates)
        return candidates.flatten(2).mean(-1)  # (rows, K)

    residuals = torch.zeros(3, 5, 2, 4, 4)  # K=5 candidates at a 4x4 layer
    shifted_scorer(score, offset)(residuals, None)
    pooled = torch.nn.functional.avg_pool2d(offset, 2)  # area pooling to 4x4
    torch.testing.assert_close(seen[0], pooled[:, None].expand(-1, 5, -1, -1, -1))


def test_central_point_is_one_deterministic_walk_near_the_middle_of_the_hypotheses(scenes, trained):
    predictor, _ = trained("flow")
    batch = batch_of(scenes, range(4))
    gen = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731
    a = predictor.predict(batch, n=16, generator=gen(0), point="central")
    b = predictor.predict(batch, n=1, generator=gen(1), point="central")
    assert a["point"].shape == (4, 2, SIZE, SIZE)
    torch.testing.assert_close(a["point"], b["point"])  # no draw: the same walk every time
    hyps = a["hypotheses"]  # (4, 16, 2, H, W)
    mean = hyps.mean(1, keepdim=True)
    typical = (hyps - mean).square().mean((2, 3, 4)).mean()
    central = (a["point"][:, None] - mean).square().mean((2, 3, 4)).mean()
    assert central < typical  # nearer the hypotheses' mean than a typical hypothesis
    with pytest.raises(ValueError, match="point must be one of"):
        predictor.predict(batch, n=2, point="mean")
    with pytest.raises(ValueError, match="use point='median'"):
        predictor.predict(batch, n=2, guide=PhotometricFlow.__call__, point="central")


def test_prior_refit_fits_the_nearest_paths_and_changes_only_the_prior_heads(scenes, trained):
    import copy

    from ddn_policy.core.prior_refit import PriorRefitConfig

    predictor = copy.deepcopy(trained("depth")[0])
    before = {k: v.clone() for k, v in predictor.state_dict().items()}
    batch = {k: torch.as_tensor(v) for k, v in scenes.arrays.items()}
    cfg = PriorRefitConfig(val_fraction=0.25, max_epochs=60, patience=60, lr=1e-2)
    report = predictor.refit_prior(batch, cfg, chunk=20)  # chunks of 20: 48 = 20+20+8
    assert len(report) == len(list(predictor.model.ddn.stages()))
    # the head is kept only where an epoch beat it on the held-out scenes
    assert all(r["val_nll_after"] <= r["val_nll_before"] for r in report)
    assert sum(r["val_nll_after"] for r in report) < sum(r["val_nll_before"] for r in report)
    changed = {k for k, v in predictor.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all("prior_head" in k for k in changed)
    regression = DensePredictor(DensePredictorConfig("depth", "regression", "tiny", SIZE))
    with pytest.raises(ValueError, match="method='regression'"):
        regression.refit_prior(batch, cfg)


def test_bad_input_names_the_expected_value(scenes):
    predictor = DensePredictor(DensePredictorConfig(task="depth", preset="tiny", image_size=SIZE))
    batch = batch_of(scenes, [0])
    with pytest.raises(ValueError, match="uint8"):
        predictor.predict({**batch, "rgb": batch["rgb"].float()})
    with pytest.raises(ValueError, match="16x16"):
        predictor.predict({"rgb": torch.zeros(1, 8, 8, 3, dtype=torch.uint8)})
    with pytest.raises(KeyError, match="rgb2"):
        flow = DensePredictor(DensePredictorConfig(task="flow", preset="tiny", image_size=SIZE))
        flow.predict({"rgb": batch["rgb"]})
    with pytest.raises(ValueError, match="task='normals'"):
        DensePredictorConfig(task="normals")


@pytest.mark.parametrize("task,mean_head", [("depth", True), ("flow", True), ("color", False)])
def test_ddn_experiments_train_the_benchmarked_settings(task, mean_head):
    """ddn-train experiment=<task>-ddn trains what the README's tables measured: chain
    dropout 0.5 (suite=dense), and the mean head where it meets the targets."""
    from hydra import compose, initialize_config_dir

    from ddn_policy.dense.train import predictor_config

    configs = str(Path(__file__).resolve().parents[1] / "configs")
    with initialize_config_dir(configs, version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={task}-ddn"])
    model = DensePredictor(predictor_config(cfg.experiment)).config.model
    assert model.ddn.chain_dropout_per_sample == 0.5
    assert model.mean_head is mean_head
    assert model.ddn.prior  # the conditional defaults stay under the override


def test_ddn_train_experiment_renders_once_and_trains(tmp_path):
    from hydra import compose, initialize_config_dir

    from ddn_policy.cli.train import run

    configs = str(Path(__file__).resolve().parents[1] / "configs")
    with initialize_config_dir(configs, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "experiment=color-ddn",
                "experiment.preset=tiny",
                "experiment.data.train=8",
                f"experiment.data.root={tmp_path / 'data'}",
                "experiment.data.scene.size=16",
                "+experiment.data.scene.max_objects=2",
                "steps=4",
                "batch_size=4",
                "train.checkpoint_every=0",
                f"out_dir={tmp_path / 'run'}",
            ],
        )
    run(cfg)
    log = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert max(json.loads(line).get("step", 0) for line in log) == 4
    assert (tmp_path / "run" / "checkpoints" / "last" / "pretrained_model").is_dir()
    [store] = list((tmp_path / "data").iterdir())
    assert store.name.endswith("-train8.zarr")
    run(cfg)  # resumes the finished run, and reuses the rendered scenes
    assert list((tmp_path / "data").iterdir()) == [store]
    loaded = DensePredictor.from_pretrained(
        tmp_path / "run" / "checkpoints" / "last" / "pretrained_model"
    )
    assert loaded.config.task == "color" and loaded.config.image_size == 16
