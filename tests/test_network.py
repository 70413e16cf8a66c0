import itertools

import pytest
import torch

from ddn_policy.core import DiscreteDistributionLayer, Prior, RecurrentDDN, Uniform
from ddn_policy.models.mlp import ResidualMLPBlock
from tests.helpers import fit, tiny_net, two_modes


def test_sample_shapes_with_and_without_condition():
    net = tiny_net(sample_dim=2, cond_dim=3)
    assert net.sample(5, cond=torch.randn(4, 3)).shape == (4, 5, 2)
    uncond = tiny_net(sample_dim=2)
    assert uncond.sample(7).shape == (7, 2)
    walk = uncond.sample(7, return_walk=True)
    assert walk.codes.shape == (7, 3) and walk.logprob.shape == (7,)


def test_n_hypotheses_are_one_batched_forward():
    net = tiny_net(sample_dim=2, cond_dim=3)
    calls = []
    for block in net.blocks:
        block.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    net.sample(64, cond=torch.randn(2, 3))
    assert calls == [128, 128, 128]  # one call per stage, all 2 x 64 rows at once


def test_encode_decode_round_trip_reproduces_reconstruction():
    net = tiny_net(sample_dim=2, k=8)
    x = torch.randn(16, 2)
    codes = net.encode(x)
    assert codes.shape == (16, 3) and codes.dtype == torch.long
    torch.testing.assert_close(net.decode(codes), net.reconstruct(x))
    # reconstruction is at least as close as the first layer's best guess
    assert (net.reconstruct(x) - x).square().mean() < x.square().mean()


def test_trace_returns_every_layers_candidates():
    net = tiny_net(sample_dim=2, k=5)
    walk = net.sample(3, trace=True)
    assert len(walk.trace.candidates) == 3
    assert walk.trace.candidates[0].shape == (3, 5, 2)
    torch.testing.assert_close(walk.trace.chosen[-1], walk.x)


def test_fast_path_sample_equals_all_k_path():
    net = tiny_net(sample_dim=2, k=6)
    fast = net.sample(9, guide=Uniform(), generator=torch.Generator().manual_seed(3))
    full = net.sample(9, guide=Uniform(), generator=torch.Generator().manual_seed(3), trace=True)
    torch.testing.assert_close(fast, full.x)


def test_guided_sampling_satisfies_a_simple_guide():
    torch.manual_seed(0)
    net = tiny_net(k=8, width=32)
    fit(net, lambda n: torch.rand(n, 1) * 2 - 1, steps=150)
    net.eval()
    with torch.no_grad():
        free = net.sample(2000, guide=Uniform())
        guided = net.sample(2000, guide=lambda c, ctx: c[:, :, 0])  # prefer larger values
    assert (guided > 0.5).float().mean() > 0.9
    assert (guided > 0.5).float().mean() > 2 * (free > 0.5).float().mean()


def test_two_mode_mixture_is_sampled_in_proportion():
    torch.manual_seed(0)
    net = tiny_net(k=16, width=64, layers=2, prior=True)
    fit(net, lambda n: two_modes(n, 0.3), steps=300)
    net.eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        uniform = net.sample(4000, guide=Uniform(), generator=gen)
        prior = net.sample(4000, guide=Prior(), generator=gen)
    for s in (uniform, prior):
        assert abs((s < 0).float().mean().item() - 0.3) < 0.10
    # Uniform sampling also picks deep-layer nodes never trained for the chosen prefix;
    # the learned prior keeps samples on the modes.
    assert ((prior.abs() - 1).abs() < 0.25).float().mean() > 0.9


def test_split_and_prune_keeps_nodes_in_use():
    torch.manual_seed(0)
    net = tiny_net(k=16, width=32, layers=1)
    fit(net, lambda n: two_modes(n, 0.3), steps=200, balancer="none")
    dead_plain = (net.layers[0].count == 0).float().mean()
    torch.manual_seed(0)
    balanced = tiny_net(k=16, width=32, layers=1)
    fit(balanced, lambda n: two_modes(n, 0.3), steps=200, balancer="split_prune")
    recent = balanced.layers[0].count / balanced.layers[0].count.sum()
    assert dead_plain > 0.3  # without balancing many nodes never win
    assert recent.min() > 0  # with it every node is in use


def test_prior_path_probabilities_sum_to_one():
    net = tiny_net(k=2, layers=3, prior=True)
    with torch.no_grad():
        for layer in net.layers:
            layer.prior_head.weight.normal_()
            layer.prior_head.bias.normal_()
    paths = torch.tensor(list(itertools.product(range(2), repeat=3)))  # all 8 leaves
    from ddn_policy.core import FromCodes

    walk = net.walk(8, FromCodes(paths))
    assert walk.logprob.exp().sum().item() == pytest.approx(1.0, abs=1e-5)
    assert walk.entropy.shape == (8, 3)
    assert isinstance(net.default_selector(), Prior)


def test_beam_search_finds_the_best_path_of_an_additive_score():
    net = tiny_net(sample_dim=1, k=4, layers=3)
    score = lambda c, ctx: c[:, :, 0]  # noqa: E731  # every layer: prefer larger candidates
    beam = net.beam_search(score, width=4)
    assert beam.codes.shape == (1, 4, 3) and beam.samples.shape == (1, 4, 1)
    assert torch.all(beam.scores[0, :-1] >= beam.scores[0, 1:])  # best first
    # exhaustive search over all 64 paths
    from ddn_policy.core import FromCodes

    paths = torch.tensor(list(itertools.product(range(4), repeat=3)))
    walk = net.walk(64, FromCodes(paths), trace=True)
    totals = sum(c[torch.arange(64), paths[:, i], 0] for i, c in enumerate(walk.trace.candidates))
    assert beam.scores[0, 0].item() == pytest.approx(totals.max().item(), rel=1e-5)


def test_recurrent_ddn_shares_one_block_and_layer():
    block = ResidualMLPBlock(16, 2, 8, 0)
    layer = DiscreteDistributionLayer(16, (2,), k=4, learn_residual=False)
    net = RecurrentDDN(block, layer, num_steps=5)
    loss, info = net.loss(torch.randn(8, 2))
    assert info["codes"].shape == (8, 5)
    assert layer.count.sum() == 40  # five uses of the same layer
    assert net.sample(3).shape == (3, 2)


def test_bad_inputs_name_expected_and_received():
    net = tiny_net(sample_dim=2)
    with pytest.raises(ValueError, match=r"target must be \(B, 2\), got \(4, 3\)"):
        net.loss(torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"codes must be \(B, L\) = \(2, 3\), got \(2, 2\)"):
        net.decode(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"a guide must return scores of shape"):
        net.sample(2, guide=lambda c, ctx: torch.zeros(2))
    with pytest.raises(ValueError, match="built without a selection prior"):
        net.sample(2, guide=Prior())


def test_golden_loss_and_sample_for_a_tiny_config():
    torch.manual_seed(1234)
    net = tiny_net(sample_dim=2, k=3, layers=2, width=8)
    x = torch.linspace(-1, 1, 10).reshape(5, 2)
    loss, info = net.loss(x)
    assert loss.item() == pytest.approx(GOLDEN_LOSS, rel=1e-4)
    assert info["codes"].tolist() == GOLDEN_CODES


GOLDEN_LOSS = 0.3015053868293762
GOLDEN_CODES = [[2, 2], [2, 2], [1, 2], [1, 1], [1, 1]]
