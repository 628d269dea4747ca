"""Gridded inference: driver grids -> chunked dask predictions -> CF-1.8 NEE/GPP/RECO products.

The chain for one recipe (``cbgrid.recipe``)::

    context.grid_context(lat, lon)    IGBP (MCD12C1 majority), Köppen (Beck majority), land
                                      fraction, cell area, which cells are modelled
    recipe.drivers.open(...)          lazy (time, lat, lon) drivers of the recipe's driver source
                                      (``cbgrid.sources``: twin | local | earthengine)
    predict_blocks(drivers, runs,...) lazy dask array, one task per spatial chunk over the whole
                                      time span (incl. the temporal models' spin-up)
    write_blocks(blocks, writers,...) blocks computed a few at a time and handed to the
                                      ``BlockWriter`` of each piece as they arrive (``cbgrid.product``)

Consecutive period pieces (months) are grouped into ``spans`` of up to ``SPAN_DAYS``: the drivers
are opened once per span (the twin simulates it with one spin-up), and each task predicts every
piece from the drivers that piece would get on its own (``piece_plan``), so the files equal the
month-by-month ones. ``upscale`` reports where the time went per ``STAGES`` (driver tasks,
prediction tasks, the writer) in its ``timings``.

Runs are ``cbgrid.contracts.Predictor``s (run folders are loaded as ``cbgrid.runs.Run``).

Each task stacks the land cells of its chunk into a (site, time) Dataset — the exact input a
trained run predicts on — so trees and networks take the code path they take on sites. The
task function is a module-level function whose arguments are arrays, run paths and small
options: it pickles, so the same code runs on the local threaded scheduler or on a
``dask.distributed`` cluster (``scheduler=ADDRESS``, or ``"local:N"``: N local worker processes).
Only finished blocks travel back to the client that writes the file, so workers need no access
to the output folder, and memory is a few blocks in flight, whatever the grid size.

Ensemble: the product is the mean of the runs' (seed-averaged) predictions; its ``*_sd`` layer
is the standard deviation across all members, each run weighted equally:
``sd² = mean_r(sd_r² + (mean_r − mean)²)`` where ``sd_r`` is run r's spread across its seeds.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import itertools
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import dask
import dask.array as da
import dask.callbacks
import dask.utils
import numpy as np
import pandas as pd
import xarray as xr

from cbgrid import evaluation, manifest, product
from cbgrid.atomic import replace_file
from cbgrid.context import grid_context
from cbgrid.contracts import BlockWriter, Predictor
from cbgrid.errors import InputError
from cbgrid.progress import bar as progress_bar
from cbgrid.report import ensemble_scores
from cbgrid.runs import Run, load_run
from cbgrid.runtime import release_memory, require
from cbgrid.schema import TARGETS

log = logging.getLogger(__name__)

#: Channels of a predicted block: means, then the ensemble spread.
CHANNELS = ("GPP", "RECO", "NEE_model", "GPP_sd", "RECO_sd", "NEE_sd")


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _load_run_cached(path: str) -> Run:
    return load_run(path)


def resolve_run(run) -> Predictor:
    """A trained run: loaded from its folder (cached per process) or used as given."""
    if isinstance(run, (str, os.PathLike)):
        return _load_run_cached(str(Path(run).resolve()))
    if not isinstance(run, Predictor):
        raise TypeError(f"a run must be a run folder or a cbgrid.contracts.Predictor (features, history_days, "
                        f"predict), not {type(run).__name__}")
    return run


def history_days(run) -> int:
    """Days of driver history a run needs before its first predicted day (0 for static models)."""
    return int(resolve_run(run).history_days)


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


def predict_cells(ds: xr.Dataset, runs: Sequence, out_days: pd.DatetimeIndex) -> np.ndarray:
    """Ensemble predictions for a (site, time) Dataset: (channel, out_day, site) float32.

    Channels are ``CHANNELS``: GPP, RECO, the models' own NEE, and the three spreads.
    """
    want = list(TARGETS)
    means, sds = [], []
    for ref in runs:
        run = resolve_run(ref)
        # the spatial chunk already bounds memory: one model call per chunk
        p = run.predict(ds, block_sites=None)
        pred = p["prediction"]
        have = [str(t) for t in pred["target"].values]
        lacking = [t for t in want if t not in have]
        if lacking:
            raise InputError(f"run {ref!s} predicts {have}; upscaling needs {want}")
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


def _predict_block(drv, igbp, koppen, modelled, lat2d, lon2d, *, names, in_days, out_days, runs, plan=None):
    """One spatial chunk: (var, time_in, y, x) drivers -> (channel, time_out, y, x) predictions.

    plan: ((o0, o1, i0, i1), ...) — output days ``o0:o1`` are predicted from driver days
    ``i0:i1`` (one model call per piece, each with its own spin-up); default one piece.
    """
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
    in_days, out_days = pd.DatetimeIndex(in_days), pd.DatetimeIndex(out_days)
    plan = plan or ((0, len(out_days), 0, nt_in),)
    pred = np.empty((len(CHANNELS), len(out_days), int(sub.sum())), dtype=np.float32)
    for o0, o1, i0, i1 in plan:
        ds = _site_block(cells[:, i0:i1], names, in_days[i0:i1], lat2d[sub], lon2d[sub], igbp[sub], koppen[sub])
        # The block is in memory: any dask use inside predict runs inline, never back on the cluster.
        with dask.config.set(scheduler="synchronous"):
            pred[:, o0:o1] = predict_cells(ds, runs, out_days[o0:o1])
        del ds
    # A day with no driver value at all in a cell stays empty.
    empty = ~np.isfinite(cells[:, in_days.get_indexer(out_days), :]).any(axis=0)
    pred[:, empty] = np.nan
    out[:, :, sub] = pred
    return out


def piece_plan(in_days: pd.DatetimeIndex, out_days: pd.DatetimeIndex, lengths: Sequence[int] | None,
               spin: int) -> tuple[tuple[int, int, int, int], ...]:
    """Which driver days each piece of ``out_days`` is predicted from: ((o0, o1, i0, i1), ...).

    The pieces are consecutive runs of ``lengths`` output days; the first sees the drivers
    from their start, each later one from ``spin`` days before its first day — exactly the
    drivers it would get if it were opened on its own.

    >>> days = pd.date_range("2020-01-01", "2020-01-10")
    >>> piece_plan(days, days[2:], [3, 5], spin=2)
    ((0, 3, 0, 5), (3, 8, 3, 10))
    """
    lengths = [len(out_days)] if lengths is None else [int(n) for n in lengths]
    if sum(lengths) != len(out_days) or min(lengths, default=1) < 1:
        raise InputError(f"pieces of {lengths} days do not split the {len(out_days)} output days")
    plan, o0 = [], 0
    for k, n in enumerate(lengths):
        first, last = out_days[o0], out_days[o0 + n - 1]
        start = first - pd.Timedelta(days=spin)
        if k and start < in_days[0]:
            raise InputError(f"the drivers start {in_days[0].date()}; the piece from {first.date()} needs them "
                             f"from {start.date()} ({spin} days of spin-up)")
        i0 = 0 if k == 0 else int(in_days.get_loc(start))
        plan.append((o0, o0 + n, i0, int(in_days.get_loc(last)) + 1))
        o0 += n
    return tuple(plan)


def predict_blocks(drivers: xr.Dataset, runs: Sequence, ctx: xr.Dataset, out_days: pd.DatetimeIndex,
                   chunks: dict | None = None, pieces: Sequence[int] | None = None):
    """Lazy (channel, out_day, lat, lon) float32 dask array of ensemble predictions.

    ``drivers`` spans the output days plus the spin-up before them; each dask task sees one
    spatial chunk over the whole span. pieces: lengths of consecutive output periods (e.g. the
    months of a year) that are predicted separately, each from its own spin-up, as if each
    were run on its own (``piece_plan``); the drivers are still read or generated once.
    """
    chunks = chunks or {"lat": 45, "lon": 90}
    ny, nx = ctx.sizes["lat"], ctx.sizes["lon"]
    cl, co = max(1, min(int(chunks.get("lat", ny)), ny)), max(1, min(int(chunks.get("lon", nx)), nx))
    names = list(drivers.data_vars)
    feats = set()
    for r in runs:
        feats |= set(resolve_run(r).features)
    missing = sorted(feats - set(names))
    if missing:
        raise InputError(f"the drivers lack {missing} that the runs read; they have {names}")
    if feats:
        names = [n for n in names if n in feats]
    in_days = drivers.indexes["time"]
    out_days = pd.DatetimeIndex(out_days)
    if not out_days.isin(in_days).all():
        raise InputError(f"drivers ({in_days[0].date()}..{in_days[-1].date()}) do not cover the output days")
    spin = max((history_days(r) for r in runs), default=0)
    plan = piece_plan(in_days, out_days, pieces, spin) if pieces is not None and len(pieces) > 1 else None
    drv = drivers[names].transpose("time", "lat", "lon")
    stacked = da.stack([
        (v.data if hasattr(v.data, "dask") else da.from_array(np.asarray(v.data)))
        for v in (drv[k] for k in names)
    ]).astype(np.float32).rechunk((-1, -1, cl, co))
    ch2 = (cl, co)
    # the class layers as int8 and the cells' lat/lon from the 1-D axes: nothing per cell beyond
    # what the task needs travels in the graph
    aux = [da.from_array(np.asarray(a, dtype=t), chunks=ch2) for a, t in (
        (ctx["igbp"].values, np.int8), (ctx["koppen"].values, np.int8), (ctx["modelled"].values, bool))]
    runs = tuple(str(Path(r).resolve()) if isinstance(r, (str, os.PathLike)) else r for r in runs)
    out_chunks = ((len(CHANNELS),), (len(out_days),), stacked.chunks[2], stacked.chunks[3])
    return da.map_blocks(
        _predict_block_4d, stacked, *[a[None, None] for a in aux],
        lat=np.asarray(ctx["lat"].values, np.float64), lon=np.asarray(ctx["lon"].values, np.float64),
        names=tuple(names), in_days=in_days.values, out_days=out_days.values, runs=runs, plan=plan,
        dtype=np.float32, chunks=out_chunks, token="cbgrid-predict",
    )


def _predict_block_4d(drv, igbp, koppen, modelled, *, lat, lon, block_info=None, **kw):
    """``_predict_block`` for the 4-D blocks ``dask.array.map_blocks`` hands over."""
    (y0, y1), (x0, x1) = block_info[None]["array-location"][2:]
    lat2d, lon2d = np.meshgrid(lat[y0:y1], lon[x0:x1], indexing="ij")
    return _predict_block(drv, igbp[0, 0], koppen[0, 0], modelled[0, 0], lat2d, lon2d, **kw)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _n_workers(client) -> int:
    if client is not None:
        return max(1, sum(client.nthreads().values()))
    return max(1, os.cpu_count() or 1)


#: Where the time of an upscaling run goes: the dask tasks that generate or read and assemble
#: the drivers, the prediction tasks, and the writer on the client.
STAGES = ("drivers", "predict", "write")


def _stage(key) -> str:
    """The stage of a dask task: the prediction tasks are named ``cbgrid-predict``; every other
    task of the graph generates, reads or assembles drivers."""
    return "predict" if dask.utils.key_split(key) == "cbgrid-predict" else "drivers"


class _StageTimes(dask.callbacks.Callback):
    """Seconds spent in the tasks of each stage on the local (threaded) scheduler.

    Only the tasks of the outer graph count (callbacks fired from the scheduler's own thread);
    any computation a model runs inline inside a prediction task is part of that task.
    """

    def __init__(self, seconds: dict):
        super().__init__()
        self.seconds, self._t0 = seconds, {}
        self._thread = threading.get_ident()

    def _pretask(self, key, dsk, state):
        if threading.get_ident() == self._thread:
            self._t0[key] = time.perf_counter()

    def _posttask(self, key, result, dsk, state, worker_id):
        t0 = self._t0.pop(key, None)
        if t0 is not None:
            stage = _stage(key)
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0


def _compute(parts, client, seconds: dict) -> list:
    """Compute delayed blocks on the local scheduler; the seconds of their tasks are added to
    ``seconds`` per stage."""
    with _StageTimes(seconds):
        return list(dask.compute(*parts))


def _computed(todo: list, client, batch: int, seconds: dict):
    """Yield (block, i0, j0) in order, computing ahead while the caller writes.

    Locally: the next batch of ``batch`` blocks is computed in a background thread while the
    current one is written. On a cluster: up to ``2 * batch`` blocks are in flight, and each
    finished block is gathered, released on the workers and yielded in order. Either way a
    bounded number of blocks is held, and the blocks reach the writer in the same order.
    """
    if client is None:
        parts = [todo[k:k + batch] for k in range(0, len(todo), batch)]
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            ahead = pool.submit(_compute, [d for d, _, _ in parts[0]], None, seconds) if parts else None
            for k, part in enumerate(parts):
                results = ahead.result()
                ahead = (pool.submit(_compute, [d for d, _, _ in parts[k + 1]], None, seconds)
                         if k + 1 < len(parts) else None)
                for res, (_, i0, j0) in zip(results, part):
                    yield res, i0, j0
                del results
        return
    distributed = require("distributed", "upscaling on a dask.distributed cluster")
    with distributed.get_task_stream(client) as ts:
        window: collections.deque = collections.deque()
        pending = iter(todo)
        for d, i0, j0 in itertools.islice(pending, 2 * batch):
            window.append((client.compute(d), i0, j0))
        while window:
            fut, i0, j0 = window.popleft()
            res = fut.result()
            fut.release()
            nxt = next(pending, None)
            if nxt is not None:
                window.append((client.compute(nxt[0]), nxt[1], nxt[2]))
            yield res, i0, j0
            del res
    for rec in ts.data:
        for ss in rec.get("startstops", ()):
            if ss.get("action") == "compute":
                stage = _stage(rec["key"])
                seconds[stage] = seconds.get(stage, 0.0) + ss["stop"] - ss["start"]


def write_blocks(blocks, writer: BlockWriter | Sequence[BlockWriter], *, client=None, progress: bool = True,
                 batch: int | None = None, desc: str = "upscaling", lengths: Sequence[int] | None = None,
                 seconds: dict | None = None) -> list[dict]:
    """Compute the predicted blocks a batch at a time and hand each to the writers as it arrives.

    writer: one ``BlockWriter`` for the whole time axis of ``blocks``, or one per consecutive
    piece of it, ``lengths`` days each (every block is computed once and its days split among
    the writers). seconds: where the time goes is added to this dict per ``STAGES`` entry —
    the drivers' and the prediction tasks' seconds (summed over workers) and the writer's.

    Returns, per writer, diagnostics: the models' own NEE head against the written RECO − GPP
    (also set as attributes on the writer) and the modelled cell-days written.
    """
    writers = [writer] if not isinstance(writer, Sequence) else list(writer)
    lengths = [blocks.shape[1]] if lengths is None else [int(n) for n in lengths]
    if len(lengths) != len(writers) or sum(lengths) != blocks.shape[1]:
        raise InputError(f"{len(writers)} writer(s) of {lengths} days for blocks of {blocks.shape[1]} days")
    bounds_ = np.cumsum([0, *lengths])
    seconds = {} if seconds is None else seconds
    delayed = blocks.to_delayed()  # (1, 1, nby, nbx)
    cl, co = blocks.chunks[2], blocks.chunks[3]
    offs_y, offs_x = np.cumsum((0,) + cl[:-1]), np.cumsum((0,) + co[:-1])
    todo = [(delayed[0, 0, i, j], int(offs_y[i]), int(offs_x[j])) for i in range(len(cl)) for j in range(len(co))]
    batch = batch or _n_workers(client)
    abs_diff, n_diff = np.zeros(len(writers)), np.zeros(len(writers), dtype=np.int64)
    with progress_bar(total=len(todo), desc=desc, unit="block", progress=progress) as bar:
        for n, (res, i0, j0) in enumerate(_computed(todo, client, batch, seconds), 1):
            t0 = time.perf_counter()
            for w, (a, b) in enumerate(zip(bounds_[:-1], bounds_[1:])):
                g, r, nee_model, gs, rs, ns = res[:, a:b]
                writers[w].write(i0, j0, gpp=g, reco=r, gpp_sd=gs, reco_sd=rs, nee_sd=ns)
                bal = r - g
                ok = np.isfinite(bal) & np.isfinite(nee_model)
                abs_diff[w] += float(np.abs(nee_model[ok] - bal[ok]).sum())
                n_diff[w] += int(ok.sum())
            del res, g, r, nee_model, gs, rs, ns
            seconds["write"] = seconds.get("write", 0.0) + time.perf_counter() - t0
            if n % batch == 0 or n == len(todo):
                release_memory()
            bar.update(1)
    diags = []
    for w, wr in enumerate(writers):
        diag = {"nee_model_minus_balance_mean_abs": abs_diff[w] / n_diff[w] if n_diff[w] else float("nan"),
                "cell_days": int(n_diff[w])}
        wr.set_attrs({"nee_model_head_mean_abs_difference": np.float64(diag["nee_model_minus_balance_mean_abs"]),
                      "nee_model_head_comment": "mean |NEE output of the models - (RECO - GPP)| over modelled "
                      "cell-days, g m-2 d-1: how far the models' own NEE is from the balance the file enforces"})
        diags.append(diag)
    return diags


# --------------------------------------------------------------------------------------------
# The product
# --------------------------------------------------------------------------------------------


def local_cluster_spec(scheduler) -> int | None:
    """Worker processes of a local cluster spec ``local`` (one per CPU) or ``local:N``; None
    for anything else (an address).

    >>> local_cluster_spec("local:2"), local_cluster_spec("tcp://10.0.0.5:8786")
    (2, None)
    """
    text = str(scheduler)
    if text != "local" and not text.startswith("local:"):
        return None
    n = text.partition(":")[2] or str(os.cpu_count() or 1)
    if not n.isdigit() or int(n) < 1:
        raise InputError(f"scheduler {text!r}: a local cluster is 'local' or 'local:N' with N worker processes >= 1")
    return int(n)


def _client(scheduler, stack: contextlib.ExitStack):
    """A dask.distributed Client for ``scheduler``, or None for local threads.

    scheduler: None (threads in this process), a ``Client`` (used as is), a scheduler address
    (``tcp://host:8786``), or ``local`` / ``local:N``: a ``LocalCluster`` of N single-threaded
    worker processes started here. What is started here is closed by ``stack``.
    """
    if scheduler is None:
        return None
    if hasattr(scheduler, "gather"):
        return scheduler
    distributed = require("distributed", "upscaling on a dask.distributed cluster")
    n = local_cluster_spec(scheduler)
    if n is not None:
        cluster = stack.enter_context(distributed.LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None))
        log.info("local cluster of %d worker processes at %s", n, cluster.scheduler_address)
        return stack.enter_context(distributed.Client(cluster))
    return stack.enter_context(distributed.Client(str(scheduler)))


#: Consecutive period pieces (months) are upscaled together up to this many output days: the
#: drivers are opened, read or generated (the twin: one spin-up) once for all of them, and each
#: piece is still predicted from its own spin-up into its own file.
SPAN_DAYS = 366


def spans(pieces: Sequence[tuple[str, pd.DatetimeIndex]], max_days: int = SPAN_DAYS) -> list[list]:
    """Group consecutive pieces into spans of at most ``max_days`` output days (a longer piece
    is a span of its own).

    >>> from cbgrid.recipe import Period
    >>> ps = Period(pd.Timestamp("2020-01-01"), pd.Timestamp("2021-03-31")).pieces()
    >>> [[label for label, _ in s] for s in spans(ps, max_days=100)]
    [['2020-01', '2020-02', '2020-03'], ['2020-04', '2020-05', '2020-06'], ['2020-07', '2020-08', '2020-09'], \
['2020-10', '2020-11', '2020-12'], ['2021-01', '2021-02', '2021-03']]
    """
    out, cur, n = [], [], 0
    for label, days in pieces:
        follows = bool(cur) and days[0] == cur[-1][1][-1] + pd.Timedelta(days=1)
        if cur and (not follows or n + len(days) > max_days):
            out.append(cur)
            cur, n = [], 0
        cur.append((label, days))
        n += len(days)
    if cur:
        out.append(cur)
    return out


def score_summary(frame: pd.DataFrame | None) -> pd.DataFrame | None:
    """Median and quartiles across test sites per target and metric (R2, RMSE, nMAE)."""
    if frame is None or len(frame) == 0:
        return None
    return evaluation.quantile_table(frame, by=["target"], metrics=[m for m in ("R2", "RMSE", "nMAE") if m in frame])


def product_path(recipe, label: str) -> Path:
    """Where the product file of one period piece goes."""
    return Path(recipe.output) / f"{recipe.name}_{label}.nc"


def upscale(recipe, *, runs: Sequence | None = None, scores: pd.DataFrame | None = None, split: str | None = None,
            scheduler=None, progress: bool = True, institution: str = "unspecified", overwrite: bool = False,
            context: xr.Dataset | None = None, drivers: xr.Dataset | None = None,
            span_days: int = SPAN_DAYS) -> dict:
    """Run a recipe: one CF-1.8 NetCDF per period piece and a scores CSV beside them.

    runs: run folders or ``Predictor``s (default: the recipe's ``runs``). scores: per-site
    zero-shot scores of the product's ensemble (``cbgrid.evaluation.to_frame`` layout); by default
    they are computed from the runs' test-site predictions (``cbgrid.report.ensemble_scores``).
    context: the grid context (default ``cbgrid.context.grid_context`` of the recipe grid).
    drivers: an already opened (time, lat, lon) driver Dataset on the recipe grid covering every
    output day and the spin-up (default: opened from the recipe's driver source, piece by piece).
    overwrite: replace the products of another ensemble in the output folder (else refused;
    see ``cbgrid.manifest``). scheduler: None (local threads), a ``dask.distributed`` Client or
    scheduler address, or ``local:N`` (a local cluster of N worker processes; ``_client``).
    span_days: consecutive pieces are upscaled together up to this many days (``spans``): the
    drivers are opened once for them (the twin simulates them with one spin-up), each piece
    still predicted from its own spin-up into its own file. Returns {'products': [paths],
    'scores': csv path or None, 'diagnostics': {label: {...}}, 'timings': {'wall_s',
    'cell_days', 'cell_days_per_s', 'seconds': {stage: s}}} — ``seconds`` is where the time
    went (``STAGES``; task seconds summed over workers, and the writer's).

    >>> res = upscale(load_recipe("products/twin-1deg-month.yaml"), runs=["runs/xgboost"])  # doctest: +SKIP
    """
    runs = list(runs if runs is not None else recipe.runs)
    if not runs:
        raise InputError(f"recipe {recipe.name!r} names no runs")
    spin = max(history_days(r) for r in runs)  # loads the runs: a bad run folder fails here, before any write
    out_dir = Path(recipe.output)
    with manifest.claim(out_dir, manifest.ensemble(recipe, runs), overwrite=overwrite) as claimed:
        return _upscale(recipe, runs, claimed, out_dir, spin, scores=scores, split=split, scheduler=scheduler,
                        progress=progress, institution=institution, context=context, drivers=drivers,
                        span_days=span_days)


def _upscale(recipe, runs, claimed, out_dir, spin, *, scores, split, scheduler, progress, institution, context, drivers,
             span_days) -> dict:
    lat, lon = recipe.grid.lat, recipe.grid.lon
    ctx = grid_context(lat, lon) if context is None else context
    if ctx.sizes["lat"] != lat.size or ctx.sizes["lon"] != lon.size:
        raise InputError(f"the grid context is {ctx.sizes['lat']}x{ctx.sizes['lon']}; the recipe grid is {lat.size}x{lon.size}")
    if scores is None:
        scores, split = ensemble_scores([r if isinstance(r, (str, os.PathLike)) else resolve_run(r) for r in runs])
    summary = score_summary(scores)
    csv = None
    if scores is not None:
        csv = out_dir / f"{recipe.name}_scores.csv"
        table = summary.copy()
        table.insert(0, "split", split or "unknown")
        with replace_file(csv) as tmp:
            table.to_csv(tmp, index=False)
        claimed.add(csv)
    run_names = [str(r) if isinstance(r, (str, os.PathLike)) else getattr(r, "name", type(r).__name__) for r in runs]
    attrs = product.global_attrs(
        title=f"cbgrid {recipe.name}: daily GPP, RECO and NEE at {recipe.grid.resolution} degree",
        source=f"drivers: {recipe.drivers.name}; models: {', '.join(run_names)}",
        runs=run_names, institution=institution,
        extra={**product.score_attrs(summary, split), "recipe": recipe.name,
               "zero_shot_scores_file": csv.name if csv else None,
               "spin_up_days": np.int32(spin), "geospatial_lat_resolution": f"{recipe.grid.resolution} degree",
               "geospatial_lon_resolution": f"{recipe.grid.resolution} degree"},
    )
    products, diags, seconds = [], {}, dict.fromkeys(STAGES, 0.0)
    t_run = time.perf_counter()
    with contextlib.ExitStack() as stack:
        client = _client(scheduler, stack)
        for group in spans(recipe.period.pieces(), span_days):
            days = group[0][1].append([d for _, d in group[1:]])
            days_in = pd.date_range(days[0] - pd.Timedelta(days=spin), days[-1], freq="D")
            if drivers is None:
                piece = recipe.drivers.open(recipe.grid, days_in, ctx, chunks=recipe.chunks, base=recipe.base)
            else:
                absent = days_in[~days_in.isin(drivers.indexes["time"])]
                if len(absent):
                    raise InputError(f"the given drivers lack {len(absent)} day(s) needed for "
                                     f"{group[0][0]}..{group[-1][0]}, e.g. {absent[0].date()} (spin-up {spin} days)")
                piece = drivers.sel(time=days_in)
            lengths = [len(d) for _, d in group]
            blocks = predict_blocks(piece, runs, ctx, days, chunks=recipe.chunks, pieces=lengths)
            paths = [product_path(recipe, label) for label, _ in group]
            ch = (blocks.chunks[2][0], blocks.chunks[3][0])
            # every file of the span is written beside its name and renamed only when all are complete
            with contextlib.ExitStack() as files:
                writers = [files.enter_context(product.ProductWriter(path, lat, lon, d, context=ctx, attrs=attrs,
                                                                     chunks=ch))
                           for path, (_, d) in zip(paths, group)]
                names = paths[0].name if len(paths) == 1 else f"{paths[0].name} .. {paths[-1].name}"
                res = write_blocks(blocks, writers, client=client, progress=progress, desc=f"upscaling {names}",
                                   lengths=lengths, seconds=seconds)
            for (label, _), path, d in zip(group, paths, res):
                diags[label] = d
                products.append(path)
                claimed.add(path)
                if product.totals_path(path).exists():
                    claimed.add(product.totals_path(path))
    wall = time.perf_counter() - t_run
    cell_days = sum(d["cell_days"] for d in diags.values())
    timings = {"wall_s": wall, "cell_days": cell_days, "cell_days_per_s": cell_days / wall if wall > 0 else float("nan"),
               "seconds": seconds}
    log.debug("upscaled %d cell-days in %.1f s: %s", cell_days, wall,
              ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
    return {"products": products, "scores": csv, "diagnostics": diags, "timings": timings}
