"""Which samples a model sees: the fit/validation cut, window and day indices, prediction tiling.

Two sets of rules (``cbgrid.protocol``):

* cbgrid's: a day is observed when GPP, RECO and NEE are all finite; windows of ``window`` days
  start every ``stride`` days from the first day of the time axis and are kept when at least
  ``min_target_days`` of their last ``horizon`` days are observed (``window_index``); static
  models see every observed day (``day_index``); prediction tiles the axis with stride-``horizon``
  windows (``prediction_windows``);
* the reference implementation's: a *row* is a day with all three targets and QC; features exist
  on the rows of a part (fitting, validation or test) and on the ``window - 1`` days before the
  part's first row (``availability``); windows start every ``stride`` days from that first
  history day and are kept only when all ``window`` days have features and all ``horizon``
  target days are rows (``complete_window_index``); a test day is predicted by the stride-1
  window ending on it, only when that window is complete (``last_step_days``).

Everything is vectorised with cumulative sums over (site, day) masks.
"""

from __future__ import annotations

import numpy as np

from cbgrid.errors import InputError
from cbgrid.protocol import HORIZON, STRIDE, WINDOW


def validation_cutoff(observed: np.ndarray, fraction: float = 0.2, rounding: str = "ceil") -> np.ndarray:
    """(S,) first day index of each site's validation part: the last ``fraction`` of its
    observed days. Days before the cutoff are for fitting. A site without observations gets T.

    ``rounding``: the fitting part is the first ``ceil`` (cbgrid) or ``floor`` (the reference's
    ``int(n * (1 - fraction))``) of ``n * (1 - fraction)`` observed days.

    >>> validation_cutoff(np.array([[True] * 5 + [False, True]]), 0.2).tolist()
    [5]
    """
    if not 0 <= fraction < 1:
        raise InputError(f"validation fraction must be in [0, 1), got {fraction}")
    if rounding not in ("ceil", "floor"):
        raise InputError(f"rounding must be 'ceil' or 'floor', not {rounding!r}")
    cum = np.cumsum(observed, axis=1)
    total = cum[:, -1] if cum.shape[1] else np.zeros(observed.shape[0], int)
    n_fit = (np.ceil if rounding == "ceil" else np.floor)(total * (1 - fraction)).astype(int)
    # cutoff = the day after the n_fit-th observed day
    cut = (cum >= np.maximum(n_fit, 1)[:, None]).argmax(axis=1) + 1
    cut = np.where(n_fit >= total, observed.shape[1], cut)
    return np.where(total > 0, cut, observed.shape[1])


def window_index(observed: np.ndarray, window: int = WINDOW, horizon: int = HORIZON, stride: int = STRIDE,
                 *, min_target_days: int = 1, lo=None, hi=None) -> np.ndarray:
    """(N, 2) int64 (site, start) of every kept window, sorted by site then start.

    Windows start at 0, stride, 2·stride, ... and span ``window`` days; the targets are the last
    ``horizon`` days. A window is kept when at least ``min_target_days`` of its target days are
    observed and its target days lie in [lo, hi) (per-site day indices; default the whole axis).

    >>> obs = np.zeros((1, 60), bool); obs[0, 40] = True
    >>> window_index(obs).tolist()   # only the window whose last 15 days hold day 40
    [[0, 15]]
    """
    if not 0 < horizon <= window:
        raise InputError(f"horizon must be in 1..window ({window}), got {horizon}")
    if stride < 1:
        raise InputError(f"stride must be >= 1, got {stride}")
    n_sites, n_days = observed.shape
    starts = np.arange(0, n_days - window + 1, stride)
    if starts.size == 0:
        return np.zeros((0, 2), np.int64)
    cum = np.zeros((n_sites, n_days + 1), np.int32)
    np.cumsum(observed, axis=1, out=cum[:, 1:])
    first, end = starts + window - horizon, starts + window
    keep = (cum[:, end] - cum[:, first]) >= min_target_days
    if lo is not None:
        keep &= first[None, :] >= np.asarray(lo)[:, None]
    if hi is not None:
        keep &= end[None, :] <= np.asarray(hi)[:, None]
    site, k = np.nonzero(keep)
    return np.stack([site, starts[k]], axis=1).astype(np.int64)


def day_index(observed: np.ndarray, *, lo=None, hi=None) -> np.ndarray:
    """(N, 2) int64 (site, day) of every observed day in [lo, hi) per site (static models).

    >>> day_index(np.array([[True, False, True]])).tolist()
    [[0, 0], [0, 2]]
    """
    keep = observed.copy()
    t = np.arange(observed.shape[1])[None, :]
    if lo is not None:
        keep &= t >= np.asarray(lo)[:, None]
    if hi is not None:
        keep &= t < np.asarray(hi)[:, None]
    site, day = np.nonzero(keep)
    return np.stack([site, day], axis=1).astype(np.int64)


def _cumsum(mask: np.ndarray) -> np.ndarray:
    """(S, T + 1) int32 running counts of a (S, T) mask, 0 first."""
    out = np.zeros((mask.shape[0], mask.shape[1] + 1), np.int32)
    np.cumsum(mask, axis=1, out=out[:, 1:])
    return out


def first_last(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(S,) index of each site's first and last True day; (T, -1) where it has none.

    >>> first_last(np.array([[0, 1, 1, 0], [0, 0, 0, 0]], bool))
    (array([1, 4]), array([ 2, -1]))
    """
    n_days = mask.shape[1]
    has = mask.any(axis=1)
    first = np.where(has, mask.argmax(axis=1), n_days)
    last = np.where(has, n_days - 1 - mask[:, ::-1].argmax(axis=1), -1)
    return first, last


def availability(rows: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """(S, T) days with features in the reference's layout: the part's rows, and the
    ``window - 1`` days before its first row (the history the reference joins from the
    feature tables).

    >>> availability(np.array([[0, 0, 0, 1, 1, 0, 1]], bool), window=3).astype(int).tolist()
    [[0, 1, 1, 1, 1, 0, 1]]
    """
    first, _ = first_last(rows)
    t = np.arange(rows.shape[1])[None, :]
    history = (t >= (first - (window - 1))[:, None]) & (t < first[:, None])
    return rows | history


def complete_window_index(rows: np.ndarray, available: np.ndarray, window: int = WINDOW, horizon: int = HORIZON,
                          stride: int = STRIDE) -> np.ndarray:
    """(N, 2) int64 (site, start) of the reference's complete windows, sorted by site then start.

    Per site, windows start every ``stride`` days from ``first row - (window - 1)`` (clipped to
    the axis) and end by the last row; a window is kept when all its days are ``available``
    (features present) and all its last ``horizon`` days are ``rows``.

    >>> rows = np.array([[0] * 2 + [1] * 6], bool)
    >>> complete_window_index(rows, availability(rows, 3), window=3, horizon=2, stride=2).tolist()
    [[0, 2], [0, 4]]
    """
    if not 0 < horizon <= window:
        raise InputError(f"horizon must be in 1..window ({window}), got {horizon}")
    if stride < 1:
        raise InputError(f"stride must be >= 1, got {stride}")
    n_sites, n_days = rows.shape
    first, last = first_last(rows)
    origin = np.maximum(first - (window - 1), 0)
    k = np.arange(0, max(n_days // stride + 1, 1))
    starts = origin[:, None] + stride * k[None, :]  # (S, K)
    ends = starts + window
    valid = (ends <= (last + 1)[:, None]) & (first < n_days)[:, None]
    s = np.clip(starts, 0, n_days)
    e = np.clip(ends, 0, n_days)
    t0 = np.clip(ends - horizon, 0, n_days)
    ca, cr = _cumsum(available), _cumsum(rows)
    site = np.arange(n_sites)[:, None]
    keep = valid & ((ca[site, e] - ca[site, s]) == window) & ((cr[site, e] - cr[site, t0]) == horizon)
    si, ki = np.nonzero(keep)
    return np.stack([si, starts[si, ki]], axis=1).astype(np.int64)


def last_step_days(available: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """(S, T) days t whose window [t - window + 1, t] has features on every day: the days the
    reference predicts (the last step of a stride-1 window).

    >>> last_step_days(np.array([[1, 1, 1, 0, 1, 1, 1]], bool), window=3).astype(int).tolist()
    [[0, 0, 1, 0, 0, 0, 1]]
    """
    n_sites, n_days = available.shape
    out = np.zeros((n_sites, n_days), bool)
    if n_days < window:
        return out
    c = _cumsum(available)
    out[:, window - 1:] = (c[:, window:] - c[:, :n_days - window + 1]) == window
    return out


def prediction_windows(n_days: int, window: int = WINDOW, horizon: int = HORIZON) -> tuple[int, int, int]:
    """Padding that lets stride-``horizon`` windows cover every day of an ``n_days`` axis.

    Returns (left, right, n_windows): pad ``left = window - horizon`` days before the first day
    (repeating it) and ``right`` days after the last; window j then starts at j·horizon on the
    padded axis and its targets are days [j·horizon, (j+1)·horizon) of the original axis.

    >>> prediction_windows(40)   # 15 copies of day 0 before, 5 days after, 3 windows
    (15, 5, 3)
    """
    n_windows = -(-n_days // horizon)
    left = window - horizon
    right = n_windows * horizon - n_days
    return left, right, n_windows
