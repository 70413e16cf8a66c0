import pytest
import torch
from safetensors.torch import load_file, save_file

from ddn_policy.core import (
    DiscreteDistributionLayer,
    LossFreeBalance,
    SplitAndPrune,
    make_balancer,
    split_decision,
)
from ddn_policy.training.ema import EMA, ema_decay
from tests.helpers import tiny_net


def t(values):
    return torch.tensor(values, dtype=torch.float32)


@pytest.mark.parametrize(
    "count, fire, split, prune",
    [
        ([25, 25, 25, 25], False, 0, 0),  # balanced: s == d, nothing to do
        ([30, 25, 25, 20], False, 0, 3),  # mild imbalance: no rule triggers
        ([60, 20, 10, 10], True, 0, 2),  # ps = 0.6 >= 2/K
        ([40, 30, 29, 1], True, 0, 3),  # pd = 0.01 < 0.5/K
        ([45, 15, 20, 20], True, 0, 1),  # ps - pd = 0.30 > 1/K = 0.25
    ],
)
def test_reference_rule_on_hand_made_counts(count, fire, split, prune):
    d = split_decision(t(count), torch.zeros(4))
    assert (d.fire, d.split) == (fire, split)
    if fire:
        assert d.prune == prune


def test_among_zero_count_nodes_prune_the_farthest():
    d = split_decision(t([10, 0, 5, 0, 0]), t([1.0, 7.0, 2.0, 9.0, 3.0]))
    assert d.fire and d.split == 0 and d.prune == 3


def test_formula_matches_its_stated_equivalent():
    # 2|ps/2 - P| + pd < ps - pd  or  pd < P/2   <=>   ps >= 2/K or pd < .5/K or ps-pd > 1/K
    gen = torch.Generator().manual_seed(1)
    for _ in range(500):
        k = int(torch.randint(2, 9, (1,), generator=gen))
        c = torch.randint(0, 20, (k,), generator=gen).float()
        if c.sum() == 0 or c.max() == c.min():
            continue
        d = split_decision(c, torch.zeros(k))
        cs, cd, n = int(c[d.split]), int(c[d.prune]), int(c.sum())
        if (cs - cd) * k == n or cs * k == 2 * n or 2 * cd * k == n:
            continue  # exactly on a boundary, where float rounding decides
        alt = cs * k >= 2 * n or 2 * cd * k < n or (cs - cd) * k > n
        assert d.fire == alt, (c.tolist(), d)


def _layer_with_counts():
    layer = DiscreteDistributionLayer(6, (2,), k=4, prior=True)
    layer.count.copy_(t([60, 20, 10, 10]))
    layer.near2[2] = t([3, 7, 0, 0])
    layer.loss_acc.copy_(t([1, 2, 3, 4]))
    return layer


def test_split_copies_rows_moments_and_ema_and_leaves_others_alone():
    layer = _layer_with_counts()
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-2)
    layer.train()
    loss = sum(p.square().sum() for p in layer.parameters())
    loss.backward()
    opt.step()
    ema = EMA(layer)
    with torch.no_grad():
        for p in ema.module.parameters():
            p.add_(torch.randn_like(p))  # make EMA rows differ from the live ones
    before = {n: p.detach().clone() for n, p in layer.named_parameters()}
    ema_before = {n: p.detach().clone() for n, p in ema.module.named_parameters()}
    moments = {
        n: {k: v.clone() for k, v in opt.state[p].items()} for n, p in layer.named_parameters()
    }
    events = SplitAndPrune(layer, opt, mirrors=[ema.module]).step()
    assert [(e.split, e.prune) for e in events] == [(0, 2)]
    ema_params = dict(ema.module.named_parameters())
    for name, p in layer.named_parameters():
        if name == "prior_head.bias":
            continue
        assert torch.equal(p[2], before[name][0]), name  # d got s's row
        assert torch.equal(p[[0, 1, 3]], before[name][[0, 1, 3]]), name  # others intact
        for key in ("exp_avg", "exp_avg_sq"):
            state = opt.state[p][key]
            assert torch.equal(state[2], moments[name][key][0])
            assert torch.equal(state[[0, 1, 3]], moments[name][key][[0, 1, 3]])
        assert torch.equal(ema_params[name][2], ema_before[name][0])
        assert torch.equal(ema_params[name][[0, 1, 3]], ema_before[name][[0, 1, 3]])
    assert opt.state[layer.weight]["step"] == 1  # scalar step untouched
    # both clones share s's old prior probability
    bias = layer.prior_head.bias.detach()
    old = before["prior_head.bias"]
    assert torch.allclose(torch.logsumexp(bias[[0, 2]], 0), old[0], atol=1e-6)


def test_split_updates_counts_by_the_reference_rule():
    layer = _layer_with_counts()
    SplitAndPrune(layer).step()
    # d=2's 10 wins went to its runner-ups 0 and 1 (3:7), then s=0 and d=2 halve s.
    assert layer.count.tolist() == pytest.approx([31.5, 27.0, 31.5, 10.0])
    assert layer.loss_acc[2] == layer.loss_acc[0]


def test_bad_half_life_names_the_value():
    with pytest.raises(ValueError, match="half_life=-1"):
        SplitAndPrune(_layer_with_counts(), half_life=-1)


def test_min_count_delays_the_first_split():
    layer = _layer_with_counts()
    assert SplitAndPrune(layer, min_count=1000).step() == []
    assert len(SplitAndPrune(layer, min_count=100).step()) == 1


def test_forgetting_statistics_prune_a_node_that_stopped_winning():
    # node 3 won its share for a long time, then stopped; the others go on winning
    def history(half_life):
        layer = _layer_with_counts()
        layer.count.copy_(t([2000, 2000, 2000, 2000]))
        balancer = SplitAndPrune(layer, half_life=half_life)
        events = []
        for _ in range(40):
            layer.count[:3] += 30  # recent wins, none for node 3
            events += balancer.step()
        return events

    assert history(half_life=0) == []  # since creation: node 3 still holds 0.69/K
    assert history(half_life=5)[0].prune == 3


@pytest.mark.parametrize("perturb", [0.0, 0.05])
def test_perturbed_split_gives_the_twins_their_own_inputs(perturb):
    torch.manual_seed(0)
    layer = _layer_with_counts()
    ema = EMA(layer)
    SplitAndPrune(layer, mirrors=[ema.module], perturb=perturb).step()
    h = torch.randn(4096, 6)
    cands = layer.candidates(h, None)  # (B, K, 2)
    wins = torch.bincount(cands.norm(dim=-1).argmin(1), minlength=4)
    # an exact clone ties its source on every input and the lower index takes them all
    twins_share = bool(wins[0] > 0 and wins[2] > 0)
    assert twins_share == (perturb > 0), wins.tolist()
    mirror = ema.module.weight
    assert torch.allclose(mirror[0] - mirror[2], layer.weight[0] - layer.weight[2])
    if perturb > 0:
        pair = layer.weight[[0, 2]]
        gap = (pair[0] - pair[1]).pow(2).mean().sqrt() / pair.pow(2).mean().sqrt()
        assert 0.5 * perturb < gap < 4 * perturb


def test_perturbed_split_is_the_same_whatever_the_global_rng():
    # data-parallel ranks seed their global RNGs apart; their splits must still agree
    weights = []
    for global_seed in (1, 2):
        torch.manual_seed(0)
        layer = _layer_with_counts()
        torch.manual_seed(global_seed)
        SplitAndPrune(layer, perturb=0.05).step()
        weights.append(layer.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


def test_perturbed_split_follows_its_seed():
    def split_weights(seed):
        torch.manual_seed(0)
        layer = _layer_with_counts()
        SplitAndPrune(layer, perturb=0.05, seed=seed).step()
        return layer.weight.detach().clone()

    assert torch.equal(split_weights(1), split_weights(1))
    assert not torch.equal(split_weights(1), split_weights(2))


def test_bad_perturb_names_the_value():
    with pytest.raises(ValueError, match="perturb=-0.1"):
        SplitAndPrune(_layer_with_counts(), perturb=-0.1)


def test_statistics_survive_save_and_load(tmp_path):
    net = tiny_net(prior=True)
    net.loss(torch.randn(32, 1))
    LossFreeBalance(net, rate=0.1).step()
    path = tmp_path / "model.safetensors"
    save_file(net.state_dict(), str(path))
    fresh = tiny_net(prior=True)
    fresh.load_state_dict(load_file(str(path)))
    for (name, a), (_, b) in zip(net.named_buffers(), fresh.named_buffers(), strict=True):
        assert torch.equal(a, b), name
    assert fresh.layers[0].count.sum() == 32
    assert fresh.layers[0].select_bias.abs().sum() > 0


def test_loss_free_balance_raises_the_bias_of_unused_nodes():
    layer = DiscreteDistributionLayer(1, (1,), k=3, leak=False, learn_residual=False)
    with torch.no_grad():
        layer.weight.copy_(t([0.0, 0.5, 5.0]).view(3, 1, 1))
    bal = LossFreeBalance(layer, rate=0.5)
    for _ in range(30):
        layer.train_step(torch.ones(60, 1), None, torch.rand(60, 1) * 0.6)
        bal.step()
    assert layer.select_bias[2] > layer.select_bias[0]
    assert layer.count[2] > 0  # the far node is eventually chosen


def test_make_balancer_rejects_unknown_kind():
    with pytest.raises(ValueError, match="balance must be one of"):
        make_balancer("sometimes", tiny_net())


def test_ema_decay_schedule():
    assert ema_decay(0) == 0.0
    assert ema_decay(10) == pytest.approx(1 - 11**-0.75)
    assert ema_decay(10**9) == 0.9999
