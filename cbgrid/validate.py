"""Score a gridded model (CMIP6, TRENDY, FLUXCOM-X, a cbgrid product) at the towers.

``validate_sites(model_files, store, out)`` opens the model with :func:`cbgrid.esm.open_model`,
samples it at each site (:func:`nearest_cells`, or :func:`bilinear` on request), puts the
observations on the model's time scale and scores it with the same metrics and in the same
report layout as ``cbgrid evaluate`` (``cbgrid.evaluation``, ``cbgrid.report``), so a process
model stands in one table with the ML baselines.

* **Sites.** The test sites of a split (``split=``), or every site of the store: a process model
  never saw the towers, so all of them are out of sample. Sites outside the model grid are
  named in a warning and reported as not scored (``no_prediction``).
* **Nearest cell.** The cell whose centre is nearest in latitude and in longitude — the cell the
  site lies in; a site on a cell edge takes the lower index (latitudes ordered south → north,
  longitudes −180 → 180). Where that cell is masked (no value at any time: ocean, ice), the
  nearest cell with values by great-circle distance, ties again to the lower (lat, lon) index.
* **Bilinear.** The four surrounding cell centres, weighted linearly in lat and lon (across the
  date line on global grids); where one of them is masked the site takes the nearest cell.
* **Time scale: the model's.** Monthly: each month's observed mean over the days passing the
  scoring QC rule (``NEE_VUT_USTAR50_QC == 1``) with an observation; a month is scored only with
  at least ``min_days`` (10) such days, and a site with at least ``min_scored`` (12) such
  months. Daily: every QC = 1 day, as zero-shot scoring does (sites need 30 such days).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from cbgrid import esm, report, splits
from cbgrid import evaluation as ev
from cbgrid.atomic import replace_dir
from cbgrid.errors import InputError
from cbgrid.grid import EARTH_RADIUS
from cbgrid.schema import QC, SITE, TARGET_UNITS, TARGETS, TIME
from cbgrid.store import open_store

log = logging.getLogger(__name__)

#: Fewest QC-passing days for a month to be scored (monthly models).
MIN_DAYS_PER_MONTH = 10
#: Fewest scored months for a site to be scored (monthly models); daily: ``evaluation.MIN_QC_DAYS``.
MIN_MONTHS = 12
METHODS = ("nearest", "bilinear")
ALL_SITES = "all-sites"
#: The protocol label of scores on a monthly time scale (never ranked against daily scores).
MONTHLY_PROTOCOL = "monthly"
#: What stands in the feature-set column for a model that is not trained on the towers.
PROCESS_MODEL = "model-output"
_SITE_BLOCK = 64


@dataclass(frozen=True)
class Sampling:
    """Where each site reads the model: cell indices (nearest) or four corners and weights."""

    sites: np.ndarray          # site ids sampled (inside the grid)
    outside: list[str]         # sites outside the grid, not sampled
    lat_index: np.ndarray      # (site,) nearest valid cell
    lon_index: np.ndarray
    distance_km: np.ndarray    # (site,) to that cell's centre
    corners: tuple | None = None  # bilinear: (ii (site, 4), jj (site, 4), weights (site, 4))


def _haversine(lat1, lon1, lat2, lon2) -> np.ndarray:
    p1, p2 = np.deg2rad(lat1), np.deg2rad(lat2)
    dl = np.deg2rad(lon2 - lon1)
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS / 1000.0 * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


def _step(c: np.ndarray) -> float:
    return float(np.median(np.diff(c))) if c.size > 1 else 360.0


def _global_lon(lon: np.ndarray) -> bool:
    return lon.size > 1 and abs(lon.size * _step(lon) - 360.0) < 1e-6 * 360


def inside(lat: np.ndarray, lon: np.ndarray, site_lat, site_lon) -> np.ndarray:
    """True for sites within the grid's extent (cell edges; any longitude on a global grid).

    >>> inside(np.array([0.5, 1.5]), np.array([0.5, 1.5]), np.array([1.0, 5.0]), np.array([1.0, 1.0])).tolist()
    [True, False]
    """
    slat, slon = np.asarray(site_lat, float), np.asarray(site_lon, float)
    hl, ho = abs(_step(lat)) / 2, abs(_step(lon)) / 2
    ok = (slat >= lat.min() - hl) & (slat <= lat.max() + hl)
    if not _global_lon(lon):
        ok &= (slon >= lon.min() - ho) & (slon <= lon.max() + ho)
    return ok


def _axis_nearest(axis: np.ndarray, values: np.ndarray, periodic: bool = False) -> np.ndarray:
    d = np.abs(values[:, None] - axis[None, :])
    if periodic:
        d = np.minimum(d, 360.0 - d)
    # equal distances differ by rounding only: compare to 1e-9 degree so ties are ties
    return np.argmin(np.round(d, 9), axis=1)


def nearest_cells(lat, lon, valid, site_lat, site_lon) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per site, the (lat, lon) index of its cell and the great-circle distance to the cell
    centre in km.

    A site's cell is the one whose centre is nearest in latitude and in longitude (the cell it
    lies in; on an edge the lower index). Where that cell is masked (no value at any time),
    the nearest valid cell centre on the sphere instead, ties again to the lower (lat, lon) index.

    >>> v = np.ones((2, 2), bool)
    >>> ii, jj, d = nearest_cells(np.array([0.5, 1.5]), np.array([0.5, 1.5]), v, [1.0], [0.6])
    >>> int(ii[0]), int(jj[0])
    (0, 0)
    """
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    valid = np.asarray(valid, bool)
    vi, vj = np.nonzero(valid)  # C order: lower lat index, then lower lon index
    if vi.size == 0:
        raise InputError("the model has no cell with a value (all masked)")
    slat, slon = np.asarray(site_lat, float), np.asarray(site_lon, float)
    ii = _axis_nearest(lat, slat)
    jj = _axis_nearest(lon, slon, periodic=_global_lon(lon))
    masked = np.flatnonzero(~valid[ii, jj])
    clat, clon = lat[vi], lon[vj]
    for s0 in range(0, masked.size, _SITE_BLOCK):
        rows = masked[s0:s0 + _SITE_BLOCK]
        d = _haversine(slat[rows, None], slon[rows, None], clat[None, :], clon[None, :])
        k = np.argmin(np.round(d, 6), axis=1)
        ii[rows], jj[rows] = vi[k], vj[k]
    return ii, jj, _haversine(slat, slon, lat[ii], lon[jj])


def bilinear(lat, lon, valid, site_lat, site_lon) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per site, the four surrounding cell indices (site, 4), their bilinear weights and a
    mask of sites where all four are valid (the others should take the nearest cell).

    >>> ii, jj, w, ok = bilinear(np.array([0.0, 1.0]), np.array([0.0, 1.0]), np.ones((2, 2), bool), [0.25], [0.5])
    >>> w.round(3).tolist(), bool(ok[0])
    ([[0.375, 0.375, 0.125, 0.125]], True)
    """
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    slat, slon = np.asarray(site_lat, float), np.asarray(site_lon, float)
    i0 = np.clip(np.searchsorted(lat, slat) - 1, 0, lat.size - 2)
    wy = np.clip((slat - lat[i0]) / (lat[i0 + 1] - lat[i0]), 0.0, 1.0)
    if _global_lon(lon):
        ext = np.concatenate([lon, [lon[0] + 360.0]])
        x = np.where(slon < lon[0], slon + 360.0, slon)
        j0 = np.clip(np.searchsorted(ext, x) - 1, 0, lon.size - 1)
        wx = (x - ext[j0]) / (ext[j0 + 1] - ext[j0])
        j1 = (j0 + 1) % lon.size
    else:
        j0 = np.clip(np.searchsorted(lon, slon) - 1, 0, lon.size - 2)
        j1 = j0 + 1
        wx = (slon - lon[j0]) / (lon[j1] - lon[j0])
    wx = np.clip(wx, 0.0, 1.0)
    ii = np.stack([i0, i0, i0 + 1, i0 + 1], axis=1)
    jj = np.stack([j0, j1, j0, j1], axis=1)
    w = np.stack([(1 - wy) * (1 - wx), (1 - wy) * wx, wy * (1 - wx), wy * wx], axis=1)
    ok = np.asarray(valid, bool)[ii, jj].all(axis=1)
    return ii, jj, w, ok


def sampling(model: xr.Dataset, sites: pd.DataFrame, method: str = "nearest") -> Sampling:
    """Where each site of ``sites`` (site, lat, lon) reads ``model``; logs sites outside the grid."""
    if method not in METHODS:
        raise InputError(f"unknown sampling method {method!r}; choose {' or '.join(METHODS)}")
    lat, lon = model["lat"].values, model["lon"].values
    names = [v for v in model.data_vars]
    valid = np.zeros((lat.size, lon.size), bool)
    for v in names:
        valid |= model[v].notnull().any(TIME).values
    ids = sites["site"].astype(str).to_numpy()
    ok = inside(lat, lon, sites["lat"].to_numpy(), sites["lon"].to_numpy())
    outside = ids[~ok].tolist()
    if outside:
        log.warning("%d site(s) lie outside the model grid (lat %.2f..%.2f, lon %.2f..%.2f) and are not scored: %s%s",
                    len(outside), lat.min(), lat.max(), lon.min(), lon.max(), ", ".join(outside[:20]),
                    f" and {len(outside) - 20} more" if len(outside) > 20 else "")
    if not ok.any():
        raise InputError(f"no site lies inside the model grid (lat {lat.min():.2f}..{lat.max():.2f}, "
                         f"lon {lon.min():.2f}..{lon.max():.2f}); {len(ids)} sites, e.g. {ids[:5].tolist()}")
    slat, slon = sites["lat"].to_numpy(float)[ok], sites["lon"].to_numpy(float)[ok]
    ii, jj, dist = nearest_cells(lat, lon, valid, slat, slon)
    far = dist > 1.5 * 111.2 * max(abs(_step(lat)), abs(_step(lon)))
    if far.any():
        log.info("%d site(s) take a cell more than 1.5 cells away (their own is masked): %s", int(far.sum()),
                 ", ".join(f"{s} ({d:.0f} km)" for s, d in zip(ids[ok][far][:10], dist[far][:10])))
    corners = None
    if method == "bilinear":
        ci, cj, w, all4 = bilinear(lat, lon, valid, slat, slon)
        if (~all4).any():
            log.info("%d site(s) have a masked corner cell; they take the nearest cell", int((~all4).sum()))
        # a site with a masked corner takes its nearest cell with weight 1
        ci = np.where(all4[:, None], ci, ii[:, None])
        cj = np.where(all4[:, None], cj, jj[:, None])
        w = np.where(all4[:, None], w, np.array([1.0, 0.0, 0.0, 0.0]))
        corners = (ci, cj, w)
    return Sampling(ids[ok], outside, ii, jj, dist, corners)


def sample(model: xr.Dataset, where: Sampling) -> xr.Dataset:
    """The model at the sites: (site, time) per target, read once into memory."""
    if where.corners is None:
        sel = model.isel(lat=xr.DataArray(where.lat_index, dims=SITE), lon=xr.DataArray(where.lon_index, dims=SITE))
        out = sel.drop_vars(["lat", "lon"]).compute()
    else:
        ci, cj, w = where.corners
        parts = []
        for k in range(4):
            part = model.isel(lat=xr.DataArray(ci[:, k], dims=SITE), lon=xr.DataArray(cj[:, k], dims=SITE))
            parts.append(part.drop_vars(["lat", "lon"]).astype(np.float64) * xr.DataArray(w[:, k], dims=SITE))
        out = sum(parts[1:], parts[0]).compute()
    return out.assign_coords({SITE: where.sites}).transpose(SITE, TIME)


def monthly_observations(store: xr.Dataset, sites: Sequence[str], targets: Sequence[str], *,
                         min_days: int = MIN_DAYS_PER_MONTH) -> xr.Dataset:
    """Observed monthly means over QC = 1 days, as a (site, month) store.

    Each target's month is the mean of its days with ``NEE_VUT_USTAR50_QC == 1`` and an
    observation; months with fewer than ``min_days`` such days are NaN. The returned ``QC``
    is 1 for months scored for at least one target, 0 otherwise; ``n_qc_days`` (site, time,
    target) counts the days behind each mean. Site coordinates are kept.
    """
    if int(min_days) < 1:
        raise InputError(f"--min-days must be at least 1, got {min_days}")
    sub = store[[*targets, QC]].sel({SITE: list(sites)}).load()
    good = sub[QC] == 1
    out = {}
    counts = {}
    for t in targets:
        ok = good & sub[t].notnull()
        n = ok.resample({TIME: "MS"}).sum()
        mean = sub[t].where(ok).resample({TIME: "MS"}).mean()
        out[t] = mean.where(n >= min_days).astype(np.float32)
        out[t].attrs = {"units": TARGET_UNITS,
                        "long_name": f"monthly mean of {t} over {QC} == 1 days (>= {min_days} days)"}
        counts[t] = n.astype(np.int16)
    ds = xr.Dataset(out)
    ds[QC] = xr.concat([ds[t].notnull() for t in targets], "t").any("t").astype(np.float32)
    ds["n_qc_days"] = xr.concat([counts[t] for t in targets], pd.Index(list(targets), name="target"))
    site_coords = [c for c in store.coords if store[c].dims == (SITE,)]
    ds = ds.assign_coords({c: sub[c] for c in site_coords if c in sub.coords})
    ds.attrs = {"time_scale": esm.MONTHLY, "min_days_per_month": int(min_days)}
    return ds


def predictions_dataset(at_sites: xr.Dataset, targets: Sequence[str], store: xr.Dataset, *, model: str, split: str,
                        protocol: str) -> xr.Dataset:
    """The sampled model as the predictions contract (site, time, target), site coords from the store."""
    pred = xr.concat([at_sites[t].astype(np.float32) for t in targets], pd.Index(list(targets), name="target"))
    pred = pred.transpose(SITE, TIME, "target")
    pred.attrs = {"units": TARGET_UNITS}
    ds = xr.Dataset({"prediction": pred},
                    attrs={"model": model, "split": split, "feature_set": PROCESS_MODEL, "protocol": protocol,
                           "seeds": "", "run": ""})
    info = store.sel({SITE: ds[SITE].values})
    return ds.assign_coords({c: (SITE, info[c].values) for c in ("lat", "lon", "igbp", "koppen") if c in info.coords})


@dataclass
class Validation:
    """What :func:`validate_sites` computed and wrote."""

    report: report.Report
    experiments: list
    sampling: dict
    time_scale: dict


def _sites_and_split(store: xr.Dataset, split) -> tuple[list[str], str, pd.DataFrame | None]:
    ids = [str(s) for s in store[SITE].values.tolist()]
    if split is None:
        return ids, ALL_SITES, None
    table = splits.read_split(split) if isinstance(split, (str, os.PathLike)) else split
    test = [str(s) for s in splits.test_sites(table)]
    name = str(table["split"].iloc[0]) if "split" in table and table["split"].nunique() == 1 else Path(str(split)).stem
    return test, name, table


def score_model(model_files, store: xr.Dataset, *, split=None, targets: Sequence[str] | None = None,
                method: str = "nearest", min_days: int = MIN_DAYS_PER_MONTH, min_scored: int | None = None,
                mapping: Mapping[str, str] | None = None, name: str | None = None
                ) -> tuple[report.Experiment, Sampling]:
    """Open, sample and score one model: a report ``Experiment`` and where each site read it
    (nothing written)."""
    model = esm.open_model(model_files, mapping=mapping, targets=targets, name=name)
    found = [t for t in TARGETS if t in model]
    in_store = [t for t in found if t in store]
    if not in_store:
        raise InputError(f"the store has none of the model's targets {found}")
    sites, split_name, table = _sites_and_split(store, split)
    missing = sorted(set(sites) - set(store[SITE].values.tolist()))
    if missing:
        raise InputError(f"{len(missing)} split site(s) are not in the store, e.g. {missing[:5]}; use the split "
                         "made from this store")
    scale = model.attrs["time_scale"]
    mt, st = model.indexes[TIME], store.indexes[TIME]
    m_end = mt[-1] + (pd.offsets.MonthEnd(0) if scale == esm.MONTHLY else pd.Timedelta(0))
    if m_end < st[0] or mt[0] > st[-1]:
        raise InputError(f"{model.attrs['files']}: the model ({mt[0]:%Y-%m-%d}..{m_end:%Y-%m-%d}) and the "
                         f"observations ({st[0]:%Y-%m-%d}..{st[-1]:%Y-%m-%d}) have no common period")
    table_sites = pd.DataFrame({"site": sites,
                                "lat": store["lat"].sel({SITE: sites}).values,
                                "lon": store["lon"].sel({SITE: sites}).values})
    where = sampling(model, table_sites, method)
    at = sample(model[in_store], where)
    if scale == esm.MONTHLY:
        obs = monthly_observations(store, sites, in_store, min_days=min_days)
        protocol = MONTHLY_PROTOCOL
        fewest = MIN_MONTHS if min_scored is None else int(min_scored)
    else:
        obs = store
        protocol = "cbgrid"
        fewest = ev.MIN_QC_DAYS if min_scored is None else int(min_scored)
    pred = predictions_dataset(at, in_store, store, model=model.attrs["experiment"], split=split_name,
                               protocol=protocol)
    times = obs.indexes[TIME].intersection(pred.indexes[TIME])
    if len(times) == 0:
        raise InputError(f"the model and the observations share no {'month' if scale == esm.MONTHLY else 'day'}")
    counted = f"months with >= {min_days} QC = 1 days" if scale == esm.MONTHLY else "QC = 1 days"
    scores = ev.evaluate(pred, obs, sites, min_days=fewest, counted=counted)
    scores.attrs.update(ensemble_size=1, time_scale=scale, sampling=method, files=model.attrs["files"],
                        derivation=model.attrs["derivation"], calendar=model.attrs["calendar"],
                        sites_scored=ALL_SITES if split is None else f"test sites of {split_name}",
                        outside_grid=" ".join(where.outside))
    if scale == esm.MONTHLY:
        scores.attrs["min_days_per_month"] = int(min_days)
        scores["n_days"].attrs["long_name"] = f"months scored (each with >= {min_days} {QC} == 1 days)"
    key = (model.attrs["experiment"], split_name, PROCESS_MODEL, protocol)
    return report.Experiment(key, [model.attrs["files"]], pred, obs, scores, split=table), where


def validate_sites(model_files: Sequence, store, out, *, split=None, targets: Sequence[str] | None = None,
                   method: str = "nearest", min_days: int = MIN_DAYS_PER_MONTH, min_scored: int | None = None,
                   mapping: Mapping[str, str] | None = None, separate: bool = False, plots: bool = True,
                   overwrite: bool = True) -> Validation:
    """Score model output at the towers and write the ``cbgrid evaluate`` report layout to ``out``.

    ``model_files``: the files of one model (variables in separate files or periods split in
    time), or with ``separate=True`` one model per file. ``store``: path or Dataset. See the
    module docstring for sites, sampling and time scales. The report folder is written beside
    ``out`` and swapped in when complete.

    >>> v = validate_sites(["gpp_Lmon_X.nc", "ra_Lmon_X.nc", "rh_Lmon_X.nc"], "store.zarr", "val")  # doctest: +SKIP
    """
    ds = open_store(store) if isinstance(store, (str, os.PathLike)) else store
    groups = [[f] for f in model_files] if separate else [list(model_files)]
    scored = [score_model(g, ds, split=split, targets=targets, method=method, min_days=min_days,
                          min_scored=min_scored, mapping=mapping) for g in groups]
    experiments = [e for e, _ in scored]
    notes = _notes(scored)
    with replace_dir(out, overwrite=overwrite, hint="choose another --out") as tmp:
        rep = report.write_experiments(tmp, experiments, plots=plots, notes=notes)
    rep.path = Path(out)
    return Validation(rep, experiments, {"/".join(e.key): w for e, w in scored},
                      {"/".join(e.key): e.scores.attrs["time_scale"] for e in experiments})


def _notes(experiments) -> list[str]:
    lines = ["## Model output scored at the towers", ""]
    for e, s in experiments:
        a = e.scores.attrs
        lines.append(f"- **{e.key[0]}** ({a['files']}): {a['time_scale']} output, {a['calendar']} calendar, "
                     f"{a['derivation']}; sampled by {a['sampling']} cell; scored on the {a['sites_scored']}"
                     f"{' (a process model never saw the towers, so every site is out of sample)' if a['sites_scored'] == ALL_SITES else ''}. "
                     f"Median distance to the cell centre {np.median(s.distance_km):.0f} km.")
        if a["time_scale"] == esm.MONTHLY:
            lines.append(f"  Monthly scores: observed monthly means over {ev.QC_RULE_TEXT}, a month scored with "
                         f">= {a['min_days_per_month']} such days, a site with >= {a['min_days']} such months "
                         "(the n_days column counts months). Published baselines, where shown, are daily scores.")
        if s.outside:
            lines.append(f"  Outside the model grid (not scored): {', '.join(s.outside)}.")
    return lines
