"""Randomness: scalar draws from an image's stream (`_Rand`), smooth value noise and per-pixel noise
(windows of fixed noise banks at offsets drawn from the image's stream)."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from harness.data.synthetic.styles import RGB


@lru_cache(maxsize=512)
def _interp(n: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    pos = (np.arange(n, dtype=np.float32) + 0.5) * (cells / n)
    i = np.minimum(np.floor(pos).astype(np.intp), cells - 1)
    return i, (pos - i).astype(np.float32)


def _value_noise(rng: np.random.Generator, height: int, width: int, gh: int, gw: int) -> np.ndarray:
    """Smooth noise in [-1, 1]: a random (gh+1)x(gw+1) grid, bilinearly interpolated."""
    g = rng.random((gh + 1, gw + 1), dtype=np.float32) * 2 - 1
    ri, rw = _interp(height, gh)
    ci, cw = _interp(width, gw)
    rw, cw = rw[:, None], cw[None, :]
    top, bot = g[ri], g[ri + 1]
    a = top[:, ci] * (1 - cw) + top[:, ci + 1] * cw
    b = bot[:, ci] * (1 - cw) + bot[:, ci + 1] * cw
    return a * (1 - rw) + b * rw


# Noise banks: fixed noise fields generated once per process from constant seeds; each image takes a
# window at a random offset drawn from its own stream. Deterministic, and far cheaper than drawing
# fresh per-pixel noise for every image (which dominated the render time).
_BANK_SEED = 0x5EED


@lru_cache(maxsize=2)
def _pixel_bank(size: int) -> np.ndarray:
    """`size` samples of triangular noise in [-1, 1] (the sum of two random bytes)."""
    b = np.frombuffer(np.random.Generator(np.random.PCG64(_BANK_SEED)).bytes(2 * size), np.uint8)
    x = b[0::2].astype(np.float32)
    x += b[1::2]
    x -= 255
    x *= np.float32(1 / 255)
    x.setflags(write=False)
    return x


def _pixel_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Per-pixel noise in [-1, 1] of the given shape (a read-only window of the bank)."""
    n = int(np.prod(shape))
    size = max(1 << 22, 1 << (2 * n - 1).bit_length())
    bank = _pixel_bank(size)
    off = int(rng.integers(0, size - n + 1))
    return bank[off:off + n].reshape(shape)


@lru_cache(maxsize=32)
def _smooth_bank(height: int, width: int, gh: int, gw: int) -> np.ndarray:
    g = np.random.Generator(np.random.PCG64([_BANK_SEED, height, width, gh, gw]))
    bank = _value_noise(g, 3 * height, 3 * width, 3 * gh, 3 * gw)
    bank.setflags(write=False)
    return bank


def _smooth_noise(rng: np.random.Generator, height: int, width: int, gh: int, gw: int,
                  rows: int | None = None) -> np.ndarray:
    """Smooth noise in [-1, 1] with about gh x gw blobs over height x width (first `rows` rows only)."""
    bank = _smooth_bank(height, width, gh, gw)
    r = rng.random(3).tolist()
    oy, ox = int(r[0] * 2 * height), int(r[1] * 2 * width)
    win = bank[oy:oy + (height if rows is None else rows), ox:ox + width]
    return -win if r[2] < 0.5 else win


class _Rand:
    """Scalar draws as Python floats (numpy float64 scalars would promote float32 arrays)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def u(self, lo: float = 0.0, hi: float = 1.0) -> float:
        return lo + (hi - lo) * float(self.rng.random())

    def r(self, rng_: tuple[float, float]) -> float:
        return self.u(rng_[0], rng_[1])

    def chance(self, p: float) -> bool:
        return float(self.rng.random()) < p

    def int(self, lo: int, hi: int) -> int:  # inclusive
        return int(self.rng.integers(lo, hi + 1))

    def count(self, mean: float) -> int:
        """A binomial count with the given mean (arithmetic only; no exp/log inside)."""
        if mean <= 0:
            return 0
        n = int(math.ceil(mean * 3)) + 2
        return int((self.rng.random(n) < mean / n).sum())

    def color(self, choices: list[RGB] | RGB, jitter: float) -> np.ndarray:
        r = self.rng.random(4).tolist()
        base = choices[min(int(r[3] * len(choices)), len(choices) - 1)] if isinstance(choices, list) else choices
        return np.array([base[0] + (2 * r[0] - 1) * jitter, base[1] + (2 * r[1] - 1) * jitter,
                         base[2] + (2 * r[2] - 1) * jitter], dtype=np.float32)
