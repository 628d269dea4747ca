"""What makes the twin as hard as real towers (``difficulty="real"``, the default).

The easy twin (``difficulty="easy"``) is a world where every site of an IGBP class follows the
same equations and the towers measure it with white noise; models score far above the real
benchmark. This module adds, on top of the same weather, the sources of difficulty of real data
(docs/twin.md, "The real difficulty"):

* site-level random effects: light-use efficiency, water-stress threshold, rooting depth, VPD
  sensitivity, phenology timing, respiration base rate, temperature sensitivity (E0) and the
  autotrophic share, drawn once per location;
* unobserved drivers: a deep soil-water store with 40-day memory, management and disturbance
  events (crop harvest, mowing and grazing, fire) with recovery, and a drought legacy;
  none of them is a feature, and ERA5-Land's leaf area stays the class climatology;
* observations that differ from the truth: autocorrelated random error, gap-filling error that
  grows with the filled fraction, a per-site partitioning bias, QC from a two-state Markov chain
  (runs of good and poor days) and instrument outages of days to months.

Every random number is a counter-based hash (:mod:`cbgrid.sources.twin_rng`) and every memory is
either a contraction that forgets its start within the twin's 1200-day spin-up or a finite kernel
shorter than it (the drought-legacy kernel reads the deep store, so the store forgets within the
spin-up less the kernel's year), so values stay independent of the requested period, chunking and
site subset.

>>> DIFFICULTIES
('real', 'easy')
>>> check_difficulty("hard")
Traceback (most recent call last):
...
cbgrid.errors.InputError: difficulty is 'hard'; choose one of 'real', 'easy'
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter, oaconvolve
from scipy.special import ndtr

from cbgrid import context
from cbgrid.errors import InputError
from cbgrid.sources import twin_rng as rng

#: ``real``: calibrated against the published benchmark (the default); ``easy``: the strong-signal
#: world of the first twin, kept for tests that need it; not representative of real towers.
DIFFICULTIES = ("real", "easy")

# --------------------------------------------------------------------------------------------
# Parameters (docs/twin.md, "The real difficulty", has the same table)
# --------------------------------------------------------------------------------------------
LUE_SD = 0.20            # log-sd of the site's light-use efficiency multiplier
W_CRIT, W_CRIT_SD = 0.30, 0.40   # relative soil water below which GPP is water-limited; log-sd
ROOT_SHARE = (0.2, 0.9)  # share of the water response taken from the deep store (uniform)
VPD_SCALE, VPD_SD = 3.5, 0.35    # kPa over which VPD closes stomata; log-sd
PHEN_T_SD = 2.5          # K, sd of the site's green-up temperature threshold shift
PHEN_W_SD = 0.08         # sd of the site's water-phenology threshold shift
E0_SD = 0.06             # log-sd of the Lloyd-Taylor activation parameter E0
R_HET_SD = 0.10          # log-sd of the heterotrophic base rate (relative to GPP)
K_AUTO_RANGE = (0.30, 0.60)      # autotrophic share of recent GPP (uniform)
DEEP_ALPHA = 1.0 / 40.0  # deep store: EMA of surface relative water, 40-day memory
LEGACY_DAYS, LEGACY_TAU, LEGACY_MAX = 365, 120.0, 0.45  # drought legacy kernel and largest GPP loss
# unresolved day-to-day variation of the true fluxes (diffuse light, substrate pulses): log-sd, AR(1)
GPP_DAILY_SD, GPP_DAILY_PHI = 0.20, 0.8
RECO_DAILY_SD, RECO_DAILY_PHI = 0.30, 0.7
# disturbance kernels: linear recovery over this many days (all shorter than the spin-up); harvest
# and mowing/grazing share the first (R5)
HARVEST_DAYS, FIRE_DAYS = 120, 540
#: fire probability per year by IGBP code 0..16 (WAT ENF EBF DNF DBF MF CSH OSH WSA SAV GRA WET CRO URB CVM SNO BSV)
FIRE_RATE = np.array([0, .01, .005, .01, .005, .005, .05, .05, .15, .2, .08, .01, .01, 0, .02, 0, 0])
MOW_RATE = 2.0           # mowing / grazing events per growing season (GRA)
RESIDUE_PULSE = 0.5      # relative rise of heterotrophic respiration after harvest and mowing
# observation model
QC_SWITCH = 0.04         # P(good->poor) + P(poor->good) per day: QC=1 persistence 1 - 0.04
QC_GOOD, QC_GOOD_SD = 0.54, 0.18  # share of QC=1 days (US-AR1: 0.54) and its sd across sites
QC_DEFICIT_PHI = 0.9     # day-to-day persistence of the unmeasured fraction within poor runs
OUTAGES_PER_YEAR = (0.3, 2.0)    # uniform range of the site's outage rate
OUTAGE_MEDIAN, OUTAGE_LOG_SD, OUTAGE_MAX = 15.0, 1.1, 240  # outage length [d], lognormal, cap
NEE_SD0, NEE_SD1 = 0.30, 0.08    # NEE error sd = SD0 + SD1 (GPP + RECO) [gC m-2 d-1]
NEE_PHI, NEE_AR_SHARE = 0.75, 0.8  # AR(1) coefficient and share of the autocorrelated part
NOISE_SD = 0.60          # log-sd of the site's error level (tower quality, footprint heterogeneity)
GAPFILL_PHI, GAPFILL_SD = 0.95, 1.5  # gap-filling error: AR(1), scaled by (1 - QC)
PART_BIAS_SD, PART_SD, PART_PHI = 0.06, 0.20, 0.9  # RECO partitioning: site bias, AR(1) error
NEE_BIAS_SD = 0.35       # gC m-2 d-1, sd of the site's systematic NEE error (advection, storage, footprint)
NIGHT_SHARE = 0.5        # share of that error made at night, which the night-time partitioning puts in RECO

# Random streams (ids 200.. are this module's; never reuse one for another purpose).
_S_FX = 200              # static effects use 200 + k
_S_FIRE, _S_FIRE_SEV, _S_MOW, _S_MOW_SEV, _S_HARVEST = 230, 231, 232, 233, 234
_S_QC, _S_QCD1, _S_QCD2, _S_OUT, _S_OUTLEN, _S_QC_DRAW = 240, 241, 242, 243, 244, 245
_S_NEE_AR, _S_NEE_W, _S_GAPFILL, _S_PART = 250, 251, 252, 253
_S_GPP_DAY, _S_RECO_DAY = 260, 261


def check_difficulty(difficulty: str) -> str:
    """The difficulty, checked against :data:`DIFFICULTIES`."""
    if difficulty not in DIFFICULTIES:
        raise InputError(f"difficulty is {difficulty!r}; choose one of {', '.join(map(repr, DIFFICULTIES))}")
    return difficulty


def _su(seed, keys, k):
    return rng.uniform(seed, keys, np.zeros(1, np.int64), _S_FX + k)[:, 0]


def _sn(seed, keys, k):
    return rng.normal(seed, keys, np.zeros(1, np.int64), _S_FX + k)[:, 0]


def site_effects(seed: int, keys: np.ndarray) -> dict[str, np.ndarray]:
    """Static per-location random effects, arrays of shape (n,)."""
    lo, hi = ROOT_SHARE
    return dict(
        lue=np.exp(LUE_SD * _sn(seed, keys, 1) - 0.5 * LUE_SD**2),
        w_crit=np.clip(W_CRIT * np.exp(W_CRIT_SD * _sn(seed, keys, 2)), 0.1, 0.7),
        root=lo + (hi - lo) * _su(seed, keys, 3),
        vpd_scale=VPD_SCALE * np.exp(VPD_SD * _sn(seed, keys, 4)),
        phen_t=PHEN_T_SD * _sn(seed, keys, 5),
        phen_w=PHEN_W_SD * _sn(seed, keys, 6),
        e0=np.exp(E0_SD * _sn(seed, keys, 7)),
        r_het=np.exp(R_HET_SD * _sn(seed, keys, 8) - 0.5 * R_HET_SD**2),
        k_auto=K_AUTO_RANGE[0] + (K_AUTO_RANGE[1] - K_AUTO_RANGE[0]) * _su(seed, keys, 9),
        legacy=_su(seed, keys, 10),
        fire=np.exp(0.5 * _sn(seed, keys, 11)),
        harvest_doy=40.0 + 20.0 * _sn(seed, keys, 12),
        qc_good=np.clip(QC_GOOD + QC_GOOD_SD * _sn(seed, keys, 13), 0.1, 0.95),
        outages=(OUTAGES_PER_YEAR[0] + (OUTAGES_PER_YEAR[1] - OUTAGES_PER_YEAR[0]) * _su(seed, keys, 14)) / 365.25,
        part_bias=PART_BIAS_SD * _sn(seed, keys, 15),
        noise=np.exp(NOISE_SD * _sn(seed, keys, 16) - 0.5 * NOISE_SD**2),
        nee_bias=NEE_BIAS_SD * _sn(seed, keys, 17),
    )


def _recovery(impulses: np.ndarray, length: int) -> np.ndarray:
    """Damage from events: each impulse of severity s decays linearly to 0 over ``length`` days."""
    kernel = 1.0 - np.arange(length) / length
    out = np.zeros(impulses.shape)
    hit = impulses.any(axis=1)  # most locations have no event of a kind: nothing to convolve
    if hit.any():
        out[hit] = np.clip(oaconvolve(impulses[hit], kernel[None, :], axes=-1)[:, : impulses.shape[1]], 0.0, None)
    return out


def disturbance(seed, keys, igbp, fx, days, doy, hemi, growing):
    """Canopy multiplier in (0, 1] from harvest (CRO), mowing/grazing (GRA) and fire, and the
    short-lived residue damage that raises heterotrophic respiration; arrays (n, T).

    growing: (n, T) bool, the days on which the vegetation is green enough to be cut.
    """
    n, nt = growing.shape
    fire_p = (FIRE_RATE[igbp] * fx["fire"] / 365.25)[:, None]
    fire = (rng.uniform(seed, keys, days, _S_FIRE) < fire_p) * (0.5 + 0.45 * rng.uniform(seed, keys, days, _S_FIRE_SEV))
    mow_p = np.where(igbp == 10, MOW_RATE / 150.0, 0.0)[:, None]
    mow = (growing & (rng.uniform(seed, keys, days, _S_MOW) < mow_p)) * (0.3 + 0.3 * rng.uniform(seed, keys, days, _S_MOW_SEV))
    # harvest: each year on the site's day (peak season + offset) +- a few days, a severe cut
    peak = 200.0 + hemi
    jitter = np.round(8.0 * (rng.uniform(seed, keys, days // 365, _S_HARVEST) - 0.5))
    hday = np.mod(np.round(peak + fx["harvest_doy"])[:, None] + jitter, 365.0) + 1.0
    harvest = ((igbp == 12)[:, None] & (doy[None, :] == hday)) * 0.8
    short = _recovery(harvest + mow, HARVEST_DAYS)
    damage = short + _recovery(fire, FIRE_DAYS)
    return np.clip(1.0 - damage, 0.05, 1.0), np.clip(short, 0.0, 1.0)


def daily_variation(seed, keys, days, flux: str) -> np.ndarray:
    """Multiplier (n, T) with mean 1 for the unresolved day-to-day variation of GPP or RECO."""
    sd, phi, stream = {"gpp": (GPP_DAILY_SD, GPP_DAILY_PHI, _S_GPP_DAY),
                       "reco": (RECO_DAILY_SD, RECO_DAILY_PHI, _S_RECO_DAY)}[flux]
    return np.exp(sd * rng.ar1(rng.normal(seed, keys, days, stream), phi) - 0.5 * sd**2)


def drought_legacy(w_deep, fx):
    """GPP multiplier after dry spells: a one-year memory of deep-soil water stress."""
    stress = np.clip((0.3 - w_deep) / 0.3, 0.0, 1.0) ** 2
    # the truncated exponential kernel as a recursion: y_t = q y_{t-1} + (s_t - q^L s_{t-L}) / sum(k)
    q = np.exp(-1.0 / LEGACY_TAU)
    k_sum = np.exp(-np.arange(LEGACY_DAYS) / LEGACY_TAU).sum()
    drive = stress.copy()
    drive[:, LEGACY_DAYS:] -= q**LEGACY_DAYS * stress[:, :-LEGACY_DAYS]
    mem = np.clip(lfilter([1.0 / k_sum], [1.0, -q], drive, axis=-1), 0.0, 1.0)
    return 1.0 - LEGACY_MAX * fx["legacy"][:, None] * mem


def qc_chain(seed, keys, fx, days) -> np.ndarray:
    """QC=1 indicator (n, T) from a two-state Markov chain with the site's good-day share π and
    persistence 1 - QC_SWITCH: P(good→poor) = QC_SWITCH (1 − π), P(poor→good) = QC_SWITCH π.

    Drawn as the equivalent renewal chain: on a day with probability QC_SWITCH the state is
    redrawn (good with probability π), otherwise kept. Every redraw forgets what came before,
    so two requests that start on different days agree after the first redraw inside both
    spin-ups ((1 − QC_SWITCH) ** SPINUP_DAYS < 1e-7 of them do not); a chain stepped with the
    transition probabilities and common random numbers would meet only with probability
    QC_SWITCH |2π − 1| a day, i.e. hardly ever at sites near π = 1/2."""
    redraw = rng.uniform(seed, keys, days, _S_QC) < QC_SWITCH
    redraw[:, 0] = True  # the first day of the spin-up draws from the stationary share
    good = rng.uniform(seed, keys, days, _S_QC_DRAW) < fx["qc_good"][:, None]
    last = np.maximum.accumulate(np.where(redraw, np.arange(days.size), 0), axis=1)
    return np.take_along_axis(good, last, axis=1)


def outages(seed, keys, fx, days) -> np.ndarray:
    """Instrument outages (n, T) bool: starts at rate fx['outages'] a day, lognormal lengths."""
    start = rng.uniform(seed, keys, days, _S_OUT) < fx["outages"][:, None]
    length = np.clip(np.round(OUTAGE_MEDIAN * np.exp(OUTAGE_LOG_SD * rng.normal(seed, keys, days, _S_OUTLEN))),
                     1, OUTAGE_MAX).astype(np.int64)
    n, nt = start.shape
    diff = np.zeros((n, nt + OUTAGE_MAX + 1), dtype=np.int32)
    i, t = np.nonzero(start)
    np.add.at(diff, (i, t), 1)
    np.add.at(diff, (i, t + length[i, t]), -1)
    return np.cumsum(diff, axis=1)[:, :nt] > 0


def observe(seed, keys, fx, days, gpp, reco, s0: int):
    """Observed QC, NEE, RECO, GPP (float64) and the outage mask over ``days[s0:]``.

    gpp, reco: true fluxes over all ``days`` (spin-up included) so that every autocorrelated
    error starts in the spin-up.
    """
    good = qc_chain(seed, keys, fx, days)
    u2 = ndtr(rng.ar1(rng.normal(seed, keys, days, _S_QCD1), QC_DEFICIT_PHI))
    # the measured fraction of a poor day drifts: a latent AR(1) mapped to a uniform
    u3 = ndtr(rng.ar1(rng.normal(seed, keys, days, _S_QCD2), QC_DEFICIT_PHI))
    deficit = np.where(u2 < 0.5, 0.1 * u3, u3 ** (1 / 2.7))
    qc = np.where(good, 1.0, 1.0 - deficit)
    sd = (NEE_SD0 + NEE_SD1 * (gpp + reco)) * fx["noise"][:, None]
    e_ar = rng.ar1(rng.normal(seed, keys, days, _S_NEE_AR), NEE_PHI)
    e_w = rng.normal(seed, keys, days, _S_NEE_W)
    e_gap = rng.ar1(rng.normal(seed, keys, days, _S_GAPFILL), GAPFILL_PHI)
    a = NEE_AR_SHARE
    err = sd * (np.sqrt(a) * e_ar + np.sqrt(1 - a) * e_w) + GAPFILL_SD * sd * (1.0 - qc) * e_gap
    nee = reco - gpp + err + fx["nee_bias"][:, None]
    e_part = rng.ar1(rng.normal(seed, keys, days, _S_PART), PART_PHI)
    reco_o = np.maximum(reco * np.exp(fx["part_bias"][:, None] + PART_SD * e_part)
                        + NIGHT_SHARE * fx["nee_bias"][:, None], 0.0)
    gpp_o = reco_o - nee
    out = outages(seed, keys, fx, days)
    s = slice(s0, None)
    return qc[:, s], nee[:, s], reco_o[:, s], gpp_o[:, s], out[:, s]


def era5_vegetation(lat, lon, igbp) -> np.ndarray:
    """The vegetation class ERA5-Land's leaf area follows at each location: the dominant land
    class of the ~0.15° box around it (:func:`cbgrid.context.dominant_igbp`), not the tower's
    own (the tower's where the box holds no land). ERA5-Land's leaf area is a climatology per
    model vegetation type of a ~9 km cell; towers stand in a patch of their own class, which
    differs from their cell's dominant class at 39 % of the 474-site twin's locations."""
    box = context.dominant_igbp(lat, lon)
    return np.where(box >= 1, box, igbp)


# --------------------------------------------------------------------------------------------
# Calibration figures (benchmarks/bench_twin.py, tests)
# --------------------------------------------------------------------------------------------
def lag1(x: np.ndarray) -> np.ndarray:
    """Lag-1 autocorrelation of each row of (site, time) ``x`` over pairs of consecutive
    observed days; NaN for rows with fewer than 10 pairs or no variance.

    >>> x = np.array([[1.0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [1, -1] * 6])
    >>> np.round(lag1(x), 2)
    array([ 1., -1.])
    """
    x = np.asarray(x, dtype=np.float64)
    a, b = x[:, :-1], x[:, 1:]
    m = np.isfinite(a) & np.isfinite(b)
    n = m.sum(axis=1)
    a, b = np.where(m, a, 0.0), np.where(m, b, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ma, mb = a.sum(1) / n, b.sum(1) / n
        da_, db_ = np.where(m, a - ma[:, None], 0.0), np.where(m, b - mb[:, None], 0.0)
        r = (da_ * db_).sum(1) / np.sqrt((da_**2).sum(1) * (db_**2).sum(1))
    return np.where(n >= 10, r, np.nan)


def qc1_indicator(qc: np.ndarray) -> np.ndarray:
    """1.0 where QC = 1, 0.0 where QC < 1, NaN where not observed."""
    qc = np.asarray(qc, dtype=np.float64)
    return np.where(np.isfinite(qc), (qc == 1.0).astype(np.float64), np.nan)
