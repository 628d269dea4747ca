"""Driver grids from local files: ERA5-Land / MODIS NetCDF, GRIB (cfgrib) or Zarr.

:func:`open_local` turns files as the Copernicus CDS (or any tool) writes them into the
(time, lat, lon) driver Dataset upscaling reads, with the store's variable names and units:

* names: the CDS short names (``t2m``, ``tp``, ``ssr``, ``e``, ``lai_hv``, ``lai_lv``, ...) are
  recognised; anything else is mapped with ``variables={store_name: name_in_file}``;
* coordinates: ``latitude``/``longitude`` -> ``lat``/``lon``, ``valid_time`` -> ``time``,
  0..360 longitudes -> -180..180, descending latitudes -> ascending;
* time: sub-daily files are aggregated to days — state variables by the daily mean,
  ``*_min``/``*_max`` by the daily extreme of their base variable, ``*_sum`` by the ERA5-Land
  accumulation rule (the value at 00 UTC of the next day is the total of the day);
* units: where a variable carries ``units``, they are checked against the variable catalog and
  converted for the few spellings that differ (``degC``, ``mm``, ``J m**-2``, ...); anything
  else that disagrees is an error naming the variable and both units;
* values: checked chunk by chunk, as they are computed, against the catalog's plausible range
  (:func:`cbgrid.schema.refuse_implausible`), so °C labelled K or an undeclared fill value stops the run;
* grid: a file on the target grid is used as is; a finer grid whose spacing divides the
  target's is block-averaged (``coarsen``, the cell mean on a regular grid); any other grid is
  interpolated bilinearly (``interp``) to the target cell centres.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from cbgrid import catalog, schema
from cbgrid.errors import InputError, MissingError, UnknownError, first_line
from cbgrid.recipe import RecipeError, check_keys
from cbgrid.sources import register_driver_source

log = logging.getLogger(__name__)

#: CDS short names of ERA5-Land (and MOD09 names as some tools write them) -> store names.
SHORT_NAMES = {
    "t2m": "temperature_2m",
    "d2m": "dewpoint_temperature_2m",
    "skt": "skin_temperature",
    "stl1": "soil_temperature_level_1",
    "stl2": "soil_temperature_level_2",
    "stl3": "soil_temperature_level_3",
    "stl4": "soil_temperature_level_4",
    "swvl1": "volumetric_soil_water_layer_1",
    "swvl2": "volumetric_soil_water_layer_2",
    "swvl3": "volumetric_soil_water_layer_3",
    "swvl4": "volumetric_soil_water_layer_4",
    "tp": "total_precipitation_sum",
    "e": "total_evaporation_sum",
    "ssr": "surface_net_solar_radiation_sum",
    "ssrd": "surface_solar_radiation_downwards_sum",
    "str": "surface_net_thermal_radiation_sum",
    "strd": "surface_thermal_radiation_downwards_sum",
    "slhf": "surface_latent_heat_flux_sum",
    "sshf": "surface_sensible_heat_flux_sum",
    "lai_hv": "leaf_area_index_high_vegetation",
    "lai_lv": "leaf_area_index_low_vegetation",
    "u10": "u_component_of_wind_10m",
    "v10": "v_component_of_wind_10m",
    "sp": "surface_pressure",
    "sd": "snow_depth_water_equivalent",
    "snowc": "snow_cover",
    "pev": "potential_evaporation_sum",
    "ro": "runoff_sum",
}

#: Unit spellings that mean the catalog's unit, and conversions (scale, offset) to it.
_SAME_UNITS = {
    "J m**-2": "J m-2", "J m^-2": "J m-2", "J/m2": "J m-2", "J m-2": "J m-2",
    "m**2 m**-2": "m2 m-2", "m^2 m^-2": "m2 m-2", "m2/m2": "m2 m-2",
    "m**3 m**-3": "m3 m-3", "m^3 m^-3": "m3 m-3", "m3/m3": "m3 m-3",
    "kelvin": "K", "m of water equivalent": "m", "metres": "m", "meters": "m",
    "Pa": "Pa", "m s**-1": "m s-1", "m/s": "m s-1", "%": "%", "(0 - 1)": "1", "dimensionless": "1",
}
_CONVERT = {
    ("degC", "K"): (1.0, 273.15), ("C", "K"): (1.0, 273.15), ("°C", "K"): (1.0, 273.15),
    ("deg_C", "K"): (1.0, 273.15), ("celsius", "K"): (1.0, 273.15),
    ("mm", "m"): (1e-3, 0.0), ("kg m-2", "m"): (1e-3, 0.0), ("kg m**-2", "m"): (1e-3, 0.0),
    ("MJ m-2", "J m-2"): (1e6, 0.0), ("MJ m**-2", "J m-2"): (1e6, 0.0),
    ("hPa", "Pa"): (100.0, 0.0), ("%", "1"): (0.01, 0.0),
}

ENGINES = ("netcdf4", "h5netcdf", "cfgrib", "zarr")


def _engine_for(path: str, engine: str | None) -> str:
    if engine:
        if engine not in ENGINES:
            raise InputError(f"engine {engine!r} is not supported; use one of {', '.join(ENGINES)}")
        return engine
    p = path.rstrip("/").lower()
    if p.endswith((".grib", ".grib2", ".grb", ".grb2")):
        return "cfgrib"
    if p.endswith(".zarr") or Path(path).is_dir():
        return "zarr"
    return "netcdf4"


def _open_one(path: str, engine: str) -> xr.Dataset:
    if engine == "cfgrib":
        try:
            import cfgrib  # noqa: F401
        except ImportError as e:
            raise ImportError(
                f"{path} is GRIB, which needs cfgrib (and ecCodes): pip install cfgrib — or convert the "
                "file to NetCDF (e.g. `grib_to_netcdf`) and set engine: netcdf4"
            ) from e
        return xr.open_dataset(path, engine="cfgrib", chunks={}, backend_kwargs={"indexpath": ""})
    try:
        if engine == "zarr":
            return xr.open_zarr(path, chunks={})
        return xr.open_dataset(path, engine=engine, chunks={})
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot be read with engine {engine!r} ({first_line(e)}); check the file is complete, "
                         f"or set drivers.engine to one of {', '.join(ENGINES)}") from e


def _expand(paths: Sequence[str]) -> list[str]:
    out = []
    for p in paths:
        hits = sorted(glob.glob(str(p)))
        if not hits:
            raise MissingError(f"no driver file matches {p}")
        out += hits
    return out


def normalise(ds: xr.Dataset, where: str = "driver file") -> xr.Dataset:
    """Coordinates as upscaling wants them: (time, lat, lon), lon in -180..180, lat ascending,
    time ascending; ``where`` (the file) starts every error message."""
    ren = {k: v for k, v in (("latitude", "lat"), ("longitude", "lon"), ("y", "lat"), ("x", "lon")) if k in ds.dims or k in ds.coords}
    ds = ds.rename(ren)
    if "valid_time" in ds.dims:  # CDS NetCDF (2024 on): valid_time is the time axis
        ds = ds.drop_vars("time", errors="ignore").rename({"valid_time": "time"})
    if "step" in ds.dims:
        if ds.sizes["step"] != 1:
            raise InputError(f"{where}: forecast files with several steps are not supported: request ERA5-Land "
                             "reanalysis fields (hourly) or daily statistics")
        ds = ds.isel(step=0)
    if "time" in ds.dims and "valid_time" in ds.coords:  # cfgrib: time = reference, valid_time = actual
        ds = ds.assign_coords(time=ds["valid_time"].values)
    elif "time" not in ds.dims and "time" in ds.coords and ds["time"].ndim == 0:
        ds = ds.expand_dims("time")
    for d in ("lat", "lon", "time"):
        if d not in ds.dims:
            raise InputError(f"{where}: no {d!r} dimension (dims: {dict(ds.sizes)}); expected time, lat/latitude, "
                             "lon/longitude")
    ds = ds.reset_coords(drop=True)  # number, expver, surface, step, valid_time, ...
    for extra in [d for d in ds.dims if d not in ("time", "lat", "lon")]:
        if ds.sizes[extra] == 1:
            ds = ds.isel({extra: 0}, drop=True)
        else:
            raise InputError(f"{where}: an extra dimension {extra!r} of size {ds.sizes[extra]}; "
                             "select one level/member before upscaling")
    lon = ds["lon"].values
    if lon.max() > 180:
        ds = ds.assign_coords(lon=((lon + 180.0) % 360.0) - 180.0).sortby("lon")
    if ds.sizes["lat"] > 1 and ds["lat"].values[0] > ds["lat"].values[-1]:
        ds = ds.sortby("lat")
    t = pd.DatetimeIndex(ds.indexes["time"])
    if t.has_duplicates:
        raise InputError(f"{where}: time {t[t.duplicated()][0]} appears more than once; keep one record per "
                         "time step")
    ds = ds.assign_coords(time=t)
    return ds if t.is_monotonic_increasing else ds.sortby("time")


def rename_variables(ds: xr.Dataset, variables: Mapping[str, str] | None = None) -> xr.Dataset:
    """File names -> store names: the explicit mapping (store_name: file_name) first, then CDS short names."""
    variables = dict(variables or {})
    ren = {file: store for store, file in variables.items() if file in ds and file != store}
    for short, store in SHORT_NAMES.items():
        if short in ds and short not in ren and store not in variables and store not in ds:
            ren[short] = store
    return ds.rename(ren)


def check_units(ds: xr.Dataset) -> xr.Dataset:
    """Compare each variable's ``units`` with the variable catalog and convert known spellings."""
    known = catalog.variables()
    out = {}
    for name, var in ds.data_vars.items():
        if name not in known.index or "units" not in var.attrs:
            out[name] = var
            continue
        want = str(known.loc[name, "units"])
        have = str(var.attrs["units"]).strip()
        norm = _SAME_UNITS.get(have, have)
        if norm == want or _SAME_UNITS.get(want, want) == norm:
            out[name] = var
            continue
        if (have, want) in _CONVERT:
            scale, offset = _CONVERT[(have, want)]
            log.info("%s: converting %s -> %s", name, have, want)
            out[name] = (var * scale + offset).assign_attrs({**var.attrs, "units": want})
            continue
        raise InputError(f"variable {name!r} is in {have!r}; cbgrid needs {want!r} (as ERA5-Land DAILY_AGGR gives it). "
                         "Convert it, or fix the file's units attribute if it is wrong")
    return xr.Dataset(out, coords=ds.coords, attrs=ds.attrs)


def to_daily(ds: xr.Dataset) -> xr.Dataset:
    """Aggregate sub-daily fields to days (see the module docstring); daily files pass through."""
    t = ds.indexes["time"]
    if len(t) < 2 or np.diff(t.values).min() >= np.timedelta64(1, "D"):
        return ds.assign_coords(time=t.normalize())  # daily already (stamped at any hour)
    out = {}
    for name, var in ds.data_vars.items():
        if name.endswith("_sum"):
            # ERA5-Land accumulates from 00 UTC: the 00 UTC value holds the previous day's total.
            at0 = var.where(var["time"].dt.hour == 0, drop=True)
            at0 = at0.assign_coords(time=at0.indexes["time"] - pd.Timedelta(days=1))
            out[name] = at0
        elif name.endswith("_min"):
            out[name] = var.resample(time="1D").min()
        elif name.endswith("_max"):
            out[name] = var.resample(time="1D").max()
        else:
            out[name] = var.resample(time="1D").mean()
    return xr.Dataset(out).assign_attrs(ds.attrs)


def _spacing(x: np.ndarray) -> float:
    return float(np.median(np.diff(x))) if x.size > 1 else float("nan")


def regrid(ds: xr.Dataset, lat: np.ndarray, lon: np.ndarray) -> xr.Dataset:
    """Put ``ds`` on the target cell centres: as is, by block mean, or by bilinear interpolation."""
    lat, lon = np.asarray(lat, dtype=float), np.asarray(lon, dtype=float)
    if ds.sizes["lat"] == lat.size and ds.sizes["lon"] == lon.size and \
            np.allclose(ds["lat"].values, lat, atol=1e-6) and np.allclose(ds["lon"].values, lon, atol=1e-6):
        return ds.assign_coords(lat=lat, lon=lon)
    src, dst = _spacing(ds["lat"].values), _spacing(lat) if lat.size > 1 else _spacing(lon)
    factor = dst / src if src > 0 else 0
    if factor > 1 and abs(factor - round(factor)) < 1e-6:
        f = int(round(factor))
        half = dst / 2
        sub = ds.sel(lat=slice(lat[0] - half, lat[-1] + half), lon=slice(lon[0] - half, lon[-1] + half))
        if sub.sizes["lat"] == lat.size * f and sub.sizes["lon"] == lon.size * f:
            out = sub.coarsen(lat=f, lon=f).mean()
            if np.allclose(out["lat"].values, lat, atol=src / 2) and np.allclose(out["lon"].values, lon, atol=src / 2):
                log.info("regrid: block mean of %dx%d source cells", f, f)
                return out.assign_coords(lat=lat, lon=lon)
    log.info("regrid: bilinear interpolation from %.4g° to %.4g° cells", src, dst)
    return ds.interp(lat=lat, lon=lon, method="linear")


def open_local(paths: Sequence[str], *, engine: str | None = None, variables: Mapping[str, str] | None = None,
               lat=None, lon=None, days=None, chunks: Mapping | None = None) -> xr.Dataset:
    """Open local driver files as a lazy (time, lat, lon) Dataset with store names and units.

    paths: files or glob patterns (NetCDF, GRIB, Zarr); engine: forced for all files
    (default: from the suffix); variables: {store_name: name_in_file} where names differ;
    lat/lon: target cell centres (default: the files' grid); days: the days needed (every one
    must be present); chunks: spatial chunks {'lat', 'lon'} of the result (time is one chunk).
    """
    files = _expand(paths)
    parts = []
    for f in files:
        ds = normalise(_open_one(f, _engine_for(f, engine)), f)
        parts.append(check_units(rename_variables(ds, variables)))
    ds = xr.merge(parts, compat="override", join="outer", combine_attrs="drop_conflicts")
    absent = [f"{store} (as {file!r})" for store, file in dict(variables or {}).items() if store not in ds]
    if absent:
        raise UnknownError(f"the driver files lack {', '.join(absent)} named in the variables mapping; "
                       f"they hold {sorted(ds.data_vars)}")
    ds = to_daily(ds)
    if days is not None:
        days = pd.DatetimeIndex(days)
        have = ds.indexes["time"]
        absent = days[~days.isin(have)]
        if len(absent):
            raise InputError(f"the driver files lack {len(absent)} of the {len(days)} days needed "
                             f"({absent[0].date()}..{absent[-1].date()}); they cover {have[0].date()}..{have[-1].date()}")
        ds = ds.sel(time=days)
    if lat is not None and lon is not None:
        ds = regrid(ds, lat, lon)
    ds = ds[[v for v in ds.data_vars if ds[v].dims and set(ds[v].dims) == {"time", "lat", "lon"}]]
    ds = ds.transpose("time", "lat", "lon").astype(np.float32)
    chunks = dict(chunks or {})
    ds = ds.chunk({"time": -1, "lat": chunks.get("lat", -1), "lon": chunks.get("lon", -1)})
    return schema.refuse_implausible(ds, files[0] if len(files) == 1 else f"the driver files ({files[0]}, ...)")


@register_driver_source
@dataclass(frozen=True)
class LocalDrivers:
    """``drivers: {source: local, paths: [...], engine: ..., variables: {store: file}}``.

    Relative paths are looked for in the working directory, then beside the recipe.
    """

    name = "local"
    paths: tuple[str, ...] = ()
    engine: str | None = None
    variables: dict = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, doc, where: str) -> LocalDrivers:
        d = check_keys(doc, ("paths", "engine", "variables"), where)
        paths = d.get("paths") or ()
        paths = (paths,) if isinstance(paths, str) else tuple(str(p) for p in paths)
        if not paths:
            raise RecipeError(f"{where}: paths must list the local NetCDF/GRIB/Zarr files for source 'local'")
        engine = d.get("engine")
        if engine is not None and engine not in ENGINES:
            raise RecipeError(f"{where}: engine is {engine!r}; use one of {', '.join(ENGINES)}")
        variables = d.get("variables") or {}
        if not isinstance(variables, dict):
            raise RecipeError(f"{where}: variables must map store names to the files' names, got {variables!r}")
        return cls(paths=paths, engine=engine, variables=dict(variables))

    def open(self, grid, days, context, *, chunks, base: Path) -> xr.Dataset:
        paths = [p if Path(p).is_absolute() or Path(p).exists() or glob.glob(p) else str(Path(base) / p)
                 for p in self.paths]
        return open_local(paths, engine=self.engine, variables=self.variables, lat=grid.lat, lon=grid.lon,
                          days=days, chunks=dict(chunks))
