"""The dense DDN predictor: trains with the shared Trainer on rendered scenes for each
task, gives K hypotheses in the task's units, saves and loads, refuses bad input."""

import json

import pytest
import torch

from ddn_policy.dense import DensePredictor, DensePredictorConfig
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


@pytest.mark.parametrize("task", ["depth", "flow", "color"])
def test_training_lowers_the_loss_and_predicts_in_task_units(scenes, tmp_path, task):
    torch.manual_seed(0)
    predictor = DensePredictor(DensePredictorConfig(task=task, preset="tiny", image_size=SIZE))
    cfg = TrainConfig(steps=80, batch_size=16, lr=3e-3, warmup_steps=5, log_every=5)
    Trainer(predictor, scenes, cfg, tmp_path).fit()
    losses = [
        json.loads(line)["loss"]
        for line in (tmp_path / "log.jsonl").read_text().splitlines()
        if '"loss"' in line
    ]
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3])

    out = predictor.eval().predict(batch_of(scenes, [0, 1]), n=4)
    channels = {"depth": 1, "flow": 2, "color": 3}[task]
    assert out["hypotheses"].shape == (2, 4, channels, SIZE, SIZE)
    assert out["point"].shape == out["uncertainty"].shape == (2, channels, SIZE, SIZE)
    assert (out["uncertainty"] >= 0).all()
    if task == "depth":
        assert (out["point"] > 0).all()  # metres
    if task == "color":
        assert 0 <= out["point"].min() and out["point"].max() <= 1


def test_save_and_load_give_identical_hypotheses(scenes, tmp_path):
    predictor = DensePredictor(DensePredictorConfig(task="flow", preset="tiny", image_size=SIZE))
    predictor.eval().save_pretrained(tmp_path)
    loaded = DensePredictor.from_pretrained(tmp_path)
    batch = batch_of(scenes, [2, 3])
    a = predictor.predict(batch, n=3, generator=torch.Generator().manual_seed(1))
    b = loaded.predict(batch, n=3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a["hypotheses"], b["hypotheses"])


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
