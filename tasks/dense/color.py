"""sRGB <-> CIELAB (D65) and the fixed-lightness palette of the colorization task: every
palette colour has the same L*, so a gray image cannot tell which one an object has."""

from __future__ import annotations

import numpy as np

WHITE = np.array([0.95047, 1.0, 1.08883])  # D65 reference white (XYZ)
RGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375],
     [0.2126729, 0.7151522, 0.0721750],
     [0.0193339, 0.1191920, 0.9503041]]
)  # fmt: skip


def _linear(srgb: np.ndarray) -> np.ndarray:
    return np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)


def _gamma(linear: np.ndarray) -> np.ndarray:
    linear = np.clip(linear, 0.0, 1.0)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) sRGB, uint8 or floats in [0, 1] -> (..., 3) L*a*b*."""
    rgb = np.asarray(rgb)
    rgb = rgb / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float64)
    xyz = _linear(rgb) @ RGB_TO_XYZ.T / WHITE
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])],
        axis=-1,
    )


def lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """(..., 3) L*a*b* -> (..., 3) sRGB floats in [0, 1] (out-of-gamut values clipped)."""
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], axis=-1)
    xyz = np.where(f > 6 / 29, f**3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * WHITE
    return _gamma(xyz @ np.linalg.inv(RGB_TO_XYZ).T)


def palette(lightness: float, chroma: float, hues: int) -> np.ndarray:
    """(hues, 3) sRGB colours at one L* and chroma, hues evenly spaced."""
    angles = 2 * np.pi * np.arange(hues) / hues
    lab = np.stack(
        [np.full(hues, lightness), chroma * np.cos(angles), chroma * np.sin(angles)], axis=-1
    )
    return lab_to_srgb(lab)
