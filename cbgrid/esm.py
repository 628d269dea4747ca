"""Gridded model output (CMIP6, TRENDY, FLUXCOM-X, cbgrid products) as the store's three targets.

:func:`open_model` reads one or more NetCDF/Zarr files lazily and returns a (time, lat, lon)
Dataset with ``GPP_NT_VUT_USTAR50``, ``RECO_NT_VUT_USTAR50`` and ``NEE_VUT_USTAR50`` (those the
files provide) in the store's flux unit, on latitudes south → north and longitudes −180..180,
with a pandas time axis and the attribute ``time_scale`` (``monthly`` or ``daily``).

Which file variable gives which target (CMOR names, ``cbgrid`` names, or a mapping):

* GPP ← ``gpp`` (``GPP``);
* RECO ← ``reco`` (``RECO``), else ``ra + rh``;
* NEE ← ``nee`` (``NEE``), else ``−nep``, else ``−nbp`` with :class:`ApproximationWarning`
  (NBP also carries fire and land-use fluxes), else RECO − GPP.

NPP (``npp``, GPP − autotrophic respiration) offered as GPP and heterotrophic respiration
(``rh``) offered as RECO are refused: each is lower than the flux the towers measure by
definition. Units convert through :mod:`cbgrid.units`; calendars (noleap, 360_day, standard,
…) are decoded by cftime; monthly files keep one value per month (labelled with the first day
of the month), daily files are put on the real calendar (days a model calendar lacks are
missing, days it has but the real one lacks — 30 February — are dropped), sub-daily files are
averaged to days. Time bounds are read when the file has them; without them they are inferred
from the time step, with a :class:`TimeBoundsWarning`.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from cbgrid import schema
from cbgrid import units as cunits
from cbgrid.errors import InputError, MissingError
from cbgrid.schema import GPP, NEE, RECO, TARGETS

log = logging.getLogger(__name__)

MONTHLY, DAILY = "monthly", "daily"
#: Short names users write (``--variables GPP NEE``) → store names.
SHORT = {"GPP": GPP, "RECO": RECO, "NEE": NEE}

#: Candidates per target, in order: an expression over file variables (``-x`` negates, ``a+b`` adds).
CANDIDATES: dict[str, tuple[str, ...]] = {
    GPP: ("gpp", "GPP"),
    RECO: ("reco", "RECO", "ra+rh"),
    NEE: ("nee", "NEE", "-nep", "-nbp", "RECO-GPP"),
}
#: Variables that must never stand for a target, and why.
REFUSED = {
    GPP: {"npp": "NPP is GPP minus autotrophic respiration, lower than GPP by definition",
          "net_primary_productivity_of_biomass_expressed_as_carbon":
              "NPP is GPP minus autotrophic respiration, lower than GPP by definition"},
    RECO: {"rh": "Rh is only the heterotrophic part of ecosystem respiration (RECO = Ra + Rh)",
           "heterotrophic_respiration_carbon_flux":
               "Rh is only the heterotrophic part of ecosystem respiration (RECO = Ra + Rh)",
           "ra": "Ra is only the autotrophic part of ecosystem respiration (RECO = Ra + Rh)",
           "plant_respiration_carbon_flux": "Ra is only the autotrophic part of ecosystem respiration (RECO = Ra + Rh)"},
}


class TimeBoundsWarning(UserWarning):
    """A model file has no time bounds; they were inferred from the time step."""


class ApproximationWarning(UserWarning):
    """A target was derived from a related flux that is not exactly it (e.g. NEE from −NBP)."""


def _open(paths: Sequence[Path]) -> xr.Dataset:
    coder = xr.coders.CFDatetimeCoder(use_cftime=True)
    try:
        if len(paths) == 1 and (paths[0].suffix == ".zarr" or paths[0].is_dir()):
            return xr.open_zarr(paths[0], decode_times=coder)
        return xr.open_mfdataset([str(p) for p in paths], combine="by_coords", decode_times=coder,
                                 data_vars="minimal", coords="minimal", compat="override", chunks={},
                                 join="outer")
    except (ValueError, TypeError) as e:
        text = str(e)
        if "calendar" in text or "decode" in text or "cftime" in text.lower():
            raise InputError(f"{', '.join(map(str, paths))}: the time axis cannot be decoded by cftime ({text}); "
                             "set time:units like 'days since 1850-01-01' and a CF calendar "
                             "(standard, noleap, 360_day, ...)") from None
        raise InputError(f"{', '.join(map(str, paths))}: cannot be opened as one dataset ({text})") from None
    except OSError as e:  # cut short, not NetCDF: netCDF4 names the file but says nothing to do
        raise InputError(f"{e.filename or ', '.join(map(str, paths))}: cannot be read ({e.strerror or e}); check the "
                         "file is complete NetCDF (or a Zarr folder)") from None


def _axis(ds: xr.Dataset, names: tuple[str, ...], standard: str, what: str) -> str:
    for n in list(ds.coords) + list(ds.dims):
        if str(n) in names or ds[n].attrs.get("standard_name") == standard:
            return str(n)
    raise InputError(f"the model has no {what} coordinate (looked for {', '.join(names)} or "
                     f"standard_name {standard!r}); it has {sorted(map(str, ds.coords))}")


def _normalise_grid(ds: xr.Dataset) -> xr.Dataset:
    """lat/lon named so, latitudes ascending, longitudes in −180..180 ascending."""
    lat = _axis(ds, ("lat", "latitude", "nav_lat", "y"), "latitude", "latitude")
    lon = _axis(ds, ("lon", "longitude", "nav_lon", "x"), "longitude", "longitude")
    ds = ds.rename({k: v for k, v in ((lat, "lat"), (lon, "lon")) if k != v})
    if ds["lat"].ndim != 1 or ds["lon"].ndim != 1:
        raise InputError("the model grid is curvilinear (2-D lat/lon); regrid it to a regular lat/lon grid first")
    wrapped = ((ds["lon"].values + 180.0) % 360.0) - 180.0
    ds = ds.assign_coords(lon=("lon", wrapped, ds["lon"].attrs))
    ds = ds.sortby(["lat", "lon"])
    if np.unique(ds["lon"].values).size != ds.sizes["lon"]:
        raise InputError("the model's longitudes repeat after wrapping to -180..180 (a cyclic column?); drop it")
    return ds


def _time_scale(step_days: float, path: str) -> str:
    if step_days < 0.99:
        return "subdaily"
    if step_days < 1.01:
        return DAILY
    if 27.5 <= step_days <= 31.5:
        return MONTHLY
    raise InputError(f"{path}: time step of {step_days:.2f} days; cbgrid validates monthly, daily or sub-daily output")


def _bounds(ds: xr.Dataset, path: str) -> xr.DataArray | None:
    name = ds["time"].attrs.get("bounds") or ds["time"].encoding.get("bounds")
    for cand in (name, "time_bnds", "time_bounds", "time_bnd"):
        if cand and cand in ds.variables:
            return ds[cand]
    warnings.warn(f"{path}: no time bounds; inferred from the time step (each value taken as the mean over its "
                  "own step: the month for monthly, the day for daily)", TimeBoundsWarning, stacklevel=3)
    return None


def _month_starts(times, bounds: xr.DataArray | None) -> pd.DatetimeIndex:
    """The month each monthly value stands for: that of the middle of its bounds, else its label."""
    if bounds is not None:
        b = bounds.values
        mid = [lo + (hi - lo) / 2 for lo, hi in b]
    else:
        mid = list(times)
    return pd.DatetimeIndex([pd.Timestamp(year=t.year, month=t.month, day=1) for t in mid])


def _real_days(times) -> tuple[np.ndarray, pd.DatetimeIndex]:
    """Keep the model days that exist on the real calendar; their dates."""
    keep, out = [], []
    for i, t in enumerate(times):
        try:
            out.append(pd.Timestamp(year=t.year, month=t.month, day=t.day))
            keep.append(i)
        except ValueError:  # 29/30 February of a 360_day calendar
            continue
    return np.asarray(keep, dtype=np.int64), pd.DatetimeIndex(out)


def _parse(expr: str) -> list[tuple[float, str]]:
    """'ra+rh' → [(1, 'ra'), (1, 'rh')]; '-nep' → [(-1, 'nep')]; 'RECO-GPP' → [(1,'RECO'), (-1,'GPP')]."""
    terms, sign, cur = [], 1.0, ""
    for ch in expr.replace(" ", ""):
        if ch in "+-":
            if cur:
                terms.append((sign, cur))
            sign, cur = (1.0 if ch == "+" else -1.0), ""
        else:
            cur += ch
    if cur:
        terms.append((sign, cur))
    return terms


def _refuse(target: str, ds: xr.Dataset, names: Sequence[str], where: str) -> None:
    for n in names:
        why = REFUSED.get(target, {}).get(n.lower())
        if why is None and n in ds:
            why = REFUSED.get(target, {}).get(str(ds[n].attrs.get("standard_name", "")))
        if why:
            short = target.split("_")[0]
            raise InputError(f"{where}: {n!r} cannot stand for {short}: {why}. Give a {short} variable "
                             f"(--map {short}=NAME) or leave {short} out (--variables)")


def mapping_from_args(items: Sequence[str] | None) -> dict[str, str]:
    """``["GPP=GPP_mean", "RECO=ra+rh"]`` → {store target: expression}.

    >>> mapping_from_args(["GPP=gpp_x"]) == {GPP: "gpp_x"}
    True
    """
    out = {}
    for item in items or ():
        if "=" not in item:
            raise InputError(f"--map {item!r}: write TARGET=EXPRESSION, e.g. GPP=GPP_mean or RECO=ra+rh")
        k, v = item.split("=", 1)
        out[target_name(k)] = v.strip()
    return out


def target_name(name: str) -> str:
    """'GPP' or 'GPP_NT_VUT_USTAR50' → the store's name; InputError otherwise."""
    key = str(name).strip()
    if key.upper() in SHORT:
        return SHORT[key.upper()]
    if key in TARGETS:
        return key
    raise InputError(f"unknown target {name!r}; choose GPP, RECO or NEE")


def experiment_name(ds: xr.Dataset, paths: Sequence[Path]) -> str:
    """The model's ``source_id`` (CMIP6), else ``model_id``/``source``-free file stem."""
    for key in ("source_id", "model_id"):
        if ds.attrs.get(key):
            return str(ds.attrs[key])
    stem = Path(paths[0]).name
    for suffix in (".nc", ".nc4", ".zarr"):
        stem = stem.removesuffix(suffix)
    return stem


def open_model(paths, *, mapping: Mapping[str, str] | None = None, targets: Sequence[str] | None = None,
               name: str | None = None) -> xr.Dataset:
    """Open model output lazily as the store's targets on a (time, lat, lon) grid.

    Parameters
    ----------
    paths : one path or several (variables in separate files, or one variable split in time).
    mapping : {target: expression over file variables} overriding the CMOR defaults, e.g.
        ``{"GPP": "GPP_mean", "RECO": "ra+rh"}`` (short or store target names).
    targets : the targets wanted (default: every one the files provide).
    name : experiment name (default: ``source_id`` or the file stem).

    >>> ds = open_model("gpp_Lmon_X_historical_r1i1p1f1_gn_200001-201412.nc")  # doctest: +SKIP
    >>> ds.attrs["time_scale"], list(ds.data_vars)                             # doctest: +SKIP
    ('monthly', ['GPP_NT_VUT_USTAR50'])
    """
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    if not paths:
        raise InputError("no model files given")
    for p in paths:
        if not p.exists():
            raise MissingError(f"model file {p} does not exist")
    where = paths[0].name if len(paths) == 1 else f"{paths[0].name} (+{len(paths) - 1} files)"
    raw = _open(paths)
    ds = _normalise_grid(raw)
    if "time" not in ds.dims or ds.sizes["time"] < 1:
        raise InputError(f"{where}: no time dimension")
    wanted = [target_name(t) for t in targets] if targets else list(TARGETS)
    user = {target_name(k): v for k, v in (mapping or {}).items()}

    out: dict[str, xr.DataArray] = {}
    derivations: dict[str, str] = {}
    for target in (GPP, RECO, NEE):
        choices = (user[target],) if target in user else CANDIDATES[target]
        for expr in choices:
            terms = _parse(expr)
            names = [n for _, n in terms]
            _refuse(target, ds, names if len(names) == 1 else [], where)
            if names == ["RECO", "GPP"] and target == NEE and target not in user:
                if GPP in out and RECO in out:
                    out[NEE] = out[RECO] - out[GPP]
                    derivations[NEE] = "RECO - GPP"
                break
            if not all(n in ds.data_vars for n in names):
                if target in user:
                    missing = [n for n in names if n not in ds.data_vars]
                    raise InputError(f"{where}: --map {target.split('_')[0]}={expr}: no variable {missing}; "
                                     f"the files hold {sorted(map(str, ds.data_vars))}")
                continue
            parts = [sign * cunits.to_store_units(ds[n], what=f"{where}: variable {n!r}") for sign, n in terms]
            da = parts[0]
            for p in parts[1:]:
                da = da + p
            if expr.lstrip("-") == "nbp" and target in wanted:
                warnings.warn(f"{where}: NEE taken as -nbp; NBP also carries fire, harvest and land-use fluxes, "
                              "so it is not the tower's NEE", ApproximationWarning, stacklevel=2)
            out[target] = da
            derivations[target] = expr
            break

    found = [t for t in wanted if t in out]
    if not found:
        npp = [n for n in ("npp", "rh", "ra") if n in ds.data_vars]
        hint = (f"; {npp} cannot stand for GPP or RECO (NPP < GPP, Rh < RECO by definition)" if npp else "")
        raise InputError(f"{where}: no variable maps to {[t.split('_')[0] for t in wanted]} "
                         f"(looked for gpp, reco or ra+rh, nee or nep or nbp){hint}; the files hold "
                         f"{sorted(map(str, ds.data_vars))}; name one with --map TARGET=VARIABLE")
    for t in wanted:
        if t not in out:
            log.info("%s: no variable for %s; it is not scored", where, t.split("_")[0])

    tvals = list(ds["time"].values)
    if not hasattr(tvals[0], "year"):
        tvals = list(pd.DatetimeIndex(ds["time"].values))
    step = float(np.median(np.diff([_days(t) for t in tvals]))) if len(tvals) > 1 else None
    if step is None:
        bnd = _bounds(ds, where)
        if bnd is None:
            raise InputError(f"{where}: one time step and no time bounds; the time scale cannot be told")
        lo, hi = bnd.values[0]
        step = _days(hi) - _days(lo)
    scale = _time_scale(step, where)
    bounds = _bounds(ds, where) if len(tvals) > 1 else None
    calendar = str(getattr(tvals[0], "calendar", "") or ds["time"].encoding.get("calendar", "standard"))
    data = xr.Dataset({t: out[t].astype(np.float32) for t in found})
    data = data.drop_vars([c for c in data.coords if c not in ("time", "lat", "lon")])
    if scale == MONTHLY:
        months = _month_starts(tvals, bounds)
        if months.has_duplicates:
            raise InputError(f"{where}: two values fall in one month ({months[months.duplicated()][0]:%Y-%m}); "
                             "check the time axis or its bounds")
        data = data.assign_coords(time=months)
    else:
        keep, days = _real_days(tvals)
        if len(keep) < len(tvals):
            log.info("%s: %d days of the %s calendar do not exist on the real one; dropped", where,
                     len(tvals) - len(keep), calendar)
        data = data.isel(time=keep).assign_coords(time=days.values)
        if scale == "subdaily":
            day = xr.DataArray(data.indexes["time"].normalize(), dims="time", name="day")
            data = data.groupby(day).mean().rename(day="time")
            log.info("%s: sub-daily output (step %.3f d) averaged to daily means", where, step)
            scale = DAILY
        else:
            data = data.assign_coords(time=data.indexes["time"].normalize())
        if data.indexes["time"].has_duplicates:
            raise InputError(f"{where}: two values fall on one day; check the time axis")
    data = schema.refuse_implausible(data.sortby("time"), where)
    data.attrs = {
        "experiment": name or experiment_name(raw, paths),
        "time_scale": scale,
        "calendar": calendar,
        "files": " ".join(p.name for p in paths),
        "derivation": "; ".join(f"{k.split('_')[0]} = {v}" for k, v in derivations.items() if k in found),
    }
    log.info("%s: %s %s on %d x %d cells, %s..%s (%s calendar): %s", where, data.attrs["experiment"], scale,
             data.sizes["lat"], data.sizes["lon"], f"{data.indexes['time'][0]:%Y-%m-%d}",
             f"{data.indexes['time'][-1]:%Y-%m-%d}", calendar, data.attrs["derivation"])
    return data


def _days(t) -> float:
    """Days since an arbitrary origin for a cftime or pandas time (differences only)."""
    if hasattr(t, "toordinal") and not isinstance(t, pd.Timestamp):
        return float(t.toordinal(fractional=True))
    return pd.Timestamp(t).value / 86400e9
