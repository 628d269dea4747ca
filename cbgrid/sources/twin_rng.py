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
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic); a new array, in-place steps."""
    z = z ^ (z >> np.uint64(30))
    z *= M1
    z ^= z >> np.uint64(27)
    z *= M2
    z ^= z >> np.uint64(31)
    return z


def uniform(seed: int, keys: np.ndarray, counters: np.ndarray, stream: int) -> np.ndarray:
    """Uniform (0, 1) float64, shape (len(keys), len(counters)), from hash(seed, key, counter, stream)."""
    with np.errstate(over="ignore"):
        base = mix(mix(np.array([seed], dtype=np.uint64) + GOLDEN) + np.array([stream], dtype=np.uint64) * GOLDEN)
        loc = mix(np.asarray(keys, dtype=np.uint64) ^ base)
        ctr = (np.asarray(counters).astype(np.int64).astype(np.uint64) + np.uint64(1)) * GOLDEN
        h = mix(loc[:, None] + ctr[None, :])
    h >>= np.uint64(11)
    u = h.astype(np.float64)
    u += 0.5
    u *= 1.0 / 9007199254740992.0
    return u


def normal(seed, keys, counters, stream) -> np.ndarray:
    """Standard normal via Box-Muller from two hashed uniform streams."""
    r = uniform(seed, keys, counters, 2 * stream + 1000)
    np.log(r, out=r)
    r *= -2.0
    np.sqrt(r, out=r)
    c = uniform(seed, keys, counters, 2 * stream + 1001)
    c *= 2.0 * np.pi
    np.cos(c, out=c)
    r *= c
    return r


def ema(x, alpha):
    """Exponential smoothing along the last axis, started at the first value (lfilter)."""
    b, a = [alpha], [1.0, alpha - 1.0]
    zi = (1.0 - alpha) * x[..., :1]
    y, _ = lfilter(b, a, x, axis=-1, zi=zi)
    return y


def ar1(eps, phi):
    """AR(1) x_t = phi x_{t-1} + sqrt(1-phi^2) eps_t with unit stationary variance."""
    return lfilter([np.sqrt(1 - phi**2)], [1.0, -phi], eps, axis=-1)


def two_state_chain(if_true: np.ndarray, if_false: np.ndarray, init: np.ndarray) -> np.ndarray:
    """A two-state chain along the last axis without a loop over time:
    ``x_t = if_true[t] if x_{t-1} else if_false[t]``, ``x_{-1} = init``.

    Each day either sets the state (``if_true == if_false``), keeps it (``if_true`` only) or
    flips it (``if_false`` only); the state is the last set value (or ``init``) flipped once per
    flip since, so a cumulative sum and a running maximum give the same booleans as the loop.

    >>> t = np.array([[True, False, True, True]]); f = np.array([[False, False, True, False]])
    >>> two_state_chain(t, f, np.array([True])).astype(int)
    array([[1, 0, 1, 1]])
    """
    n, nt = if_true.shape
    fixed = if_true == if_false
    flips = np.cumsum(if_false & ~if_true, axis=1, dtype=np.int32)
    last = np.maximum.accumulate(np.where(fixed, np.arange(nt, dtype=np.int32), np.int32(-1)), axis=1)
    seen = last >= 0
    at = np.maximum(last, 0)
    base = np.where(seen, np.take_along_axis(if_true, at, axis=1), np.asarray(init, dtype=bool).reshape(n, 1))
    flips -= np.where(seen, np.take_along_axis(flips, at, axis=1), 0)
    return base ^ (flips & 1).astype(bool)
