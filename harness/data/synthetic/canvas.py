"""The canvas a scene is drawn on (planar image, label and depth buffers, light sources), the label
ids it is drawn with, and pixel-grid helpers. Pure arithmetic: nothing here draws random numbers."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from harness.labels import NUM_CLASSES

(ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEG, TERRAIN, SKY, PERSON, RIDER, CAR,
 TRUCK, BUS, TRAIN, MOTO, BIKE) = range(NUM_CLASSES)
FAR_DEPTH = 1e9


@lru_cache(maxsize=8)
def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    u = (np.arange(width, dtype=np.float32) + 0.5)[None, :]
    v = (np.arange(height, dtype=np.float32) + 0.5)[:, None]
    u.setflags(write=False)
    v.setflags(write=False)
    return u, v


def _paint(dst: np.ndarray, rgb: np.ndarray, mask: np.ndarray) -> None:
    """dst[:, mask] = rgb for a planar 3 x h x w image; rgb is a colour (3,) or planar (3 x ...)."""
    rgb = np.asarray(rgb, np.float32)
    for c in range(3):
        np.copyto(dst[c], rgb[c], where=mask)


def _planar(rgb) -> np.ndarray:
    """A colour (3,) as a planar 3 x 1 x 1 array."""
    return np.asarray(rgb, np.float32).reshape(3, 1, 1)


def _fmod(x, period):
    """x mod period for positive periods via floor (numpy's float % is a slow scalar loop)."""
    return x - np.floor(x * (1 / period)) * period


@lru_cache(maxsize=8)
def _vignette(width: int, height: int, strength: float) -> np.ndarray:
    u, v = _grid(width, height)
    r2 = ((u - width / 2) / (width / 2)) ** 2 * 0.5 + ((v - height / 2) / (height / 2)) ** 2 * 0.5
    out = (1.0 - strength * r2 * r2).astype(np.float32)  # quartic fall-off toward corners
    out.setflags(write=False)
    return out


@dataclass
class _Canvas:
    img: np.ndarray   # 3 x H x W float32 (planar: per-channel and per-pixel ops stay contiguous)
    lab: np.ndarray   # H x W uint8
    dep: np.ndarray   # H x W float32
    lights: list[tuple[float, float, float, np.ndarray]] = field(default_factory=list)  # x, y, r, rgb
