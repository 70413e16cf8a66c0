"""Pictures of the discrete latent: the paper's recursive latent tree and per-layer
progress strips. Coarse layer outputs are shown upsampled to the image size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ddn_policy.core import FromCodes

RING = [(0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0)]  # around the centre


def _show(x: Tensor, size: int) -> Tensor:
    return F.interpolate(x, size=(size, size), mode="nearest") if x.shape[-1] != size else x


@torch.no_grad()
def layer_outputs(model, codes: Tensor) -> list[Tensor]:
    """The sample chosen at every layer along given codes: L x (B, C, size, size)."""
    size = model.sample_shape[-1]
    trace = model.walk(codes.shape[0], FromCodes(codes), None, trace=True).trace
    return [_show(x, size) for x in trace.chosen]


@torch.no_grad()
def latent_tree(model, depth: int = 3, children: int = 8) -> Tensor:
    """The recursive 3x3 picture: a cell shows a node's output in its centre and its
    first `children` (8) children around it, each child drawn the same way one layer
    deeper. Returns (1, C, 3^depth * size, 3^depth * size)."""
    ks = [layer.k for _, layer in model.stages()][:depth]
    if len(ks) < depth or min(ks) < children:
        raise ValueError(f"the tree needs {depth} layers with K >= {children}, got K={ks}")
    size, num_layers = model.sample_shape[-1], model.num_layers

    def cell(prefix: list[int]) -> Tensor:
        level = len(prefix)
        codes = torch.tensor([prefix + [0] * (num_layers - level)])
        centre = (
            layer_outputs(model, codes)[level - 1]
            if level
            else torch.full((1, model.sample_shape[0], size, size), -1.0)
        )
        if level == depth:
            return centre
        kids = [cell(prefix + [i]) for i in range(children)]
        side = kids[0].shape[-1]
        out = torch.full((1, centre.shape[1], 3 * side, 3 * side), -1.0)
        out[..., side : 2 * side, side : 2 * side] = _show(centre, side)
        for (r, c), kid in zip(RING, kids, strict=True):
            out[..., r * side : (r + 1) * side, c * side : (c + 1) * side] = kid
        return out

    return cell([])


@torch.no_grad()
def progress_strips(model, codes: Tensor) -> Tensor:
    """(B * L, C, size, size): row b holds sample b after each layer, coarse to fine
    (grid it with L columns)."""
    outputs = torch.stack(layer_outputs(model, codes), 1)  # (B, L, C, size, size)
    return outputs.flatten(0, 1)
