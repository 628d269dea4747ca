"""Zero-shot scores: per-site metrics on test sites, quantiles across sites, class breakdowns.

Evaluation takes *predictions* (the Dataset every model returns, see docs/architecture.md),
never a model, so every model family is scored by the same code. Scores are computed on the
test sites of a split and on days with ``NEE_VUT_USTAR50_QC == 1`` only, as CarbonBench does,
and returned as a labelled ``xarray.Dataset`` (metric × site × target). The tables a report
needs (quantiles across sites, per-IGBP/Köppen breakdowns, rankings, seed spread, the published
baselines beside a new model) are plain functions over those scores. No plotting here: see
``cbgrid.plots``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from cbgrid import catalog, product, schema, splits
from cbgrid.errors import InputError, UnknownError
from cbgrid.schema import QC, SITE, TARGETS, TIME

log = logging.getLogger(__name__)

#: Sites with fewer QC = 1 days (with an observation and a prediction) are not scored.
MIN_QC_DAYS = 30
#: Quantiles reported across sites (the published format: median with 25th and 75th).
QUANTILES = (0.25, 0.5, 0.75)
QC_RULE_TEXT = f"days with {QC} == 1"
#: Short target names used in tables and plots.
TARGET_LABELS = {schema.GPP: "GPP", schema.RECO: "RECO", schema.NEE: "NEE"}
#: Official split names -> the ``split_type`` of the published scores.
OFFICIAL_SPLITS = {"official-igbp": "IGBP", "official-koppen": "Koppen"}

# Bit flags of the per-(site, target) ``status`` variable: why a score is missing.
OK = 0
TOO_FEW_DAYS = 1
CONSTANT_OBSERVATIONS = 2
ZERO_MEAN_OBSERVATIONS = 4
NO_PREDICTION = 8
STATUS_MEANINGS = {
    TOO_FEW_DAYS: "too_few_qc_days",
    CONSTANT_OBSERVATIONS: "constant_observations",
    ZERO_MEAN_OBSERVATIONS: "zero_site_mean",
    NO_PREDICTION: "no_prediction",
}

# --------------------------------------------------------------------------------------------
# Metrics: each is a small object with one method over masked (NaN = not scored) arrays.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """A per-site score of predicted against observed values along ``dim``.

    ``observed`` and ``predicted`` carry NaN wherever a day is not scored (the same days in
    both); the result has the remaining dims (site, target). Works on numpy- or dask-backed
    DataArrays.
    """

    name: str = ""
    units: str = "1"
    long_name: str = ""
    better: str = "lower"  # 'higher' or 'lower': used to rank models

    def compute(self, observed: xr.DataArray, predicted: xr.DataArray, dim: str = TIME) -> xr.DataArray:
        raise NotImplementedError


def _count(observed: xr.DataArray, dim: str) -> xr.DataArray:
    # Days scored, NaN where none (so no 0/0 is ever evaluated).
    n = observed.count(dim)
    return n.where(n > 0)


def _site_mean(observed: xr.DataArray, dim: str) -> xr.DataArray:
    return observed.sum(dim) / _count(observed, dim)


def _constant(observed: xr.DataArray, dim: str) -> xr.DataArray:
    """True where the scored series is constant (or empty): no variance to explain."""
    # Exact test: a two-pass sum of squares of a constant series need not round to 0.
    return (observed.max(dim) == observed.min(dim)) | (observed.count(dim) == 0)


def _zero_mean(observed: xr.DataArray, dim: str) -> xr.DataArray:
    # |mean| within the rounding error of summing n values (n·eps·mean|y|) counts as zero.
    n = observed.count(dim)
    return np.abs(_site_mean(observed, dim)) <= n * np.finfo(np.float64).eps * _site_mean(np.abs(observed), dim)


def r2(observed: np.ndarray, predicted: np.ndarray, axis: int = -1) -> np.ndarray:
    """Coefficient of determination 1 − SSE/SST along ``axis``, over the entries where both are
    finite; NaN where those observations are constant (or absent). cbgrid's one R².

    >>> float(r2(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0])))
    0.5
    """
    obs = np.asarray(observed, dtype=np.float64)
    pred = np.asarray(predicted, dtype=np.float64)
    ok = np.isfinite(obs) & np.isfinite(pred)
    n = ok.sum(axis)
    o = np.where(ok, obs, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.expand_dims(o.sum(axis) / n, axis)
        sse = np.where(ok, (pred - obs) ** 2, 0.0).sum(axis)
        sst = np.where(ok, (obs - mean) ** 2, 0.0).sum(axis)
        # exact test: a two-pass sum of squares of a constant series need not round to 0
        constant = np.where(ok, obs, -np.inf).max(axis) == np.where(ok, obs, np.inf).min(axis)
        return np.where((n > 0) & ~constant, 1.0 - sse / np.where(constant | (n == 0), np.nan, sst), np.nan)


@dataclass(frozen=True)
class R2(Metric):
    """Coefficient of determination 1 − SSE/SST (:func:`r2`); NaN for a constant observed series."""

    name: str = "R2"
    long_name: str = "coefficient of determination"
    better: str = "higher"

    def compute(self, observed, predicted, dim=TIME):
        return xr.apply_ufunc(r2, observed, predicted, input_core_dims=[[dim], [dim]], kwargs={"axis": -1},
                              dask="parallelized", output_dtypes=[np.float64])


@dataclass(frozen=True)
class RMSE(Metric):
    """Root mean square error, in the units of the target."""

    name: str = "RMSE"
    units: str = schema.TARGET_UNITS
    long_name: str = "root mean square error"

    def compute(self, observed, predicted, dim=TIME):
        return np.sqrt(((predicted - observed) ** 2).sum(dim) / _count(observed, dim))


@dataclass(frozen=True)
class NMAE(Metric):
    """Mean absolute error over |site mean of observations|; NaN when that mean is zero."""

    name: str = "nMAE"
    long_name: str = "mean absolute error normalised by the absolute site mean"

    def compute(self, observed, predicted, dim=TIME):
        mae = np.abs(predicted - observed).sum(dim) / _count(observed, dim)
        return mae / np.abs(_site_mean(observed, dim)).where(~_zero_mean(observed, dim))


@dataclass(frozen=True)
class RAE(Metric):
    """Relative absolute error: MAE over the MAE of the site-mean predictor; NaN if constant."""

    name: str = "RAE"
    long_name: str = "relative absolute error (MAE / MAE of the site-mean predictor)"

    def compute(self, observed, predicted, dim=TIME):
        err = np.abs(predicted - observed).sum(dim)
        ref = np.abs(observed - _site_mean(observed, dim)).sum(dim)
        return err / ref.where(~_constant(observed, dim))


METRICS: tuple[Metric, ...] = (R2(), RMSE(), NMAE(), RAE())


def metric(name: str) -> Metric:
    """The metric called ``name`` (R2, RMSE, nMAE, RAE)."""
    for m in METRICS:
        if m.name.lower() == name.lower():
            return m
    raise UnknownError(f"unknown metric {name!r}; choose one of {', '.join(m.name for m in METRICS)}")

# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------


def _test_sites(split) -> tuple[list[str], str | None]:

    if isinstance(split, (str, bytes)) or hasattr(split, "__fspath__"):
        split = splits.read_split(split)
    if isinstance(split, pd.DataFrame):
        missing = {"site", "set"} - set(split.columns)
        if missing:
            raise InputError(f"split table lacks column(s) {sorted(missing)}; it has {list(split.columns)}")
        name = None
        if "split" in split and split["split"].nunique() == 1:
            name = str(split["split"].iloc[0])
        return [str(s) for s in splits.test_sites(split)], name
    if isinstance(split, Iterable):
        return [str(s) for s in split], None
    raise TypeError(f"split must be a split DataFrame, a split CSV path or a list of test sites, not {type(split).__name__}")


def _prediction_array(predictions: xr.Dataset | xr.DataArray) -> xr.DataArray:
    pred = predictions["prediction"] if isinstance(predictions, xr.Dataset) else predictions
    if "target" not in pred.dims or SITE not in pred.dims or TIME not in pred.dims:
        raise InputError(f"predictions must have dims (site, time, target); got {pred.dims}")
    units = pred.attrs.get("units")
    if units not in (None, schema.TARGET_UNITS, "g m-2 d-1"):
        raise InputError(f"predictions are in {units!r}; evaluation needs physical units {schema.TARGET_UNITS!r}")
    return pred.assign_coords({SITE: _ids(pred[SITE].values), "target": _ids(pred["target"].values)})


def _ids(values) -> np.ndarray:
    """Labels as a plain object array of str (numpy StringDType and pandas strings alike)."""
    return np.asarray([str(v) for v in np.asarray(values).tolist()], dtype=object)


def evaluate(
    predictions: xr.Dataset,
    store: xr.Dataset,
    split,
    *,
    min_days: int = MIN_QC_DAYS,
    metrics: Sequence[Metric] = METRICS,
    log_exclusions: bool = True,
    counted: str = "QC = 1 days",
) -> xr.Dataset:
    """Score predictions on the test sites of ``split``, on QC = 1 days only.

    Parameters
    ----------
    predictions : Dataset with ``prediction`` (site, time, target) in gC m-2 d-1 (any sites and
        days; only test sites and days shared with the store are scored).
    store : the benchmark store (observed targets and ``NEE_VUT_USTAR50_QC``); may be lazy.
    split : a split DataFrame (``cbgrid.splits``), the path of a split CSV, or test site ids.
    min_days : sites with fewer scored days (QC = 1, observed and predicted) get NaN scores
        and the ``too_few_qc_days`` status.
    log_exclusions : log which sites were not scored and why (off when scoring the members of
        an ensemble already scored, whose exclusions are the same).
    counted : what ``min_days`` counts, for the log (monthly scores count months).

    Returns
    -------
    Dataset with ``score`` (metric, site, target), ``n_days`` (site, target: days scored),
    ``status`` (site, target: bit flags saying why a score is NaN), the site coordinates
    ``lat``, ``lon``, ``igbp``, ``koppen`` (class names) and the run's attributes.
    """
    if int(min_days) < 1:
        raise InputError(f"min_days must be at least 1, got {min_days}")
    pred = _prediction_array(predictions)
    test, split_name = _test_sites(split)
    if not test:
        raise InputError("the split has no test sites")
    if QC not in store:
        raise InputError(f"the store has no {QC!r}; scores are computed on QC = 1 days only")
    targets = [t for t in pred["target"].values.tolist() if t in store]
    lacking = [t for t in pred["target"].values.tolist() if t not in store]
    if lacking:
        log.warning("the store has no observations of %s; those targets are not scored", lacking)
    if not targets:
        raise InputError(f"none of the predicted targets {pred['target'].values.tolist()} is in the store")

    store_sites = pd.Index(_ids(store[SITE].values))
    not_in_store = [s for s in test if s not in store_sites]
    if not_in_store:
        raise InputError(
            f"{len(not_in_store)} test site(s) are not in the store, e.g. {not_in_store[:5]}; "
            "use the split made from this store"
        )
    pred_sites = pd.Index(pred[SITE].values)
    unpredicted = [s for s in test if s not in pred_sites]
    if unpredicted:
        log.warning("%d of %d test sites have no prediction: %s", len(unpredicted), len(test), unpredicted[:10])

    times = store.indexes[TIME].intersection(pred.indexes[TIME])
    if len(times) == 0:
        raise InputError(
            f"predictions ({pred.indexes[TIME][0].date()}..{pred.indexes[TIME][-1].date()}) and store "
            f"({store.indexes[TIME][0].date()}..{store.indexes[TIME][-1].date()}) share no day"
        )
    sub = store[[*targets, QC]].assign_coords({SITE: store_sites.values}).sel({SITE: test, TIME: times})
    sub = sub.drop_vars([c for c in sub.coords if c not in (SITE, TIME)])
    # Test sites are a small part of a store (≈ 100 sites × 25 years of 4 variables ≈ 30 MB):
    # read them once, then score with in-memory masked reductions.
    sub = sub.load()
    obs = sub[targets].to_dataarray("target").astype(np.float64)
    p = pred.sel(target=targets, time=times).reindex({SITE: test}).astype(np.float64)
    p = p.drop_vars([c for c in p.coords if c not in (SITE, TIME, "target")])
    p = p.transpose("target", SITE, TIME).load()
    qc_ok = sub[QC] == 1
    valid = qc_ok & obs.notnull() & p.notnull()
    observed = obs.where(valid)
    predicted = p.where(valid)

    n_days = valid.sum(TIME)
    constant = _constant(observed, TIME)
    zero_mean = _zero_mean(observed, TIME)
    scores = xr.concat([m.compute(observed, predicted) for m in metrics], dim=pd.Index([m.name for m in metrics], name="metric"))
    missing_qc_pred = (qc_ok & obs.notnull() & p.isnull()).sum(TIME)
    scores, n_days, constant, zero_mean, missing_qc_pred = xr.align(
        *[x.compute() if hasattr(x.data, "dask") else x for x in (scores, n_days, constant, zero_mean, missing_qc_pred)]
    )
    n_days = n_days.astype(np.int32)
    no_pred = xr.DataArray(np.isin(test, unpredicted), dims=SITE, coords={SITE: test})
    few = (n_days < min_days) & ~no_pred
    status = (
        few * TOO_FEW_DAYS
        + (constant & ~few & ~no_pred) * CONSTANT_OBSERVATIONS
        + (zero_mean & ~few & ~no_pred) * ZERO_MEAN_OBSERVATIONS
        + no_pred * NO_PREDICTION
    ).astype(np.int8)
    scores = scores.where(~few & ~no_pred)

    ds = xr.Dataset(
        {
            "score": scores.transpose("metric", SITE, "target"),
            "n_days": n_days.transpose(SITE, "target"),
            "status": status.transpose(SITE, "target"),
        }
    )
    ds["score"].attrs = {"long_name": "per-site zero-shot score on QC = 1 days"}
    ds["n_days"].attrs = {"long_name": f"days scored ({QC} == 1, observed and predicted)", "units": "1"}
    ds["status"].attrs = {
        "long_name": "why a score is missing (0 = scored)",
        "flag_masks": np.array(list(STATUS_MEANINGS), dtype=np.int8),
        "flag_meanings": " ".join(STATUS_MEANINGS.values()),
    }
    ds = ds.assign_coords(
        units=("metric", [m.units for m in metrics]),
        long_name=("metric", [m.long_name for m in metrics]),
    )
    site_info = store.assign_coords({SITE: store_sites.values}).sel({SITE: test})
    ds = ds.assign_coords(
        lat=(SITE, site_info["lat"].values.astype(np.float64), {"units": "degrees_north"}),
        lon=(SITE, site_info["lon"].values.astype(np.float64), {"units": "degrees_east"}),
        igbp=(SITE, schema.class_names(site_info, "igbp").astype(str), {"long_name": "IGBP land cover class"}),
        koppen=(SITE, schema.class_names(site_info, "koppen").astype(str), {"long_name": "Koppen-Geiger main climate class"}),
    )
    attrs = dict(predictions.attrs) if isinstance(predictions, xr.Dataset) else {}
    ds.attrs = {
        "model": str(attrs.get("model", "unknown")),
        "split": str(attrs.get("split", split_name or "unknown")),
        "feature_set": str(attrs.get("feature_set", "unknown")),
        "protocol": str(attrs.get("protocol", "cbgrid")),
        "seeds": str(attrs.get("seeds", "")),
        "run": str(attrs.get("run", "")),
        "qc_rule": f"{QC} == 1",
        "min_days": int(min_days),
        "period": f"{times[0].date()}..{times[-1].date()}",
    }
    if log_exclusions:
        _log_exclusions(ds, int(missing_qc_pred.sum()), counted)
    return ds


def _log_exclusions(ds: xr.Dataset, missing_qc_pred: int, counted: str = "QC = 1 days") -> None:
    label = f"{ds.attrs['model']} ({ds.attrs['split']})"
    if missing_qc_pred:
        log.info("%s: %d observed QC = 1 site-days have no prediction and are not scored", label, missing_qc_pred)
    why = {
        TOO_FEW_DAYS: f"have fewer than {ds.attrs['min_days']} {counted}; not scored",
        CONSTANT_OBSERVATIONS: "have constant observations; R2 and RAE are NaN",
        ZERO_MEAN_OBSERVATIONS: "have a site mean of observations of zero; nMAE is NaN",
        NO_PREDICTION: "have no prediction; not scored",
    }
    for flag in STATUS_MEANINGS:
        hit = ((ds["status"] & flag) != 0).transpose(SITE, "target").values
        rows = np.flatnonzero(hit.any(axis=1))
        if rows.size:
            targets = ds["target"].values
            names = [
                f"{ds[SITE].values[i]} ({', '.join(TARGET_LABELS.get(t, t) for t in targets[hit[i]])})"
                for i in rows[:10]
            ]
            more = f" and {rows.size - 10} more" if rows.size > 10 else ""
            log.warning("%s: %d site(s) %s: %s%s", label, rows.size, why[flag], ", ".join(names), more)


def ensemble(predictions: Sequence[xr.Dataset]) -> xr.Dataset:
    """Average the predictions of several runs (e.g. seeds) into one, as the published protocol does.

    Returns the mean as ``prediction`` and the spread across runs as ``prediction_std``, on the
    sites and days all runs share; attrs are those of the first run with the seeds and runs of all.
    """
    if not predictions:
        raise InputError("no predictions to average")
    if len(predictions) == 1:
        return predictions[0]
    arrays = xr.align(*[_prediction_array(p) for p in predictions], join="inner")
    if arrays[0].sizes[SITE] == 0 or arrays[0].sizes[TIME] == 0:
        raise InputError("the runs share no site-day; they cannot be averaged")
    stacked = xr.concat(arrays, dim="member", coords="minimal", compat="override").astype(np.float64)
    out = xr.Dataset(
        {
            "prediction": stacked.mean("member").astype(np.float32),
            "prediction_std": stacked.std("member").astype(np.float32),
        }
    )
    out["prediction"].attrs = {"units": schema.TARGET_UNITS, "long_name": f"mean of {len(predictions)} runs"}
    out["prediction_std"].attrs = {"units": schema.TARGET_UNITS, "long_name": "standard deviation across runs"}
    attrs = dict(predictions[0].attrs)
    attrs["seeds"] = " ".join(str(p.attrs.get("seeds", "")) for p in predictions).strip()
    attrs["run"] = " ".join(str(p.attrs.get("run", "")) for p in predictions).strip()
    attrs["ensemble_size"] = len(predictions)
    out.attrs = attrs
    return out

# --------------------------------------------------------------------------------------------
# Maps against a gridded truth
# --------------------------------------------------------------------------------------------


def compare_with_truth(prod, truth: xr.Dataset) -> pd.DataFrame:
    """Map-level skill of a product against true fluxes on the same grid (e.g. the twin's).

    ``prod``: product path or Dataset; ``truth``: (time, lat, lon) with GPP_true, RECO_true,
    NEE_true (or GPP, RECO, NEE). Per variable: R² and RMSE over all cell-days, R² of the
    period-mean map, bias (mean of product − truth) and the cell-days used; unweighted.
    """

    ds = product.open_product(prod) if isinstance(prod, (str, os.PathLike)) else prod
    ds = ds.assign_coords(time=ds.indexes["time"].normalize())
    truth = truth.assign_coords(time=truth.indexes["time"].normalize())
    rows = []
    for name in ("GPP", "RECO", "NEE"):
        tname = f"{name}_true" if f"{name}_true" in truth else name
        p, t = xr.align(ds[name].astype(np.float64), truth[tname].astype(np.float64), join="inner")
        p, t = np.asarray(p.values), np.asarray(t.values)
        ok = np.isfinite(p) & np.isfinite(t)
        if not ok.any():
            raise InputError(f"the product and the truth share no valid {name} cell-day")
        n = ok.sum(axis=0)
        okm = n > 0
        pm = np.where(ok, p, 0.0).sum(axis=0)[okm] / n[okm]
        tm = np.where(ok, t, 0.0).sum(axis=0)[okm] / n[okm]
        rows.append({
            "variable": name,
            "R2": float(r2(t[ok], p[ok])),
            "R2_mean_map": float(r2(tm, pm)),
            "bias": float(np.mean(p[ok] - t[ok])),
            "RMSE": float(np.sqrt(np.mean((p[ok] - t[ok]) ** 2))),
            "truth_mean": float(np.mean(t[ok])),
            "cell_days": int(ok.sum()),
        })
    return pd.DataFrame(rows)

# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


#: What identifies an experiment in the tables: runs of different protocols are never pooled
#: or ranked together.
KEYS = ["split", "model", "feature_set", "protocol", "target"]
#: The protocol the published baselines were produced under.
PUBLISHED_PROTOCOL = "reference"


def to_frame(scores: xr.Dataset) -> pd.DataFrame:
    """Scores as one row per (site, target): split, model, feature_set, protocol, target, site,
    igbp, koppen, lat, lon, one column per metric, n_days, status (the published per-site layout)."""
    score = scores["score"].drop_vars([c for c in scores["score"].coords if scores[c].dims == ("metric",) and c != "metric"])
    wide = score.to_dataset("metric").to_dataframe().reset_index()
    extra = scores[["n_days", "status"]].to_dataframe().reset_index()[[SITE, "target", "n_days", "status"]]
    df = wide.merge(extra, on=[SITE, "target"])
    for k in ("protocol", "feature_set", "model", "split"):
        df.insert(0, k, scores.attrs.get(k, "cbgrid" if k == "protocol" else "unknown"))
    metrics = [str(m) for m in scores["metric"].values]
    cols = KEYS + [SITE, "igbp", "koppen", "lat", "lon", *metrics, "n_days", "status"]
    return df[cols].sort_values(["target", SITE], kind="stable").reset_index(drop=True)


def quantile_table(frame: pd.DataFrame, by: Sequence[str] = KEYS, metrics: Sequence[str] | None = None,
                   quantiles: Sequence[float] = QUANTILES) -> pd.DataFrame:
    """Quantiles of each metric across sites (never days), with the number of sites used.

    One row per group of ``by`` and metric: n_sites, p25, p50, p75 (for the default quantiles).
    Sites with a NaN score are left out and not counted.
    """
    metrics = list(metrics or [m.name for m in METRICS if m.name in frame])
    long = frame.melt(id_vars=list(by), value_vars=metrics, var_name="metric", value_name="value").dropna(subset=["value"])
    g = long.groupby([*by, "metric"], sort=False, dropna=False)["value"]
    out = g.quantile(list(quantiles)).unstack()
    out.columns = [f"p{round(q * 100):d}" for q in quantiles]
    out.insert(0, "n_sites", g.size())
    out = out.reset_index()
    order = {m: i for i, m in enumerate(metrics)}
    out = out.sort_values([*by, "metric"], key=lambda s: s.map(order) if s.name == "metric" else s, kind="stable")
    return out.reset_index(drop=True)


def breakdown(frame: pd.DataFrame, by: str = "igbp", keys: Sequence[str] = KEYS) -> pd.DataFrame:
    """Per-class site count and quantiles of each metric (``by`` = 'igbp' or 'koppen')."""
    return quantile_table(frame, by=[*keys, by])


def ranking(summary: pd.DataFrame, metrics: Sequence[str] = ("R2", "RMSE", "nMAE")) -> pd.DataFrame:
    """Rank models per split, target and protocol by the median of each metric; ``mean_rank``
    orders them. Runs of different protocols are ranked separately, never against each other.

    ``summary`` is a ``quantile_table`` over several runs (and possibly published baselines).
    """
    summary = summary if "protocol" in summary else summary.assign(protocol="cbgrid")
    med = summary[summary["metric"].isin(metrics)].pivot_table(
        index=["split", "target", "protocol", "model", "feature_set"], columns="metric", values="p50", sort=False
    )
    ranks = []
    for _, grp in med.groupby(level=["split", "target", "protocol"], sort=False):
        r = pd.DataFrame(index=grp.index)
        for m in metrics:
            if m in grp:
                r[f"median_{m}"] = grp[m]
                r[f"rank_{m}"] = grp[m].rank(ascending=metric(m).better == "lower", method="min")
        r["mean_rank"] = r[[c for c in r if c.startswith("rank_")]].mean(axis=1)
        ranks.append(r.sort_values("mean_rank", kind="stable"))
    return pd.concat(ranks).reset_index() if ranks else pd.DataFrame()


def seed_spread(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Spread across the runs (seeds) of one model: the quantiles of each run, then their
    mean, std, min and max across runs, per split, model, feature_set, target and metric."""
    per_run = []
    for i, f in enumerate(frames):
        q = quantile_table(f)
        q.insert(0, "member", i)
        per_run.append(q)
    q = pd.concat(per_run)
    agg = q.groupby([*KEYS, "metric"], sort=False)["p50"].agg(["count", "mean", "std", "min", "max"])
    agg.columns = ["n_runs", "median_mean", "median_std", "median_min", "median_max"]
    return agg.reset_index()


def published_comparison(frame: pd.DataFrame, feature_set: str | None = None) -> pd.DataFrame:
    """Published per-site scores of every CarbonBench baseline on the sites of ``frame``.

    ``frame`` is a ``to_frame`` table of an ``official-igbp``/``official-koppen`` split. Rows
    are restricted to sites scored in ``frame`` (same layout, columns R2, RMSE, nMAE, RAE),
    so quantiles compare like with like. Published baselines are given in ``feature_set``
    (default: the run's; ``full`` when that is no published feature set) where they have it,
    otherwise in the one feature set they have.
    """

    split = str(frame["split"].iloc[0])
    if split not in OFFICIAL_SPLITS:
        raise InputError(f"published scores exist for the official splits {list(OFFICIAL_SPLITS)}, not {split!r}")
    feature_set = feature_set or str(frame["feature_set"].iloc[0])
    pub = catalog.published_scores()
    pub = pub[pub["split_type"] == OFFICIAL_SPLITS[split]]
    if feature_set not in set(pub["feature_set"]):
        # not a published feature set (e.g. a process model's output): each baseline in its
        # full set where it has one, so no model's sites are counted once per feature set
        feature_set = "full"
    have = pub.groupby("model")["feature_set"].agg(set)
    keep = pub.apply(lambda r: r["feature_set"] == feature_set or feature_set not in have[r["model"]], axis=1)
    pub = pub[keep]
    scored = frame.dropna(subset=["R2", "RMSE"], how="all")[["target", SITE]]
    pub = pub.merge(scored, on=["target", SITE])
    geo = frame.drop_duplicates(SITE).set_index(SITE)
    out = pd.DataFrame(
        {
            "split": split,
            "model": pub["model"].values,
            "feature_set": pub["feature_set"].values,
            "protocol": PUBLISHED_PROTOCOL,
            "target": pub["target"].values,
            SITE: pub[SITE].values,
            "igbp": geo.loc[pub[SITE], "igbp"].values,
            "koppen": geo.loc[pub[SITE], "koppen"].values,
            "lat": geo.loc[pub[SITE], "lat"].values,
            "lon": geo.loc[pub[SITE], "lon"].values,
        }
    )
    for m in ("R2", "RMSE", "nMAE", "RAE"):
        out[m] = pub[m].values
    return out


def common_sites(frame: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """Restrict ``frame`` to the (target, site) pairs the published baselines also score."""
    pairs = published[["target", SITE]].drop_duplicates()
    return frame.merge(pairs, on=["target", SITE])


def side_by_side(frame: pd.DataFrame, published: pd.DataFrame, metric_name: str = "R2") -> pd.DataFrame:
    """One row per (split, target, site): ``metric_name`` of each model in ``frame`` beside
    every published baseline's (columns named '<model> (published)'), on the sites both have."""
    index = ["split", "target", SITE]
    mine = frame.pivot_table(index=index, columns="model", values=metric_name, sort=False, dropna=False)
    theirs = published.pivot_table(index=index, columns="model", values=metric_name, sort=False)
    theirs.columns = [f"{m} (published)" for m in theirs.columns]
    geo = frame.drop_duplicates(SITE).set_index(SITE)[["igbp", "koppen"]]
    out = mine.join(theirs, how="inner").reset_index().join(geo, on=SITE)
    cols = [*index, "igbp", "koppen", *mine.columns, *theirs.columns]
    out = out[cols]
    out.insert(0, "metric", metric_name)
    return out


def excluded(scores_frame: pd.DataFrame) -> pd.DataFrame:
    """(target, site) rows with a non-zero status and the reason(s), for the report."""
    bad = scores_frame[scores_frame["status"] != OK].copy()
    bad["reason"] = [
        "; ".join(m for f, m in STATUS_MEANINGS.items() if int(s) & f) for s in bad["status"]
    ]
    return bad[[*KEYS, SITE, "n_days", "reason"]].reset_index(drop=True)

# --------------------------------------------------------------------------------------------
# Markdown rendering (kept dependency-free)
# --------------------------------------------------------------------------------------------


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    if isinstance(v, (float, np.floating)):
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(df: pd.DataFrame, digits: int = 3) -> str:
    """A DataFrame as a GitHub Markdown table (floats to ``digits`` decimals, NaN as –)."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v, digits) for v in row) + " |")
    return "\n".join(lines)


def published_format(table: pd.DataFrame, metrics: Sequence[str] = ("R2", "RMSE", "nMAE"),
                     by: Sequence[str] = ()) -> pd.DataFrame:
    """The published table layout: one row per split, model, feature set (and ``by`` class);
    one column per target × metric reading ``median [p25, p75]``; ``n`` columns give the
    number of sites per target. ``table`` is a ``quantile_table`` or ``breakdown``."""
    index = ["split", "model", "feature_set", *(["protocol"] if "protocol" in table else []), *by]
    s = table[table["metric"].isin(metrics)].copy()
    s["cell"] = [f"{_fmt(a)} [{_fmt(b)}, {_fmt(c)}]" for a, b, c in zip(s["p50"], s["p25"], s["p75"])]
    s["col"] = [f"{TARGET_LABELS.get(t, t)} {m}" for t, m in zip(s["target"], s["metric"])]
    wide = s.pivot_table(index=index, columns="col", values="cell", aggfunc="first", sort=False)
    n = s.groupby([*index, "target"], sort=False)["n_sites"].max().unstack("target")
    n = n[[t for t in TARGETS if t in n]]
    n.columns = [f"n {TARGET_LABELS.get(t, t)}" for t in n.columns]
    order = [f"{TARGET_LABELS.get(t, t)} {m}" for t in TARGETS for m in metrics]
    wide = wide[[c for c in order if c in wide]]
    out = wide.join(n).reset_index()
    return out.sort_values(index[:1] + list(by), kind="stable").reset_index(drop=True) if by else out
