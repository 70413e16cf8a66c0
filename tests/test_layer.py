import math

import pytest
import torch

from ddn_policy.core import DiscreteDistributionLayer
from ddn_policy.core.layer import pick


@pytest.mark.parametrize(
    "sample_shape, feature_shape",
    [((3,), ()), ((4, 8), (8,)), ((3, 8, 8), (8, 8))],
    ids=["vector", "sequence", "map"],
)
def test_shapes_and_fast_path_equals_all_k(sample_shape, feature_shape):
    layer = DiscreteDistributionLayer(16, sample_shape, k=5)
    h = torch.randn(6, 16, *feature_shape)
    prev = torch.randn(6, *sample_shape)
    cands = layer.candidates(h, prev)
    assert cands.shape == (6, 5, *sample_shape)
    idx = torch.tensor([0, 1, 2, 3, 4, 2])
    fast, fast_leak = layer.take(h, prev, idx)
    assert fast.shape == (6, *sample_shape)
    torch.testing.assert_close(fast, cands[torch.arange(6), idx], rtol=1e-5, atol=1e-6)
    leak = layer.leak_take(h, idx)
    assert leak.shape == (6, 8, *feature_shape)
    torch.testing.assert_close(fast_leak, leak)
    no_leak = DiscreteDistributionLayer(16, sample_shape, k=5, leak=False)
    torch.testing.assert_close(
        no_leak.take(h, prev, idx)[0], pick(no_leak.candidates(h, prev), idx)
    )
    assert no_leak.take(h, prev, idx)[1] is None


def test_learning_residual_upsamples_previous_map():
    layer = DiscreteDistributionLayer(4, (1, 4, 4), k=2, leak=False)
    with torch.no_grad():
        layer.weight.zero_()
    prev = torch.ones(1, 1, 2, 2)
    cands = layer.candidates(torch.randn(1, 4, 4, 4), prev)
    torch.testing.assert_close(cands, torch.ones(1, 2, 1, 4, 4))


def test_target_is_area_downsampled_for_distances_and_loss():
    layer = DiscreteDistributionLayer(4, (1, 2, 2), k=2, leak=False, learn_residual=False)
    target = torch.arange(16.0).reshape(1, 1, 4, 4)
    expected = torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]])
    cands = expected.unsqueeze(1).repeat(1, 2, 1, 1, 1)
    cands[:, 1] += 1.0
    dist = layer.distances(cands, target)
    torch.testing.assert_close(dist, torch.tensor([[0.0, 1.0]]))


def test_train_step_takes_nearest_and_records_statistics():
    layer = DiscreteDistributionLayer(1, (1,), k=3, leak=False, learn_residual=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([-1.0, 0.0, 1.0]).view(3, 1, 1))
    target = torch.tensor([[0.9], [1.2], [-0.8], [0.1]])
    out = layer.train_step(torch.ones(4, 1), None, target)
    assert out.idx.tolist() == [2, 2, 0, 1]
    assert layer.count.tolist() == [1, 1, 2]
    assert layer.near2[2, 1] == 2  # runner-up of both wins of node 2 is node 1
    assert out.loss.item() == pytest.approx(((0.1**2) + 0.2**2 + 0.2**2 + 0.1**2) / 4)


def test_chain_dropout_per_sample_takes_random_nodes_but_records_nearest():
    layer = DiscreteDistributionLayer(
        1, (1,), k=4, leak=False, learn_residual=False, chain_dropout_per_sample=1.0
    )
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0]).view(4, 1, 1))
    out = layer.train_step(torch.ones(400, 1), None, torch.zeros(400, 1))
    assert layer.count[0] == 400  # statistics keep the nearest-target choice
    assert len(out.idx.unique()) == 4  # while the loss went to random nodes


@pytest.mark.parametrize("dropout_loss", ["taken", "nearest"])
def test_chain_dropout_loss_goes_to_the_taken_or_the_nearest_node(dropout_loss):
    layer = DiscreteDistributionLayer(
        1,
        (1,),
        k=4,
        leak=False,
        learn_residual=False,
        chain_dropout_per_sample=1.0,
        chain_dropout_loss=dropout_loss,
    )
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0]).view(4, 1, 1))
    torch.manual_seed(0)
    out = layer.train_step(torch.ones(400, 1), None, torch.zeros(400, 1))
    assert len(out.idx.unique()) == 4  # the walk continues from random nodes either way
    taken_loss = out.chosen.square().mean().item()  # the target is 0
    expected = taken_loss if dropout_loss == "taken" else 0.0  # node 0 is exactly on it
    assert out.loss.item() == pytest.approx(expected)
    assert taken_loss > 1.0


def test_chain_dropout_per_batch_is_all_or_nothing():
    layer = DiscreteDistributionLayer(1, (1,), k=4, leak=False, chain_dropout=1.0)
    out = layer.train_step(torch.ones(64, 1), None, torch.zeros(64, 1))
    nearest = int(layer.count.argmax())
    assert (out.idx != nearest).any()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k": 1}, "k must be an integer >= 2"),
        ({"k": 4, "chain_dropout": 1.5}, "chain_dropout must be a probability"),
        ({"k": 4, "chain_dropout_per_sample": -0.1}, "chain_dropout_per_sample"),
        ({"k": 4, "distance": "cosine"}, "distance must be one of"),
        ({"k": 4, "chain_dropout_loss": "random"}, "chain_dropout_loss must be one of"),
        ({"k": 4, "prior": True, "prior_grid": 0}, "prior_grid must be an integer >= 1"),
        ({"k": 4, "centroid_loss": -1.0}, "centroid_loss must be >= 0, got centroid_loss=-1.0"),
    ],
)
def test_bad_construction_names_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DiscreteDistributionLayer(8, (2,), **kwargs)


def centroid_fit(centroid_loss: float, seed: int) -> tuple[float, float]:
    """One K=8 layer fitted to y = 2x + N(0, 0.5^2) from features (x, 1): how far the
    mean of its candidates is from the conditional mean 2x, and their spread."""
    torch.manual_seed(seed)
    layer = DiscreteDistributionLayer(2, (1,), k=8, leak=False, centroid_loss=centroid_loss)
    opt = torch.optim.Adam(layer.parameters(), 3e-2)
    for _ in range(400):
        x = torch.rand(128, 1) * 2 - 1
        h = torch.cat([x, torch.ones_like(x)], 1)  # (B, 2)
        out = layer.train_step(h, None, 2 * x + 0.5 * torch.randn(128, 1))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    x = torch.linspace(-1, 1, 101)[:, None]
    with torch.no_grad():
        cands = layer.candidates(torch.cat([x, torch.ones_like(x)], 1), None)  # (101, 8, 1)
    return float((cands.mean(1) - 2 * x).abs().mean()), float(cands.std(1).mean())


def test_centroid_loss_centres_the_candidates_on_the_conditional_mean_and_keeps_the_spread():
    for seed in range(2):
        blind_offset, blind_spread = centroid_fit(0.0, seed)
        offset, spread = centroid_fit(1.0, seed)
        # nearest-only training leaves the candidates' mean ~0.2 off 2x; pinned: < 0.035
        assert blind_offset > 0.1 and offset < 0.05, (blind_offset, offset)
        assert spread > 0.5 and spread > 0.6 * blind_spread  # still hypotheses, not one


def test_target_with_wrong_shape_is_refused():
    layer = DiscreteDistributionLayer(8, (3, 4, 4), k=4)
    with pytest.raises(ValueError, match=r"target must be \(B, 3, \*, \*\).*got \(2, 1, 4, 4\)"):
        layer.train_step(torch.randn(2, 8, 4, 4), None, torch.randn(2, 1, 4, 4))


@pytest.mark.parametrize("trains_features", [False, True])
def test_the_prior_reaches_the_features_only_when_asked(trains_features):
    torch.manual_seed(0)
    layer = DiscreteDistributionLayer(
        8, (2, 4, 4), 4, prior=True, prior_trains_features=trains_features
    )
    h = torch.randn(3, 8, 4, 4, requires_grad=True)
    out = layer.train_step(h, None, torch.randn(3, 2, 4, 4))
    out.prior_loss.backward()  # the cross-entropy alone
    assert layer.prior_head.weight.grad.abs().sum() > 0
    assert (h.grad is not None and h.grad.abs().sum() > 0) == trains_features


@pytest.mark.parametrize("sample_shape", [(1, 8, 8), (2, 8)], ids=["map", "sequence"])
def test_prior_grid_tells_where_the_features_are(sample_shape):
    """Features with the same mean over positions, in different places: the mean-pooled
    prior gives both the same logits, a prior on a grid of cells does not."""
    spatial = sample_shape[1:]
    left = torch.zeros(1, 4, *spatial)
    left[..., : spatial[-1] // 2] = 1.0
    right = left.flip(-1)
    both = torch.cat([left, right])  # (2, F, *spatial)
    torch.manual_seed(0)
    pooled = DiscreteDistributionLayer(4, sample_shape, 3, prior=True)
    gridded = DiscreteDistributionLayer(4, sample_shape, 3, prior=True, prior_grid=2)
    assert gridded.prior_head.in_features == 4 * 2 ** len(spatial)
    a, b = pooled.prior_logits(both)
    assert torch.allclose(a, b)
    a, b = gridded.prior_logits(both)
    assert not torch.allclose(a, b)
    # a grid beyond the layer's size reads every position once
    whole = DiscreteDistributionLayer(4, sample_shape, 3, prior=True, prior_grid=64)
    assert whole.prior_head.in_features == 4 * math.prod(spatial)
