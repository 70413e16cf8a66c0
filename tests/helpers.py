"""Small models and data shared by the tests."""

import torch

from ddn_policy.models.mlp import MLPDDNConfig, mlp_ddn


def tiny_net(sample_dim=1, cond_dim=0, layers=3, k=4, width=16, prior=False, **kw):
    cfg = MLPDDNConfig(
        sample_dim=sample_dim,
        cond_dim=cond_dim,
        width=width,
        num_layers=layers,
        k=k,
        prior=prior,
        **kw,
    )
    return mlp_ddn(cfg)


def two_modes(n, weight_left=0.3, generator=None):
    """1-D mixture: -1 with probability weight_left, +1 otherwise, std 0.05."""
    left = torch.rand(n, 1, generator=generator) < weight_left
    centre = torch.where(left, -1.0, 1.0)
    return centre + 0.05 * torch.randn(n, 1, generator=generator)


def fit(net, data_fn, steps, lr=3e-3, batch=256, balancer="split_prune"):
    from ddn_policy.core import make_balancer

    opt = torch.optim.Adam(net.parameters(), lr=lr)
    bal = make_balancer(balancer, net, opt)
    losses = []
    for _ in range(steps):
        loss, _ = net.loss(data_fn(batch))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if bal is not None:
            bal.step()
        losses.append(loss.item())
    return losses
