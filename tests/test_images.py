"""Digits data, image DDNs, latents, zero-shot guides and metrics."""

import numpy as np
import pytest
import torch

from ddn_policy.core import RankSum
from ddn_policy.images.generator import ImageGenerator, ImageGeneratorConfig, bits_per_image
from ddn_policy.images.guides import (
    ClassGuide,
    Inpainting,
    SuperResolution,
    inpainting_mask,
    rows,
)
from ddn_policy.images.metrics import frechet_distance, nearest_distance, precision_recall
from ddn_policy.images.train import psnr
from ddn_policy.models.image import ImageDDNConfig, image_ddn, image_preset
from ddn_policy.training.trainer import TrainConfig, Trainer
from tasks.images import check_images, load_digits

SMALL = {"stages": (1, 1, 1, 1, 1, 1), "widths": (16, 16, 16, 8, 8, 8), "k": 8}


@pytest.fixture(scope="module")
def digits():
    return load_digits("mnist", "train")


def generator(condition="none", **fields):
    cfg = ImageDDNConfig(**{**SMALL, "cond_channels": int(condition != "none"), **fields})
    return ImageGenerator(ImageGeneratorConfig(cfg, condition)).eval()


def test_digit_sets_are_split_by_class_and_scaled(digits):
    test = load_digits("mnist", "test")
    assert digits.images.shape == (4500, 1, 32, 32) and test.images.shape == (500, 1, 32, 32)
    assert torch.bincount(test.labels).tolist() == [50] * 10
    assert digits.images.min() == -1 and digits.images.max() == 1
    assert digits.images[:, :, :2].max() == -1  # LeNet's 2-pixel background frame
    small = load_digits("digits8", "train")
    assert (
        small.images.shape[1:] == (1, 32, 32)
        and len(small) + len(load_digits("digits8", "test")) == 1797
    )
    with pytest.raises(ValueError, match="unknown digit set 'cifar'"):
        load_digits("cifar")
    with pytest.raises(ValueError, match=r"must be \(B, 1, 32, 32\), got \(2, 1, 28, 28\)"):
        check_images(torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\].*x / 127.5 - 1"):
        check_images(torch.full((2, 1, 32, 32), 255.0))


@pytest.mark.parametrize(
    "preset, layers, bits",
    [
        ("tiny", 10, 60),
        ("small", 15, 90),
        ("base", 24, 144),
        ("taiji", 40, 40),
        ("recurrent", 10, 60),
    ],
)
def test_presets_have_their_latent_length(preset, layers, bits):
    cfg = image_preset(preset)
    assert cfg.num_layers == layers
    if preset not in ("small", "base"):  # building the largest is slow-ish; sizes suffice
        assert bits_per_image(image_ddn(cfg)) == bits


def test_latents_round_trip_and_seeds_decode(digits):
    gen = generator()
    x = digits.images[:6]
    codes = gen.encode(x)
    assert codes.shape == (6, 6) and codes.dtype == torch.long
    torch.testing.assert_close(gen.decode(codes), gen.reconstruct(x))
    seeds = torch.rand(6, 6)  # float codes: int(K * u), the same sample whatever K is
    torch.testing.assert_close(gen.decode(seeds), gen.decode((seeds * 8).long()))
    with pytest.raises(ValueError, match="codes"):
        gen.decode(torch.zeros(2, 5, dtype=torch.long))


def test_training_lowers_the_loss_and_saved_weights_reload_exactly(digits, tmp_path):
    torch.manual_seed(0)
    gen = generator()
    data = torch.utils.data.Subset(digits, range(512))
    trainer = Trainer(gen, data, TrainConfig(steps=40, batch_size=32, log_every=10), tmp_path)
    first, _ = gen.compute_loss({"image": digits.images[:64]})
    trainer.fit()
    last, _ = gen.compute_loss({"image": digits.images[:64]})
    assert last < 0.7 * first
    loaded = ImageGenerator.from_pretrained(tmp_path / "checkpoints" / "last" / "pretrained_model")
    ema = trainer.ema.module
    for name, value in loaded.model.state_dict().items():
        if not name.endswith(("count", "near2", "loss_acc", "recent_count", "select_bias")):
            torch.testing.assert_close(value, ema.state_dict()[name], rtol=0, atol=0)


def test_two_trainings_with_one_seed_give_the_same_weights(digits, tmp_path):
    # The settings of digits-small-prior-lbg: prior, forgetting statistics, perturbed splits.
    data = torch.utils.data.Subset(digits, range(256))
    cfg = dict(
        steps=30, batch_size=32, log_every=10, balance_half_life=5, balance_split_perturb=0.05
    )
    runs = []
    for run in ("a", "b"):
        torch.manual_seed(0)
        gen = generator(prior=True, prior_grid=4)
        trainer = Trainer(gen, data, TrainConfig(**cfg), tmp_path / run)
        trainer.fit()
        runs.append((trainer.balancer.total_splits, gen.state_dict()))
    assert runs[0][0] == runs[1][0] > 0
    for name, value in runs[0][1].items():
        torch.testing.assert_close(value, runs[1][1][name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("condition, shape", [("lowres", (3, 1, 8, 8)), ("edges", (3, 1, 32, 32))])
def test_conditional_generators_take_their_condition(digits, condition, shape):
    gen = generator(condition)
    cond = gen.condition(digits.images[:3])
    assert cond.shape == shape
    assert gen.sample(2, cond).shape == (3, 2, 1, 32, 32)
    with pytest.raises(ValueError, match=f"conditioned on {condition}: pass cond"):
        gen.sample(2)
    with pytest.raises(ValueError, match="needs model.cond_channels=1"):
        ImageGeneratorConfig(ImageDDNConfig(**SMALL), condition)


def test_super_resolution_guide_matches_the_low_resolution_input(digits):
    gen, n = generator(k=16), 4
    low = torch.nn.functional.adaptive_avg_pool2d(digits.images[:5], 8)
    guided = gen.sample(n * 5, guide=SuperResolution(rows(low, n)))
    free = gen.sample(n * 5, generator=torch.Generator().manual_seed(0))

    def error(x):
        return (torch.nn.functional.adaptive_avg_pool2d(x, 8) - rows(low, n)).square().mean()

    assert error(guided) < 0.5 * error(free)
    with pytest.raises(ValueError, match="holds 5 targets but the walk has 20 rows"):
        gen.sample(20, guide=SuperResolution(low))


@pytest.mark.parametrize("kind, known", [("half", 0.5), ("centre", 0.75), ("checkerboard", 0.5)])
def test_inpainting_guides_fill_in_around_the_known_pixels(digits, kind, known):
    mask = inpainting_mask(kind)
    assert float(mask.mean()) == known
    gen, x = generator(k=16), digits.images[:8]
    guided = gen.sample(8, guide=Inpainting(x, mask))
    free = gen.sample(8, generator=torch.Generator().manual_seed(0))

    def error(y):
        return ((y - x).square() * mask).sum() / (mask.sum() * 8)

    assert error(guided) < 0.6 * error(free)
    with pytest.raises(ValueError, match="mask must be one of"):
        inpainting_mask("stripes")


def test_class_guide_follows_the_classifier_and_ranks_combine():
    class Brightness(torch.nn.Module):  # "class 1" = bright images, "class 0" = dark ones
        def forward(self, x):
            m = x.flatten(1).mean(1, keepdim=True)
            return torch.cat([-m, m], 1)  # unsaturated: no ties in log p

    gen = generator(k=16)
    bright = gen.sample(16, guide=ClassGuide(Brightness(), torch.ones(16, dtype=torch.long)))
    dark = gen.sample(16, guide=ClassGuide(Brightness(), torch.zeros(16, dtype=torch.long)))
    assert bright.mean() > dark.mean() + 0.05
    both = RankSum([(ClassGuide(Brightness(), torch.ones(16, dtype=torch.long)), 1.0)] * 2)
    torch.testing.assert_close(
        gen.sample(16, guide=both, top_k=1),
        gen.sample(16, guide=ClassGuide(Brightness(), torch.ones(16, dtype=torch.long)), top_k=1),
    )


def test_metrics_tell_equal_sets_from_different_ones():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    shifted = b + 3.0
    assert frechet_distance(a, b) < 0.5 < 50 < frechet_distance(a, shifted)
    p, r = precision_recall(a, b)
    assert p > 0.8 and r > 0.8
    assert precision_recall(a, shifted)[0] < 0.1
    x = torch.rand(5, 1, 32, 32)
    assert torch.all(nearest_distance(x, torch.cat([x, -x])) == 0)
    assert torch.isinf(psnr(x, x)).logical_not().all() and psnr(x, x).min() > 90


def test_latent_tree_puts_a_nodes_children_around_it():
    from ddn_policy.images.pictures import latent_tree, layer_outputs, progress_strips

    gen = generator()
    tree = latent_tree(gen.model, depth=1)
    assert tree.shape == (1, 1, 96, 96)
    assert (tree[..., 32:64, 32:64] == -1).all()  # the root has no image of its own
    first = layer_outputs(gen.model, torch.tensor([[4, 0, 0, 0, 0, 0]]))[0]
    torch.testing.assert_close(tree[..., 64:96, 64:96], first)  # child 4: bottom right
    strips = progress_strips(gen.model, torch.zeros(2, 6, dtype=torch.long))
    assert strips.shape == (12, 1, 32, 32)
    with pytest.raises(ValueError, match=r"K >= 8, got K=\[2, 2, 2\]"):
        latent_tree(image_ddn(ImageDDNConfig(**{**SMALL, "k": 2})))


def test_latents_as_bit_strings_round_trip_and_name_bad_lengths(digits):
    from ddn_policy.core.latent import bits_to_codes, codes_to_bits

    gen = generator()  # six layers of K=8: 18 bits
    ks = [layer.k for _, layer in gen.model.stages()]
    codes = gen.encode(digits.images[:4])
    bits = codes_to_bits(codes, ks)
    assert all(len(b) == 18 and set(b) <= {"0", "1"} for b in bits)
    assert torch.equal(bits_to_codes(bits, ks), codes)
    torch.testing.assert_close(
        gen.decode(bits_to_codes(bits, ks)), gen.reconstruct(digits.images[:4])
    )
    with pytest.raises(ValueError, match="is 18 characters of 0/1 .* got 17"):
        bits_to_codes(["0" * 17], ks)
    with pytest.raises(ValueError, match=r"power of 2, got K=\[6\]"):
        codes_to_bits(torch.zeros(1, 2, dtype=torch.long), [6, 6])


@pytest.mark.parametrize("prior", [False, True])
def test_kept_prefix_replays_the_latent_then_samples_as_the_model_does(digits, prior):
    from ddn_policy.images.evaluate import KeptPrefix

    torch.manual_seed(0)
    model = generator(prior=prior, prior_grid=2).model
    codes = model.encode(digits.images[:5])  # (5, 6)
    seeded = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    whole = model.walk(5, KeptPrefix(codes, 6, model.default_selector()), None, seeded())
    torch.testing.assert_close(whole.x, model.decode(codes))  # every layer kept: a decode
    none = model.walk(5, KeptPrefix(codes, 0, model.default_selector()), None, seeded())
    plain = model.walk(5, model.default_selector(), None, seeded())
    torch.testing.assert_close(none.x, plain.x)  # no layer kept: the model's own sample
    half = model.walk(5, KeptPrefix(codes, 3, model.default_selector()), None, seeded())
    assert torch.equal(half.codes[:, :3], codes[:, :3])
    assert not torch.equal(half.codes[:, 3:], codes[:, 3:])
