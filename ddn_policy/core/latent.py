"""The discrete latent as bits: L choices of K = 2^b nodes are L*b bits, most
significant first within each layer, so `0110...` strings can be stored, compared
and edited like any binary code (Taiji-DDN, K=2: one bit per layer)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def bits_per_layer(ks: list[int]) -> list[int]:
    bits = [int(math.log2(k)) for k in ks]
    bad = [k for k, b in zip(ks, bits, strict=True) if 2**b != k]
    if bad:
        raise ValueError(f"bit strings need every K to be a power of 2, got K={sorted(set(bad))}")
    return bits


def codes_to_bits(codes: Tensor, ks: list[int]) -> list[str]:
    """(B, L) ints -> B strings of sum(log2 K) characters '0'/'1'."""
    widths = bits_per_layer(ks)
    if codes.dim() != 2 or codes.shape[1] != len(ks):
        raise ValueError(f"codes must be (B, L={len(ks)}), got {tuple(codes.shape)}")
    return [
        "".join(format(int(c), f"0{w}b") for c, w in zip(row, widths, strict=True)) for row in codes
    ]


def bits_to_codes(strings: list[str], ks: list[int]) -> Tensor:
    """B strings of sum(log2 K) bits -> (B, L) long codes."""
    widths = bits_per_layer(ks)
    total = sum(widths)
    out = []
    for s in strings:
        if len(s) != total or set(s) - {"0", "1"}:
            raise ValueError(
                f"a latent of this model is {total} characters of 0/1 ({len(ks)} layers), "
                f"got {len(s)} characters: {s[:40]!r}"
            )
        starts = [sum(widths[:i]) for i in range(len(widths))]
        out.append([int(s[a : a + w], 2) for a, w in zip(starts, widths, strict=True)])
    return torch.tensor(out, dtype=torch.long)
