"""A gridded model against a cbgrid product on the grid (``cbgrid validate MODEL --product FILES``).

Both are put on the model's time scale (a monthly model against the product's monthly means
over whole months) and on one grid: where the grids differ, the finer is regridded to the
coarser **conservatively** with ``xarray-regrid`` (area-weighted means of the cells each target
cell overlaps, missing cells skipped), so budgets survive the regridding. Written to one folder:

* ``maps.nc`` — per variable, the time-mean model and product, bias (model − product), RMSE and
  the Pearson correlation over time of every cell;
* ``zonal_means.csv`` — the time-mean of both per latitude row (land-fraction weighted);
* ``seasonal_cycle.csv`` — the mean seasonal cycle (calendar month) of both per latitude band
  (``cbgrid.totals.ZONES``) and per IGBP class of the product's cells;
* ``totals.csv`` — global totals in Pg C per year of the model beside the product's, with the
  product's ensemble spread (``cbgrid.totals``);
* ``bias_<VAR>.png`` figures (``cbgrid.plots``) unless ``plots=False``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from cbgrid import esm, plots, product, schema
from cbgrid.atomic import replace_dir
from cbgrid.errors import InputError
from cbgrid.grid import cell_area
from cbgrid.runtime import require
from cbgrid.totals import G_PER_PG, ZONES, zone_name

log = logging.getLogger(__name__)

#: Store target → product variable.
PRODUCT_NAME = {v: k for k, v in product.TARGET_OF.items()}


@dataclass
class Comparison:
    """What :func:`compare_with_product` computed and wrote."""

    path: Path
    maps: xr.Dataset
    zonal: pd.DataFrame
    seasonal: pd.DataFrame
    totals: pd.DataFrame
    regridded: str


def _products(paths: Sequence) -> xr.Dataset:
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.exists():
            raise InputError(f"product file {p} does not exist")
    ds = xr.open_mfdataset([str(p) for p in paths], combine="by_coords", engine="netcdf4", data_vars="minimal",
                           coords="minimal", compat="override", chunks={"time": 31})
    if not all(f in ds for f in product.FLUXES):
        raise InputError(f"{paths[0].name}: not a cbgrid product (it lacks {[f for f in product.FLUXES if f not in ds]})")
    return ds.assign_coords(time=ds.indexes["time"].normalize())


def _monthly(prod: xr.Dataset) -> xr.Dataset:
    days = prod.indexes["time"]
    month = days.to_period("M")
    counts = pd.Series(1, index=month).groupby(level=0).sum()
    full = counts[counts.values == counts.index.days_in_month].index
    if len(full) == 0:
        raise InputError("the product covers no whole month; a monthly model is compared with monthly means")
    keep = np.flatnonzero(np.isin(month, full))
    flux = [v for v in prod.data_vars if prod[v].dims == ("time", "lat", "lon")]
    return prod[flux].isel(time=keep).resample(time="MS").mean()


def _step(c) -> float:
    return float(abs(np.median(np.diff(np.asarray(c, float))))) if len(c) > 1 else 0.0


def _regrid(src: xr.Dataset, target: xr.Dataset) -> xr.Dataset:
    require("xarray_regrid", "regridding a model or product conservatively")
    return src.regrid.conservative(target, latitude_coord="lat", skipna=True)


def compare_with_product(model_files, product_files, out, *, targets=None, mapping=None, plots_: bool = True,
                         overwrite: bool = True) -> Comparison:
    """Compare model output with cbgrid products on one grid; see the module docstring."""
    model = esm.open_model(model_files, mapping=mapping, targets=targets)
    prod = _products(product_files)
    if model.attrs["time_scale"] == esm.MONTHLY:
        pflux = _monthly(prod)
    else:
        pflux = prod[[v for v in prod.data_vars if prod[v].dims == ("time", "lat", "lon")]]
    static = prod[["land_fraction", "igbp"]].load()
    times = model.indexes["time"].intersection(pflux.indexes["time"])
    if len(times) == 0:
        m, p = model.indexes["time"], pflux.indexes["time"]
        raise InputError(f"the model ({m[0]:%Y-%m-%d}..{m[-1]:%Y-%m-%d}) and the product ({p[0]:%Y-%m-%d}.."
                         f"{p[-1]:%Y-%m-%d}) share no {'month' if model.attrs['time_scale'] == esm.MONTHLY else 'day'}")
    names = [t for t in schema.TARGETS if t in model]
    m = model[names].sel(time=times).rename({t: PRODUCT_NAME[t] for t in names})
    vars_ = [PRODUCT_NAME[t] for t in names]
    p = pflux[vars_ + [f"{v}_sd" for v in vars_ if f"{v}_sd" in pflux]].sel(time=times)
    same = (m.sizes["lat"] == p.sizes["lat"] and m.sizes["lon"] == p.sizes["lon"]
            and np.allclose(m["lat"], p["lat"]) and np.allclose(m["lon"], p["lon"]))
    if same:
        regridded = "none (same grid)"
        lf, igbp = static["land_fraction"], static["igbp"]
    elif _step(m["lat"]) >= _step(p["lat"]):
        regridded = f"product to the model grid ({_step(m['lat']):g} degree), conservative"
        p = _regrid(p.load(), m)
        lf = _regrid(static[["land_fraction"]], m)["land_fraction"]
        igbp = static["igbp"].sel(lat=m["lat"], lon=m["lon"], method="nearest").assign_coords(lat=m["lat"], lon=m["lon"])
    else:
        regridded = f"model to the product grid ({_step(p['lat']):g} degree), conservative"
        m = _regrid(m.load(), p)
        lf, igbp = static["land_fraction"], static["igbp"]
    m, p = m.load(), p.load()
    log.info("comparing %s with the product over %d %s; regridded: %s", model.attrs["experiment"], len(times),
             "months" if model.attrs["time_scale"] == esm.MONTHLY else "days", regridded)

    maps = xr.Dataset()
    for v in vars_:
        a, b = m[v].astype(np.float64), p[v].astype(np.float64)
        ok = a.notnull() & b.notnull()
        a, b = a.where(ok), b.where(ok)
        maps[f"{v}_model"] = a.mean("time")
        maps[f"{v}_product"] = b.mean("time")
        maps[f"{v}_bias"] = (a - b).mean("time")
        maps[f"{v}_rmse"] = np.sqrt(((a - b) ** 2).mean("time"))
        maps[f"{v}_correlation"] = xr.corr(a, b, dim="time")
        for k in ("model", "product", "bias", "rmse"):
            maps[f"{v}_{k}"].attrs["units"] = product.UNITS
        maps[f"{v}_correlation"].attrs["units"] = "1"
    maps.attrs = {"model": model.attrs["experiment"], "regridded": regridded, "time_scale": model.attrs["time_scale"],
                  "period": f"{times[0]:%Y-%m-%d}..{times[-1]:%Y-%m-%d}"}

    area = xr.DataArray(cell_area(maps["lat"].values, maps["lon"].values), dims=("lat", "lon"),
                        coords={"lat": maps["lat"], "lon": maps["lon"]})
    w = (area * lf.fillna(0)).astype(np.float64)
    zonal = []
    for v in vars_:
        for who in ("model", "product"):
            x = maps[f"{v}_{who}"]
            ww = w.where(x.notnull(), 0)
            zm = (x.fillna(0) * ww).sum("lon") / ww.sum("lon").where(ww.sum("lon") > 0)
            zonal.append(pd.DataFrame({"lat": maps["lat"].values, "variable": v, "source": who, "mean": zm.values}))
    zonal = pd.concat(zonal, ignore_index=True)

    month = m.indexes["time"].month
    regions = [("zonal", zone_name(*z), (maps["lat"] >= z[0]) & (maps["lat"] < z[1] if z[1] < 90 else maps["lat"] <= z[1]))
               for z in ZONES]
    codes = np.asarray(igbp.values)
    for c, cname in enumerate(schema.IGBP_CLASSES):
        if (codes == c).any():
            regions.append(("igbp", cname, xr.DataArray(codes == c, dims=("lat", "lon"))))
    seasonal = []
    for v in vars_:
        for who, ds in (("model", m), ("product", p)):
            x = ds[v].astype(np.float64)
            clim = x.assign_coords(month=("time", month)).groupby("month").mean("time")
            for kind, region, mask in regions:
                ww = w.where(mask & clim.notnull(), 0)
                val = (clim.fillna(0) * ww).sum(("lat", "lon")) / ww.sum(("lat", "lon")).where(ww.sum(("lat", "lon")) > 0)
                seasonal.append(pd.DataFrame({"kind": kind, "region": region, "variable": v, "source": who,
                                              "month": clim["month"].values, "mean": np.asarray(val.values)}))
    seasonal = pd.concat(seasonal, ignore_index=True)

    days_in = (m.indexes["time"].days_in_month.values if model.attrs["time_scale"] == esm.MONTHLY
               else np.ones(len(times)))
    year = m.indexes["time"].year
    rows = []
    for v in vars_:
        for who, ds in (("model", m), ("product", p)):
            series = ((ds[v].fillna(0) * w).sum(("lat", "lon")).values * days_in) / G_PER_PG
            sd = (((ds[f"{v}_sd"].fillna(0) * w).sum(("lat", "lon")).values * days_in) / G_PER_PG
                  if f"{v}_sd" in ds else np.full(len(times), np.nan))
            frame = pd.DataFrame({"year": year, "total": series, "sd": sd}).groupby("year").sum(min_count=1)
            for y, r in frame.iterrows():
                rows.append({"year": int(y), "variable": v, "source": who, "total_PgC": float(r["total"]),
                             "sd_PgC": float(r["sd"]) if who == "product" else np.nan})
    totals = pd.DataFrame(rows)

    with replace_dir(out, overwrite=overwrite, hint="choose another --out") as tmp:
        tmp.mkdir(parents=True)
        maps.to_netcdf(tmp / "maps.nc")
        zonal.to_csv(tmp / "zonal_means.csv", index=False)
        seasonal.to_csv(tmp / "seasonal_cycle.csv", index=False)
        totals.to_csv(tmp / "totals.csv", index=False)
        if plots_:
            for v in vars_:
                plots.save(plots.comparison_maps(maps, v), tmp / f"bias_{v}.png")
    return Comparison(Path(out), maps, zonal, seasonal, totals, regridded)
