"""Gridded inference: driver grids -> chunked dask predictions -> CF-1.8 NEE/GPP/RECO products.

The chain for one recipe (``cbgrid.recipe``)::

    grid_context(lat, lon)            IGBP (MCD12C1 majority), Köppen (Beck majority), land
                                      fraction, cell area, which cells are modelled
    open_drivers(recipe, days, ctx)   lazy (time, lat, lon) drivers: twin | local | earthengine
    predict_blocks(drivers, runs,...) lazy dask array, one task per spatial chunk over the whole
                                      time span (incl. the temporal models' spin-up)
    write_blocks(...)                 blocks computed a few at a time and written into the
                                      product file as they arrive (``cbgrid.product``)

Each task stacks the land cells of its chunk into a (site, time) Dataset — the exact input a
trained run predicts on — so trees and networks take the code path they take on sites. The
task function is a module-level function whose arguments are arrays, run paths and small
options: it pickles, so the same code runs on the local threaded scheduler or on a
``dask.distributed`` cluster (``scheduler=ADDRESS``). Only finished blocks travel back to the
client that writes the file, so workers need no access to the output folder, and memory is one
batch of blocks, whatever the grid size.

Ensemble: the product is the mean of the runs' (seed-averaged) predictions; its ``*_sd`` layer
is the standard deviation across all members, each run weighted equally:
``sd² = mean_r(sd_r² + (mean_r − mean)²)`` where ``sd_r`` is run r's spread across its seeds.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from cbgrid import product
from cbgrid.atomic import replace_file
from cbgrid.schema import TARGETS

log = logging.getLogger(__name__)

#: History a temporal model gets before the first output day when its run does not say.
DEFAULT_WINDOW = 30
#: Channels of a predicted block: means, then the ensemble spread.
CHANNELS = ("GPP", "RECO", "NEE_model", "GPP_sd", "RECO_sd", "NEE_sd")
#: IGBP codes that are never modelled: water, permanent snow and ice (and nodata).
MASKED_IGBP = (0, 15)


# --------------------------------------------------------------------------------------------
# Grid context
# --------------------------------------------------------------------------------------------


def _fill_nearest(codes: np.ndarray, need: np.ndarray, missing: int = 0) -> np.ndarray:
    """Give cells in ``need`` whose code is ``missing`` the code of the nearest cell that has one."""
    from scipy import ndimage

    gap = need & (codes == missing)
    if not gap.any() or (codes == missing).all():
        return codes
    _, (ii, jj) = ndimage.distance_transform_edt(codes == missing, return_indices=True)
    out = codes.copy()
    out[gap] = codes[ii[gap], jj[gap]]
    return out


def _cache_dir() -> Path:
    """Where computed grid contexts are kept: $CBGRID_CACHE, else ~/.cache/cbgrid."""
    return Path(os.environ.get("CBGRID_CACHE") or Path.home() / ".cache" / "cbgrid")


def _context_key(lat: np.ndarray, lon: np.ndarray) -> str:
    """A name for a grid's context that changes with the grid and with the raster files."""
    import hashlib

    from cbgrid import catalog, context

    h = hashlib.sha1(lat.tobytes() + lon.tobytes())
    for name in (context.IGBP_RASTER, context.KOPPEN_RASTER):
        st = Path(catalog.raster_path(name)).stat()
        h.update(f"{name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return f"context-{lat.size}x{lon.size}-{h.hexdigest()[:16]}.nc"


def _compute_context(lat: np.ndarray, lon: np.ndarray) -> xr.Dataset:
    import dask

    from cbgrid import context

    igbp, land_fraction = context.igbp_on_grid(lat, lon)
    koppen = context.koppen_on_grid(lat, lon)
    igbp, land_fraction, koppen = dask.compute(igbp, land_fraction, koppen)
    ig = np.asarray(igbp.values).astype(np.int16)
    ig[(ig < 0) | (ig > 16)] = -1  # nodata
    modelled = (ig >= 1) & ~np.isin(ig, MASKED_IGBP)
    # Majority classes come from different rasters: a land cell whose Beck pixels are all
    # ocean (coasts, small islands) takes the class of the nearest cell that has one.
    kp = _fill_nearest(np.asarray(koppen.values).astype(np.int16), modelled)
    return xr.Dataset(
        {
            "igbp": (("lat", "lon"), ig, {"long_name": "majority IGBP class (MCD12C1), -1 nodata"}),
            "koppen": (("lat", "lon"), kp, {"long_name": "majority Koppen main class 1..5, 0 none"}),
            "land_fraction": (("lat", "lon"), np.asarray(land_fraction.values, dtype=np.float32), {"units": "1"}),
            "cell_area": (("lat", "lon"), product.cell_area(lat, lon), {"units": "m2"}),
            "modelled": (("lat", "lon"), modelled.astype(np.int8), {"long_name": "cell is predicted (land, not water or ice)"}),
        },
        coords={"lat": lat, "lon": lon},
    )


@functools.lru_cache(maxsize=4)
def _grid_context_cached(lat_key: bytes, lon_key: bytes, use_disk: bool) -> xr.Dataset:
    lat = np.frombuffer(lat_key, dtype=np.float64)
    lon = np.frombuffer(lon_key, dtype=np.float64)
    path = _cache_dir() / _context_key(lat, lon) if use_disk else None
    if path is not None and path.exists():
        ds = xr.load_dataset(path)
        log.info("grid context %dx%d from %s", lat.size, lon.size, path)
    else:
        ds = _compute_context(lat, lon)
        if path is not None:
            try:
                with replace_file(path) as tmp:
                    ds.to_netcdf(tmp)
            except OSError as e:  # a read-only home is no reason to fail
                log.warning("could not cache the grid context in %s: %s", path.parent, e)
    ds["modelled"] = ds["modelled"].astype(bool)
    log.info("grid context %dx%d: %d of %d cells modelled", lat.size, lon.size, int(ds["modelled"].sum()), ds["modelled"].size)
    return ds


def grid_context(lat, lon, *, cache: bool = True) -> xr.Dataset:
    """IGBP and Köppen class, land fraction, cell area and the modelled-cell mask of a grid.

    IGBP is the majority MCD12C1 0.05° class in each cell, Köppen the majority Beck et al.
    class; cells whose majority is water (0) or permanent snow/ice (15) are not modelled.
    Aggregating the rasters takes tens of seconds, so results are kept per grid and raster
    version in ``$CBGRID_CACHE`` (default ``~/.cache/cbgrid``) unless ``cache=False``, and in
    memory for the life of the process.
    """
    lat = np.ascontiguousarray(lat, dtype=np.float64)
    lon = np.ascontiguousarray(lon, dtype=np.float64)
    return _grid_context_cached(lat.tobytes(), lon.tobytes(), bool(cache)).copy()


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _load_run_cached(path: str):
    from cbgrid.train import load_run

    return load_run(path)


def resolve_run(run):
    """A trained run: loaded from its folder (cached per process) or used as given."""
    if isinstance(run, (str, os.PathLike)):
        return _load_run_cached(str(Path(run).resolve()))
    if not hasattr(run, "predict"):
        raise TypeError(f"a run must be a run folder or an object with .predict(ds), not {type(run).__name__}")
    return run


def history_days(run) -> int:
    """Days of driver history a run needs before its first predicted day (0 for static models)."""
    run = resolve_run(run)
    if getattr(run, "kind", "static") != "temporal":
        return 0
    cfg = getattr(run, "config", {}) or {}
    for where in (cfg, cfg.get("train") or {}):
        if where.get("window"):
            return int(where["window"])
    return int(getattr(run, "window", None) or DEFAULT_WINDOW)


def run_features(run) -> list[str] | None:
    """The driver variables a run reads, when it says so."""
    run = resolve_run(run)
    for obj in (run, getattr(run, "config", None) or {}):
        feats = obj.get("features") if isinstance(obj, dict) else getattr(obj, "features", None)
        if feats:
            return [str(f) for f in feats if f not in ("lat", "lon", "igbp", "koppen")]
    return None


# --------------------------------------------------------------------------------------------
# Chunked inference
# --------------------------------------------------------------------------------------------


def _site_block(drv: np.ndarray, names: Sequence[str], days: pd.DatetimeIndex, lat, lon, igbp, koppen) -> xr.Dataset:
    """(site, time) Dataset of n cells from (var, time, cell) drivers, with the site coords."""
    n = drv.shape[2]
    ids = np.asarray([f"cell{i}" for i in range(n)], dtype=object)
    data = {k: (("site", "time"), np.ascontiguousarray(drv[v].T)) for v, k in enumerate(names)}
    return xr.Dataset(
        data,
        coords={
            "site": ids,
            "time": days.values.astype("datetime64[ns]"),
            "lat": ("site", np.asarray(lat, dtype=np.float64)),
            "lon": ("site", np.asarray(lon, dtype=np.float64)),
            "igbp": ("site", np.asarray(igbp, dtype=np.int8)),
            "koppen": ("site", np.asarray(koppen, dtype=np.int8)),
        },
    )


def combine_members(means: list[np.ndarray], sds: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Ensemble mean and spread of runs weighted equally: sd² = mean_r(sd_r² + (m_r − m)²)."""
    m = np.mean(means, axis=0)
    var = np.mean([s.astype(np.float64) ** 2 + (mr - m) ** 2 for mr, s in zip(means, sds)], axis=0)
    return m, np.sqrt(var)


def _whole_block(run, ds: xr.Dataset) -> dict:
    """Ask a run to predict a chunk's cells in one go where it lets the caller choose.

    Runs bound their memory by predicting ``block_sites`` sites at a time; a spatial chunk is
    already the memory bound here, and one call per chunk avoids thousands of tiny model calls.
    """
    import inspect

    try:
        params = inspect.signature(run.predict).parameters
    except (TypeError, ValueError):
        return {}
    return {"block_sites": max(1, ds.sizes["site"])} if "block_sites" in params else {}


def predict_cells(ds: xr.Dataset, runs: Sequence, out_days: pd.DatetimeIndex) -> np.ndarray:
    """Ensemble predictions for a (site, time) Dataset: (channel, out_day, site) float32.

    Channels are ``CHANNELS``: GPP, RECO, the models' own NEE, and the three spreads.
    """
    want = list(TARGETS)
    means, sds = [], []
    for ref in runs:
        run = resolve_run(ref)
        p = run.predict(ds, **_whole_block(run, ds))
        pred = p["prediction"]
        have = [str(t) for t in pred["target"].values]
        lacking = [t for t in want if t not in have]
        if lacking:
            raise ValueError(f"run {ref!s} predicts {have}; upscaling needs {want}")
        sel = {"target": want, "time": out_days.values.astype("datetime64[ns]")}
        m = pred.sel(sel).transpose("target", "time", "site").values.astype(np.float64)
        if "prediction_std" in p:
            s = p["prediction_std"].sel(sel).transpose("target", "time", "site").values.astype(np.float64)
        else:
            s = np.zeros_like(m)
        means.append(m)
        sds.append(s)
    m, s = combine_members(means, sds)
    return np.concatenate([m, s]).astype(np.float32)


def _predict_block(drv, igbp, koppen, modelled, lat2d, lon2d, *, names, in_days, out_days, runs):
    """One spatial chunk: (var, time_in, y, x) drivers -> (channel, time_out, y, x) predictions."""
    import dask

    _, nt_in, ny, nx = drv.shape
    out = np.full((len(CHANNELS), len(out_days), ny, nx), np.nan, dtype=np.float32)
    m = np.asarray(modelled, dtype=bool)
    if not m.any():
        return out
    cells = drv[:, :, m]  # (var, time, cell)
    # A cell with no driver value at all (e.g. outside a local file's coverage) is not predicted.
    has_data = np.isfinite(cells).any(axis=(0, 1))
    if not has_data.any():
        return out
    cells = cells[:, :, has_data]
    sub = m.copy()
    sub[m] = has_data
    ds = _site_block(cells, names, pd.DatetimeIndex(in_days), lat2d[sub], lon2d[sub], igbp[sub], koppen[sub])
    # The block is in memory: any dask use inside predict runs inline, never back on the cluster.
    with dask.config.set(scheduler="synchronous"):
        pred = predict_cells(ds, runs, pd.DatetimeIndex(out_days))
    # A day with no driver value at all in a cell stays empty.
    first = len(in_days) - len(out_days)
    empty = ~np.isfinite(cells[:, first:, :]).any(axis=0)
    pred[:, empty] = np.nan
    out[:, :, sub] = pred
    return out


def predict_blocks(drivers: xr.Dataset, runs: Sequence, ctx: xr.Dataset, out_days: pd.DatetimeIndex,
                   chunks: dict | None = None):
    """Lazy (channel, out_day, lat, lon) float32 dask array of ensemble predictions.

    ``drivers`` spans the output days plus the spin-up before them; each dask task sees one
    spatial chunk over the whole span.
    """
    import dask.array as da

    chunks = chunks or {"lat": 45, "lon": 90}
    ny, nx = ctx.sizes["lat"], ctx.sizes["lon"]
    cl, co = max(1, min(int(chunks.get("lat", ny)), ny)), max(1, min(int(chunks.get("lon", nx)), nx))
    names = list(drivers.data_vars)
    feats = set()
    for r in runs:
        feats |= set(run_features(r) or ())
    missing = sorted(feats - set(names))
    if missing:
        raise ValueError(f"the drivers lack {missing} that the runs read; they have {names}")
    if feats:
        names = [n for n in names if n in feats]
    in_days = drivers.indexes["time"]
    out_days = pd.DatetimeIndex(out_days)
    if not out_days.isin(in_days).all():
        raise ValueError(f"drivers ({in_days[0].date()}..{in_days[-1].date()}) do not cover the output days")
    drv = drivers[names].transpose("time", "lat", "lon")
    stacked = da.stack([
        (v.data if hasattr(v.data, "dask") else da.from_array(np.asarray(v.data)))
        for v in (drv[k] for k in names)
    ]).astype(np.float32).rechunk((-1, -1, cl, co))
    glat, glon = np.meshgrid(ctx["lat"].values, ctx["lon"].values, indexing="ij")
    ch2 = (cl, co)
    aux = [da.from_array(np.asarray(a), chunks=ch2) for a in (
        ctx["igbp"].values, ctx["koppen"].values, ctx["modelled"].values, glat, glon)]
    runs = tuple(str(Path(r).resolve()) if isinstance(r, (str, os.PathLike)) else r for r in runs)
    out_chunks = ((len(CHANNELS),), (len(out_days),), stacked.chunks[2], stacked.chunks[3])
    return da.map_blocks(
        _predict_block_4d, stacked, *[a[None, None] for a in aux],
        names=tuple(names), in_days=in_days.values, out_days=out_days.values, runs=runs,
        dtype=np.float32, chunks=out_chunks, token="cbgrid-predict",
    )


def _predict_block_4d(drv, igbp, koppen, modelled, lat2d, lon2d, **kw):
    """``_predict_block`` for the 4-D blocks ``dask.array.map_blocks`` hands over."""
    return _predict_block(drv, igbp[0, 0], koppen[0, 0], modelled[0, 0], lat2d[0, 0], lon2d[0, 0], **kw)


# --------------------------------------------------------------------------------------------
# Drivers
# --------------------------------------------------------------------------------------------


def open_drivers(recipe, days: pd.DatetimeIndex, ctx: xr.Dataset) -> xr.Dataset:
    """Lazy (time, lat, lon) drivers of a recipe's source over ``days`` on the recipe grid."""
    days = pd.DatetimeIndex(days)
    src = recipe.drivers.source
    lat, lon = recipe.grid.lat, recipe.grid.lon
    if src == "twin":
        from cbgrid.sources.twin import twin_grid

        return twin_grid(lat, lon, days, recipe.drivers.seed, igbp=ctx["igbp"].values, koppen=ctx["koppen"].values,
                         with_truth=False, chunks=dict(recipe.chunks))
    if src == "local":
        from cbgrid.sources.local import open_local

        base = recipe.source_file.parent if recipe.source_file is not None else Path.cwd()
        paths = [p if Path(p).is_absolute() or Path(p).exists() else str(base / p) for p in recipe.drivers.paths]
        return open_local(paths, engine=recipe.drivers.engine, variables=recipe.drivers.variables,
                          lat=lat, lon=lon, days=days, chunks=dict(recipe.chunks))
    if src == "earthengine":
        from cbgrid.recipe import Period
        from cbgrid.sources.earthengine import open_grid

        sub = recipe.replace(period=Period(days[0], days[-1], recipe.period.per))
        return open_grid(sub, chunks={"time": len(days)})
    raise ValueError(f"unknown driver source {src!r}; use twin, local or earthengine")


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim`` where there is one (Linux), else None."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_memory() -> None:
    """Hand freed heap pages back to the system.

    Each block allocates and frees a few hundred MB (model inputs, trees' matrices); glibc keeps
    such freed pages, so without this the resident size creeps up with the number of blocks
    even though live memory is one batch. (dask.distributed workers trim on their own.)
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _n_workers(client) -> int:
    if client is not None:
        return max(1, sum(client.nthreads().values()))
    return max(1, os.cpu_count() or 1)


def write_blocks(blocks, path, *, ctx: xr.Dataset, days: pd.DatetimeIndex, attrs: dict, client=None,
                 progress: bool = True, batch: int | None = None) -> dict:
    """Compute the predicted blocks a batch at a time and write them into a product file.

    Returns diagnostics: the models' own NEE head against the written RECO − GPP.
    """
    import dask
    from tqdm.auto import tqdm

    delayed = blocks.to_delayed()  # (1, 1, nby, nbx)
    cl, co = blocks.chunks[2], blocks.chunks[3]
    offs_y, offs_x = np.cumsum((0,) + cl[:-1]), np.cumsum((0,) + co[:-1])
    todo = [(delayed[0, 0, i, j], int(offs_y[i]), int(offs_x[j])) for i in range(len(cl)) for j in range(len(co))]
    batch = batch or _n_workers(client)
    abs_diff, n_diff = 0.0, 0
    with product.ProductWriter(path, ctx["lat"].values, ctx["lon"].values, days, context=ctx, attrs=attrs,
                               chunks=(cl[0], co[0])) as w, \
            tqdm(total=len(todo), desc=f"upscaling {Path(path).name}", unit="block", disable=not progress or None) as bar:
        for k in range(0, len(todo), batch):
            part = todo[k:k + batch]
            if client is not None:
                results = client.gather(client.compute([d for d, _, _ in part]))
            else:
                results = dask.compute(*[d for d, _, _ in part])
            for res, (_, i0, j0) in zip(results, part):
                g, r, nee_model, gs, rs, ns = res
                w.write(i0, j0, gpp=g, reco=r, gpp_sd=gs, reco_sd=rs, nee_sd=ns)
                bal = r - g
                ok = np.isfinite(bal) & np.isfinite(nee_model)
                abs_diff += float(np.abs(nee_model[ok] - bal[ok]).sum())
                n_diff += int(ok.sum())
            del results
            release_memory()
            bar.update(len(part))
        diag = {"nee_model_minus_balance_mean_abs": abs_diff / n_diff if n_diff else float("nan"), "cell_days": n_diff}
        w.set_attrs({"nee_model_head_mean_abs_difference": np.float64(diag["nee_model_minus_balance_mean_abs"]),
                     "nee_model_head_comment": "mean |NEE output of the models - (RECO - GPP)| over modelled "
                     "cell-days, g m-2 d-1: how far the models' own NEE is from the balance the file enforces"})
    return diag


# --------------------------------------------------------------------------------------------
# The product
# --------------------------------------------------------------------------------------------


def _client(scheduler):
    """A dask.distributed Client for ``scheduler`` (address or Client), or None for local threads."""
    if scheduler is None:
        return None
    if hasattr(scheduler, "gather"):
        return scheduler
    from distributed import Client

    return Client(str(scheduler))


def score_summary(frame: pd.DataFrame | None) -> pd.DataFrame | None:
    """Median and quartiles across test sites per target and metric (R2, RMSE, nMAE)."""
    if frame is None or len(frame) == 0:
        return None
    from cbgrid import evaluation

    by = ["target"]
    return evaluation.quantile_table(frame, by=by, metrics=[m for m in ("R2", "RMSE", "nMAE") if m in frame])


def product_path(recipe, label: str) -> Path:
    """Where the product file of one period piece goes."""
    return Path(recipe.output) / f"{recipe.name}_{label}.nc"


def upscale(recipe, *, runs: Sequence | None = None, scores: pd.DataFrame | None = None, split: str | None = None,
            scheduler=None, progress: bool = True, quicklook: bool = True, institution: str = "unspecified",
            overwrite: bool = True, context: xr.Dataset | None = None, drivers: xr.Dataset | None = None) -> dict:
    """Run a recipe: one CF-1.8 NetCDF per period piece, a scores CSV beside them, quicklooks.

    runs: run folders or loaded runs (default: the recipe's ``runs``). scores: per-site
    zero-shot scores of the product's ensemble (``cbgrid.evaluation.to_frame`` layout); by default
    they are computed from the runs' test-site predictions (:func:`zero_shot_scores`).
    context: the grid context (default :func:`grid_context` of the recipe grid). drivers: an
    already opened (time, lat, lon) driver Dataset on the recipe grid covering every output day
    and the spin-up (default: opened from the recipe's source, piece by piece).
    Returns {'products': [paths], 'scores': csv path or None, 'quicklooks': [paths], 'diagnostics': {...}}.
    """
    runs = list(runs if runs is not None else recipe.runs)
    if not runs:
        raise ValueError(f"recipe {recipe.name!r} names no runs")
    out_dir = Path(recipe.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    lat, lon = recipe.grid.lat, recipe.grid.lon
    spin = max(history_days(r) for r in runs)  # loads the runs: a bad run folder fails here, early
    ctx = grid_context(lat, lon) if context is None else context
    if ctx.sizes["lat"] != lat.size or ctx.sizes["lon"] != lon.size:
        raise ValueError(f"the grid context is {ctx.sizes['lat']}x{ctx.sizes['lon']}; the recipe grid is {lat.size}x{lon.size}")
    if scores is None:
        scores, split = zero_shot_scores(runs)
    summary = score_summary(scores)
    csv = None
    if scores is not None:
        csv = out_dir / f"{recipe.name}_scores.csv"
        table = summary.copy()
        table.insert(0, "split", split or "unknown")
        with replace_file(csv) as tmp:
            table.to_csv(tmp, index=False)
    run_names = [str(r) if isinstance(r, (str, os.PathLike)) else getattr(r, "name", type(r).__name__) for r in runs]
    attrs = product.global_attrs(
        title=f"cbgrid {recipe.name}: daily GPP, RECO and NEE at {recipe.grid.resolution} degree",
        source=f"drivers: {recipe.drivers.source}; models: {', '.join(run_names)}",
        runs=run_names, institution=institution,
        extra={**product.score_attrs(summary, split), "recipe": recipe.name,
               "zero_shot_scores_file": csv.name if csv else None,
               "spin_up_days": np.int32(spin), "geospatial_lat_resolution": f"{recipe.grid.resolution} degree",
               "geospatial_lon_resolution": f"{recipe.grid.resolution} degree"},
    )
    client = _client(scheduler)
    products, looks, diags = [], [], {}
    try:
        for label, days in recipe.period.pieces():
            path = product_path(recipe, label)
            if path.exists() and not overwrite:
                raise FileExistsError(f"{path} exists; remove it or allow overwriting")
            days_in = pd.date_range(days[0] - pd.Timedelta(days=spin), days[-1], freq="D")
            if drivers is None:
                piece = open_drivers(recipe, days_in, ctx)
            else:
                absent = days_in[~days_in.isin(drivers.indexes["time"])]
                if len(absent):
                    raise ValueError(f"the given drivers lack {len(absent)} day(s) needed for {label}, "
                                     f"e.g. {absent[0].date()} (spin-up {spin} days)")
                piece = drivers.sel(time=days_in)
            blocks = predict_blocks(piece, runs, ctx, days, chunks=recipe.chunks)
            diags[label] = write_blocks(blocks, path, ctx=ctx, days=days, attrs=attrs, client=client, progress=progress)
            products.append(path)
            if quicklook:
                looks += quicklooks(path)
    finally:
        if client is not None and not hasattr(scheduler, "gather"):
            client.close()
    return {"products": products, "scores": csv, "quicklooks": looks, "diagnostics": diags}


def quicklooks(path) -> list[Path]:
    """One PNG per flux variable (period mean) beside a product file."""
    from cbgrid import plots

    path = Path(path)
    out = []
    with product.open_product(path) as ds:
        for name in (*product.FLUXES, *(f"{f}_sd" for f in product.FLUXES)):
            png = path.with_name(f"{path.stem}_{name}.png")
            plots.quicklook(ds[name].mean("time", keep_attrs=True), png, title=f"{path.stem}: {name} (period mean)")
            out.append(png)
    return out


# --------------------------------------------------------------------------------------------
# Validation against truth
# --------------------------------------------------------------------------------------------


def _r2(pred: np.ndarray, obs: np.ndarray) -> float:
    sst = float(np.sum((obs - obs.mean()) ** 2))
    return 1.0 - float(np.sum((pred - obs) ** 2)) / sst if sst > 0 else float("nan")


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
    for name in product.FLUXES:
        tname = f"{name}_true" if f"{name}_true" in truth else name
        p, t = xr.align(ds[name].astype(np.float64), truth[tname].astype(np.float64), join="inner")
        p, t = np.asarray(p.values), np.asarray(t.values)
        ok = np.isfinite(p) & np.isfinite(t)
        if not ok.any():
            raise ValueError(f"the product and the truth share no valid {name} cell-day")
        n = ok.sum(axis=0)
        okm = n > 0
        pm = np.where(ok, p, 0.0).sum(axis=0)[okm] / n[okm]
        tm = np.where(ok, t, 0.0).sum(axis=0)[okm] / n[okm]
        rows.append({
            "variable": name,
            "R2": _r2(p[ok], t[ok]),
            "R2_mean_map": _r2(pm, tm),
            "bias": float(np.mean(p[ok] - t[ok])),
            "RMSE": float(np.sqrt(np.mean((p[ok] - t[ok]) ** 2))),
            "truth_mean": float(np.mean(t[ok])),
            "cell_days": int(ok.sum()),
        })
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Zero-shot scores of the ensemble
# --------------------------------------------------------------------------------------------


def _run_store(run) -> Path | None:
    """The store a run was trained on: its recorded path, relative to the run folder first."""
    value = (getattr(run, "config", {}) or {}).get("store")
    if not value:
        return None
    p = Path(value).expanduser()
    base = getattr(run, "path", None)
    if not p.is_absolute() and base is not None and (Path(base) / p).exists():
        p = Path(base) / p
    return p.resolve() if p.exists() else None


def zero_shot_scores(runs: Sequence) -> tuple[pd.DataFrame | None, str | None]:
    """Per-site zero-shot scores of the runs' ensemble on their test sites, and the split name.

    Averages the runs' test-site predictions (``cbgrid.evaluation.ensemble``) — the same ensemble
    the maps use — and scores them against the store and split the runs were trained with.
    Returns (None, None), with a warning, when a run carries no test-site predictions.
    """
    from cbgrid import evaluation
    from cbgrid.store import open_store

    preds, stores, splits = [], [], []
    for ref in runs:
        run = resolve_run(ref)
        pred, split, store = getattr(run, "predictions", None), getattr(run, "split", None), _run_store(run)
        if pred is None or split is None or store is None:
            log.warning("run %s lacks test-site predictions, its split or its store (%r); the product carries no "
                        "zero-shot scores", ref, (getattr(run, "config", {}) or {}).get("store"))
            return None, None
        preds.append(pred)
        stores.append(str(Path(store).resolve()))
        splits.append(split)
    if len(set(stores)) > 1:
        raise ValueError(f"the runs were trained on different stores {sorted(set(stores))}; an ensemble's "
                         "zero-shot score needs one store")
    test = [set(s.loc[s["set"] == "test", "site"].astype(str)) for s in splits]
    if any(t != test[0] for t in test[1:]):
        raise ValueError("the runs were tested on different sites (different splits); an ensemble's zero-shot "
                         "score needs one split")
    split_df = splits[0]
    ens = evaluation.ensemble(preds)
    scores = evaluation.evaluate(ens, open_store(stores[0]), split_df)
    name = str(split_df["split"].iloc[0]) if "split" in split_df else str(scores.attrs.get("split"))
    if "seed" in split_df and pd.notna(split_df["seed"].iloc[0]):
        name = f"{name} (seed {int(split_df['seed'].iloc[0])})"
    return evaluation.to_frame(scores), name
