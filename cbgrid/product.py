"""The CF-1.8 NetCDF product: NEE/GPP/RECO maps, their uncertainty, land fraction, cell area.

A product file holds, on dims (time, lat, lon):

* ``GPP``, ``RECO``, ``NEE`` — daily mean fluxes in g m-2 d-1 (carbon basis stated in
  ``long_name``), float32 with ``_FillValue`` over ocean, inland water and permanent ice;
* ``GPP_sd``, ``RECO_sd``, ``NEE_sd`` — the ensemble standard deviation (uncertainty layers,
  linked through ``ancillary_variables``);
* ``land_fraction`` (lat, lon) and ``cell_area`` (lat, lon; referenced by ``cell_measures``);
* ``igbp`` and ``koppen`` (lat, lon) class codes with ``flag_values``/``flag_meanings``.

NEE is never written from a model head: the writer computes ``NEE = RECO - GPP`` in float32
from the very float32 values it writes for RECO and GPP, so the balance holds bit for bit in
every cell (``numpy.float32`` subtraction of the stored values reproduces the stored NEE).

The file is created with netCDF4 directly so every encoding is deliberate (float64 time,
no ``_FillValue`` on coordinates, zlib + shuffle, chunking that matches the inference
blocks), filled block by block (memory bounded by one block, whatever the grid), and written
beside its final name and renamed only when complete.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from cbgrid import __version__, schema
from cbgrid.atomic import replace_file
from cbgrid.errors import InputError, MissingError, ServiceError
from cbgrid.grid import EARTH_RADIUS, bounds, cell_area
from cbgrid.totals import Totals

log = logging.getLogger(__name__)

#: Fill value of the flux layers (the CMIP convention; far outside any flux).
FILL = np.float32(1.0e20)
#: Class code of cells without a class in the igbp/koppen layers (a flag value, not a fill).
NO_CLASS = -1
FLUXES = ("GPP", "RECO", "NEE")
#: Store target name of each product flux.
TARGET_OF = {"GPP": schema.GPP, "RECO": schema.RECO, "NEE": schema.NEE}
TIME_UNITS = "days since 2000-01-01 00:00:00"
CALENDAR = "standard"
UNITS = schema.CF_FLUX_UNITS

FLUX_ATTRS = {
    "GPP": {
        "standard_name": "gross_primary_productivity_of_biomass_expressed_as_carbon",
        "long_name": "gross primary productivity (carbon), daily mean",
        "comment": "GPP >= 0; the carbon fixed by photosynthesis, in grams of carbon.",
    },
    "RECO": {
        "long_name": "ecosystem respiration (carbon), daily mean",
        "comment": (
            "Total ecosystem respiration (autotrophic + heterotrophic) in grams of carbon, "
            "positive = carbon released to the atmosphere. No CF standard name exists."
        ),
    },
    "NEE": {
        "long_name": "net ecosystem exchange of carbon, daily mean",
        "comment": (
            "Sign convention: positive = carbon flux from the land to the atmosphere (source), "
            "negative = uptake (sink). Written as NEE = RECO - GPP computed in float32 from the "
            "stored RECO and GPP, so the balance holds exactly in every cell. No CF standard name "
            "exists."
        ),
    },
}


def _time_values(days: pd.DatetimeIndex) -> tuple[np.ndarray, np.ndarray]:
    """Mid-day time values and [day start, next day start] bounds in TIME_UNITS."""
    days = pd.DatetimeIndex(days).normalize()
    d0 = (days - pd.Timestamp("2000-01-01")).days.to_numpy(np.float64)
    return d0 + 0.5, np.stack([d0, d0 + 1.0], axis=1)

# --------------------------------------------------------------------------------------------
# Attributes
# --------------------------------------------------------------------------------------------


def score_attrs(summary: pd.DataFrame | None, split: str | None = None) -> dict:
    """Global attributes with the zero-shot scores: median and quartiles per target and metric.

    ``summary`` has one row per (target, metric) with columns target, metric, n_sites, p25,
    p50, p75 (``cbgrid.evaluation.quantile_table``). Attributes are named
    ``zero_shot_<GPP|RECO|NEE>_<R2|RMSE|nMAE>_<median|p25|p75>``.
    """
    if summary is None or len(summary) == 0:
        return {"zero_shot_scores": "not available: the runs carry no evaluation on test sites"}
    labels = {schema.GPP: "GPP", schema.RECO: "RECO", schema.NEE: "NEE", "GPP": "GPP", "RECO": "RECO", "NEE": "NEE"}
    out: dict = {}
    for row in summary.itertuples(index=False):
        t = labels.get(str(row.target), str(row.target))
        if str(row.metric) not in ("R2", "RMSE", "nMAE"):
            continue
        for key, col in (("median", "p50"), ("p25", "p25"), ("p75", "p75")):
            out[f"zero_shot_{t}_{row.metric}_{key}"] = np.float64(getattr(row, col))
        out[f"zero_shot_{t}_n_sites"] = np.int32(row.n_sites)
    out["zero_shot_scores"] = (
        "median, 25th and 75th percentile across held-out test sites of per-site R2, RMSE "
        "(g m-2 d-1) and nMAE on QC = 1 days"
    )
    if split:
        out["zero_shot_split"] = str(split)
    return out


#: The conventions every product follows: CF for the data, ACDD for discovery metadata.
CONVENTIONS = "CF-1.8, ACDD-1.3"
LICENSE = "CC-BY-4.0 (https://creativecommons.org/licenses/by/4.0/)"


def _command_line() -> str:
    """The command that made the file, with file names only: no local path leaves the machine."""
    words = [Path(sys.argv[0]).name or "python", *sys.argv[1:]]
    return " ".join(Path(w).name if ("/" in w or os.sep in w) else w for w in words)


def global_attrs(*, title: str, source: str, runs, institution: str = "unspecified",
                 references: str = "", comment: str = "", extra: Mapping | None = None,
                 summary: str = "", license: str = LICENSE, creator_name: str = "",
                 creator_email: str = "", creator_url: str = "", creator_type: str = "institution") -> dict:
    """Provenance (CF-1.8 section 2.6.2) and ACDD-1.3 discovery attributes every product carries.

    ``history`` names the command with file names only (no local paths), ``runs`` the run
    folders by name. The time and space coverage (``time_coverage_*``, ``geospatial_*``) is
    added by the writer, which knows the grid and the days.

    >>> a = global_attrs(title="t", source="s", runs=["/home/me/runs/xgb"])
    >>> a["runs"], "/home" in a["history"], a["Conventions"]
    ('xgb', False, 'CF-1.8, ACDD-1.3')
    """
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    attrs = {
        "Conventions": CONVENTIONS,
        "title": title,
        "summary": summary or (
            "Daily gross primary productivity (GPP), ecosystem respiration (RECO) and net ecosystem exchange "
            "(NEE = RECO - GPP) of carbon on a regular latitude-longitude grid, predicted zero-shot by machine-"
            "learning models trained on eddy-covariance flux-tower sites (CarbonBench) and run on gridded "
            "meteorological and satellite drivers, with the ensemble spread as an uncertainty layer."),
        "keywords": "carbon flux, GPP, ecosystem respiration, NEE, eddy covariance, upscaling, CarbonBench",
        "institution": institution,
        "source": source,
        "history": f"{now}: created by cbgrid {__version__} ({_command_line()})",
        "references": references or "CarbonBench zero-shot upscaling benchmark; IGBP from MODIS MCD12C1 "
        "(Friedl & Sulla-Menashe 2015); Koppen-Geiger from Beck et al. (2018), doi:10.1038/sdata.2018.214",
        "comment": comment or "Daily NEE/GPP/RECO from models trained on flux-tower sites and run on gridded drivers. "
        "Cells without land and cells whose majority is permanent snow/ice (IGBP 15) are _FillValue; fluxes are per "
        "m2 of land, so a cell's total is flux x cell_area x land_fraction.",
        "license": license,
        "creator_name": creator_name or institution,
        "creator_type": creator_type,
        "creator_email": creator_email or "unspecified",
        "creator_url": creator_url or "unspecified",
        "standard_name_vocabulary": "CF Standard Name Table v84",
        "product_version": __version__,
        "date_created": now,
        "runs": " ".join(Path(str(r)).name for r in runs),
        "ensemble": "mean of the runs' seed-averaged predictions; *_sd is the standard deviation across all "
        "members (seeds x runs, each run weighted equally: sd^2 = mean_r(sd_r^2 + (mean_r - mean)^2))",
        "nee_balance": "NEE = RECO - GPP in float32, exact in every cell",
    }
    if extra:
        attrs.update({k: v for k, v in extra.items() if v is not None})
    return attrs


def coverage_attrs(lat, lon, days) -> dict:
    """ACDD time and space coverage of a grid and its days.

    >>> coverage_attrs([-45.0, 45.0], [0.0, 90.0], pd.date_range("2001-01-01", periods=2))["time_coverage_end"]
    '2001-01-03T00:00:00Z'
    """
    lat, lon, days = np.asarray(lat, float), np.asarray(lon, float), pd.DatetimeIndex(days)
    lb = bounds(lat, -90, 90) if lat.size > 1 else np.array([[lat[0], lat[0]]])
    ob = bounds(lon) if lon.size > 1 else np.array([[lon[0], lon[0]]])
    res_lat = float(abs(lb[0, 1] - lb[0, 0])) if lat.size > 1 else 0.0
    res_lon = float(abs(ob[0, 1] - ob[0, 0])) if lon.size > 1 else 0.0
    return {
        "time_coverage_start": f"{days[0]:%Y-%m-%dT00:00:00Z}",
        "time_coverage_end": f"{days[-1] + pd.Timedelta(days=1):%Y-%m-%dT00:00:00Z}",
        "time_coverage_duration": f"P{len(days)}D",
        "time_coverage_resolution": "P1D",
        "geospatial_lat_min": float(lb.min()), "geospatial_lat_max": float(lb.max()),
        "geospatial_lon_min": float(ob.min()), "geospatial_lon_max": float(ob.max()),
        "geospatial_lat_units": "degrees_north", "geospatial_lon_units": "degrees_east",
        "geospatial_lat_resolution": f"{res_lat:g} degree", "geospatial_lon_resolution": f"{res_lon:g} degree",
    }


def totals_path(path) -> Path:
    """Where the product at ``path`` keeps its totals table: ``<stem>_totals.csv`` beside it."""
    path = Path(path)
    return path.with_name(f"{path.stem}_totals.csv")


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------


def netcdf_lock():
    """The lock xarray takes around every netCDF4 / HDF5 call it makes. The C libraries are not
    thread-safe, and while a product is written its drivers may be read from NetCDF in dask
    threads, so every call of the writer holds it too."""
    from xarray.backends.netCDF4_ import NETCDF4_PYTHON_LOCK

    return NETCDF4_PYTHON_LOCK


class ProductWriter:
    """Create a CF-1.8 product file and fill it block by block; rename into place on success.

    Use as a context manager::

        with ProductWriter(path, lat, lon, days, context=ctx, attrs=attrs, chunks=(45, 90)) as w:
            w.write(i0, j0, gpp=..., reco=..., gpp_sd=..., reco_sd=..., nee_sd=...)

    ``context`` is a (lat, lon) Dataset with ``land_fraction``, ``igbp``, ``koppen`` (and
    optionally ``cell_area``; computed from the grid otherwise). Blocks are (time, lat, lon)
    float32 arrays with NaN where there is no value. The file appears under ``path`` only when
    the ``with`` block finishes without error; until then it lives at ``.<name>.tmp-<id>.nc``
    beside it, and is removed on error.
    """

    def __init__(self, path, lat, lon, days, *, context: xr.Dataset, attrs: Mapping,
                 chunks: tuple[int, int] = (45, 90), complevel: int = 4):
        self.path = Path(path)
        self.lat = np.asarray(lat, dtype=np.float64)
        self.lon = np.asarray(lon, dtype=np.float64)
        self.days = pd.DatetimeIndex(days)
        self.context = context
        self.attrs = dict(attrs)
        self.chunks = (max(1, min(int(chunks[0]), self.lat.size)), max(1, min(int(chunks[1]), self.lon.size)))
        self.complevel = complevel
        self.tmp = self.path.with_name(f".{self.path.stem}.tmp-{uuid.uuid4().hex[:8]}.nc")
        self._nc = None
        self.totals = Totals(self.lat, self.lon, self.days, land_fraction=context["land_fraction"].values,
                             igbp=context["igbp"].values,
                             cell_area=context["cell_area"].values if "cell_area" in context else None)

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> ProductWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with netcdf_lock():
            try:
                self._create()
            except BaseException:
                if self._nc is not None:
                    self._nc.close()
                self.tmp.unlink(missing_ok=True)
                raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self._nc is not None:
                with netcdf_lock():
                    if exc_type is None and self.totals.sums:
                        self._nc.setncatts(self.totals.attrs() | {"totals_file": totals_path(self.path).name})
                    self._nc.close()
                self._nc = None
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise
        if exc_type is None:
            if self.totals.sums:
                table = pd.concat([self.totals.table("month").assign(resolution="month"),
                                   self.totals.table("year").assign(resolution="year")], ignore_index=True)
                with replace_file(totals_path(self.path)) as tmp:
                    table.to_csv(tmp, index=False)
            os.replace(self.tmp, self.path)
            log.info("wrote %s", self.path)
        else:
            self.tmp.unlink(missing_ok=True)

    # -- layout ----------------------------------------------------------------------------
    def _create(self) -> None:
        import netCDF4

        nc = netCDF4.Dataset(self.tmp, "w", format="NETCDF4")
        self._nc = nc
        nt, ny, nx = len(self.days), self.lat.size, self.lon.size
        nc.createDimension("time", None)
        nc.createDimension("lat", ny)
        nc.createDimension("lon", nx)
        nc.createDimension("bnds", 2)

        tv, tb = _time_values(self.days)
        t = nc.createVariable("time", "f8", ("time",))
        t.setncatts({"standard_name": "time", "long_name": "time", "units": TIME_UNITS,
                     "calendar": CALENDAR, "axis": "T", "bounds": "time_bnds"})
        t[:] = tv
        nc.createVariable("time_bnds", "f8", ("time", "bnds"))[:] = tb
        for name, vals, std, units, axis, lim in (
            ("lat", self.lat, "latitude", "degrees_north", "Y", (-90, 90)),
            ("lon", self.lon, "longitude", "degrees_east", "X", (None, None)),
        ):
            v = nc.createVariable(name, "f8", (name,))
            v.setncatts({"standard_name": std, "long_name": std, "units": units, "axis": axis,
                         "bounds": f"{name}_bnds"})
            v[:] = vals
            nc.createVariable(f"{name}_bnds", "f8", (name, "bnds"))[:] = bounds(vals, *lim)

        ctx = self.context
        area = np.asarray(ctx["cell_area"].values) if "cell_area" in ctx else cell_area(self.lat, self.lon)
        static = dict(zlib=True, complevel=self.complevel, shuffle=True, chunksizes=self.chunks)
        v = nc.createVariable("cell_area", "f8", ("lat", "lon"), **static)
        v.setncatts({"standard_name": "cell_area", "long_name": "area of the grid cell", "units": "m2",
                     "comment": f"spherical Earth of radius {EARTH_RADIUS} m"})
        v[:] = area
        v = nc.createVariable("land_fraction", "f4", ("lat", "lon"), **static)
        v.setncatts({"standard_name": "land_area_fraction", "long_name": "land fraction of the grid cell",
                     "units": "1", "cell_measures": "area: cell_area",
                     "comment": "fraction of MCD12C1 0.05 degree pixels in the cell that are not water (IGBP 0)"})
        v[:] = np.asarray(ctx["land_fraction"].values, dtype=np.float32)
        for name in ("igbp", "koppen"):
            classes, first = schema.CATEGORICALS[name]
            # No _FillValue: "no data" is a flag of its own, so every reader keeps int8 codes.
            fill = np.int8(NO_CLASS)
            v = nc.createVariable(name, "i1", ("lat", "lon"), fill_value=False, **static)
            long = ("majority IGBP land cover class of the cell (MODIS MCD12C1 0.05 degree)" if name == "igbp"
                    else "majority Koppen-Geiger main climate class of the cell (Beck et al. 2018, 1 km)")
            v.setncatts({"long_name": long,
                         "flag_values": np.concatenate([[fill], np.arange(first, first + len(classes))]).astype(np.int8),
                         "flag_meanings": " ".join(["no_data", *classes])})
            codes = np.asarray(ctx[name].values).astype(np.int16)
            ok = (codes >= first) & (codes < first + len(classes))
            v[:] = np.where(ok, codes, fill).astype(np.int8)

        tc = min(nt, 31)
        flux = dict(zlib=True, complevel=self.complevel, shuffle=True, fill_value=FILL,
                    chunksizes=(tc, *self.chunks))
        # Each block fills whole chunks (the blocks are the chunks), so a chunk is final when its
        # block is written: a cache of two chunks per variable instead of the library's 64 MB,
        # which would fill up to the size of the layer and grow with the grid (and the files open).
        cache = 2 * tc * self.chunks[0] * self.chunks[1] * 4
        for name in FLUXES:
            v = nc.createVariable(name, "f4", ("time", "lat", "lon"), **flux)
            v.set_var_chunk_cache(size=cache, nelems=17, preemption=1.0)
            v.setncatts({**FLUX_ATTRS[name], "units": UNITS, "cell_methods": "time: mean area: mean where land",
                         "cell_measures": "area: cell_area", "ancillary_variables": f"{name}_sd"})
            sd = nc.createVariable(f"{name}_sd", "f4", ("time", "lat", "lon"), **flux)
            sd.set_var_chunk_cache(size=cache, nelems=17, preemption=1.0)
            sd.setncatts({"long_name": f"ensemble standard deviation of {name} (carbon)", "units": UNITS,
                          "cell_methods": "time: mean", "cell_measures": "area: cell_area",
                          "comment": "spread across all ensemble members (seeds x runs); an uncertainty layer"})
            if name == "NEE":
                sd.comment += "; from the members' own NEE outputs"
        nc.setncatts({**coverage_attrs(self.lat, self.lon, self.days), **self.attrs})

    # -- data ------------------------------------------------------------------------------
    def set_attrs(self, attrs: Mapping) -> None:
        """Add global attributes (e.g. diagnostics known only once every block is written)."""
        with netcdf_lock():
            self._nc.setncatts(dict(attrs))

    def write(self, i0: int, j0: int, *, gpp, reco, gpp_sd, reco_sd, nee_sd) -> None:
        """Write one (time, lat, lon) block at grid offset (i0, j0); NEE := RECO - GPP (float32)."""
        gpp = np.asarray(gpp, dtype=np.float32)
        reco = np.asarray(reco, dtype=np.float32)
        nt, ny, nx = gpp.shape
        if nt != len(self.days):
            raise InputError(f"block has {nt} days; the product has {len(self.days)}")
        # One mask for the three fluxes, so NEE is valid exactly where GPP and RECO are.
        bad = ~(np.isfinite(gpp) & np.isfinite(reco))
        gpp = np.where(bad, np.float32(np.nan), gpp)
        reco = np.where(bad, np.float32(np.nan), reco)
        nee = reco - gpp  # float32 - float32: the stored NEE is exactly the stored difference
        sl = (slice(None), slice(i0, i0 + ny), slice(j0, j0 + nx))
        for name, arr in (("GPP", gpp), ("RECO", reco), ("NEE", nee), ("GPP_sd", gpp_sd),
                          ("RECO_sd", reco_sd), ("NEE_sd", nee_sd)):
            arr = np.asarray(arr, dtype=np.float32)
            if name.endswith("_sd"):
                arr = np.where(bad | ~np.isfinite(arr), np.float32(np.nan), arr)
            with netcdf_lock():
                self._nc[name][sl] = np.ma.masked_invalid(arr)
            self.totals.add(i0, j0, **{name: arr})


def write_product(fluxes: xr.Dataset, path, *, context: xr.Dataset, attrs: Mapping,
                  chunks: tuple[int, int] = (45, 90)) -> Path:
    """Write an in-memory (time, lat, lon) Dataset with GPP, RECO, GPP_sd, RECO_sd, NEE_sd.

    NEE in ``fluxes`` is ignored: the file's NEE is RECO - GPP (see module docstring).
    """
    missing = [v for v in ("GPP", "RECO", "GPP_sd", "RECO_sd", "NEE_sd") if v not in fluxes]
    if missing:
        raise InputError(f"fluxes lack {missing}; they have {list(fluxes.data_vars)}")
    f = fluxes.transpose("time", "lat", "lon")
    with ProductWriter(path, f["lat"].values, f["lon"].values, f.indexes["time"], context=context,
                       attrs=attrs, chunks=chunks) as w:
        w.write(0, 0, gpp=f["GPP"].values, reco=f["RECO"].values, gpp_sd=f["GPP_sd"].values,
                reco_sd=f["RECO_sd"].values, nee_sd=f["NEE_sd"].values)
    return Path(path)

# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def open_product(path) -> xr.Dataset:
    """Open a product with xarray (CF decoding: fill -> NaN, time -> datetime64)."""
    return xr.open_dataset(path, engine="netcdf4", decode_cf=True)


def check_product(path) -> list[str]:
    """Problems with a product file (empty when fine): layout, units, fill, NEE balance.

    Reads raw values with netCDF4 so the balance is checked on the stored float32 bits.
    """
    import netCDF4

    problems: list[str] = []
    with netCDF4.Dataset(path) as nc:
        nc.set_auto_mask(False)
        if not str(nc.getncattr("Conventions")).startswith("CF-1.8"):
            problems.append(f"Conventions is {nc.getncattr('Conventions')!r}, not 'CF-1.8' (or 'CF-1.8, ACDD-1.3')")
        for name in (*FLUXES, *(f"{f}_sd" for f in FLUXES)):
            if name not in nc.variables:
                problems.append(f"variable {name} is missing")
                continue
            v = nc[name]
            if v.dimensions != ("time", "lat", "lon") or v.dtype != np.float32:
                problems.append(f"{name}: dims {v.dimensions} dtype {v.dtype}; want (time, lat, lon) float32")
            if getattr(v, "units", None) != UNITS:
                problems.append(f"{name}: units {getattr(v, 'units', None)!r}; want {UNITS!r}")
            if "_FillValue" not in v.ncattrs():
                problems.append(f"{name}: no _FillValue")
        for c in ("time", "lat", "lon"):
            if "_FillValue" in nc[c].ncattrs():
                problems.append(f"coordinate {c} has a _FillValue")
        if all(n in nc.variables for n in FLUXES):
            g, r, n = (nc[k][:] for k in FLUXES)
            fill = (g == FILL) | (r == FILL)
            if not np.array_equal(fill, n == FILL):
                problems.append("NEE is filled where GPP and RECO are not (or the reverse)")
            diff = (r - g)[~fill]
            if not np.array_equal(diff.view(np.uint32), n[~fill].view(np.uint32)):
                k = int(np.sum(diff != n[~fill]))
                problems.append(f"NEE != RECO - GPP (float32) in {k} cell-days")
    return problems


def compliance(path, standard: str = "cf:1.8") -> dict:
    """Run the IOOS compliance-checker on a file; returns {'errors': [...], 'warnings': [...]}

    Errors are the checker's high-priority failures, warnings its medium/low ones.
    """
    import json

    exe = Path(sys.executable).with_name("compliance-checker")
    cmd = [str(exe) if exe.exists() else "compliance-checker", "--test", standard, "-f", "json", "-o", "-", str(path)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except FileNotFoundError as e:
        raise MissingError("compliance-checker is not installed: pip install compliance-checker") from e
    try:
        doc = json.loads(res.stdout)
    except json.JSONDecodeError as e:
        raise ServiceError(f"compliance-checker gave no JSON report: {res.stderr.strip()[-500:]}") from e
    rep = doc[standard] if standard in doc else next(iter(doc.values()))
    out = {"errors": [], "warnings": []}
    for prio, key in (("high_priorities", "errors"), ("medium_priorities", "warnings"), ("low_priorities", "warnings")):
        for item in rep.get(prio, []):
            for msg in item.get("msgs", []):
                out[key].append(f"{item.get('name')}: {msg}")
    return out
