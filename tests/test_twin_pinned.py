"""The twin's numbers pinned: a small simulation compared with values recorded in
``tests/data/twin_pinned.npz``, so a rewrite for speed cannot change what the twin generates.

The easy twin must come out bit for bit; the real twin to float32 tolerance (1e-6 relative,
plus 1e-6 of the variable's largest magnitude where a value crosses zero), with identical gaps.
A deliberate change of the real twin's physics (docs/twin.md, calibration rounds) rewrites the
real half of the file:

    python tests/test_twin_pinned.py --write real

A change of the spin-up moves the easy twin by float32 rounding (it forgets its start to 1e-7,
not to the bit) and rewrites both halves: ``--write real easy``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cbgrid.sources import twin

PINNED = Path(__file__).parent / "data" / "twin_pinned.npz"
CLASSES = ("CRO", "GRA", "SAV", "ENF", "DBF", "EBF", "WET", "OSH")  # harvest, mowing, fire, the main forests
TIME = pd.date_range("2003-07-01", "2005-06-30")  # spans the fixed reference period of the basal rate
STRIDE = 9  # every 9th day is stored in full; per-site sums and NaN counts cover every day


def pinned_sites() -> pd.DataFrame:
    s = twin.twin_sites()
    igbp = s["igbp"].astype(str).str.upper()
    return pd.DataFrame([s[igbp == k].sort_values("site").iloc[0] for k in CLASSES]).reset_index(drop=True)


def simulate(difficulty: str) -> dict[str, np.ndarray]:
    s = pinned_sites()
    igbp, kop = twin._codes(s)
    return twin.simulate(s["lat"], s["lon"], igbp, kop, TIME, twin.site_keys(s["site"]), seed=3, with_truth=True,
                         difficulty=difficulty)


def record(difficulty: str) -> dict[str, np.ndarray]:
    out = {}
    for k, v in simulate(difficulty).items():
        out[f"{difficulty}/{k}/values"] = v[:, ::STRIDE]
        out[f"{difficulty}/{k}/sum"] = np.nansum(v.astype(np.float64), axis=1)
        out[f"{difficulty}/{k}/nan"] = np.isnan(v).sum(axis=1)
    return out


@pytest.fixture(scope="module")
def pinned():
    with np.load(PINNED) as z:
        return {k: z[k] for k in z.files}


def test_pinned_sites_unchanged(pinned):
    np.testing.assert_array_equal(pinned["sites"], pinned_sites()["site"].to_numpy().astype(str))


def test_easy_twin_bit_identical(pinned):
    now = record("easy")
    assert set(now) == {k for k in pinned if k.startswith("easy/")}
    for k, v in now.items():
        np.testing.assert_array_equal(v, pinned[k], err_msg=k)


def test_real_twin_same_to_float32_tolerance(pinned):
    now = record("real")
    assert set(now) == {k for k in pinned if k.startswith("real/")}
    for k, v in now.items():
        want = pinned[k]
        if k.endswith("/nan"):
            np.testing.assert_array_equal(v, want, err_msg=k)
            continue
        scale = max(1.0, float(np.nanmax(np.abs(want)))) if np.isfinite(want).any() else 1.0
        np.testing.assert_array_equal(np.isnan(v), np.isnan(want), err_msg=k)
        np.testing.assert_allclose(v, want, rtol=1e-6, atol=1e-6 * scale, err_msg=k)


def _write(which) -> None:
    old = {}
    if PINNED.exists():
        with np.load(PINNED) as z:
            old = {k: z[k] for k in z.files}
    for d in which:
        old = {k: v for k, v in old.items() if not k.startswith(f"{d}/")}
        old.update(record(d))
    old["sites"] = pinned_sites()["site"].to_numpy().astype(str)
    np.savez_compressed(PINNED, **old)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "--write" or not set(sys.argv[2:]) <= set(twin.DIFFICULTIES):
        raise SystemExit("usage: python tests/test_twin_pinned.py --write real [easy]")
    _write(sys.argv[2:])
