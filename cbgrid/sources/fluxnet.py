"""Reader for ONEFlux daily (DD) files: FLUXNET2015, AmeriFlux-FLUXNET, ICOS, JapanFlux.

Reads the CarbonBench targets from a DD CSV into a one-site store Dataset:

* both column generations: FLUXNET2015 ``GPP_NT_VUT_50`` / ``NEE_VUT_50_QC`` and the newer
  ``GPP_NT_VUT_USTAR50`` / ``NEE_VUT_USTAR50_QC``;
* ``-9999`` → NaN;
* the QC kept as ONEFlux gives it for daily data: the continuous 0–1 fraction of measured or
  good-quality gap-filled half-hours;
* site id from the file name (``FLX_US-AR1_FLUXNET2015_SUBSET_DD_...``) or an argument; lat/lon,
  IGBP and Köppen from the site catalog or a table the user passes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from cbgrid import catalog, context, schema, store
from cbgrid.errors import InputError, MissingError
from cbgrid.schema import GPP, NEE, QC, RECO, SchemaError
from cbgrid.sources import register_site_source

log = logging.getLogger(__name__)

MISSING = -9999
#: store name -> accepted ONEFlux column names, newest generation first.
COLUMNS = {
    GPP: ("GPP_NT_VUT_USTAR50", "GPP_NT_VUT_50"),
    RECO: ("RECO_NT_VUT_USTAR50", "RECO_NT_VUT_50"),
    NEE: ("NEE_VUT_USTAR50", "NEE_VUT_50"),
    QC: ("NEE_VUT_USTAR50_QC", "NEE_VUT_50_QC"),
}
_NAME = re.compile(r"^(?P<prefix>[A-Za-z]+)_(?P<site>[A-Z]{2}-[A-Za-z0-9]{3})_(?P<rest>.*)$")
_PREFIX_NETWORK = {"FLX": "FLUXNET2015", "AMF": "AmeriFlux", "ICOSETC": "ICOS", "ICOS": "ICOS", "JPF": "JapanFlux"}


def parse_filename(path) -> tuple[str, str, str]:
    """(site id, network, resolution) from a ONEFlux file name; raises SchemaError if unrecognised."""
    name = Path(path).name
    m = _NAME.match(name)
    if not m:
        raise SchemaError(
            f"{name}: cannot read a site id from the file name (expected e.g. "
            "FLX_US-AR1_FLUXNET2015_SUBSET_DD_2009-2012_1-3.csv); pass the site explicitly (--site)"
        )
    rest = m["rest"].upper()
    network = _PREFIX_NETWORK.get(m["prefix"].upper(), "other")
    if network == "FLUXNET2015" and "FLUXNET2015" not in rest:
        network = "JapanFlux" if m["site"].startswith("JP-") else "other"
    res = next((r for r in ("HH", "HR", "DD", "WW", "MM", "YY") if f"_{r}_" in f"_{rest}_" or rest.startswith(f"{r}_") or f"_{r}." in rest), "")
    return m["site"], network, res


def _site_row(site: str, sites: pd.DataFrame | None, path) -> pd.DataFrame:
    table = catalog.sites() if sites is None else sites
    row = table[table["site"] == site]
    if row.empty:
        raise SchemaError(
            f"{Path(path).name}: site {site!r} is not in the site catalog; pass a site table "
            "(--sites CSV with columns site, lat, lon, igbp, koppen) that lists it"
        )
    row = row.iloc[[0]].copy()
    if "koppen" not in row or not str(row["koppen"].iloc[0]).strip():

        code = int(context.koppen_at(row["lat"].to_numpy(float), row["lon"].to_numpy(float))[0])
        if code == 0:
            raise SchemaError(f"site {site!r}: no Köppen class found near lat/lon {row['lat'].iloc[0]}, {row['lon'].iloc[0]}")
        row["koppen"] = schema.KOPPEN_CLASSES[code - 1]
    return row


def read_oneflux(path, *, site: str | None = None, sites: pd.DataFrame | None = None, network: str | None = None) -> xr.Dataset:
    """Read one ONEFlux DD CSV into a one-site store Dataset (targets and QC).

    Raises SchemaError naming the file, row and value for: no TIMESTAMP column, unparseable or
    sub-daily stamps, duplicate days, missing target columns, QC outside [0, 1], unknown site.
    """
    path = Path(path)
    if not path.exists():
        raise MissingError(f"no such file: {path}")
    fsite, fnet, res = parse_filename(path) if site is None else (site, "other", "")
    if site is None and res and res != "DD":
        raise SchemaError(f"{path.name}: this is a {res} file; cbgrid reads daily (DD) ONEFlux files")
    try:
        df = pd.read_csv(path, dtype={"TIMESTAMP": str}, na_values=[MISSING, str(MISSING), f"{MISSING}.0"], low_memory=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise SchemaError(f"{path.name}: not a readable CSV ({e})") from e
    if "TIMESTAMP" not in df.columns:
        hint = " (TIMESTAMP_START/END mark a sub-daily file; use the DD file)" if "TIMESTAMP_START" in df.columns else ""
        raise SchemaError(f"{path.name}: no TIMESTAMP column{hint}; columns start {list(df.columns[:5])}")
    stamps = df["TIMESTAMP"].astype(str).str.strip()
    long = stamps.str.len() != 8
    if long.any():
        i = int(np.flatnonzero(long)[0])
        kind = "sub-daily" if stamps.iloc[i].isdigit() and len(stamps.iloc[i]) == 12 else "malformed"
        raise SchemaError(
            f"{path.name}: row {i + 2}: TIMESTAMP {stamps.iloc[i]!r} is {kind}; a DD file has YYYYMMDD stamps"
        )
    time = pd.to_datetime(stamps, format="%Y%m%d", errors="coerce")
    if time.isna().any():
        i = int(np.flatnonzero(time.isna())[0])
        raise SchemaError(f"{path.name}: row {i + 2}: cannot parse TIMESTAMP {stamps.iloc[i]!r} as YYYYMMDD")
    dup = time[time.duplicated()]
    if len(dup):
        raise SchemaError(f"{path.name}: duplicate day(s) {[str(d.date()) for d in dup[:5]]}")
    data = {}
    for name, candidates in COLUMNS.items():
        col = next((c for c in candidates if c in df.columns), None)
        if col is None:
            raise SchemaError(f"{path.name}: none of the columns {candidates} is present")
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(np.float64)
        bad = df[col].notna().to_numpy() & np.isnan(values)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise SchemaError(f"{path.name}: row {i + 2}: {col} = {df[col].iloc[i]!r} is not a number")
        data[name] = values
    qc = data[QC]
    out = np.isfinite(qc) & ((qc < 0) | (qc > 1))
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise SchemaError(f"{path.name}: row {i + 2}: {COLUMNS[QC]} = {qc[i]} outside [0, 1] (daily QC is a fraction)")
    order = np.argsort(time.to_numpy())
    time = pd.DatetimeIndex(time.to_numpy()[order])
    days = pd.date_range(time[0], time[-1], freq="D")
    pos = days.get_indexer(time)
    arrays = {}
    for name, values in data.items():
        full = np.full(days.size, np.nan, dtype=np.float32)
        full[pos] = values[order]
        arrays[name] = full[None, :]
    row = _site_row(fsite, sites, path)
    if network or fnet != "other" or "network" not in row:
        row["network"] = network or fnet
    ds = schema.site_dataset(arrays, row.reset_index(drop=True), days)
    ds.attrs["source"] = f"ONEFlux DD file {path.name}"
    log.info("%s: site %s, %s..%s, %d observed NEE days", path.name, fsite, days[0].date(), days[-1].date(), int(np.isfinite(arrays[NEE]).sum()))
    return ds


def read_many(paths: Iterable, *, sites: pd.DataFrame | None = None) -> xr.Dataset:
    """Read several DD files (one site each) onto a common daily axis."""
    parts = [read_oneflux(p, sites=sites) for p in paths]
    if not parts:
        raise InputError("no ONEFlux files given")
    ids = [str(p.site.values[0]) for p in parts]
    if len(set(ids)) != len(ids):
        raise SchemaError(f"several files for the same site: {sorted({s for s in ids if ids.count(s) > 1})}")
    return xr.concat(parts, dim=schema.SITE, join="outer", combine_attrs="drop_conflicts")


@register_site_source
class OneFluxFiles:
    """ONEFlux daily (DD) CSV files, one site each (FLUXNET2015, AmeriFlux-FLUXNET, ICOS, JapanFlux)."""

    name = "oneflux"

    @classmethod
    def recognizes(cls, paths: list[Path]) -> bool:
        return bool(paths) and all(p.is_file() and p.suffix.lower() == ".csv" for p in paths)

    def read(self, paths: list[Path], *, sites: pd.DataFrame | None = None) -> xr.Dataset:
        return read_many(paths, sites=sites)

    def write(self, paths: list[Path], out, *, sites: pd.DataFrame | None = None, period=None,
              overwrite: bool = False, progress: bool = True) -> dict:
        return store.merge(self.read(paths, sites=sites), out, period=period, overwrite=overwrite, progress=progress)
