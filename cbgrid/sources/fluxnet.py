"""Reader for ONEFlux daily (DD) files: FLUXNET2015, AmeriFlux-FLUXNET, ICOS, JapanFlux.

Reads the CarbonBench targets from a DD CSV into a one-site store Dataset:

* both column generations: FLUXNET2015 ``GPP_NT_VUT_50`` / ``NEE_VUT_50_QC`` and the newer
  ``GPP_NT_VUT_USTAR50`` / ``NEE_VUT_USTAR50_QC``;
* ``-9999`` → NaN;
* the QC kept as ONEFlux gives it for daily data: the continuous 0–1 fraction of measured or
  good-quality gap-filled half-hours;
* site id from the file name (``FLX_US-AR1_FLUXNET2015_SUBSET_DD_...``) or an argument; lat/lon,
  IGBP and Köppen from the site catalog or a table the user passes;
* one site from several releases (FLUXNET2015, AmeriFlux-FLUXNET, ICOS, JapanFlux), in one
  ingest or in several (:func:`combine_releases`): **each day comes whole from the first
  release, in the order FLUXNET2015, AmeriFlux, ICOS, JapanFlux, then any other, whose record
  covers that day** — all three targets and QC from that one release, even where its values
  are missing that day, so NEE = RECO − GPP always holds within a day. This is the reference's
  rule (it stacks the releases in that order and keeps the first row of each (day, site)), with
  a release's record taken as the span between its first and last day with any target or QC
  value (a file's leading or trailing rows without any do not block another release). In a
  store, a site's stored record counts as the release its ``network`` names.
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
from cbgrid.errors import DataError, InputError, MissingError
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
            f"{name}: cannot read a site id from the file name; keep the name the network gave it "
            "(<PREFIX>_<SITE>_..._DD_....csv, e.g. FLX_US-AR1_FLUXNET2015_SUBSET_DD_2009-2012_1-3.csv)"
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


def _is_base(path: Path) -> bool:
    """Whether ``path`` is an AmeriFlux BASE file: by name, or by its ``# Site:`` preamble."""
    if "_BASE_" in path.name.upper() or "_BASE-" in path.name.upper():
        return True
    with path.open("rb") as f:
        return f.read(7) == b"# Site:"


def _read_table(path: Path) -> pd.DataFrame:
    """The CSV as strings-or-numbers; only -9999 means missing (``n/a``, ``NA`` and empty
    fields are refused as not numbers). A file that ends without a line break was cut off."""
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path.name}: the file is empty; re-download it")
    with path.open("rb") as f:
        f.seek(size - 1)
        last = f.read(1)
    if last not in (b"\n", b"\r"):
        with path.open("rb") as f:
            rows = sum(1 for _ in f)
        raise DataError(
            f"{path.name}: row {rows}: the file ends inside a line (a cut-off download or copy); "
            "re-download it (a complete file ends with a line break)"
        )
    try:
        return pd.read_csv(path, dtype={"TIMESTAMP": str}, na_values=[str(MISSING), f"{MISSING}.0"],
                           keep_default_na=False, low_memory=False)
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{path.name}: the file holds no header; re-download it") from e
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise SchemaError(f"{path.name}: not a readable CSV ({' '.join(str(e).split())})") from e


def _check_values(path: Path, col: str, name: str, values: np.ndarray) -> None:
    """Refuse a column with no value at all or with values outside the catalog's plausible range."""
    finite = np.isfinite(values)
    infinite = ~finite & ~np.isnan(values)
    if infinite.any():
        i = int(np.flatnonzero(infinite)[0])
        raise DataError(f"{path.name}: row {i + 2}: {col} = {values[i]} is not a finite number; "
                        f"only {MISSING} marks a missing value")
    if not finite.any():
        raise DataError(f"{path.name}: column {col} holds only {MISSING} (no value at all); "
                        "this file has no usable data for it: check it is the right file")
    lo, hi = schema.plausible_range(name)
    out = schema.implausible(values, lo, hi)  # no infinite value is left here: out of range only
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise DataError(
            f"{path.name}: row {i + 2}: {col} = {values[i]:g} outside the plausible range [{lo:g}, {hi:g}] "
            f"(catalogs/variables.csv valid_min/valid_max of {name}); fix the file, or the bounds if the "
            "value is real"
        )


def read_oneflux(path, *, site: str | None = None, sites: pd.DataFrame | None = None, network: str | None = None) -> xr.Dataset:
    """Read one ONEFlux DD CSV into a one-site store Dataset (targets and QC).

    Raises SchemaError naming the file, row and value for: no TIMESTAMP column, unparseable or
    sub-daily stamps, duplicate days, missing target columns, QC outside [0, 1], unknown site.
    """
    path = Path(path)
    if not path.exists():
        raise MissingError(f"no such file: {path}")
    fsite, fnet, res = parse_filename(path) if site is None else (site, "other", "")
    if _is_base(path):
        raise SchemaError(
            f"{path.name}: this is an AmeriFlux BASE file (half-hourly, without ONEFlux partitioning: no GPP "
            "or RECO); download the site's AmeriFlux FLUXNET product (AMF_<SITE>_FLUXNET_FULLSET or SUBSET) "
            "and ingest its DD file"
        )
    if site is None and res and res != "DD":
        raise SchemaError(f"{path.name}: this is a {res} file; cbgrid reads daily (DD) ONEFlux files")
    df = _read_table(path)
    if "TIMESTAMP" not in df.columns:
        hint = " (TIMESTAMP_START/END mark a sub-daily file; use the DD file)" if "TIMESTAMP_START" in df.columns else ""
        raise SchemaError(f"{path.name}: no TIMESTAMP column{hint}; columns start {list(df.columns[:5])}")
    if df.empty:
        raise DataError(f"{path.name}: the file has a header but no rows of data; re-download it")
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
            raise SchemaError(f"{path.name}: none of the columns {candidates} is present; cbgrid reads the "
                              "ONEFlux (FLUXNET2015 / FLUXNET) daily product, which names its flux one of these ways")
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(np.float64)
        bad = df[col].notna().to_numpy() & np.isnan(values)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise SchemaError(f"{path.name}: row {i + 2}: {col} = {df[col].iloc[i]!r} is not a number")
        _check_values(path, col, name, values)
        data[name] = values
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


#: Release priority per day (see the module doc): the reference's stacking order.
PRIORITY = ("FLUXNET2015", "AmeriFlux", "ICOS", "JapanFlux")


def _rank(network: str) -> int:
    return PRIORITY.index(network) if network in PRIORITY else len(PRIORITY)


def _record(ds: xr.Dataset) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """First and last day with any target or QC of a one-site Dataset (None if it has none)."""
    have = np.zeros(ds.sizes[schema.TIME], bool)
    for v in (GPP, RECO, NEE, QC):
        if v in ds:
            have |= np.isfinite(np.asarray(ds[v].values).reshape(-1))
    if not have.any():
        return None
    t = ds.indexes[schema.TIME][have]
    return t[0], t[-1]


def combine_releases(parts: list[xr.Dataset]) -> xr.Dataset:
    """One site's records from several releases → one record, each day whole from the first
    release (FLUXNET2015, AmeriFlux, ICOS, JapanFlux, others) whose record covers it.

    Each part is a one-site Dataset whose ``network`` coordinate names its release; its record
    spans its first to its last day with any target or QC. The result
    carries the network of the release that gave the most days, and an attribute ``releases``
    saying which release gave how many days.
    """
    site = str(parts[0][schema.SITE].values[0])
    if any(str(p[schema.SITE].values[0]) != site for p in parts):
        raise InputError(f"combine_releases: parts of different sites {sorted({str(p[schema.SITE].values[0]) for p in parts})}")
    nets = [str(schema.class_names(p, "network")[0]) for p in parts]
    order = sorted(range(len(parts)), key=lambda i: _rank(nets[i]))
    days = pd.DatetimeIndex(sorted(set().union(*(p.indexes[schema.TIME] for p in parts))))
    days = pd.date_range(days[0], days[-1], freq="D")
    chosen = np.full(days.size, -1)
    for i in order:
        span = _record(parts[i])
        if span is None:
            continue
        free = (chosen < 0) & (days >= span[0]) & (days <= span[1])
        chosen[free] = i
    names = sorted(set().union(*(p.data_vars for p in parts)))
    data = {}
    for v in names:
        out = np.full(days.size, np.nan, np.float32)
        for i, p in enumerate(parts):
            if v in p:
                vals = p[v].reindex({schema.TIME: days}).values.reshape(-1)
                out[chosen == i] = vals[chosen == i]
        data[v] = out[None, :]
    counts = {nets[i]: int((chosen == i).sum()) for i in order}
    best = max(order, key=lambda i: ((chosen == i).sum(), -_rank(nets[i])))
    sites_table = pd.DataFrame({
        "site": [site], "lat": [float(parts[best]["lat"].values[0])], "lon": [float(parts[best]["lon"].values[0])],
        **{c: [str(schema.class_names(parts[best], c)[0])] for c in schema.CATEGORICALS}})
    ds = schema.site_dataset(data, sites_table, days)
    ds.attrs["releases"] = "; ".join(f"{n}: {k} days" for n, k in counts.items())
    log.info("site %s from %d releases, each day from the first of %s covering it: %s", site, len(parts),
             ", ".join(PRIORITY), ds.attrs["releases"])
    return ds


def read_many(paths: Iterable, *, sites: pd.DataFrame | None = None) -> xr.Dataset:
    """Read several DD files onto a common daily axis; files of one site from several releases
    are combined day by day (:func:`combine_releases`)."""
    parts = [read_oneflux(p, sites=sites) for p in paths]
    if not parts:
        raise InputError("no ONEFlux files given")
    by_site: dict[str, list[xr.Dataset]] = {}
    for p in parts:
        by_site.setdefault(str(p.site.values[0]), []).append(p)
    for site, group in by_site.items():
        nets = [str(schema.class_names(p, "network")[0]) for p in group]
        if len(group) > 1 and len(set(nets)) < len(nets):
            raise SchemaError(f"site {site}: several files of the same release ({', '.join(nets)}); pass one file "
                              "per release")
    merged = [g[0] if len(g) == 1 else combine_releases(g) for g in by_site.values()]
    return xr.concat(merged, dim=schema.SITE, join="outer", combine_attrs="drop_conflicts")


def merge_into_store(new: xr.Dataset, path, *, period=None, overwrite: bool = False, progress: bool = True) -> dict:
    """:func:`cbgrid.store.merge` for ONEFlux sites: a site the store already holds is combined
    day by day with its stored record (the release priority of :func:`combine_releases`, the
    stored record counting as the release its ``network`` names) instead of being skipped."""
    from pathlib import Path as _Path

    path = _Path(path)
    if not path.exists():
        return store.merge(new, path, period=period, overwrite=overwrite, progress=progress)
    cur = store.open_store(path)
    held = [s for s in new[schema.SITE].values.tolist() if s in set(cur[schema.SITE].values.tolist())]
    result = store.merge(new.drop_sel({schema.SITE: held}), path, progress=progress) if len(held) < new.sizes[schema.SITE] \
        else {"created": False, "sites_added": 0, "variables_added": []}
    if held:
        targets = [v for v in (GPP, RECO, NEE, QC) if v in new and v in cur]
        combined = []
        for s in held:
            old = cur[targets].sel({schema.SITE: [s]}).load()
            combined.append(combine_releases([old, new[targets].sel({schema.SITE: [s]})]))
        both = xr.concat(combined, dim=schema.SITE).reindex({schema.TIME: cur.indexes[schema.TIME]})
        lost = int(sum((~c.indexes[schema.TIME].isin(cur.indexes[schema.TIME])).sum() for c in combined))
        if lost:
            log.warning("%d day(s) of the combined records fall outside the store period and are dropped", lost)
        store.merge(both, path, overwrite=True, progress=progress)
        result = {**result, "sites_combined": held}
    return result


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
        return merge_into_store(self.read(paths, sites=sites), out, period=period, overwrite=overwrite,
                                progress=progress)
