"""Counter-based random numbers and the linear filters of the synthetic twin.

Every random number is a hash of (seed, location key, counter, stream), so a value never
depends on which other locations, which chunking or which period it was generated with
(docs/twin.md, "Determinism and independence").

>>> u = uniform(0, np.array([1, 2], np.uint64), np.arange(3), stream=5)
>>> u.shape, bool(((u > 0) & (u < 1)).all())
((2, 3), True)
>>> bool((uniform(0, np.array([1], np.uint64), np.arange(3), 5) == u[:1]).all())
True
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
M1 = np.uint64(0xBF58476D1CE4E5B9)
M2 = np.uint64(0x94D049BB133111EB)


def mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * M1
    z = (z ^ (z >> np.uint64(27))) * M2
    return z ^ (z >> np.uint64(31))


def uniform(seed: int, keys: np.ndarray, counters: np.ndarray, stream: int) -> np.ndarray:
    """Uniform (0, 1) float64, shape (len(keys), len(counters)), from hash(seed, key, counter, stream)."""
    with np.errstate(over="ignore"):
        base = mix(mix(np.array([seed], dtype=np.uint64) + GOLDEN) + np.array([stream], dtype=np.uint64) * GOLDEN)
        loc = mix(np.asarray(keys, dtype=np.uint64) ^ base)
        ctr = (np.asarray(counters).astype(np.int64).astype(np.uint64) + np.uint64(1)) * GOLDEN
        h = mix(loc[:, None] + ctr[None, :])
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)


def normal(seed, keys, counters, stream) -> np.ndarray:
    """Standard normal via Box-Muller from two hashed uniform streams."""
    u1 = uniform(seed, keys, counters, 2 * stream + 1000)
    u2 = uniform(seed, keys, counters, 2 * stream + 1001)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def ema(x, alpha):
    """Exponential smoothing along the last axis, started at the first value (lfilter)."""
    b, a = [alpha], [1.0, alpha - 1.0]
    zi = (1.0 - alpha) * x[..., :1]
    y, _ = lfilter(b, a, x, axis=-1, zi=zi)
    return y


def ar1(eps, phi):
    """AR(1) x_t = phi x_{t-1} + sqrt(1-phi^2) eps_t with unit stationary variance."""
    return lfilter([np.sqrt(1 - phi**2)], [1.0, -phi], eps, axis=-1)
