"""From the store to model batches: contiguous arrays, scaling, window index, batch gathering.

The store is read once through dask into contiguous ``(site, time, feature)`` arrays; every
later step is array indexing. Nothing here loops over samples in Python:

* features are scaled with training-site statistics, then gaps are filled per site by carrying
  the last observation forward, and what is still missing (before a site's first observation)
  gets the training mean (0 after scaling) — so a MODIS gap never discards a window;
* a *day is observed* when GPP, RECO and NEE are all finite; the loss sees only observed days
  (weight 0 elsewhere);
* windows of ``window`` days start every ``stride`` days from the first day of the time axis;
  a window's targets are its last ``horizon`` days, and a window is kept when at least
  ``min_target_days`` of those days are observed (default 1) — windows whose last ``horizon``
  days are all missing are excluded, nothing else is;
* batches are gathered by indexing: ``index_select`` on GPU tensors, or one fancy-index of a
  strided window view on the CPU (a block copy per sample).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from cbgrid import catalog, schema
from cbgrid.errors import InputError
from cbgrid.progress import compute as progress_compute
from cbgrid.protocol import HORIZON, STRIDE, WINDOW, Protocol, WindowSpec  # noqa: F401
from cbgrid.schema import IGBP_CLASSES, KOPPEN_CLASSES, QC, SITE, TARGETS, TIME
from cbgrid.windows import (  # noqa: F401  (also the pipeline's public names)
    availability,
    complete_window_index,
    day_index,
    prediction_windows,
    validation_cutoff,
    window_index,
)

log = logging.getLogger(__name__)

#: lat, lon (scaled) — the per-site static inputs of every model.
STATIC = ("lat", "lon")
#: One-hot IGBP (17 classes) followed by one-hot Köppen main class (5).
N_ONEHOT = len(IGBP_CLASSES) + len(KOPPEN_CLASSES)


def n_onehot(scheme: str = "cbgrid") -> int:
    """Width of the one-hot class vector: 22 (cbgrid) or 51 (reference).

    >>> n_onehot("reference")
    51
    """
    if scheme == "reference":
        return len(schema.REFERENCE_IGBP) + len(schema.REFERENCE_KOPPEN) + len(schema.REFERENCE_KOPPEN_DETAILED)
    return N_ONEHOT
#: Sites per block when filling features, to bound the temporary index memory.
_FILL_BLOCK = 64


# --------------------------------------------------------------------------------------------
# Store -> contiguous arrays
# --------------------------------------------------------------------------------------------
def feature_variables(ds: xr.Dataset, feature_set: str = "minimal") -> list[str]:
    """The dynamic input variables of ``feature_set``; raises naming any the store lacks.

    >>> from cbgrid import testing
    >>> feature_variables(testing.site_store(extra=catalog.features("minimal")))[:2]
    ['temperature_2m', 'total_precipitation_sum']
    """
    names = catalog.features(feature_set)
    missing = [n for n in names if n not in ds.data_vars]
    if missing:
        raise InputError(
            f"feature set {feature_set!r} needs {len(missing)} variable(s) the store lacks: "
            f"{', '.join(missing)}; choose another --feature-set or add them to the store"
        )
    return names


@dataclass
class SiteArrays:
    """Contiguous arrays for a set of sites, physical units, NaN where missing."""

    sites: np.ndarray  # (S,) str
    time: pd.DatetimeIndex  # (T,)
    features: list[str]
    x: np.ndarray  # (S, T, F) float32
    lat: np.ndarray  # (S,) float64
    lon: np.ndarray  # (S,)
    igbp: np.ndarray  # (S,) int codes 0..16
    koppen: np.ndarray  # (S,) int codes 1..5
    y: np.ndarray | None = None  # (S, T, 3) float32 GPP, RECO, NEE
    qc: np.ndarray | None = None  # (S, T) float32
    koppen_detailed: np.ndarray | None = None  # (S,) int codes (0 unknown)

    def __post_init__(self):
        if self.koppen_detailed is None:
            self.koppen_detailed = np.zeros(len(self.sites), np.int64)

    @property
    def observed(self) -> np.ndarray:
        """(S, T) bool: all three targets finite."""
        if self.y is None:
            raise InputError("these arrays were read without targets")
        return np.isfinite(self.y).all(axis=-1)

    @property
    def rows(self) -> np.ndarray:
        """(S, T) bool: the reference's target rows, days with all three targets and QC."""
        return self.observed & np.isfinite(self.qc)

    def subset(self, idx) -> SiteArrays:
        """The arrays of the sites at positions ``idx``."""
        idx = np.asarray(idx)
        return SiteArrays(
            self.sites[idx], self.time, self.features, self.x[idx], self.lat[idx], self.lon[idx],
            self.igbp[idx], self.koppen[idx],
            None if self.y is None else self.y[idx], None if self.qc is None else self.qc[idx],
            self.koppen_detailed[idx],
        )


def site_info(ds: xr.Dataset) -> dict[str, np.ndarray]:
    """lat, lon, igbp, koppen of every site, checked (they are model inputs).

    >>> from cbgrid import testing
    >>> sorted(site_info(testing.site_store(n_sites=2)))
    ['igbp', 'koppen', 'koppen_detailed', 'lat', 'lon']
    """
    missing = [c for c in ("lat", "lon", "igbp", "koppen") if c not in ds.coords and c not in ds]
    if missing:
        raise InputError(f"the dataset lacks site coordinate(s) {missing}; predictions need lat, lon, igbp, koppen")
    info = {
        "lat": np.asarray(ds["lat"].values, np.float64),
        "lon": np.asarray(ds["lon"].values, np.float64),
        "igbp": np.asarray(ds["igbp"].values).astype(np.int64),
        "koppen": np.asarray(ds["koppen"].values).astype(np.int64),
    }
    if "koppen_detailed" in ds.coords or "koppen_detailed" in ds:
        info["koppen_detailed"] = np.asarray(ds["koppen_detailed"].values).astype(np.int64)
    return info


def read_arrays(ds: xr.Dataset, features: list[str], *, targets: bool = True, progress: bool = False) -> SiteArrays:
    """Read ``features`` (and targets, QC) of every site of ``ds`` into contiguous arrays.

    Works on lazy (dask) and in-memory Datasets alike; with dask, all chunks are read in one
    parallel ``compute`` and stacked straight into ``(site, time, feature)`` order.

    >>> from cbgrid import testing
    >>> read_arrays(testing.site_store(n_sites=2, days=5), ["temperature_2m"]).x.shape
    (2, 5, 1)
    """
    missing = [f for f in features if f not in ds.data_vars]
    if missing:
        raise InputError(f"the dataset lacks feature variable(s) {missing}")

    def arr(name):
        return da.asarray(ds[name].transpose(SITE, TIME).data)

    parts = {"x": da.stack([arr(f) for f in features], axis=-1).astype(np.float32)}
    if targets:
        lacking = [t for t in (*TARGETS, QC) if t not in ds.data_vars]
        if lacking:
            raise InputError(f"the store lacks target variable(s) {lacking}")
        parts["y"] = da.stack([arr(t) for t in TARGETS], axis=-1).astype(np.float32)
        parts["qc"] = arr(QC).astype(np.float32)
    out = progress_compute(parts, desc="reading store", progress=progress)[0]
    info = site_info(ds)
    return SiteArrays(
        sites=np.asarray([str(s) for s in ds[SITE].values], dtype=object),
        time=pd.DatetimeIndex(ds.indexes[TIME]),
        features=list(features),
        x=np.ascontiguousarray(out["x"]),
        y=np.ascontiguousarray(out["y"]) if targets else None,
        qc=np.ascontiguousarray(out["qc"]) if targets else None,
        **info,
    )


# --------------------------------------------------------------------------------------------
# Scaling and gap filling
# --------------------------------------------------------------------------------------------
@dataclass
class Scaler:
    """Per-variable mean/std from the training sites: features, lat/lon, targets."""

    features: list[str]
    x_mean: np.ndarray
    x_std: np.ndarray
    s_mean: np.ndarray
    s_std: np.ndarray
    y_mean: np.ndarray
    y_std: np.ndarray

    @classmethod
    def fit(cls, a: SiteArrays, rows: np.ndarray | None = None) -> Scaler:
        """Statistics over every finite value of the (training) sites in ``a``.

        With a (site, day) ``rows`` mask (the reference's fitting rows), every statistic —
        features, lat/lon and targets — is taken over those rows only, as a StandardScaler
        fitted on the row table would (lat/lon weighted by each site's number of rows).
        """
        if a.y is None:
            raise InputError("fitting a scaler needs the targets")
        if a.x.shape[0] == 0:
            raise InputError("no training sites to fit the scaling statistics on")
        obs = a.observed if rows is None else rows & a.observed
        if not obs.any():
            raise InputError(f"the {len(a.sites)} training site(s) have no day with GPP, RECO and NEE observed")
        x_mean, x_std = _nan_mean_std(a.x.reshape(-1, a.x.shape[-1]) if rows is None else a.x[rows])
        y_mean, y_std = _nan_mean_std(a.y[obs])
        s = np.stack([a.lat, a.lon], axis=-1)
        if rows is None:
            s_mean, s_std = s.mean(0), s.std(0)
        else:
            s_mean, s_std = _nan_mean_std(np.repeat(s, rows.sum(axis=1), axis=0))
        nan_feat = [f for f, m in zip(a.features, x_mean) if not np.isfinite(m)]
        if nan_feat:
            raise InputError(f"feature(s) {nan_feat} have no finite value at any training site")
        return cls(list(a.features), x_mean, _safe(x_std), s_mean, _safe(s_std), y_mean, _safe(y_std))

    def to_dict(self) -> dict:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict) -> Scaler:
        return cls(list(d["features"]), *(np.asarray(d[k], np.float64) for k in
                                            ("x_mean", "x_std", "s_mean", "s_std", "y_mean", "y_std")))

    def static(self, lat, lon) -> np.ndarray:
        """(S, 2) scaled lat/lon."""
        return ((np.stack([lat, lon], axis=-1) - self.s_mean) / self.s_std).astype(np.float32)

    def targets(self, y: np.ndarray) -> np.ndarray:
        return ((y - self.y_mean) / self.y_std).astype(np.float32)

    def unscale_targets(self, y: np.ndarray) -> np.ndarray:
        return (y * self.y_std + self.y_mean).astype(np.float32)


def _nan_mean_std(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ok = np.isfinite(v)
    n = ok.sum(0)
    z = np.where(ok, v, 0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = z.sum(0) / n
        var = (np.where(ok, v - mean, 0) ** 2).sum(0) / n
    return np.where(n > 0, mean, np.nan), np.sqrt(var)


def _safe(std: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(std) & (std > 0), std, 1.0)


def forward_fill(x: np.ndarray) -> np.ndarray:
    """Carry the last finite value forward along axis 1 of (S, T, F), in place; leading NaNs stay.

    >>> forward_fill(np.array([[[np.nan], [1.0], [np.nan]]]))[0, :, 0].tolist()
    [nan, 1.0, 1.0]
    """
    t = np.arange(x.shape[1], dtype=np.int32)[None, :, None]
    for i0 in range(0, x.shape[0], _FILL_BLOCK):
        blk = x[i0:i0 + _FILL_BLOCK]
        ok = np.isfinite(blk)
        if ok.all():
            continue
        idx = np.where(ok, t, 0)
        np.maximum.accumulate(idx, axis=1, out=idx)
        blk[...] = np.take_along_axis(blk, idx, axis=1)
    return x


def interpolate_linear(x: np.ndarray, columns, valid: np.ndarray | None = None) -> np.ndarray:
    """Linear interpolation in time of ``columns`` of (S, T, F) ``x``, in place, from the finite
    values on ``valid`` days (S, T); before the first / after the last such value the nearest one
    is carried (pandas ``interpolate(limit_direction='both')``). Other columns are untouched.

    >>> x = np.array([[[1.0], [np.nan], [3.0], [np.nan]]], np.float32)
    >>> interpolate_linear(x, [0])[0, :, 0].tolist()
    [1.0, 2.0, 3.0, 3.0]
    """
    columns = list(columns)
    if not columns:
        return x
    n_sites, n_days, _ = x.shape
    t = np.arange(n_days, dtype=np.float32)
    for i0 in range(0, n_sites, _FILL_BLOCK):
        blk = x[i0:i0 + _FILL_BLOCK][:, :, columns]
        ok = np.isfinite(blk)
        if valid is not None:
            ok &= valid[i0:i0 + _FILL_BLOCK, :, None]
        vals = np.where(ok, blk, 0.0)
        idx = np.where(ok, np.arange(n_days, dtype=np.int32)[None, :, None], -1)
        prev = np.maximum.accumulate(idx, axis=1)
        nxt = np.where(ok, np.arange(n_days, dtype=np.int32)[None, :, None], n_days)
        nxt = np.minimum.accumulate(nxt[:, ::-1], axis=1)[:, ::-1]
        has_prev, has_next = prev >= 0, nxt < n_days
        vp = np.take_along_axis(vals, np.clip(prev, 0, n_days - 1), axis=1)
        vn = np.take_along_axis(vals, np.clip(nxt, 0, n_days - 1), axis=1)
        span = np.where(has_prev & has_next, np.maximum(nxt - prev, 1), 1).astype(np.float32)
        frac = np.where(has_prev & has_next, (t[None, :, None] - prev) / span, 0.0)
        filled = np.where(has_prev & has_next, vp + frac * (vn - vp), np.where(has_prev, vp, vn))
        filled = np.where(has_prev | has_next, filled, np.nan).astype(np.float32)
        x[i0:i0 + _FILL_BLOCK, :, columns] = np.where(ok, blk, filled)
    return x


def model_features(x: np.ndarray, scaler: Scaler, protocol: Protocol | None = None,
                   available: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Raw (S, T, F) features -> scaled model inputs and the (S, T) days with complete features.

    cbgrid's rule (``forward_fill``): gaps carry the last observation forward, what remains
    (before a site's first observation) takes the training mean (0 after scaling); every day is
    complete. The reference's (``interpolate_modis``): only ``available`` days have features;
    MODIS is interpolated linearly between them, ERA-Land gaps stay gaps; a day is complete when
    it is available and every feature is finite. Incomplete days hold 0 (never used as inputs).

    >>> from cbgrid import testing
    >>> a = read_arrays(testing.site_store(n_sites=2, days=5), ["temperature_2m"])
    >>> x, complete = model_features(a.x, Scaler.fit(a))
    >>> x.shape, bool(complete.all())
    ((2, 5, 1), True)
    """
    out = ((x - scaler.x_mean.astype(np.float32)) / scaler.x_std.astype(np.float32)).astype(np.float32)
    if protocol is None or protocol.feature_fill == "forward_fill":
        forward_fill(out)
        complete = np.ones(out.shape[:2], bool)
    else:
        modis = set(catalog.modis_bands())
        interpolate_linear(out, [i for i, f in enumerate(scaler.features) if f in modis], available)
        complete = np.isfinite(out).all(axis=-1)
        if available is not None:
            complete &= available
    np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return out, complete


def onehot(igbp: np.ndarray, koppen: np.ndarray, koppen_detailed: np.ndarray | None = None,
           scheme: str = "cbgrid") -> np.ndarray:
    """One-hot site classes, float32.

    ``cbgrid``: (S, 22) IGBP (codes 0..16) then Köppen main class (codes 1..5). ``reference``:
    (S, 51) the reference's 16 FLUXNET IGBP classes, 5 Köppen classes and 30 detailed Köppen
    classes in its own order (``schema.REFERENCE_*``); classes outside them give zeros.

    >>> onehot(np.array([1]), np.array([3])).nonzero()[1].tolist()
    [1, 19]
    >>> onehot(np.array([1]), np.array([3]), np.array([10]), scheme="reference").shape
    (1, 51)
    """
    if scheme == "reference":
        return _onehot_reference(igbp, koppen, koppen_detailed)
    if scheme != "cbgrid":
        raise InputError(f"one-hot scheme must be 'cbgrid' or 'reference', not {scheme!r}")
    igbp, koppen = np.asarray(igbp, int), np.asarray(koppen, int)
    out = np.zeros((igbp.size, N_ONEHOT), np.float32)
    r = np.arange(igbp.size)
    ok = (igbp >= 0) & (igbp < len(IGBP_CLASSES))
    out[r[ok], igbp[ok]] = 1
    ok = (koppen >= 1) & (koppen <= len(KOPPEN_CLASSES))
    out[r[ok], len(IGBP_CLASSES) + koppen[ok] - 1] = 1
    return out


def _onehot_reference(igbp, koppen, koppen_detailed) -> np.ndarray:
    blocks = []
    for name, codes, vocab in (("igbp", igbp, schema.REFERENCE_IGBP), ("koppen", koppen, schema.REFERENCE_KOPPEN),
                               ("koppen_detailed", koppen_detailed, schema.REFERENCE_KOPPEN_DETAILED)):
        n = len(np.asarray(igbp))
        block = np.zeros((n, len(vocab)), np.float32)
        if codes is not None:
            names = schema.decode(name, np.asarray(codes, int))
            pos = {c: i for i, c in enumerate(vocab)}
            col = np.asarray([pos.get(v, -1) for v in names], int)
            ok = col >= 0
            block[np.flatnonzero(ok), col[ok]] = 1.0
        blocks.append(block)
    return np.concatenate(blocks, axis=1)


def class_weights(codes: np.ndarray, counts: np.ndarray, n_classes: int, first: int = 0) -> np.ndarray:
    """Inverse-frequency weights per class code: N / (K · n_c) over the observed site-days.

    ``codes`` are the sites' class codes, ``counts`` their observed days; K is the number of
    classes present. Returns an array indexed by code (classes absent from training get 0), so
    a weighted mean over the training days is 1.

    >>> class_weights(np.array([0, 0, 1]), np.array([10, 10, 20]), n_classes=2).tolist()
    [1.0, 1.0]
    """
    n = np.bincount(np.asarray(codes, int) - first, weights=np.asarray(counts, float), minlength=n_classes)
    present = n > 0
    w = np.zeros(n_classes + first)
    w[first:][present] = n.sum() / (present.sum() * n[present])
    return w


@dataclass
class Weights:
    """Per-class loss weights (IGBP and Köppen) from the training sites."""

    igbp: np.ndarray
    koppen: np.ndarray

    @classmethod
    def fit(cls, a: SiteArrays, rows: np.ndarray | None = None) -> Weights:
        """Class weights from the observed days of the training sites (or from ``rows``, the
        reference's fitting rows: sklearn ``compute_class_weight('balanced')`` over them)."""
        days = (a.observed if rows is None else rows).sum(1)
        return cls(class_weights(a.igbp, days, len(IGBP_CLASSES)), class_weights(a.koppen, days, len(KOPPEN_CLASSES), first=1))

    def site(self, igbp, koppen) -> np.ndarray:
        """(S,) w_igbp × w_koppen per site (0 for a class never seen in training)."""
        ig = np.asarray(igbp, int)
        kp = np.asarray(koppen, int)
        w_ig = np.where((ig >= 0) & (ig < self.igbp.size), self.igbp[np.clip(ig, 0, self.igbp.size - 1)], 0)
        w_kp = np.where((kp >= 0) & (kp < self.koppen.size), self.koppen[np.clip(kp, 0, self.koppen.size - 1)], 0)
        return w_ig * w_kp

    def day(self, a: SiteArrays) -> np.ndarray:
        """(S, T) float32 loss weight per site-day: w_qc × w_igbp × w_koppen, 0 where unobserved.

        w_qc is ``NEE_VUT_USTAR50_QC``; an observed day without QC counts as QC = 1.
        """
        obs = a.observed
        qc = np.where(np.isfinite(a.qc), a.qc, 1.0)
        return (np.where(obs, qc, 0.0) * self.site(a.igbp, a.koppen)[:, None]).astype(np.float32)

    def to_dict(self) -> dict:
        return {"igbp": self.igbp.tolist(), "koppen": self.koppen.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> Weights:
        return cls(np.asarray(d["igbp"]), np.asarray(d["koppen"]))


# --------------------------------------------------------------------------------------------
# The training set
# --------------------------------------------------------------------------------------------
@dataclass
class TrainingData:
    """The training sites' arrays with the statistics fitted on them, and the fit/validation cut.

    Under the reference protocol (``protocol.reference``) the cut is over the sites' target
    rows, the statistics come from the fitting rows, and each part (fitting, validation) has the
    days its features are available on (``cbgrid.windows.availability``).
    """

    arrays: SiteArrays
    scaler: Scaler
    weights: Weights
    prepared: Prepared
    cutoff: np.ndarray  # (S,) first validation day per site
    protocol: Protocol | None = None
    parts: dict = field(default_factory=dict, repr=False)  # reference: {"fit"|"val": (rows, available)}
    _tensors: dict = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, arrays: SiteArrays, val_fraction: float = 0.2, protocol: Protocol | None = None,
              window: int = WINDOW) -> TrainingData:
        """Fit the statistics on ``arrays`` (the training sites) and prepare them.

        >>> from cbgrid import testing  # doctest: +SKIP
        >>> TrainingData.build(read_arrays(testing.site_store(), ["temperature_2m"]))  # doctest: +SKIP
        """
        if len(arrays.sites) == 0:
            raise InputError("the training set is empty: no training site is in the store")
        if protocol is None or not protocol.reference:
            scaler = Scaler.fit(arrays)
            weights = Weights.fit(arrays)
            cutoff = validation_cutoff(arrays.observed, val_fraction)
            return cls(arrays, scaler, weights, Prepared.build(arrays, scaler, weights), cutoff, protocol)
        rows = arrays.rows
        cutoff = validation_cutoff(rows, val_fraction, rounding=protocol.val_rounding)
        t = np.arange(rows.shape[1])[None, :]
        fit_rows, val_rows = rows & (t < cutoff[:, None]), rows & (t >= cutoff[:, None])
        scaler = Scaler.fit(arrays, rows=fit_rows if protocol.scaling == "fit_rows" else None)
        weights = Weights.fit(arrays, rows=fit_rows if protocol.class_weights == "fit_rows" else None)
        avail_fit, avail_val = availability(fit_rows, window), availability(val_rows, window)
        prepared = Prepared.build(arrays, scaler, weights, protocol=protocol, available=avail_fit | avail_val)
        parts = {"fit": (fit_rows, avail_fit & prepared.complete), "val": (val_rows, avail_val & prepared.complete)}
        return cls(arrays, scaler, weights, prepared, cutoff, protocol, parts)

    def tensors(self, device: str):
        if device not in self._tensors:
            self._tensors[device] = self.prepared.tensors(device)
        return self._tensors[device]

    def index(self, kind: str, windows: WindowSpec) -> tuple[np.ndarray, np.ndarray]:
        """(fit, validation) sample indices: windows (temporal) or observed days (static).

        cbgrid: a window is for fitting when its target days end before the site's cutoff, for
        validation when they start at or after it; windows straddling the cutoff are unused.
        Reference: each part's complete windows (``windows.complete_window_index``), or its rows
        with complete features (static models).
        """
        w = windows
        if self.parts:
            if kind == "temporal":
                return tuple(complete_window_index(rows, avail, w.window, w.horizon, w.stride)
                             for rows, avail in (self.parts["fit"], self.parts["val"]))
            return tuple(day_index(rows & avail) for rows, avail in (self.parts["fit"], self.parts["val"]))
        obs = self.arrays.observed
        if kind == "temporal":
            args = dict(window=w.window, horizon=w.horizon, stride=w.stride, min_target_days=w.min_target_days)
            return (window_index(obs, hi=self.cutoff, **args), window_index(obs, lo=self.cutoff, **args))
        return day_index(obs, hi=self.cutoff), day_index(obs, lo=self.cutoff)


# --------------------------------------------------------------------------------------------
# Tensors and batches
# --------------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """A set of sites ready for a model (numpy): scaled, filled features and loss targets."""

    x: np.ndarray  # (S, T, F) scaled, filled
    s: np.ndarray  # (S, 2) scaled lat/lon
    onehot: np.ndarray  # (S, 22) cbgrid / (S, 51) reference
    y: np.ndarray | None = None  # (S, T, 3) scaled targets, 0 where unobserved
    w: np.ndarray | None = None  # (S, T) loss weight per day, 0 where unobserved
    complete: np.ndarray | None = None  # (S, T) days whose features are complete (None: all)
    codes: np.ndarray | None = None  # (S, 3) int codes: igbp, koppen, koppen_detailed
    scored: np.ndarray | None = None  # (S,) sites with a QC = 1 day of targets and features (a test table's sites)

    @classmethod
    def build(cls, a: SiteArrays, scaler: Scaler, weights: Weights | None = None, *,
              protocol: Protocol | None = None, available: np.ndarray | None = None) -> Prepared:
        """Scale and fill ``a`` by the protocol's rules; with ``weights``, the loss targets too."""
        y = w = None
        if weights is not None and a.y is not None:
            obs = a.observed
            y = np.where(obs[..., None], scaler.targets(np.nan_to_num(a.y)), 0).astype(np.float32)
            w = weights.day(a)
        x, complete = model_features(a.x, scaler, protocol, available)
        scheme = protocol.onehot if protocol is not None else "cbgrid"
        codes = np.stack([a.igbp, a.koppen, a.koppen_detailed], axis=1).astype(np.int64)
        return cls(x, scaler.static(a.lat, a.lon), onehot(a.igbp, a.koppen, a.koppen_detailed, scheme), y, w,
                   complete, codes)

    @classmethod
    def for_prediction(cls, a: SiteArrays, scaler: Scaler, protocol: Protocol | None = None,
                       window: int = WINDOW) -> Prepared:
        """Sites to predict, prepared by the protocol's rules. Under the reference's rules,
        sites with targets have features on their rows and the ``window - 1`` days before the
        first one (as its test part); sites without (grid cells) on every day."""
        available = None
        if protocol is not None and protocol.reference:
            available = availability(a.rows, window) if a.y is not None else np.ones(a.x.shape[:2], bool)
        p = cls.build(a, scaler, protocol=protocol, available=available)
        if a.y is not None and a.qc is not None:
            good = a.observed & (a.qc >= 1)
            p.scored = (good if p.complete is None else good & p.complete).any(axis=1)
        return p

    def tensors(self, device="cpu") -> Tensors:
        import torch

        def t(v):
            return None if v is None else torch.from_numpy(np.ascontiguousarray(v)).to(device)

        return Tensors(t(self.x), t(self.s), t(self.onehot), t(self.y), t(self.w))


@dataclass
class Tensors:
    """A ``Prepared`` set of sites as (device) tensors: what batches are gathered from."""

    x: object  # (S, T, F)
    s: object  # (S, 2)
    onehot: object  # (S, 22)
    y: object | None = None  # (S, T, 3)
    w: object | None = None  # (S, T)

    @property
    def device(self):
        return self.x.device


def _windows_view(a: np.ndarray, length: int) -> np.ndarray:
    """Read-only (N - length + 1, length, ...) view of consecutive rows of a C-contiguous array."""
    from numpy.lib.stride_tricks import as_strided

    n = a.shape[0] - length + 1
    return as_strided(a, (max(n, 0), length, *a.shape[1:]), (a.strides[0], *a.strides), writeable=False)


@dataclass
class Batches:
    """Batches gathered by array indexing from ``Tensors`` for an index of samples.

    ``kind`` 'temporal': index rows are (site, start) of windows; a batch holds ``x`` (B, W, F),
    ``y``/``w`` of the last ``horizon`` days (B, H, 3) / (B, H). 'static': rows are (site, day);
    ``x`` (B, F), ``y`` (B, 3), ``w`` (B,). Every batch has ``s`` (B, 2), ``onehot`` (B, 22)
    and ``site`` (B,); with ``context`` > 0 also ``ctx`` (B, K, W, F): K feature windows of the
    same site (random when shuffling, evenly spaced otherwise; features only, never fluxes).

    On a GPU the gather is ``index_select`` on device tensors: the training arrays are resident
    on the device (``TrainingData.tensors``) and each window's days are found by index arithmetic
    there (first day + 0..W-1), so nothing per window crosses from the host. On the CPU it is one fancy-index
    of a strided *window view* (each sample a single contiguous block copy), which is several
    times faster than gathering day rows and does not depend on torch's thread pool.
    """

    data: Tensors
    index: np.ndarray
    kind: str = "temporal"
    window: int = WINDOW
    horizon: int = HORIZON
    batch_size: int = 256
    shuffle: bool = False
    seed: int = 0
    context: int = 0
    method: str = "auto"  # 'view' (CPU numpy window view), 'tensor' (index_select), 'auto': by device
    epoch: int = field(default=0, init=False)

    def __post_init__(self):
        import torch

        if self.kind not in ("static", "temporal"):
            raise InputError(f"kind must be 'static' or 'temporal', not {self.kind!r}")
        if self.method not in ("auto", "view", "tensor"):
            raise InputError(f"method must be 'auto', 'view' or 'tensor', not {self.method!r}")
        dev = self.data.device
        if self.method == "view" and dev.type != "cpu":
            raise InputError("the window-view gather needs CPU tensors")
        self._cpu = dev.type == "cpu" if self.method == "auto" else self.method == "view"
        self.index = np.asarray(self.index, np.int64).reshape(-1, 2)
        n_sites, n_days, n_feat = self.data.x.shape
        self._n_days = n_days
        self._flat = self.index[:, 0] * n_days + self.index[:, 1]  # first day of each sample
        if self.kind == "temporal":
            self._flat_target = self._flat + (self.window - self.horizon)
        d = self.data
        self._site = np.ascontiguousarray(self.index[:, 0])
        if self._cpu:
            x2 = d.x.numpy().reshape(n_sites * n_days, n_feat)
            self._x = x2
            self._xw = _windows_view(x2, self.window)
            # targets and weights side by side, lat/lon and one-hot side by side: one gather each
            self._yw = None
            if d.y is not None:
                yw = np.concatenate([d.y.numpy().reshape(n_sites * n_days, -1), d.w.numpy().reshape(-1, 1)], axis=1)
                self._yw = _windows_view(yw, self.horizon) if self.kind == "temporal" else yw
            self._n_s = d.s.shape[1]
            self._static = np.concatenate([d.s.numpy(), d.onehot.numpy()], axis=1)
        else:
            self._x = d.x.reshape(n_sites * n_days, n_feat)
            self._y = None if d.y is None else d.y.reshape(n_sites * n_days, -1)
            self._w = None if d.w is None else d.w.reshape(n_sites * n_days)
            self._flat_dev = torch.as_tensor(self._flat, device=dev)
            self._site_dev = torch.as_tensor(self._site, device=dev)
            self._steps = torch.arange(self.window, device=dev)
        self._rng = np.random.default_rng(self.seed)

    def __len__(self) -> int:
        return -(-len(self.index) // self.batch_size)

    def __iter__(self):
        for rows in self.iter_rows():
            yield self.gather(rows)

    def iter_rows(self):
        """The index positions of each batch of an epoch (shuffled per epoch when ``shuffle``)."""
        n = len(self.index)
        if self.shuffle:
            self._rng = np.random.default_rng([int(self.seed), self.epoch])
            order = self._rng.permutation(n)
            self.epoch += 1
        else:
            order = np.arange(n)
        for i0 in range(0, n, self.batch_size):
            rows = order[i0:i0 + self.batch_size]
            # samples of a shuffled batch in memory order: the same batch, fewer cache misses
            yield np.sort(rows) if self.shuffle else rows

    def same_site_rows(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For each index position in ``rows``, a random *other* position of the same site
        (itself when the site has one sample): TAM-RL's support windows. The index is sorted
        by site."""
        rows = np.asarray(rows, np.int64)
        site = self._site
        _, start, count = np.unique(site, return_index=True, return_counts=True)
        pos = np.searchsorted(site[start], site[rows])
        s0, cnt = start[pos], count[pos]
        draw = (rng.random(len(rows)) * np.maximum(cnt - 1, 1)).astype(np.int64)
        other = s0 + draw + (draw >= rows - s0)
        return np.where(cnt > 1, other, rows)

    def gather(self, rows: np.ndarray) -> dict:
        """The batch of samples at positions ``rows`` of the index."""
        import torch

        if not self._cpu:
            return self._gather_device(rows)
        rows = np.asarray(rows, np.int64)
        site = self._site[rows]
        first = self._flat[rows]
        tt = torch.from_numpy
        st = tt(self._static[site])
        b = {"s": st[:, :self._n_s], "onehot": st[:, self._n_s:], "site": tt(site)}
        temporal = self.kind == "temporal"
        b["x"] = tt(self._xw[first] if temporal else self._x[first])
        if self._yw is not None:
            yw = tt(self._yw[self._flat_target[rows] if temporal else first])
            b["y"], b["w"] = yw[..., :-1], yw[..., -1]
        if self.context:
            b["ctx"] = self.context_windows(site)
        return b

    def _gather_device(self, rows) -> dict:
        """The batch by index arithmetic on the device: the data never leave it; what crosses
        from the host is the batch's B sample positions (one small copy, not one per window)."""
        import torch

        d = self.data
        if not isinstance(rows, torch.Tensor):
            rows = torch.from_numpy(np.asarray(rows, np.int64))
            if d.device.type == "cuda":
                rows = rows.pin_memory()
        rows = rows.to(d.device, non_blocking=True)
        site = self._site_dev.index_select(0, rows)
        first = self._flat_dev.index_select(0, rows)
        b = {"s": d.s.index_select(0, site), "onehot": d.onehot.index_select(0, site), "site": site}
        n, f = len(site), self._x.shape[1]
        if self.kind == "temporal":
            flat = first[:, None] + self._steps
            b["x"] = self._x.index_select(0, flat.reshape(-1)).view(n, self.window, f)
            if self._y is not None:
                tgt = flat[:, self.window - self.horizon:].reshape(-1)
                b["y"] = self._y.index_select(0, tgt).view(n, self.horizon, -1)
                b["w"] = self._w.index_select(0, tgt).view(n, self.horizon)
        else:
            b["x"] = self._x.index_select(0, first)
            if self._y is not None:
                b["y"], b["w"] = self._y.index_select(0, first), self._w.index_select(0, first)
        if self.context:
            b["ctx"] = self.context_windows(site)
        return b

    def context_starts(self, n: int) -> np.ndarray:
        """(n, K) window starts within a site: random when shuffling, else evenly spaced."""
        span = max(self._n_days - self.window + 1, 1)
        if self.shuffle:
            return self._rng.integers(0, span, (n, self.context))
        return np.broadcast_to(np.linspace(0, span - 1, self.context).round().astype(np.int64), (n, self.context))

    def context_windows(self, site) -> object:
        """(B, K, W, F) feature windows of each sample's site."""
        import torch

        site = np.asarray(site.cpu() if hasattr(site, "cpu") else site, np.int64)
        if self._n_days < self.window:
            raise InputError(f"context windows need at least {self.window} days per site, got {self._n_days}")
        flat = site[:, None] * self._n_days + self.context_starts(len(site))  # (B, K)
        if self._cpu:
            return torch.from_numpy(self._xw[flat])
        f = self._x.shape[1]
        idx = torch.as_tensor(flat, device=self.data.device)[..., None] + self._steps
        return self._x.index_select(0, idx.reshape(-1)).view(len(site), self.context, self.window, f)
