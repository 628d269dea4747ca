"""Products and site observations in the form ILAMB and ilamb3 read as they are.

* :func:`ilamb` — cbgrid products (daily, ``GPP``/``RECO``/``NEE``) → one monthly, multi-year
  file per variable, named and laid out as ILAMB expects of a reference: lower-case ``gpp``,
  ``reco``, ``nee`` and ``nep`` (= −NEE, the CF standard name ILAMB's NEP comparisons use),
  ``time_bnds`` on month edges, the standard calendar (monthly means of real days: 29 February
  is averaged into its month, not a day ILAMB must find), plus an ILAMB ``.cfg`` block and an
  ilamb3 ``.yaml`` block naming the files.
* :func:`ilamb_sites` — a store → ILAMB's site-reference form: per variable a (time, data) file
  of monthly means over QC = 1 days (a month with at least 10 such days), with ``lat``/``lon``
  and ``site_name`` per ``data`` entry.

Files are written into a folder beside ``out`` and swapped in when complete.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from cbgrid import __version__, product
from cbgrid import validate as val
from cbgrid.atomic import replace_dir
from cbgrid.errors import InputError
from cbgrid.schema import GPP, NEE, RECO, SITE
from cbgrid.store import open_store

log = logging.getLogger(__name__)

#: Export name → (product flux, sign, CF standard name or "", long name).
VARIABLES = {
    "gpp": ("GPP", 1.0, "gross_primary_productivity_of_biomass_expressed_as_carbon",
            "gross primary productivity (carbon)"),
    "reco": ("RECO", 1.0, "", "ecosystem respiration (carbon), autotrophic + heterotrophic"),
    "nee": ("NEE", 1.0, "", "net ecosystem exchange of carbon, positive to the atmosphere"),
    "nep": ("NEE", -1.0, "surface_net_downward_mass_flux_of_carbon_dioxide_expressed_as_carbon_due_to_all_land_"
            "processes_excluding_anthropogenic_land_use_change", "net ecosystem production (carbon), -NEE"),
}
UNITS = product.UNITS  # g m-2 d-1: UDUNITS converts it to kg m-2 s-1 inside ILAMB
TIME_UNITS = "days since 1850-01-01 00:00:00"


def _month_axis(months: pd.DatetimeIndex) -> tuple[np.ndarray, np.ndarray]:
    origin = pd.Timestamp("1850-01-01")
    lo = (months - origin) / pd.Timedelta(days=1)
    hi = ((months + pd.offsets.MonthBegin(1)) - origin) / pd.Timedelta(days=1)
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    return (lo + hi) / 2, np.stack([lo, hi], axis=1)


def _time_coords(ds: xr.Dataset, months: pd.DatetimeIndex) -> xr.Dataset:
    mid, bnds = _month_axis(months)
    ds = ds.assign_coords(time=("time", mid, {"standard_name": "time", "axis": "T", "units": TIME_UNITS,
                                              "calendar": "standard", "bounds": "time_bnds"}))
    ds["time_bnds"] = (("time", "nb"), bnds, {"units": TIME_UNITS, "calendar": "standard"})
    return ds


def _encode(ds: xr.Dataset) -> dict:
    enc = {v: {"zlib": True, "complevel": 4, "_FillValue": np.float32(1e20)} for v in ds.data_vars if v != "time_bnds"}
    enc.update({c: {"_FillValue": None} for c in ("time", "lat", "lon", "time_bnds") if c in ds.variables})
    return enc


def _open_products(paths: Sequence) -> xr.Dataset:
    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError("no product files given")
    for p in paths:
        if not p.exists():
            raise InputError(f"product file {p} does not exist")
    try:
        ds = xr.open_mfdataset([str(p) for p in paths], combine="by_coords", engine="netcdf4", data_vars="minimal",
                               coords="minimal", compat="override", chunks={"time": 31})
    except OSError as e:  # netCDF4 names the file, not what to pass instead
        raise InputError(f"{e.filename or paths[0]}: not a NetCDF file cbgrid can read ({e.strerror or e}); pass "
                         "the .nc files `cbgrid upscale` wrote") from None
    missing = [f for f in product.FLUXES if f not in ds]
    if missing:
        raise InputError(f"{paths[0].name}: not a cbgrid product (no {missing})")
    return ds


def ilamb(product_files: Sequence, out, *, name: str = "cbgrid", overwrite: bool = True) -> dict:
    """Monthly ILAMB reference files from daily products; returns {variable: path, 'cfg': ..., 'yaml': ...}.

    Months are means over their days; a month the products cover only in part is left out
    (ILAMB reads a value as the whole month's mean), with a log line.
    """
    ds = _open_products(product_files)
    days = ds.indexes["time"].normalize()
    ds = ds.assign_coords(time=days)
    month = days.to_period("M")
    counts = pd.Series(1, index=month).groupby(level=0).sum()
    full = counts[counts.values == counts.index.days_in_month].index
    part = sorted(set(counts.index) - set(full))
    if part:
        log.info("months covered in part are left out: %s", ", ".join(str(p) for p in part))
    if len(full) == 0:
        raise InputError("the products cover no whole month; ILAMB compares monthly means")
    keep = np.isin(month, full)
    monthly = ds[list(product.FLUXES)].isel(time=np.flatnonzero(keep)).resample(time="MS").mean()
    months = monthly.indexes["time"]
    written: dict[str, Path] = {}
    with replace_dir(out, overwrite=overwrite, hint="choose another --out") as tmp:
        tmp.mkdir(parents=True)
        for var, (flux, sign, std, long) in VARIABLES.items():
            da = (sign * monthly[flux]).astype(np.float32)
            da.attrs = {"units": UNITS, "long_name": long, "cell_methods": "time: mean area: mean where land",
                        **({"standard_name": std} if std else {})}
            out_ds = _time_coords(xr.Dataset({var: da}), months)
            out_ds["lat"].attrs = {"standard_name": "latitude", "units": "degrees_north", "axis": "Y"}
            out_ds["lon"].attrs = {"standard_name": "longitude", "units": "degrees_east", "axis": "X"}
            out_ds.attrs = {"Conventions": "CF-1.8", "title": f"{name} {var} monthly means for ILAMB",
                            "source": f"cbgrid {__version__} export of {len(product_files)} product file(s)",
                            "history": f"cbgrid export ilamb ({' '.join(Path(p).name for p in product_files)})"}
            path = tmp / f"{var}.nc"
            out_ds.to_netcdf(path, encoding=_encode(out_ds))
            written[var] = Path(out) / path.name
        (tmp / "ilamb.cfg").write_text(ilamb_cfg(name))
        (tmp / "ilamb3.yaml").write_text(ilamb3_yaml(name))
    written["cfg"] = Path(out) / "ilamb.cfg"
    written["yaml"] = Path(out) / "ilamb3.yaml"
    log.info("ILAMB files for %d months (%s..%s) in %s", len(months), f"{months[0]:%Y-%m}", f"{months[-1]:%Y-%m}", out)
    return written


def ilamb_cfg(name: str = "cbgrid") -> str:
    """An ILAMB 2.x configure block using the exported files (paths relative to ILAMB_ROOT/DATA).

    >>> "source   = \\"DATA/cbgrid/gpp.nc\\"" in ilamb_cfg()
    True
    """
    blocks = [("Gross Primary Productivity", "gpp", "GPP"), ("Ecosystem Respiration", "reco", "RECO"),
              ("Net Ecosystem Exchange", "nee", "NEE")]
    lines = ["[h1: Ecosystem and Carbon Cycle]", "bgcolor = \"#ECFFE6\"", ""]
    for title, var, alt in blocks:
        lines += [f"[h2: {title}]", f"variable       = \"{var}\"", f"alternate_vars = \"{alt}\"",
                  "cmap           = \"Greens\"" if var == "gpp" else "cmap           = \"RdBu_r\"", "",
                  f"[{name.upper()}]", f"source   = \"DATA/{name}/{var}.nc\"", "weight   = 1",
                  "table_unit = \"Pg yr-1\"", "plot_unit  = \"g m-2 d-1\"", "space_mean = False", ""]
    lines += ["[h2: Net Ecosystem Production]", "variable       = \"nep\"", "derived        = \"gpp-ra-rh\"", "",
              f"[{name.upper()}]", f"source   = \"DATA/{name}/nep.nc\"", "weight   = 1", ""]
    return "\n".join(lines)


def ilamb3_yaml(name: str = "cbgrid") -> str:
    """An ilamb3 configure block (YAML) using the exported files.

    >>> "variable: gpp" in ilamb3_yaml()
    True
    """
    lines = ["Ecosystem and Carbon Cycle:"]
    for title, var in (("Gross Primary Productivity", "gpp"), ("Ecosystem Respiration", "reco"),
                       ("Net Ecosystem Exchange", "nee"), ("Net Ecosystem Production", "nep")):
        lines += [f"  {title}:", f"    {name.upper()}:", "      sources:", f"        {var}: {name}/{var}.nc",
                  f"      variable: {var}"]
    return "\n".join(lines) + "\n"


def ilamb_sites(store, out, *, split=None, min_days: int = val.MIN_DAYS_PER_MONTH, overwrite: bool = True,
                name: str = "cbgrid-sites") -> dict:
    """The store's observations as ILAMB site references: per variable (gpp, reco, nee, nep)
    a (time, data) file of monthly means over QC = 1 days with ``lat``, ``lon`` and
    ``site_name`` per site; only the test sites of ``split`` when given."""
    ds = open_store(store) if isinstance(store, (str, os.PathLike)) else store
    sites = [str(s) for s in ds[SITE].values.tolist()]
    if split is not None:
        sites, _, _ = val._sites_and_split(ds, split)
    targets = [t for t in (GPP, RECO, NEE) if t in ds]
    if not targets:
        raise InputError(f"the store has none of {GPP}, {RECO}, {NEE}")
    obs = val.monthly_observations(ds, sites, targets, min_days=min_days)
    months = obs.indexes["time"]
    written = {}
    lat = ds["lat"].sel({SITE: sites}).values.astype(np.float64)
    lon = ds["lon"].sel({SITE: sites}).values.astype(np.float64)
    with replace_dir(out, overwrite=overwrite, hint="choose another --out") as tmp:
        tmp.mkdir(parents=True)
        for var, (flux, sign, std, long) in VARIABLES.items():
            target = product.TARGET_OF[flux]
            if target not in obs:
                continue
            values = (sign * obs[target]).transpose("time", SITE).values.astype(np.float32)
            out_ds = xr.Dataset(
                {var: (("time", "data"), values, {"units": UNITS, "long_name": f"observed {long}, monthly mean of "
                                                  "NEE_VUT_USTAR50_QC == 1 days",
                                                  **({"standard_name": std} if std else {})}),
                 "lat": (("data",), lat, {"standard_name": "latitude", "units": "degrees_north"}),
                 "lon": (("data",), lon, {"standard_name": "longitude", "units": "degrees_east"}),
                 "site_name": (("data",), np.asarray(sites, dtype=object), {"long_name": "flux tower site"})})
            out_ds = _time_coords(out_ds, months)
            out_ds.attrs = {"Conventions": "CF-1.8", "featureType": "timeSeries",
                            "title": f"{name}: flux-tower {var}, monthly means",
                            "source": f"cbgrid {__version__} export of a CarbonBench store",
                            "comment": f"a month is a mean over >= {min_days} QC = 1 days, otherwise missing"}
            path = tmp / f"{var}.nc"
            enc = _encode(out_ds)
            enc["site_name"] = {"dtype": "str"}
            for c in ("lat", "lon"):
                enc[c] = {"_FillValue": None}
            out_ds.to_netcdf(path, encoding=enc)
            written[var] = Path(out) / path.name
    log.info("ILAMB site files: %d sites x %d months in %s", len(sites), len(months), out)
    return written
