"""`ddn-bench suite=dense`: DDN, regression and diffusion predictors for depth, flow and
colorization trained on the same rendered scenes and scored on the same test scenes.

Resumable: each training is `ddn-train experiment=<task>-<method>` in its own cache
directory (keyed by its settings, resumed from its checkpoints), and each evaluation is
cached as JSON beside it, keyed by the evaluation settings.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ddn_policy.evaluation.report import markdown_table
from ddn_policy.evaluation.runs import cached, flatten, train_once
from ddn_policy.utils.io import atomic_write_bytes, settings_key

# the methods a suite can list: the predictors' own, and the DDN with its selection prior
# refitted to the final weights after training (core/prior_refit.py; no retraining)
REFIT = "ddn_refit"
DDN_METHODS = ("ddn", REFIT)


def data_settings(s: DictConfig) -> dict:
    return OmegaConf.to_container(s.data, resolve=True)


def train_overrides(s: DictConfig, task: str, method: str) -> list[str]:
    data = data_settings(s)
    out = [
        f"experiment={task}-{method}",
        f"steps={s.steps}",
        f"batch_size={s.batch_size}",
        f"seed={s.seed}",
        f"experiment.preset={s.preset}",
        f"experiment.data.seed={data['seed']}",
        f"experiment.data.train={data['train']}",
        f"experiment.data.test={data['test']}",
        f"experiment.data.root={data['root']}",
        f"train.balance_until={s.balance_until}",
    ]
    out += [f"+experiment.data.scene.{k}={v}" for k, v in data["scene"].items() if k != "size"]
    out.append(f"experiment.data.scene.size={data['scene']['size']}")
    model = OmegaConf.to_container(s.models, resolve=True).get(method, {})
    # dotted keys: hydra's grammar takes no quoted dict keys ({ddn: {k: 8}} -> model.ddn.k=8)
    out += [f"++experiment.model.{k}={v}" for k, v in flatten(model).items()]
    return out


def train(s: DictConfig, task: str, method: str) -> Path:
    if method == REFIT:  # the DDN's own training, refitted afterwards
        return refit(s, task, train(s, task, "ddn"))
    overrides = train_overrides(s, task, method)
    run_dir = Path(s.cache_dir) / f"{task}-{method}-s{s.seed}-{settings_key({'o': overrides})}"
    return train_once(run_dir, overrides, s.threads)


def refit(s: DictConfig, task: str, run_dir: Path) -> Path:
    """The trained DDN with its selection prior refitted on the training scenes, kept as
    run_dir/refit-<settings>/ in the layout of a training run; cached (the manifest is
    written last)."""
    from ddn_policy.core.prior_refit import PriorRefitConfig
    from ddn_policy.dense import DensePredictor
    from ddn_policy.dense.predictor import TASKS
    from ddn_policy.dense.train import TRUTH_KEYS, dataset_path
    from ddn_policy.utils.io import refit_once
    from tasks.dense import DenseDataset

    settings = OmegaConf.to_container(s.refit, resolve=True)
    out = run_dir / f"refit-{settings_key(settings)}"

    def fit():
        predictor = DensePredictor.from_pretrained(run_dir / "checkpoints/last/pretrained_model")
        scenes = DenseDataset(
            dataset_path(data_settings(s), "train"), TASKS[task][0] + TRUTH_KEYS[task]
        )
        batch = {k: torch.as_tensor(v) for k, v in scenes.arrays.items()}
        return predictor, predictor.refit_prior(batch, PriorRefitConfig(**settings))

    return refit_once(out, out / "checkpoints" / "last" / "pretrained_model", fit)


def hypotheses(s: DictConfig, method: str) -> int:
    """Samples per image: the diffusion ensemble's size, or the DDN's K draws."""
    return s.eval.ensemble if method == "diffusion" else s.eval.k


def evaluate_run(s: DictConfig, task: str, method: str, predictor, run_dir: Path, test):
    """The cached evaluation rows of one trained predictor."""
    from ddn_policy.dense.evaluate import evaluate, selection_rows

    eval_cfg = OmegaConf.to_container(s.eval, resolve=True)
    eval_cfg["hypotheses"] = hypotheses(s, method)
    key = settings_key(eval_cfg)
    rows = cached(run_dir / f"eval-{key}.json", lambda: evaluate(predictor, test, eval_cfg))
    if method in DDN_METHODS:  # why its samples miss: what it can represent, how it chooses
        rows += cached(
            run_dir / f"eval-selection-{key}.json",
            lambda: selection_rows(predictor, test, eval_cfg),
        )
    if method == REFIT:
        from ddn_policy.core.prior_refit import summary_rows

        rows += summary_rows(json.loads((run_dir / "refit_report.json").read_text()))
    if task == "depth" and s.middlebury:
        rows += cached(
            run_dir / f"eval-middlebury-{key}.json", lambda: middlebury(predictor, eval_cfg)
        )
    return [
        {"task": task, "model": method, "hypotheses": eval_cfg["hypotheses"], **r} for r in rows
    ]


def middlebury(predictor, eval_cfg: dict) -> list[dict]:
    """Out of domain: the real Motorcycle sample at the scenes' size."""
    from ddn_policy.dense.evaluate import point_rows
    from tasks.dense.middlebury import motorcycle

    sample = motorcycle(predictor.config.image_size)
    batch = {"rgb": torch.as_tensor(sample["rgb"])[None]}
    out = predictor.predict(
        batch, n=eval_cfg["hypotheses"], generator=torch.Generator().manual_seed(0)
    )
    truth = torch.as_tensor(sample["depth"])[None, None]
    scores = point_rows("depth", out["point"], truth, torch.as_tensor(sample["valid"])[None])
    return [{"metric": f"middlebury_{k}", "value": v} for k, v in scores.items()]


@torch.no_grad()
def same_run_timing(s: DictConfig, task: str, predictors: dict, test) -> list[dict]:
    """Milliseconds per image of every method's unguided prediction (its own number of
    hypotheses), timed back to back in this run (median of 3 calls after a warm-up), so
    speeds compare as ratios; each evaluation's `ms_per_image` comes from whenever it ran."""
    from ddn_policy.evaluation.timing import median_seconds

    images = min(s.timing_images, len(test))
    batch = torch.utils.data.default_collate([test[i] for i in range(images)])
    rows = []
    for method, predictor in predictors.items():
        n = hypotheses(s, method)
        calls = {"ms_per_image_same_run": lambda p=predictor, n=n: p.predict(batch, n=n)}
        if method in DDN_METHODS and s.eval.get("central", False):  # the one-walk point estimate
            calls["ms_per_image_central_same_run"] = lambda p=predictor: p.predict(
                batch, n=1, point="central"
            )
        for metric, call in calls.items():
            ms = 1000 * median_seconds(call, warmup=1, calls=3) / images
            rows.append(
                {"task": task, "model": method, "hypotheses": n} | {"metric": metric, "value": ms}
            )
    return rows


def picture(s: DictConfig, task: str, predictors: dict, test) -> None:
    from ddn_policy.dense.evaluate import truth_of
    from ddn_policy.dense.pictures import method_row, sheet

    batch = torch.utils.data.default_collate([test[0]])
    truth, _ = truth_of(task, batch)
    image = (
        batch["rgb"][0].numpy()
        if task != "color"
        else np.repeat(batch["gray"][0].numpy()[..., None], 3, -1)
    )
    rows = []
    for method, predictor in predictors.items():
        gen = torch.Generator().manual_seed(0)
        out = predictor.predict(batch, n=hypotheses(s, method), generator=gen)
        rows.append(method_row(task, image, truth[0], {k: v[0] for k, v in out.items()}))
    import imageio.v3 as iio

    png = iio.imwrite(
        "<bytes>", np.kron(sheet(rows), np.ones((2, 2, 1), np.uint8)), extension=".png"
    )
    atomic_write_bytes(Path(s.results_dir) / f"{task}.png", png)


def scene_checks(test, size: int) -> list[dict]:
    """The generator's own checks, as rows: frame 2 warped by the true flow against
    frame 1 (and the zero flow as the yardstick), and depth back-projected onto an
    analytic sphere."""
    from tasks.dense.checks import sphere_residual
    from tasks.dense.flow import photometric_error

    truth, zero, visible = [], [], []
    for i in range(len(test)):
        x = test[i]
        truth.append(photometric_error(x["rgb"], x["rgb2"], x["flow"], x["flow_valid"]))
        zero.append(photometric_error(x["rgb"], x["rgb2"], 0 * x["flow"], x["flow_valid"]))
        visible.append(x["flow_valid"].sum() / x["valid"].sum())
    found = {
        "photometric_error_true_flow": float(np.nanmean(truth)),
        "photometric_error_zero_flow": float(np.nanmean(zero)),
        "visible_in_frame2": float(np.mean(visible)),
        "sphere_residual_over_radius": sphere_residual(size),
    }
    return [{"task": "scenes", "model": "truth", "metric": k, "value": v} for k, v in found.items()]


def dense_suite(cfg: DictConfig) -> tuple[list[dict], str]:
    from ddn_policy.dense import DensePredictor
    from ddn_policy.dense.predictor import METHODS
    from ddn_policy.dense.train import dataset_path
    from tasks.dense import DenseDataset

    s = cfg.suite
    unknown = [m for m in s.methods if m not in (*METHODS, REFIT)]
    if unknown:
        raise ValueError(
            f"unknown dense methods {unknown}; suite.methods takes {[*METHODS, REFIT]}"
        )
    data = data_settings(s)
    test = DenseDataset(dataset_path(data, "test"))
    rows = scene_checks(test, data["scene"]["size"])
    for task in s.tasks:
        predictors = {}
        for method in s.methods:
            run_dir = train(s, task, method)
            path = run_dir / "checkpoints/last/pretrained_model"
            predictors[method] = DensePredictor.from_pretrained(path)
            rows += evaluate_run(s, task, method, predictors[method], run_dir, test)
        if predictors:  # suite.methods=[] scores the scenes' own checks only
            picture(s, task, predictors, test)
            rows += same_run_timing(s, task, predictors, test)
    metrics = sorted({(r["task"], r["metric"]) for r in rows})
    table = [
        {"task": t, "metric": m}
        | {r["model"]: r["value"] for r in rows if (r["task"], r["metric"]) == (t, m)}
        for t, m in metrics
    ]
    return rows, markdown_table(table, ["task", "metric", "truth", *s.methods])
