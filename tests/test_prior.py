"""The learned selection prior on a conditional bimodal target."""

import torch

from ddn_policy.core import prior_log_prob
from tests.helpers import tiny_net


def bimodal(n, generator=None):
    """cond x ~ U(-1, 1); y = +-0.8 + 0.3 x with probability 1/2 each, std 0.02."""
    x = torch.rand(n, 1, generator=generator) * 2 - 1
    sign = torch.where(torch.rand(n, 1, generator=generator) < 0.5, 1.0, -1.0)
    return x, sign * 0.8 + 0.3 * x + 0.02 * torch.randn(n, 1, generator=generator)


def train(chain_dropout: float, steps: int = 400):
    torch.manual_seed(0)
    net = tiny_net(
        sample_dim=1,
        cond_dim=1,
        layers=4,
        k=16,
        width=64,
        prior=True,
        chain_dropout_per_sample=chain_dropout,
    )
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    from ddn_policy.core import SplitAndPrune

    balance = SplitAndPrune(net, opt)
    for _ in range(steps):
        x, y = bimodal(256, gen)
        loss, _ = net.loss(y, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        balance.step()
    return net.eval()


def test_beam_search_by_path_probability_returns_likely_paths():
    net = train(chain_dropout=0.05, steps=150)
    cond = torch.tensor([[0.0]])
    beam = net.beam_search(prior_log_prob, width=4, cond=cond)
    drawn = net.sample(200, cond=cond, return_walk=True, generator=torch.Generator().manual_seed(0))
    # the best beam is at least as probable as any path drawn from the prior
    assert beam.scores[0, 0] >= drawn.logprob.max() - 1e-5
