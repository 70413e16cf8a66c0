"""`ddn-bench suite=images`: image DDNs and the diffusers baseline trained on the same
digits (each by a cached `ddn-train experiment=...` subprocess, resumable), then sample
quality, reconstruction, dead nodes, zero-shot conditional generation and conditional
models, as flat rows in results.json plus picture sheets."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ddn_policy.core.prior_refit import summary_rows
from ddn_policy.evaluation.report import markdown_table
from ddn_policy.evaluation.runs import cached, train_once
from ddn_policy.images.train import grid, save_png
from ddn_policy.utils.io import settings_key


def train(name: str, s: DictConfig) -> Path:
    settings = {"experiment": name, "steps": s.steps, "batch_size": s.batch_size, "seed": s.seed}
    run_dir = Path(s.cache_dir) / f"{name}-s{s.seed}-{settings_key(settings)}"
    overrides = [f"experiment={name}"]
    overrides += [f"{k}={v}" for k, v in settings.items() if k != "experiment"]
    # each experiment's yaml sets train.balance_until (the reference's 1.0 unless it says why)
    return train_once(run_dir, overrides, s.threads)


def refit(name: str, run_dir: Path, s: DictConfig, train_images: torch.Tensor) -> Path:
    """`name`'s trained model with its selection priors refitted to its final weights
    (ddn_policy/core/prior_refit.py), kept as run_dir/refit-<settings>/ in the layout
    of a training run so it is evaluated and timed like one; cached (the manifest is
    written last)."""
    from ddn_policy.core.prior_refit import PriorRefitConfig, refit_priors
    from ddn_policy.images.generator import ImageGenerator
    from ddn_policy.utils.io import refit_once

    settings = OmegaConf.to_container(s.refit, resolve=True)
    out = run_dir / f"refit-{settings_key(settings)}"

    def fit():
        generator = ImageGenerator.from_pretrained(
            run_dir / "checkpoints" / "last" / "pretrained_model"
        )
        report = refit_priors(generator.model, train_images, cfg=PriorRefitConfig(**settings))
        return generator, report

    return refit_once(out, out / "checkpoints" / "last" / "pretrained_model", fit)


def evaluate_run(name: str, run_dir: Path, s: DictConfig, data, classifier, judge) -> list[dict]:
    """The cached evaluations of one trained model, by what it is."""
    from ddn_policy.images.evaluate import (
        conditional,
        ddn_unconditional,
        held_out,
        path_choice,
        sample_quality,
        timed,
        zscg,
    )
    from ddn_policy.images.generator import ImageGenerator
    from ddn_policy.images.pictures import latent_tree, progress_strips

    out_dir, seed = Path(s.results_dir), s.seed
    evaluation = OmegaConf.to_container(s.eval, resolve=True)
    # cached evaluations depend on the feature classifier; seed 0 keeps the older keys
    key = settings_key(
        evaluation | ({"classifier": s.classifier_seed} if s.classifier_seed else {})
    )
    saved = run_dir / "checkpoints" / "last" / "pretrained_model"
    if json.loads((saved / "config.json").read_text())["name"] == "diffusion_image":
        from baselines.diffusion_image import DiffusionImageModel

        model, rows = DiffusionImageModel.from_pretrained(saved), []
        for steps in s.eval.ddim_steps:

            def measure(steps=steps):
                gen = torch.Generator().manual_seed(seed)
                samples, seconds = timed(lambda: model.sample(s.eval.samples, steps, gen))
                save_png(out_dir / f"samples-{name}-ddim{steps}.png", grid(samples[:64], 8))
                per_image = seconds / len(samples)
                tag = f"DDIM-{steps}"
                return sample_quality(name, samples, per_image, data, classifier, sampler=tag)

            rows += cached(run_dir / f"eval-ddim{steps}-{key}.json", measure)
        return rows
    generator = ImageGenerator.from_pretrained(saved)
    if generator.conditional:
        n = s.eval.per_task
        return cached(
            run_dir / f"eval-conditional-{key}.json",
            lambda: conditional(name, generator, data, judge, n, seed),
        )

    def unconditional():
        found, samples = ddn_unconditional(name, generator, data, classifier, s.eval.samples, seed)
        save_png(out_dir / f"samples-{name}.png", grid(samples[:64], 8))
        test, _ = held_out(data, 8, seed)
        strips = progress_strips(generator.model, generator.encode(test))
        save_png(out_dir / f"progress-{name}.png", grid(strips, generator.model.num_layers))
        if min(layer.k for _, layer in list(generator.model.stages())[:3]) >= 8:
            save_png(out_dir / f"latent-tree-{name}.png", grid(latent_tree(generator.model), 1))
        return found

    rows = cached(run_dir / f"eval-unconditional-{key}.json", unconditional)
    rows += cached(
        run_dir / f"eval-path-choice-{key}.json",
        lambda: path_choice(name, generator, data, classifier, s.eval.samples, seed),
    )
    if name in s.zscg_models:

        def guided():
            found, pictures = zscg(name, generator, data, classifier, judge, s.eval.per_task, seed)
            for task, sheets in pictures.items():
                sheet = grid(torch.cat([x[:8] for x in sheets]), 8)
                save_png(out_dir / f"zscg-{name}-{task}.png", sheet)
            return found

        rows += cached(run_dir / f"eval-zscg-{key}.json", guided)
    return rows


@torch.no_grad()
def same_run_timing(run_dirs: dict[str, Path], s: DictConfig) -> list[dict]:
    """Milliseconds per unconditional sample of every model, measured back to back in
    this run (median of 3 batches after a warm-up), so speeds compare as ratios; the
    per-evaluation timings above come from whenever each evaluation ran."""
    from baselines.diffusion_image import DiffusionImageModel
    from ddn_policy.evaluation.timing import median_seconds
    from ddn_policy.images.generator import ImageGenerator

    batch, rows = s.timing_batch, []
    for name, run_dir in run_dirs.items():
        saved = run_dir / "checkpoints" / "last" / "pretrained_model"
        if json.loads((saved / "config.json").read_text())["name"] == "diffusion_image":
            model = DiffusionImageModel.from_pretrained(saved)
            calls = {
                f"DDIM-{k}": (lambda k=k, model=model: model.sample(batch, k))
                for k in s.eval.ddim_steps
            }
        else:
            generator = ImageGenerator.from_pretrained(saved)
            if generator.conditional:
                continue
            calls = {"DDN": lambda generator=generator: generator.sample(batch)}
        for sampler, fn in calls.items():
            ms = 1000 * median_seconds(fn, warmup=1, calls=3) / batch
            rows.append(
                {"model": name, "sampler": sampler, "metric": "ms_per_image_same_run", "value": ms}
            )
    return rows


def images_suite(cfg: DictConfig) -> tuple[list[dict], str]:
    from ddn_policy.images.classifier import accuracy, cached_classifier
    from ddn_policy.images.metrics import nearest_distance
    from tasks.images import load_digits

    s = cfg.suite
    data = (load_digits(s.dataset, "train"), load_digits(s.dataset, "test"))
    # the feature space stays put when only the training seed changes, so FDs compare
    classifier = cached_classifier(s.cache_dir, s.dataset, s.classifier_seed, s.classifier_epochs)
    judge = cached_classifier(s.cache_dir, s.dataset, s.classifier_seed + 1, s.classifier_epochs)
    own = nearest_distance(data[1].images, data[0].images)  # what memorising would beat
    rows = [{"model": "test set", "metric": "nearest_train_l2", "value": float(own.mean())}]
    for role, net in (("guide classifier", classifier), ("judge classifier", judge)):
        value = accuracy(net, data[1].images, data[1].labels)
        rows.append({"model": role, "metric": "test_accuracy", "value": value})
    run_dirs = {name: train(name, s) for name in s.experiments}
    for name in [n for n in s.refit_models if n in run_dirs]:  # like zscg_models
        run_dirs[f"{name}-refit"] = refit(name, run_dirs[name], s, data[0].images)
        report = json.loads((run_dirs[f"{name}-refit"] / "refit_report.json").read_text())
        rows += [{"model": f"{name}-refit", **r} for r in summary_rows(report)]
    for name, run_dir in run_dirs.items():
        rows += [
            r | {"steps": s.steps, "seed": s.seed}
            for r in evaluate_run(name, run_dir, s, data, classifier, judge)
        ]
    rows += same_run_timing(run_dirs, s)
    columns = ["model", "task", "samples", "sampler", "kept_layers", "metric", "value"]
    shown = [r for r in rows if r["metric"] != "dead_node_fraction"]
    return rows, markdown_table(shown, columns)
