"""Upscaling throughput and memory: end-to-end product writing against the raw model predict.

For a tree run and a temporal run, over a global grid (default 0.25°) for one month:

* raw predict — every modelled cell's drivers already in memory as one (site, time) Dataset,
  timed around ``Run.predict`` alone;
* end-to-end — ``cbgrid.upscale.upscale`` from driver files on disk (a local Zarr of the twin's
  gridded drivers, opened lazily), chunked dask inference, the CF NetCDF writer; the grid
  context (IGBP/Köppen from the rasters) is prepared once and passed in, and timed separately;

both in cell-days per second (modelled cells × output days), with their ratio (target ≤ 1.5),
and the peak resident memory of the end-to-end run at two grid sizes. Every measurement runs in
its own process, so each peak is that run's alone.

    python benchmarks/bench_upscale.py --runs runs/demo-xgboost runs/demo-ctlstm
    python benchmarks/bench_upscale.py --runs R1 R2 --resolution 0.5 --memory-resolutions 2 0.5

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


def child_e2e(run_path: str, res: float, month: str, ctx_path: str, drv_path: str, out: str, chunk: int) -> dict:
    """cbgrid.upscale.upscale from the driver Zarr to the NetCDF product."""
    import xarray as xr

    from cbgrid import product, upscale

    ctx = xr.load_dataset(ctx_path)
    recipe = _recipe(res, month, Path(drv_path), Path(out), run_path, {"lat": chunk, "lon": 2 * chunk})
    run = upscale.resolve_run(run_path)
    t0 = time.perf_counter()
    res_ = upscale.upscale(recipe, runs=[run], context=ctx, progress=False, scores=None)
    wall = time.perf_counter() - t0
    peak = _peak()  # before the check below reads whole layers back
    path = res_["products"][0]
    assert product.check_product(path) == []
    with product.open_product(path) as ds:
        days = ds.sizes["time"]
    return {"mode": "end-to-end", "run": run_path, "kind": run.kind, "res": res, "cells": int(ctx["modelled"].sum()),
            "days": days, "wall_s": wall, "peak_bytes": peak, "file_bytes": Path(path).stat().st_size}


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", default=None, help="run folders (default: train a tree and a temporal run)")
    ap.add_argument("--resolution", type=float, default=0.25)
    ap.add_argument("--memory-resolutions", type=float, nargs=2, default=None,
                    help="two grid sizes for the peak-memory comparison (default: 1 and --resolution)")
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
        else:
            r = child_e2e(rest[0], float(rest[1]), rest[2], rest[3], rest[4], rest[5], int(rest[6]))
        print(json.dumps(r))
        return

    from cbgrid import upscale

    args.work.mkdir(parents=True, exist_ok=True)
    runs = args.runs or train_runs(args.work)
    spin = max(upscale.history_days(r) for r in runs)
    mem_res = args.memory_resolutions or [1.0, args.resolution]
    rows = []
    for res in sorted({args.resolution, *mem_res}, reverse=True):
        ctx, drv = prepare(args.work, res, args.month, spin)
        for run in runs if res == args.resolution else runs[:1]:
            out = str(args.work / f"out-{res:g}")
            if res == args.resolution:
                rows.append(_spawn(["--child", "raw", run, str(res), args.month, str(ctx), str(drv), str(args.chunk)]))
            rows.append(_spawn(["--child", "e2e", run, str(res), args.month, str(ctx), str(drv), out, str(args.chunk)]))
            print(json.dumps(rows[-1]), flush=True)

    print(f"\n{'run':<28} {'kind':<9} {'res':>5} {'mode':<11} {'cells':>8} {'days':>5} {'wall s':>8} "
          f"{'cell-days/s':>12} {'peak MiB':>9}")
    for r in rows:
        cd = r["cells"] * r["days"]
        print(f"{Path(r['run']).name:<28} {r['kind']:<9} {r['res']:>5g} {r['mode']:<11} {r['cells']:>8} {r['days']:>5} "
              f"{r['wall_s']:>8.1f} {cd / r['wall_s']:>12.0f} {r['peak_bytes'] / 2**20:>9.0f}")
    print()
    for run in runs:
        raw = [r for r in rows if r["run"] == run and r["mode"] == "raw" and r["res"] == args.resolution]
        e2e = [r for r in rows if r["run"] == run and r["mode"] == "end-to-end" and r["res"] == args.resolution]
        if raw and e2e:
            print(f"{Path(run).name}: end-to-end / raw predict time = {e2e[0]['wall_s'] / raw[0]['wall_s']:.2f} (target <= 1.5)")
    mem = [r for r in rows if r["mode"] == "end-to-end" and r["run"] == runs[0]]
    if len(mem) >= 2:
        a, b = sorted(mem, key=lambda r: r["cells"])[:: len(mem) - 1]
        print(f"peak memory, {Path(runs[0]).name}: {a['res']:g}° ({a['cells']} cells) {a['peak_bytes'] / 2**20:.0f} MiB, "
              f"{b['res']:g}° ({b['cells']} cells, x{b['cells'] / a['cells']:.0f}) {b['peak_bytes'] / 2**20:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
