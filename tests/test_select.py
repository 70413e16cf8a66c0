import pytest
import torch

from ddn_policy.core import (
    Central,
    Combined,
    DiscreteDistributionLayer,
    FromCodes,
    Guided,
    Nearest,
    Prefix,
    Prior,
    SelectionContext,
    Uniform,
)
from ddn_policy.core.select import RankSum, ranks


def ctx_for(layer, batch, layer_index=0, num_layers=1, generator=None, logits=None):
    prev = torch.zeros(batch, *layer.sample_shape)
    return SelectionContext(layer_index, num_layers, layer, batch, prev, None, generator, logits)


@pytest.fixture
def layer():
    return DiscreteDistributionLayer(4, (2,), k=5)


def line_candidates(batch=3, k=5):
    # candidate j of every row sits at (j, 0)
    c = torch.zeros(batch, k, 2)
    c[..., 0] = torch.arange(k, dtype=torch.float32)
    return c


def test_nearest_picks_argmin(layer):
    target = torch.tensor([[3.2, 0.0], [0.1, 0.0], [9.0, 0.0]])
    idx = Nearest(target).select(line_candidates(), ctx_for(layer, 3))
    assert idx.tolist() == [3, 0, 4]


def test_uniform_covers_all_nodes_evenly(layer):
    gen = torch.Generator().manual_seed(0)
    idx = Uniform().select(None, ctx_for(layer, 5000, generator=gen))
    freq = torch.bincount(idx, minlength=5).float() / 5000
    assert torch.all((freq - 0.2).abs() < 0.03)


def test_integer_and_float_codes(layer):
    ints = FromCodes(torch.tensor([[4, 0], [1, 2]]))
    assert ints.select(None, ctx_for(layer, 2, layer_index=0, num_layers=2)).tolist() == [4, 1]
    floats = FromCodes(torch.tensor([[0.99, 0.1], [0.0, 0.5]]))
    assert floats.select(None, ctx_for(layer, 2, layer_index=1, num_layers=2)).tolist() == [0, 2]


def test_float_codes_decode_the_same_whatever_k():
    # u in [0, 1) selects the same relative position for every K: int(K*u)
    u = torch.tensor([[0.25]])
    for k in (4, 8, 64):
        layer = DiscreteDistributionLayer(4, (1,), k=k)
        assert FromCodes(u).select(None, ctx_for(layer, 1)).item() == k // 4


@pytest.mark.parametrize("codes", [[[5]], [[-1]], [[1.0]], [[-0.2]]])
def test_codes_outside_range_are_refused(layer, codes):
    with pytest.raises(ValueError, match=r"codes must lie in"):
        FromCodes(torch.tensor(codes)).select(None, ctx_for(layer, 1))


def test_guided_top1_picks_best_and_top2_stays_within_best_two(layer):
    scores = torch.tensor([[0.0, 5.0, 1.0, 4.0, 2.0]]).repeat(200, 1)
    guide = lambda c, ctx: scores  # noqa: E731
    cands = line_candidates(200)
    assert set(Guided(guide, top_k=1).select(cands, ctx_for(layer, 200)).tolist()) == {1}
    picked = Guided(guide, top_k=2).select(cands, ctx_for(layer, 200)).tolist()
    assert set(picked) == {1, 3}


def test_guide_with_wrong_shape_is_refused(layer):
    bad = Guided(lambda c, ctx: torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"\(B, K\) = \(3, 5\), got \(3, 4\)"):
        bad.select(line_candidates(), ctx_for(layer, 3))


def test_ranks_and_weighted_rank_combination(layer):
    a = torch.tensor([[10.0, 30.0, 20.0, 0.0, 40.0]])
    assert ranks(a).tolist() == [[1, 3, 2, 0, 4]]
    # b prefers node 0 strongly; with weight 4 on b, node 0 wins the combination
    b = torch.tensor([[9.0, 0.0, 1.0, 2.0, 3.0]])
    combined = RankSum([(lambda c, x: a, 1.0), (lambda c, x: b, 4.0)])(
        line_candidates(1), ctx_for(layer, 1)
    )
    assert combined.argmax().item() == 0
    sel = Combined([(lambda c, x: a, 1.0), (lambda c, x: b, 4.0)], top_k=1)
    assert sel.select(line_candidates(1), ctx_for(layer, 1)).item() == 0


def test_prior_selector(layer):
    logits = torch.tensor([[0.0, 0.0, 8.0, 0.0, 0.0]]).repeat(500, 1)
    assert set(Prior(0).select(None, ctx_for(layer, 500, logits=logits)).tolist()) == {2}
    drawn = Prior(1.0).select(None, ctx_for(layer, 500, logits=logits))
    assert (drawn == 2).float().mean() > 0.9
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        Prior(-1.0)
    with pytest.raises(ValueError, match="built without a selection prior"):
        Prior().select(None, ctx_for(layer, 2))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("in_walk", [False, True])
def test_prior_draws_follow_the_tempered_softmax(layer, temperature, in_walk):
    """The Gumbel-max draw is exact: frequencies over 20,000 rows match
    softmax(logits / T), whether the noise comes from start_walk or per layer."""
    rows = 20_000
    logits = torch.tensor([[1.0, -1.0, 2.0, 0.0, 0.5]]).repeat(rows, 1)
    gen = torch.Generator().manual_seed(0)
    prior = Prior(temperature)
    if in_walk:  # noise for a two-layer walk (K=3, then this layer's K=5)
        prior.start_walk([3, layer.k], rows, "cpu", gen)
    ctx = ctx_for(layer, rows, layer_index=1, num_layers=2, generator=gen, logits=logits)
    drawn = prior.select(None, ctx)
    freq = torch.bincount(drawn, minlength=layer.k).float() / rows
    expected = torch.softmax(logits[0] / temperature, dim=0)
    torch.testing.assert_close(freq, expected, atol=0.015, rtol=0)
    again = Prior(temperature)
    gen.manual_seed(0)
    if in_walk:
        again.start_walk([3, layer.k], rows, "cpu", gen)
    assert torch.equal(again.select(None, ctx), drawn)  # one generator, one draw
    assert not torch.equal(prior.select(None, ctx), drawn)  # a walk's noise is used once


def test_central_picks_the_candidate_nearest_the_mean_and_follows_the_prior(layer):
    # candidates at x = 0..4 and one outlier row: the mean of 0, 1, 2, 3, 40 is 9.2
    cands = line_candidates(2)
    cands[1, 4, 0] = 40.0
    uniform = Central(use_prior=False).select(cands, ctx_for(layer, 2))
    assert uniform.tolist() == [2, 3]  # mean 2.0 -> node 2; mean 9.2 -> node 3 (x = 3)
    # a prior sure of node 0 moves the weighted mean (and the choice) onto node 0;
    # without a prior in the context the weights stay uniform
    logits = torch.tensor([[9.0, 0.0, 0.0, 0.0, 0.0]]).repeat(2, 1)
    assert Central().select(cands, ctx_for(layer, 2, logits=logits)).tolist() == [0, 0]
    assert Central().select(cands, ctx_for(layer, 2)).tolist() == [2, 3]
    assert Central(use_prior=False).select(cands, ctx_for(layer, 2, logits=logits)).tolist() == [
        2,
        3,
    ]


def test_prefix_hands_the_first_layers_to_one_selector_and_the_rest_to_another(layer):
    cands = line_candidates(3)
    target = torch.tensor([[4.0, 0.0]]).repeat(3, 1)  # nearest: node 4; central: node 2
    prefix = Prefix(Nearest(target), Central(use_prior=False), layers=2)
    assert prefix.needs_candidates
    picks = [prefix.select(cands, ctx_for(layer, 3, i, 4)).tolist() for i in range(4)]
    assert picks == [[4, 4, 4], [4, 4, 4], [2, 2, 2], [2, 2, 2]]
    with pytest.raises(ValueError, match="layers must be >= 0"):
        Prefix(Nearest(target), Central(), layers=-1)
