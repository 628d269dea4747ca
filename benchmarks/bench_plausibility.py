"""Cost of the plausible-range check that local drivers and model output pass through.

`cbgrid.schema.refuse_implausible` adds one `map_blocks` per variable to the lazy graph, so each
chunk is checked by the task that makes it. This script builds (outside the timing) a month of
daily drivers on a global grid, the minimal ERA5-Land and the MODIS features, as a dask-backed
Dataset in memory, so no file I/O hides the check. It then computes the Dataset with and without
the check, alternating, and prints the medians and their ratio.

    python benchmarks/bench_plausibility.py
    python benchmarks/bench_plausibility.py --resolution 0.5 --repeats 5
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import xarray as xr

from cbgrid import catalog, schema


def drivers(resolution: float, days: int, chunk: int) -> xr.Dataset:
    lat = np.arange(-90 + resolution / 2, 90, resolution)
    lon = np.arange(-180 + resolution / 2, 180, resolution)
    time_ = pd.date_range("2020-07-01", periods=days)
    rng = np.random.default_rng(0)
    data = {}
    for v in catalog.era5_bands("minimal") + catalog.modis_bands():
        lo, hi = schema.plausible_range(v)
        lo, hi = (lo if np.isfinite(lo) else 0.0), (hi if np.isfinite(hi) else 1.0)
        data[v] = (("time", "lat", "lon"), (lo + (hi - lo) * rng.random((days, lat.size, lon.size))).astype("f4"))
    ds = xr.Dataset(data, coords={"time": time_, "lat": lat, "lon": lon})
    return ds.chunk({"time": -1, "lat": chunk, "lon": 2 * chunk})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=float, default=1.0)
    ap.add_argument("--days", type=int, default=31)
    ap.add_argument("--chunk", type=int, default=45, help="latitude rows per chunk (twice as many longitudes)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    ds = drivers(args.resolution, args.days, args.chunk)
    checked = schema.refuse_implausible(ds, "bench")
    times: dict[str, list[float]] = {"plain": [], "checked": []}
    for _ in range(args.repeats):
        for name, d in (("plain", ds), ("checked", checked)):
            t0 = time.perf_counter()
            d.compute()
            times[name].append(time.perf_counter() - t0)
    plain, check = (float(np.median(times[k])) for k in ("plain", "checked"))
    n = sum(v.size for v in ds.data_vars.values())
    print(f"{len(ds.data_vars)} variables, {n / 1e6:.0f} M values in {ds.chunks and len(ds.chunks['lat']) * len(ds.chunks['lon'])} "
          f"chunks per variable: compute {plain:.3f} s plain, {check:.3f} s checked (medians of {args.repeats}); "
          f"ratio {check / plain:.2f}, {1e9 * (check - plain) / n:.2f} ns per value")


if __name__ == "__main__":
    main()
