"""What `ddn-bench suite=images` measures on a trained image model. Every function
returns flat rows {"model", "metric", "value", ...settings}; feature-space figures use
the local digit classifier (`classifier-FD`, not Inception FID). Class figures of
guided samples are judged by a second classifier (another seed) than the one that
guided them, so steering toward one network's quirks does not count as success."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ddn_policy.core import RankSum
from ddn_policy.core.select import FromCodes, Selector
from ddn_policy.images.generator import bits_per_image, lowres
from ddn_policy.images.guides import (
    MASKS,
    ClassGuide,
    Inpainting,
    SuperResolution,
    inpainting_mask,
)
from ddn_policy.images.metrics import features, frechet_distance, nearest_distance, precision_recall
from ddn_policy.images.train import dead_fractions, psnr, reconstruct_all


def sample_quality(
    name: str, samples: torch.Tensor, seconds_per_image: float, data, classifier, **tags
) -> list[dict]:
    """classifier-FD and precision/recall against the test set, the nearest-training-
    image distance (memorisation; `test_nearest_train_l2` is the real data's own
    figure), class balance, and sampling time."""
    train, test = data
    real = features(classifier, test.images)
    fake = features(classifier, samples)
    precision, recall = precision_recall(real, fake[: len(real)])
    classes = classifier(samples).argmax(1) if len(samples) else torch.zeros(0)
    share = torch.bincount(classes, minlength=10).float() / max(len(samples), 1)
    out = {
        "classifier_fd": frechet_distance(fake, real),
        "precision": precision,
        "recall": recall,
        "nearest_train_l2": float(nearest_distance(samples, train.images).mean()),
        "largest_class_share": float(share.max()),
        "ms_per_image": 1e3 * seconds_per_image,
    }
    return [{"model": name, "metric": k, "value": v, **tags} for k, v in out.items()]


def known_pixel_mse(x, targets, mask) -> torch.Tensor:
    """Per image, the squared error over the pixels the mask marks known."""
    return ((x - targets).square() * mask).flatten(1).sum(1) / mask.sum()


def held_out(data, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n test images drawn without replacement by a seeded permutation (the test set is
    ordered by class, so its first images would all be zeros and ones)."""
    _, test = data
    idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:n]
    return test.images[idx], test.labels[idx]


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


@torch.no_grad()
def ddn_unconditional(
    name, generator, data, classifier, n: int, seed: int
) -> tuple[list[dict], torch.Tensor]:
    train, test = data
    gen = torch.Generator().manual_seed(seed)
    samples, seconds = timed(lambda: generator.sample(n, generator=gen))
    out = sample_quality(name, samples, seconds / n, data, classifier, sampler="one pass")
    recon = reconstruct_all(generator, test.images)
    dead = dead_fractions(generator, train.images)
    out += [
        {"model": name, "metric": "test_psnr_db", "value": float(psnr(recon, test.images).mean())},
        {"model": name, "metric": "max_dead_node_fraction", "value": max(dead)},
        {"model": name, "metric": "bits_per_image", "value": bits_per_image(generator.model)},
    ]
    out += [
        {"model": name, "metric": "dead_node_fraction", "value": d, "layer": i}
        for i, d in enumerate(dead)
    ]
    return out, samples


class KeptPrefix(Selector):
    """The first `kept` layers replay `codes` (as FromCodes, with its checks); the rest
    choose as `then` does."""

    def __init__(self, codes: torch.Tensor, kept: int, then: Selector):
        self.replay, self.kept, self.then = FromCodes(codes), kept, then
        self.needs_candidates = then.needs_candidates

    def start_walk(self, ks, batch, device, generator):
        self.then.start_walk(ks, batch, device, generator)

    def select(self, candidates, ctx):
        chooser = self.replay if ctx.layer_index < self.kept else self.then
        return chooser.select(candidates, ctx)


@torch.no_grad()
def path_choice(name, generator, data, classifier, n: int, seed: int) -> list[dict]:
    """Where sampling loses quality: classifier-FD of images whose first m layers are
    the latent of a training image and whose other layers the model's own sampler
    chooses (uniform, or its prior), for m = 0 (a plain sample) .. L (a
    reconstruction). A gap between m = L and m = 0 is the path choice, not the
    generator."""
    train, test = data
    real = features(classifier, test.images)
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
    model = generator.model
    codes = generator.encode(train.images[pick])  # (n, L)
    rows = []
    for kept in range(model.num_layers + 1):
        selector = KeptPrefix(codes, kept, model.default_selector())
        gen = torch.Generator().manual_seed(seed)
        x = model.walk(n, selector, None, gen).x
        fd = frechet_distance(features(classifier, x), real)
        rows.append({"model": name, "metric": "classifier_fd_kept_layers", "value": fd,
                     "kept_layers": kept})  # fmt: skip
    return rows


@torch.no_grad()
def zscg(
    name, generator, data, classifier, judge, per_task: int, seed: int
) -> tuple[list[dict], dict]:
    """Zero-shot conditional generation with the unconditional model: super-resolution
    from 8x8, inpainting with three masks, class guidance, and class + inpainting by
    ranks; each against random samples of the same model."""
    targets, labels = held_out(data, per_task, seed)
    gen = torch.Generator().manual_seed(seed)
    free = generator.sample(per_task, generator=gen)
    out, pictures = [], {}

    def row(task, metric, value, **tags):
        out.append({"model": name, "task": task, "metric": metric, "value": float(value), **tags})

    low = lowres(targets)
    sr = generator.sample(per_task, guide=SuperResolution(low))
    for which, x in (("guided", sr), ("random", free)):
        row(
            "super-resolution",
            "lowres_mse",
            (lowres(x) - low).square().mean(),
            samples=which,
        )
    row("super-resolution", "psnr_db", psnr(sr, targets).mean(), samples="guided")
    pictures["super-resolution"] = (targets, F.interpolate(low, size=32), sr)
    for kind in MASKS:
        mask = inpainting_mask(kind)
        filled = generator.sample(per_task, guide=Inpainting(targets, mask))
        for which, x in (("guided", filled), ("random", free)):
            err = known_pixel_mse(x, targets, mask)
            row(f"inpainting-{kind}", "known_pixel_mse", err.mean(), samples=which)
        row(
            f"inpainting-{kind}",
            "class_agreement",
            (judge(filled).argmax(1) == labels).float().mean(),
            samples="guided",
        )
        pictures[f"inpainting-{kind}"] = (targets, targets * mask - (1 - mask), filled)
    wanted = torch.arange(per_task) % 10
    guided = generator.sample(per_task, guide=ClassGuide(classifier, wanted))
    row(
        "class-guided",
        "requested_class_share",
        (judge(guided).argmax(1) == wanted).float().mean(),
        samples="guided",
    )
    row(
        "class-guided",
        "requested_class_share",
        (judge(free).argmax(1) == wanted).float().mean(),
        samples="random",
    )
    pictures["class-guided"] = (guided,)
    mask = inpainting_mask("half")
    both = RankSum([(ClassGuide(classifier, wanted), 1.0), (Inpainting(targets, mask), 1.0)])
    combined = generator.sample(per_task, guide=both)
    row(
        "class+inpainting-half",
        "requested_class_share",
        (judge(combined).argmax(1) == wanted).float().mean(),
        samples="guided",
    )
    err = known_pixel_mse(combined, targets, mask)
    row("class+inpainting-half", "known_pixel_mse", err.mean(), samples="guided")
    pictures["class+inpainting-half"] = (targets * mask - (1 - mask), combined)
    return out, pictures


@torch.no_grad()
def conditional(name, generator, data, judge, per_task: int, seed: int) -> list[dict]:
    """A conditional model against its own condition: samples agree with the condition
    of held-out digits and keep their class."""
    targets, labels = held_out(data, per_task, seed)
    cond = generator.condition(targets)
    gen = torch.Generator().manual_seed(seed)
    samples = generator.sample(1, cond, generator=gen)[:, 0]
    agreement = (generator.condition(samples) - cond).square().flatten(1).mean(1)
    return [
        {"model": name, "metric": "condition_mse", "value": float(agreement.mean())},
        {"model": name, "metric": "psnr_db", "value": float(psnr(samples, targets).mean())},
        {
            "model": name,
            "metric": "class_agreement",
            "value": float((judge(samples).argmax(1) == labels).float().mean()),
        },
    ]
