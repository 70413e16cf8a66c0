"""The 2-D density experiment, run through the library's own DDN machinery.

Free points are a DiscreteDistributionLayer whose input is the constant 1, so its K
candidates are its K weight rows. Plain SGD with lr = step * B * D / 2 on the layer's
mean-squared loss moves a node `step` (40%) of the way towards each sample it wins,
the reference toy's update. The balancers are the core's SplitAndPrune and
LossFreeBalance, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ddn_policy.core import DiscreteDistributionLayer, make_balancer
from ddn_policy.models.mlp import MLPDDNConfig, mlp_ddn
from ddn_policy.toy2d.densities import Density
from ddn_policy.toy2d.metrics import histogram

FREE_POINT_METHODS = ("gd", "split_prune", "loss_free")
BALANCE_OF = {"gd": "none", "split_prune": "split_prune", "loss_free": "loss_free"}


@dataclass
class FreePointSettings:
    k: int = 2000  # number of free points (nodes)
    iterations: int = 1800  # optimizer steps
    batch: int = 40  # samples per step
    step: float = 0.4  # fraction of the way a node moves towards a sample it wins
    distance: str = "l1"  # metric that picks the nearest node (the reference toy's L1)
    loss_free_rate: float = 0.01  # bias step of LossFreeBalance (log-distance units)
    frames: int = 40  # snapshots kept for the GIF


@dataclass
class NetworkSettings:
    layers: int = 3  # L, DDL stages
    k: int = 64  # candidates per stage
    width: int = 128  # residual-MLP width
    steps: int = 3000  # Adam steps
    batch: int = 256  # samples per step
    lr: float = 1e-3  # Adam learning rate
    prior: bool = True  # learned selection prior (False: the paper's uniform sampling)


def fit_free_points(
    density: Density, method: str, cfg: FreePointSettings, seed: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Returns the final (K, 2) points and `cfg.frames` snapshots of them."""
    if method not in FREE_POINT_METHODS:
        raise ValueError(f"method must be one of {FREE_POINT_METHODS}, got {method!r}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    layer = DiscreteDistributionLayer(
        1, (2,), cfg.k, leak=False, learn_residual=False, distance=cfg.distance, init_range=1.0
    )
    opt = torch.optim.SGD(layer.parameters(), lr=cfg.step * cfg.batch * 2 / 2)
    balancer = make_balancer(BALANCE_OF[method], layer, opt, rate=cfg.loss_free_rate)
    ones = torch.ones(cfg.batch, 1)
    snap_every = max(1, cfg.iterations // max(cfg.frames, 1))
    frames = []
    for it in range(cfg.iterations):
        target = torch.from_numpy(density.sample(cfg.batch, rng))
        out = layer.train_step(ones, None, target)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        if balancer is not None:
            balancer.step()
        if it % snap_every == 0 and len(frames) < cfg.frames:
            frames.append(points_of(layer))
    return points_of(layer), frames


def points_of(layer: DiscreteDistributionLayer) -> np.ndarray:
    return layer.weight.detach()[:, :, 0].numpy().copy()  # (K, 2)


def fit_network(
    density: Density, cfg: NetworkSettings, num_samples: int, seed: int
) -> tuple[np.ndarray, list[float]]:
    """Train a SingleShotDDN of residual-MLP stages with split-and-prune; returns
    `num_samples` uniform samples (one batched walk) and the loss curve."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = mlp_ddn(
        MLPDDNConfig(sample_dim=2, width=cfg.width, num_layers=cfg.layers, k=cfg.k, prior=cfg.prior)
    )
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    balancer = make_balancer("split_prune", net, opt)
    losses = []
    for _ in range(cfg.steps):
        target = torch.from_numpy(density.sample(cfg.batch, rng))
        loss, _ = net.loss(target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        balancer.step()
        losses.append(loss.item())
    net.eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        samples = net.sample(num_samples, generator=gen)
    return samples.numpy(), losses


def frame_histograms(frames: list[np.ndarray], bins: int) -> list[np.ndarray]:
    return [histogram(np.clip(f, -1, 1 - 1e-9), bins) for f in frames]
