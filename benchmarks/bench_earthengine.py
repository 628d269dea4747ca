"""Earth Engine runs at the scale of issue 13: the request plans, and what resuming costs locally.

Prints, computed by the code that sizes the real requests (``cbgrid.sources.earthengine_plan``):

1. the site plan for 474 sites x 2000-2024, minimal and full feature sets;
2. the grid plan for a global daily year at 0.25 and 0.1 degrees;

then measures, in one run, the local bookkeeping of a resumable download at the 0.1 degree
scale (no network: the requests themselves are not timed, they need Earth Engine):

3. creating the empty store (coordinates through xarray, arrays through zarr) beside xarray's
   ``to_zarr(compute=False)`` template of the same lazy grid;
4. writing one MODIS block (9 days x 256 x 256 float32) plus its marker, per block;
5. scanning the markers of all 62,640 blocks, what a resumed run does first.

    python benchmarks/bench_earthengine.py
    python benchmarks/bench_earthengine.py --workers 10 --skip-measure
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from cbgrid.atomic import replace_file
from cbgrid.sources import earthengine as E
from cbgrid.sources import earthengine_cache as C


def _global(res: float):
    return np.arange(-90 + res / 2, 90, res), np.arange(-180 + res / 2, 180, res)


def plans(workers: int) -> None:
    for features in ("minimal", "full"):
        print(E.sites_plan(474, "2000-01-01", "2024-12-31", feature_set=features, workers=workers).describe(), "\n")
    for res in (0.25, 0.1):
        lat, lon = _global(res)
        print(E.EarthEngineGrid(lat, lon, "2021-01-01", "2021-12-31", workers=workers).plan.describe(), "\n")


def measure() -> None:
    lat, lon = _global(0.1)
    grid = E.EarthEngineGrid(lat, lon, "2021-01-01", "2021-12-31")
    blocks = [(v, idx) for v in grid.template().data_vars for idx in grid.blocks(v)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        C._create(grid, tmp / "direct")
        direct = time.perf_counter() - t0
        t0 = time.perf_counter()
        grid.template().to_zarr(tmp / "xarray.zarr", zarr_format=3, consolidated=False, compute=False)
        template = time.perf_counter() - t0
        print(f"3. empty store for {len(blocks):,} blocks: {direct:.2f} s (xarray to_zarr(compute=False) template: "
              f"{template:.2f} s, {template / direct:.0f}x)")

        import zarr

        group = zarr.open_group(tmp / "direct" / C.STORE, mode="r+", zarr_format=3)
        modis = [b for b in blocks if grid.source_of[b[0]] == "modis"][:200]
        shape = tuple(s.stop - s.start for s in grid.region(*modis[0]))
        values = np.random.default_rng(0).random(shape, dtype=np.float32)
        t0 = time.perf_counter()
        for var, idx in modis:
            group[var][grid.region(var, idx)] = values
            with replace_file(C._marker(tmp / "direct", var, idx)) as m:
                m.write_text("final\n")
        per_block = (time.perf_counter() - t0) / len(modis)
        print(f"4. writing one {values.shape} float32 block ({values.nbytes / 1e6:.1f} MB) and its marker: "
              f"{per_block * 1e3:.1f} ms, {per_block / 5 * 100:.2f} % of a 5 s request")

        for var, idx in blocks:  # every block marked, as after a complete run
            path = C._marker(tmp / "direct", var, idx)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("final\n")
        t0 = time.perf_counter()
        found = C.markers(tmp / "direct")
        scan = time.perf_counter() - t0
        print(f"5. scanning {len(found):,} markers on resume: {scan:.2f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=10, help="concurrent requests assumed in the plans (default 10)")
    p.add_argument("--skip-measure", action="store_true", help="print the plans only")
    args = p.parse_args()
    plans(args.workers)
    if not args.skip_measure:
        measure()


if __name__ == "__main__":
    main()
