"""Upscaling throughput and memory: end-to-end product writing against the raw model predict.

For a tree run and a temporal run, over a global grid (default 0.25°) for one month:

* raw predict — every modelled cell's drivers already in memory as one (site, time) Dataset,
  timed around ``Run.predict`` alone;
* end-to-end — ``cbgrid.upscale.upscale`` from driver files on disk (a local Zarr of the twin's
  gridded drivers, opened lazily), chunked dask inference, the CF NetCDF writer; the grid
  context (IGBP/Köppen from the rasters) is prepared once and passed in, and timed separately;

both in cell-days per second (modelled cells × output days), with their ratio (target ≤ 1.5),
where the end-to-end time goes (``upscale``'s ``timings``: the seconds of the tasks that read
and assemble the drivers, of the prediction tasks, and of the writer), and the peak resident
memory of the end-to-end run at each of ``--memory-resolutions`` (default 1°, 0.5°, 0.25°) with
its ratio to the coarsest. Every measurement runs in its own process, so each peak is that
run's alone. Optional parts:

* ``--twin-year RES``: a year of monthly products from the twin's own gridded drivers (the
  twin simulates every cell with its spin-up): months upscaled one by one (``span_days=1``, one
  spin-up per month) against months upscaled together (``upscale.SPAN_DAYS``, one per year);
* ``--workers 1 2``: the end-to-end run on a ``dask.distributed`` LocalCluster of that many
  single-threaded worker processes (``scheduler="local:N"``), with the peak memory of each
  worker and the load averages around the run;
* the projection of the end-to-end rate to a 0.1° global daily year of a ``--members``-member
  ensemble (the prediction seconds scale with the members, the drivers and the writer do not).

    python benchmarks/bench_upscale.py --runs runs/demo-xgboost runs/demo-ctlstm
    python benchmarks/bench_upscale.py --runs R1 R2 --resolution 0.5 --memory-resolutions 2 1 0.5
    python benchmarks/bench_upscale.py --resolution 1 --memory-resolutions 1 0.5 0.25 --twin-year 2 --workers 1 2

Without ``--runs`` a small twin store is built and an xgboost and a ctlstm run are trained on it
(few seeds and epochs: the speed of prediction, not its skill, is measured here). Driver grids
and contexts are cached under ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _peak() -> int:
    """Peak resident memory of this process in bytes.

    ``VmHWM`` of the current address space (reset by exec); ``ru_maxrss`` would carry over the
    parent's peak at the fork that started this child.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _grid(res: float):
    from cbgrid.grid import Grid

    return Grid(res)


def prepare(work: Path, res: float, month: str, spin: int, source_res: float = 2.0) -> tuple[Path, Path]:
    """The grid context (NetCDF) and a driver grid (Zarr) for the month plus spin-up.

    The drivers are the twin's, simulated for every cell of a ``source_res`` grid (land or not)
    and repeated onto the finer cells: the twin's generator spins each cell up over two years,
    which at 0.25° would take far longer than the inference being measured, and prediction
    speed does not depend on the values.
    """
    import numpy as np
    import pandas as pd
    import xarray as xr

    from cbgrid import context
    from cbgrid.sources.twin import twin_grid

    tag = f"{res:g}deg-{month}-spin{spin}"
    ctx_path, drv_path = work / f"context-{res:g}deg.nc", work / f"drivers-{tag}.zarr"
    g = _grid(res)
    if not ctx_path.exists():
        t0 = time.perf_counter()
        context.grid_context(g.lat, g.lon).to_netcdf(ctx_path)
        print(f"grid context {res:g}°: {time.perf_counter() - t0:.1f} s", flush=True)
    if not drv_path.exists():
        src = _grid(max(source_res, res))
        first = pd.Timestamp(f"{month}-01")
        days = pd.date_range(first - pd.Timedelta(days=spin), first + pd.offsets.MonthEnd(0), freq="D")
        t0 = time.perf_counter()
        everywhere = np.full((src.lat.size, src.lon.size), 10)  # simulate every cell (as grassland)
        coarse = twin_grid(src.lat, src.lon, days, 0, igbp=everywhere, with_truth=False,
                           chunks={"lat": src.lat.size, "lon": 45})
        ii = np.abs(src.lat[None, :] - g.lat[:, None]).argmin(axis=1)  # nearest coarse cell
        jj = np.abs(src.lon[None, :] - g.lon[:, None]).argmin(axis=1)
        fine = coarse.isel(lat=xr.DataArray(ii, dims="lat"), lon=xr.DataArray(jj, dims="lon"))
        fine = fine.drop_vars(["igbp", "koppen"], errors="ignore").assign_coords(lat=g.lat, lon=g.lon)
        fine = fine.chunk({"time": -1, "lat": 90, "lon": 180})
        for v in fine.variables.values():
            v.encoding = {}
        tmp = drv_path.with_name(drv_path.name + ".tmp")
        fine.to_zarr(tmp, mode="w", consolidated=True)
        os.replace(tmp, drv_path)
        print(f"drivers {res:g}° from the twin at {src.resolution:g}°, {len(days)} days: {time.perf_counter() - t0:.1f} s", flush=True)
    return ctx_path, drv_path


def _recipe(res: float, month: str, drv: Path, out: Path, run: str, chunks: dict):
    import pandas as pd

    from cbgrid.recipe import parse_recipe

    first = pd.Timestamp(f"{month}-01")
    return parse_recipe({
        "name": f"bench-{res:g}deg", "drivers": {"source": "local", "engine": "zarr", "paths": [str(drv)]},
        "grid": {"resolution": res}, "output": str(out), "runs": [run], "chunks": chunks,
        "period": {"start": str(first.date()), "end": str((first + pd.offsets.MonthEnd(0)).date()), "per": "month"},
    })


def child_raw(run_path: str, res: float, month: str, ctx_path: str, drv_path: str, chunk: int) -> dict:
    """Run.predict on every modelled cell, drivers already in memory."""
    import numpy as np
    import pandas as pd
    import xarray as xr

    from cbgrid import upscale

    run = upscale.resolve_run(run_path)
    spin = upscale.history_days(run)
    ctx = xr.load_dataset(ctx_path)
    first = pd.Timestamp(f"{month}-01")
    out_days = pd.date_range(first, first + pd.offsets.MonthEnd(0), freq="D")
    in_days = pd.date_range(first - pd.Timedelta(days=spin), out_days[-1], freq="D")
    drv = xr.open_zarr(drv_path).sel(time=in_days)
    names = list(run.features) or list(drv.data_vars)
    m = ctx["modelled"].values.astype(bool)
    glat, glon = np.meshgrid(ctx["lat"].values, ctx["lon"].values, indexing="ij")
    cells = np.stack([drv[k].values[:, m] for k in names])  # (var, time, cell)
    ds = upscale._site_block(cells, names, in_days, glat[m], glon[m], ctx["igbp"].values[m], ctx["koppen"].values[m])
    # one call per spatial chunk's worth of cells, as the chunked inference makes them
    block = int(m.reshape(m.shape[0] // chunk, chunk, m.shape[1] // (2 * chunk), 2 * chunk).sum(axis=(1, 3)).max()) \
        if m.shape[0] % chunk == 0 and m.shape[1] % (2 * chunk) == 0 else 16384
    t0 = time.perf_counter()
    run.predict(ds, block_sites=block)
    wall = time.perf_counter() - t0
    return {"mode": "raw", "run": run_path, "kind": run.kind, "res": res, "cells": int(m.sum()), "block_sites": block,
            "days": len(out_days), "in_days": len(in_days), "wall_s": wall, "peak_bytes": _peak()}


def _worker_peak() -> int:
    """``_peak`` as a function a dask worker process runs (``Client.run``)."""
    return _peak()


def child_e2e(run_path: str, res: float, month: str, ctx_path: str, drv_path: str, out: str, chunk: int,
              workers: int = 0) -> dict:
    """cbgrid.upscale.upscale from the driver Zarr to the NetCDF product (workers > 0: on a
    LocalCluster of that many worker processes)."""
    import xarray as xr

    from cbgrid import product, upscale

    ctx = xr.load_dataset(ctx_path)
    recipe = _recipe(res, month, Path(drv_path), Path(out), run_path, {"lat": chunk, "lon": 2 * chunk})
    run = upscale.resolve_run(run_path)
    client = cluster = None
    if workers:
        import distributed

        cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                           dashboard_address=None)
        client = distributed.Client(cluster)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    res_ = upscale.upscale(recipe, runs=[run], context=ctx, progress=False, scores=None, overwrite=True,
                           scheduler=client)
    wall = time.perf_counter() - t0
    peak = _peak()  # before the check below reads whole layers back
    row = {"mode": "end-to-end" if not workers else f"cluster-{workers}", "run": run_path, "kind": run.kind,
           "members": len(run.config.get("seeds") or [0]), "res": res, "cells": int(ctx["modelled"].sum()),
           "wall_s": wall, "peak_bytes": peak, "load_before": load0, "load_after": os.getloadavg(),
           "seconds": res_["timings"]["seconds"], "cell_days": res_["timings"]["cell_days"]}
    if client is not None:
        row["worker_peak_bytes"] = sorted(client.run(_worker_peak).values())
        client.close()
        cluster.close()
    path = res_["products"][0]
    assert product.check_product(path) == []
    with product.open_product(path) as ds:
        row["days"] = ds.sizes["time"]
    row["file_bytes"] = Path(path).stat().st_size
    return row


def child_twin(run_path: str, res: float, year: str, out: str, chunk: int, span: int) -> dict:
    """A year of monthly products from the twin's gridded drivers, ``span`` output days per opening."""
    from cbgrid import context, upscale
    from cbgrid.recipe import parse_recipe

    recipe = parse_recipe({
        "name": f"twin-{res:g}deg", "drivers": {"source": "twin", "seed": 0}, "grid": {"resolution": res},
        "period": {"start": f"{year}-01-01", "end": f"{year}-12-31", "per": "month"}, "runs": [run_path],
        "output": out, "chunks": {"lat": chunk, "lon": 2 * chunk}})
    ctx = context.grid_context(recipe.grid.lat, recipe.grid.lon)
    run = upscale.resolve_run(run_path)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    res_ = upscale.upscale(recipe, runs=[run], context=ctx, progress=False, scores=None, overwrite=True,
                           span_days=span)
    wall = time.perf_counter() - t0
    return {"mode": f"twin span {span}", "run": run_path, "kind": run.kind, "res": res,
            "cells": int(ctx["modelled"].sum()), "days": len(recipe.period.days), "wall_s": wall,
            "peak_bytes": _peak(), "load_before": load0, "load_after": os.getloadavg(),
            "seconds": res_["timings"]["seconds"], "cell_days": res_["timings"]["cell_days"],
            "files": len(res_["products"])}


def _spawn(args: list[str]) -> dict:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    res = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"benchmark child {args[:2]} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def train_runs(work: Path) -> list[str]:
    """A tree and a temporal run on a small twin store (cached under ``work``)."""
    from cbgrid import splits, store, train
    from cbgrid.sources import twin

    st = work / "twin.zarr"
    if not st.exists():
        store.write_store(twin.twin_store(n_sites=60, start="2018-01-01", end="2020-12-31", seed=0), st, progress=False)
    ds = store.open_store(st)
    split = splits.make_split(ds, by="koppen", seed=0)
    out = []
    for model, kw in (("xgboost", {"seeds": 2}), ("ctlstm", {"seeds": 2, "max_epochs": 3})):
        path = work / "runs" / model
        if not path.exists():
            train.fit(ds, split, train.TrainConfig(model=model, **kw), out=path)
        out.append(str(path))
    return out


def _stages(r: dict) -> str:
    sec = r.get("seconds") or {}
    tot = sum(sec.values())
    return "  ".join(f"{k} {100 * v / tot:3.0f}%" for k, v in sec.items()) if tot else ""


def report(rows: list[dict], runs: list[str], args) -> None:
    """The tables: throughput and where the time goes, memory against the grid, the cluster, the twin."""
    print(f"\n{'run':<14} {'kind':<9} {'res':>5} {'mode':<14} {'cells':>8} {'days':>5} {'wall s':>8} "
          f"{'cell-days/s':>12} {'peak MiB':>9}  where the time goes (task seconds)")
    for r in rows:
        cd = r.get("cell_days") or r["cells"] * r["days"]
        print(f"{Path(r['run']).name:<14} {r['kind']:<9} {r['res']:>5g} {r['mode']:<14} {r['cells']:>8} {r['days']:>5} "
              f"{r['wall_s']:>8.1f} {cd / r['wall_s']:>12.0f} {r['peak_bytes'] / 2**20:>9.0f}  {_stages(r)}")
    print()
    for run in runs:
        raw = [r for r in rows if r["run"] == run and r["mode"] == "raw" and r["res"] == args.resolution]
        e2e = [r for r in rows if r["run"] == run and r["mode"] == "end-to-end" and r["res"] == args.resolution]
        if raw and e2e:
            print(f"{Path(run).name}: end-to-end / raw predict time = {e2e[0]['wall_s'] / raw[0]['wall_s']:.2f} (target <= 1.5)")
    mem = sorted([r for r in rows if r["mode"] == "end-to-end" and r["run"] == runs[0]], key=lambda r: r["cells"])
    if len(mem) >= 2:
        a = mem[0]
        print(f"peak memory, {Path(runs[0]).name}: " + ", ".join(
            f"{r['res']:g}° ({r['cells']} cells, x{r['cells'] / a['cells']:.1f}) {r['peak_bytes'] / 2**20:.0f} MiB "
            f"(x{r['peak_bytes'] / a['peak_bytes']:.2f})" for r in mem))
    cl = sorted([r for r in rows if r["mode"].startswith("cluster-")], key=lambda r: r["mode"])
    for r in cl:
        print(f"{r['mode']}: wall {r['wall_s']:.1f} s, {r['cell_days'] / r['wall_s']:.0f} cell-days/s, worker peaks "
              f"{', '.join(f'{b / 2**20:.0f}' for b in r['worker_peak_bytes'])} MiB, client {r['peak_bytes'] / 2**20:.0f} MiB, "
              f"load {r['load_before'][0]:.2f} -> {r['load_after'][0]:.2f}")
    if len(cl) >= 2:
        print(f"scaling {cl[0]['mode']} -> {cl[-1]['mode']}: {cl[0]['wall_s'] / cl[-1]['wall_s']:.2f}x")
    tw = [r for r in rows if r["mode"].startswith("twin span")]
    if len(tw) == 2:
        print(f"twin-driven year at {tw[0]['res']:g}°: months one by one {tw[0]['wall_s']:.1f} s, together "
              f"{tw[1]['wall_s']:.1f} s ({tw[0]['wall_s'] / tw[1]['wall_s']:.2f}x); peak {tw[0]['peak_bytes'] / 2**20:.0f} "
              f"vs {tw[1]['peak_bytes'] / 2**20:.0f} MiB")
    # the 0.1° global daily year of an ensemble, from each run's end-to-end rate on its finest grid
    for run in runs:
        e2e = [r for r in rows if r["mode"] == "end-to-end" and r["run"] == run and sum(r["seconds"].values())]
        if not e2e:
            continue
        r = min(e2e, key=lambda r: r["res"])
        sec = r["seconds"]
        share = sec["predict"] / sum(sec.values())
        cells = r["cells"] * (r["res"] / 0.1) ** 2
        proj = r["wall_s"] * cells * 365 / r["cell_days"] * (1 - share + share * args.members / r["members"])
        print(f"projection {Path(run).name}: 0.1° global daily year ({cells:.3g} land cells x 365 days), "
              f"{args.members} members: {proj / 3600:.1f} h on this machine ({os.cpu_count()} cores), from "
              f"{r['cell_days'] / r['wall_s']:.0f} cell-days/s at {r['res']:g}° with {r['members']} members, "
              f"predict {100 * share:.0f}% of the task seconds")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", default=None, help="run folders (default: train a tree and a temporal run)")
    ap.add_argument("--resolution", type=float, default=0.25)
    ap.add_argument("--memory-resolutions", type=float, nargs="+", default=[1.0, 0.5, 0.25],
                    help="grid sizes for the peak-memory comparison (default: 1 0.5 0.25)")
    ap.add_argument("--twin-year", type=float, default=None, metavar="RES",
                    help="also time a year of monthly products from the twin's drivers at RES degrees, months "
                         "one by one against months together")
    ap.add_argument("--year", default="2020", help="the year of --twin-year")
    ap.add_argument("--workers", type=int, nargs="*", default=[],
                    help="also run the end-to-end product at --resolution on LocalClusters of these worker counts")
    ap.add_argument("--cluster-resolution", type=float, default=None,
                    help="grid of the --workers runs (default: --resolution; one of the grids measured)")
    ap.add_argument("--members", type=int, default=10, help="ensemble members of the 0.1° projection")
    ap.add_argument("--month", default="2020-07")
    ap.add_argument("--chunk", type=int, default=90, help="spatial chunk: CHUNK lat x 2*CHUNK lon cells")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "cbgrid-bench-upscale",
                    help="cache of driver grids, contexts, runs and products (default: in the temp folder)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "raw":
            r = child_raw(rest[0], float(rest[1]), rest[2], rest[3], rest[4], int(rest[5]))
        elif kind == "twin":
            r = child_twin(rest[0], float(rest[1]), rest[2], rest[3], int(rest[4]), int(rest[5]))
        else:
            r = child_e2e(rest[0], float(rest[1]), rest[2], rest[3], rest[4], rest[5], int(rest[6]), int(rest[7]))
        print(json.dumps(r))
        return

    from cbgrid import upscale

    args.work.mkdir(parents=True, exist_ok=True)
    runs = args.runs or train_runs(args.work)
    spin = max(upscale.history_days(r) for r in runs)
    mem_res = args.memory_resolutions
    rows = []
    for res in sorted({args.resolution, *mem_res, args.cluster_resolution or args.resolution}, reverse=True):
        ctx, drv = prepare(args.work, res, args.month, spin)
        for run in runs if res == args.resolution else runs[:1]:
            out = str(args.work / f"out-{res:g}")
            if res == args.resolution:
                rows.append(_spawn(["--child", "raw", run, str(res), args.month, str(ctx), str(drv), str(args.chunk)]))
            rows.append(_spawn(["--child", "e2e", run, str(res), args.month, str(ctx), str(drv), out, str(args.chunk),
                                "0"]))
            print(json.dumps(rows[-1]), flush=True)
        if res == (args.cluster_resolution or args.resolution):
            for n in args.workers:
                out = str(args.work / f"out-{res:g}-cluster{n}")
                rows.append(_spawn(["--child", "e2e", runs[0], str(res), args.month, str(ctx), str(drv), out,
                                    str(args.chunk), str(n)]))
                print(json.dumps(rows[-1]), flush=True)
    if args.twin_year:
        from cbgrid.upscale import SPAN_DAYS

        for span in (1, SPAN_DAYS):
            out = str(args.work / f"out-twin-{args.twin_year:g}-span{span}")
            rows.append(_spawn(["--child", "twin", runs[0], str(args.twin_year), args.year, out, str(args.chunk),
                                str(span)]))
            print(json.dumps(rows[-1]), flush=True)
    report(rows, runs, args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
