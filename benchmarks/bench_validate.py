"""Validating a 1-degree monthly model over 25 years at 474 sites (issue 12).

Builds, outside the timing, a CMIP6-style model on the global 1-degree grid, 2000-2024 monthly,
noleap calendar, kg m-2 s-1, longitudes 0..360 (``gpp``, ``ra``, ``rh``, ``nep`` in one NetCDF
file, land cells from the shipped IGBP raster, a smooth seasonal cycle: the values do not matter
for the timing) and the twin store of 474 sites over the same years (written to Zarr), then times
``cbgrid.validate.validate_sites`` end to end: opening and decoding the file, unit conversion,
finding each site's cell, reading the 474 series, the monthly observed means over QC = 1 days,
scoring and writing the report (tables only).

    python benchmarks/bench_validate.py
    python benchmarks/bench_validate.py --sites 100 --years 5 --keep /tmp/bench_validate
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cftime
import numpy as np
import pandas as pd
import xarray as xr

from cbgrid import context, validate
from cbgrid.sources import twin
from cbgrid.store import write_store


def model_file(path: Path, years: int, res: float = 1.0) -> Path:
    lat = np.arange(-90 + res / 2, 90, res)
    lon = np.arange(-180 + res / 2, 180, res)
    igbp = context.igbp_on_grid(lat, lon)[0].values
    land = (igbp > 0) & (igbp != 15)
    months = pd.date_range("2000-01-01", periods=12 * years, freq="MS")
    phase = 2 * np.pi * (months.month.values - 1) / 12
    season = np.cos(phase[:, None, None] - np.sign(lat)[None, :, None] * np.pi)  # summer peak per hemisphere
    gpp_gd = np.where(land[None], 4.0 + 3.0 * season * np.abs(np.sin(np.deg2rad(lat)))[None, :, None], np.nan)
    reco_gd = np.where(land[None], 3.5 + 1.5 * season, np.nan)
    to_si = 1e-3 / 86400.0
    order = np.argsort(np.mod(lon, 360))
    lo = [cftime.datetime(t.year, t.month, 1, calendar="noleap") for t in months]
    hi = [cftime.datetime(t.year, t.month, 1, calendar="noleap") for t in months + pd.offsets.MonthBegin(1)]
    mid = [a + (b - a) / 2 for a, b in zip(lo, hi)]
    fields = {"gpp": gpp_gd, "ra": 0.45 * reco_gd, "rh": 0.55 * reco_gd, "nep": gpp_gd - reco_gd}
    ds = xr.Dataset(
        {k: (("time", "lat", "lon"), (v * to_si)[:, :, order].astype(np.float32), {"units": "kg m-2 s-1"})
         for k, v in fields.items()},
        coords={"time": ("time", np.array(mid, dtype=object), {"bounds": "time_bnds"}),
                "lat": ("lat", lat, {"standard_name": "latitude", "units": "degrees_north"}),
                "lon": ("lon", np.mod(lon, 360)[order], {"standard_name": "longitude", "units": "degrees_east"})},
        attrs={"source_id": "BENCH-1DEG"},
    )
    ds["time_bnds"] = (("time", "bnds"), np.stack([np.array(lo, dtype=object), np.array(hi, dtype=object)], 1))
    ds["time"].encoding = ds["time_bnds"].encoding = {"units": "days since 1850-01-01", "calendar": "noleap"}
    enc = {k: {"_FillValue": np.float32(1e20)} for k in fields}
    ds.to_netcdf(path, encoding=enc)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=474)
    ap.add_argument("--years", type=int, default=25)
    ap.add_argument("--keep", type=Path, default=None, help="folder to keep the inputs and report in")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_validate_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    path = model_file(work / "gpp_ra_rh_nep_Lmon_BENCH.nc", args.years)
    t1 = time.perf_counter()
    store = work / "store.zarr"
    if not store.exists():
        write_store(twin.twin_store(n_sites=args.sites, start="2000-01-01", end=f"{1999 + args.years}-12-31"),
                    store, progress=False)
    t2 = time.perf_counter()
    print(f"inputs: model file {path.stat().st_size / 1e6:.0f} MB in {t1 - t0:.1f} s; "
          f"store of {args.sites} sites x {args.years} years in {t2 - t1:.1f} s")
    t3 = time.perf_counter()
    v = validate.validate_sites([path], store, work / "report", plots=False)
    t4 = time.perf_counter()
    s = v.experiments[0].scores
    scored = int((s["status"] == 0).all("target").sum())
    print(f"validate: {s.sizes['site']} sites ({scored} scored on all targets), "
          f"{args.years * 12} months, 1 deg: {t4 - t3:.1f} s")


if __name__ == "__main__":
    main()
