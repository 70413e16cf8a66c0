"""Per-dimension min-max normalisation to [-1, 1], fitted on training episodes only.

Dimensions whose range is below `range_eps` are only shifted (to 0), never scaled up:
a constant input would otherwise become noise. Stats are plain tensors, saved with the
model as safetensors; a key without stats is an error, never a silent pass-through.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


class MinMaxNormalizer:
    def __init__(self, stats: dict[str, dict[str, Tensor]] | None = None):
        self.stats: dict[str, dict[str, Tensor]] = {}
        for key, s in (stats or {}).items():
            self._set(key, s["min"], s["max"], s["scale"], s["offset"])

    @classmethod
    def fit(cls, data: dict[str, np.ndarray], range_eps: float = 1e-4) -> MinMaxNormalizer:
        """data: {key: (N, ...) array}; statistics over axis 0."""
        norm = cls()
        for key, values in data.items():
            x = torch.as_tensor(np.asarray(values), dtype=torch.float32)
            x = x.reshape(x.shape[0], -1) if x.dim() > 1 else x[:, None]
            if x.shape[0] == 0:
                raise ValueError(f"cannot fit normalizer stats for {key!r}: no rows")
            lo, hi = x.min(0).values, x.max(0).values
            span = hi - lo
            flat = span < range_eps
            scale = torch.where(flat, torch.ones_like(span), 2.0 / span.clamp_min(range_eps))
            offset = torch.where(flat, -(lo + hi) / 2, -1.0 - lo * scale)
            norm._set(key, lo, hi, scale, offset)
        return norm

    def _set(self, key, lo, hi, scale, offset) -> None:
        tensors = {"min": lo, "max": hi, "scale": scale, "offset": offset}
        for name, t in tensors.items():
            if not torch.isfinite(t).all():
                raise ValueError(f"normalizer stats {key}.{name} are not finite: {t}")
        self.stats[key] = {n: torch.as_tensor(t, dtype=torch.float32) for n, t in tensors.items()}

    def _get(self, key: str, x: Tensor) -> tuple[Tensor, Tensor]:
        if key not in self.stats:
            raise KeyError(f"no normalizer stats for {key!r}; stats exist for {sorted(self.stats)}")
        s = self.stats[key]
        if x.shape[-1] != s["scale"].numel():
            raise ValueError(
                f"{key} has {x.shape[-1]} dims in its last axis, the stats have "
                f"{s['scale'].numel()}"
            )
        scale, offset = s["scale"], s["offset"]
        if scale.device != x.device or scale.dtype != x.dtype:  # no dispatch when they match
            scale, offset = scale.to(x.device, x.dtype), offset.to(x.device, x.dtype)
        return scale, offset

    def normalize(self, key: str, x: Tensor) -> Tensor:
        scale, offset = self._get(key, x)
        return x * scale + offset

    def unnormalize(self, key: str, x: Tensor) -> Tensor:
        scale, offset = self._get(key, x)
        return (x - offset) / scale

    def state_dict(self) -> dict[str, Tensor]:
        """Flat {"<key>.<stat>": tensor}, ready for safetensors."""
        return {f"{k}.{n}": t.contiguous() for k, s in self.stats.items() for n, t in s.items()}

    @classmethod
    def from_state_dict(cls, flat: dict[str, Tensor]) -> MinMaxNormalizer:
        grouped: dict[str, dict[str, Tensor]] = {}
        for name, t in flat.items():
            key, _, stat = name.rpartition(".")
            grouped.setdefault(key, {})[stat] = t
        for key, s in grouped.items():
            missing = {"min", "max", "scale", "offset"} - set(s)
            if missing:
                raise ValueError(f"normalizer stats for {key!r} lack {sorted(missing)}")
        return cls(grouped)
