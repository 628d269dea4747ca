"""Import of the published CarbonBench data (the folder its authors distribute) into a store.

The layout (one folder)::

    target_fluxes_v2.parquet   (or target_fluxes.parquet, the earlier prefixed-id version)
    MOD09GA.parquet            MODIS features, one row per (date, site)
    ERA5.parquet               ERA5-Land features (~5 GB, 150 columns)
    koppen_sites.json          site -> Köppen main class (A..E)
    koppen_sites_short.json    site -> detailed Köppen class (Dfb, ...)
    feature_sets.json          {"minimal": [...], "standard": [...], "full": [...]}
    FLUXNET2015_Metadata.csv, AmeriFlux_Metadata.tsv, ICOS2025_Metadata.csv   (optional)

The rows and values kept are those of the reference loaders (``load_targets``, ``load_modis``,
``load_era`` and ``join_features`` of CarbonFluxBench at b5d643a); each rule and the function
that applies it is listed in docs/import.md:

* targets: ``-9999`` → NaN; TIMESTAMP parsed as ``%Y%m%d``; rows before 2000-02-24 dropped;
  lat/lon rounded to 3 decimals; Köppen main and detailed classes mapped from the two JSON
  files; only rows with date, site, lat, lon, IGBP, both Köppen classes, the three targets and
  QC all present are kept (``dropna``). A dropped row is a day without any usable target in the
  store (GPP, RECO, NEE and QC all NaN). Sites left without rows are counted and named in the
  log. IGBP, lat and lon of a site are those of its first kept row (``groupby(...).first()``).
* features: site ids stripped of their network prefix (``FLX_US-Ha1`` → ``US-Ha1``, the second
  ``_`` token when there is one); of duplicated (date, site) rows the first in file order wins;
  values kept as stored (no ``-9999`` replacement: the reference does none); a row feeds the
  store only where its date is a store day (the reference's left join on exact dates).
* values outside the plausible range of ``catalogs/variables.csv`` are kept, as the reference
  keeps them, and counted in one warning per column (:func:`warn_implausible`); a target row
  with an infinite value is dropped with a warning (the reference's ``dropna`` keeps it); a
  table pyarrow cannot open or decode, or a date column that does not parse, is a
  :class:`DataError` naming the file.

Every table is streamed with pyarrow in batches, reading only the needed columns. The target
table in two passes (the axes, then the rules batch by batch into (site, day) arrays). The
feature tables: one pass over (date, site) finds each row's (site, day) slot, then the value
columns are scattered in groups sized by a memory budget (``budget_mb``: the group's arrays and
the row group pyarrow decodes for them), so peak memory follows the budget, not the table. A new store is built beside its final path and renamed into place
(:func:`cbgrid.atomic.replace_dir`); an existing one is extended through
:func:`cbgrid.store.merge`, whose commit record keeps the old store intact on interruption.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from cbgrid import catalog, schema, store
from cbgrid.atomic import replace_dir
from cbgrid.errors import DataError, ExistsError, InputError, MissingError, first_line
from cbgrid.progress import bar
from cbgrid.protocol import WINDOW
from cbgrid.schema import GPP, NEE, QC, RECO
from cbgrid.sources import register_site_source

log = logging.getLogger(__name__)

MISSING = -9999
#: First target day kept: the start of MODIS observations.
START = pd.Timestamp("2000-02-24")
TARGET_TABLES = ("target_fluxes_v2.parquet", "target_fluxes.parquet")
MODIS_TABLE, ERA5_TABLE = "MOD09GA.parquet", "ERA5.parquet"
KOPPEN_JSON, KOPPEN_SHORT_JSON, FEATURE_SETS_JSON = "koppen_sites.json", "koppen_sites_short.json", "feature_sets.json"
REQUIRED = (MODIS_TABLE, ERA5_TABLE, KOPPEN_JSON, KOPPEN_SHORT_JSON, FEATURE_SETS_JSON)
#: Network metadata the reference joined into the target table (lat, lon, IGBP) before
#: publishing it; the target table already carries those columns, so these are optional.
METADATA_TABLES = ("FLUXNET2015_Metadata.csv", "AmeriFlux_Metadata.tsv", "ICOS2025_Metadata.csv")
TARGET_COLUMNS = ("TIMESTAMP", "site", "lat", "lon", "IGBP", GPP, RECO, NEE, QC)
#: Network codes of the target table (v2 ``network`` column, v1 id prefix) -> store networks.
NETWORK_CODES = {"FLX": "FLUXNET2015", "AMF": "AmeriFlux", "ICOS": "ICOS", "ICOSETC": "ICOS", "JPX": "JapanFlux",
                 "JPF": "JapanFlux"}
#: Default memory for one pass of scattered feature columns.
BUDGET_MB = 128
#: Rows read from a table at a time.
BATCH_ROWS = 65_536
#: Resident bytes per value while pyarrow decodes a float64 column chunk (measured: ~44).
DECODE_BYTES = 48


def layout(folder) -> dict[str, Path]:
    """The files of a published CarbonBench folder; MissingError naming every missing one.

    >>> layout("/nonexistent")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    MissingError: ...
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingError(f"{folder}: no such folder (expected the published CarbonBench data folder)")
    target = next((folder / t for t in TARGET_TABLES if (folder / t).is_file()), None)
    missing = ([] if target else [" or ".join(TARGET_TABLES)]) + [f for f in REQUIRED if not (folder / f).is_file()]
    if missing:
        raise MissingError(f"{folder}: missing {', '.join(missing)}; the published CarbonBench folder holds "
                           f"{TARGET_TABLES[0]}, {', '.join(REQUIRED)}")
    out = {"targets": target, **{f: folder / f for f in REQUIRED}}
    out.update({f: folder / f for f in METADATA_TABLES if (folder / f).is_file()})
    return out


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(doc, dict):
        raise InputError(f"{path}: expected a JSON object (site -> class), found {type(doc).__name__}")
    return doc


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """A Parquet file that pyarrow cannot open or decode is a :class:`DataError` naming it."""
    import pyarrow as pa

    try:
        yield
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({first_line(e)}); it may be cut short or damaged: "
                        "download it again") from e


def _parquet(path: Path):
    import pyarrow.parquet as pq

    with _reading(path):
        return pq.ParquetFile(path)


def _iter_batches(pf, path: Path, **kw):
    with _reading(path):
        yield from pf.iter_batches(**kw)


def strip_prefix(ids) -> np.ndarray:
    """Feature-table site ids without their network prefix: the second ``_`` token if any.

    >>> strip_prefix(["FLX_US-Ha1", "US-Ha1", "AMF_US-xBN_extra"]).tolist()
    ['US-Ha1', 'US-Ha1', 'US-xBN']
    """
    return np.asarray([x.split("_")[1] if len(x.split("_")) > 1 else x for x in map(str, ids)], dtype=object)


def _stamps(col: pd.Series) -> pd.Series:
    """``pd.to_datetime(col, format='%Y%m%d')`` for YYYYMMDD integers or strings (integers
    without a round trip through strings); an impossible date raises ValueError."""
    if pd.api.types.is_integer_dtype(col):
        v = col.to_numpy(np.int64)
        return pd.to_datetime(pd.DataFrame({"year": v // 10000, "month": v // 100 % 100, "day": v % 100}))
    if pd.api.types.is_numeric_dtype(col):
        col = col.astype("Int64")
    return pd.to_datetime(col.astype(str), format="%Y%m%d")


def _koppen_of(sites: np.ndarray, mapping: dict) -> np.ndarray:
    """``Series.map(mapping)`` for an array of ids: the class or None."""
    return np.asarray([mapping.get(x) for x in sites], dtype=object)


def read_targets(path, koppen: dict, koppen_short: dict, *, batch_rows: int = BATCH_ROWS,
                 progress: bool = True) -> tuple[pd.DataFrame, pd.DatetimeIndex, dict, dict]:
    """The reference's target rows, streamed: (sites, days, arrays, report).

    ``sites``: the site table of the sites with kept rows, sorted, with IGBP, lat, lon and network
    of each site's first kept row and its two Köppen classes; ``days``: from ``WINDOW - 1`` days
    before 2000-02-24 to the last kept day; ``arrays``: (S, T) float32 GPP, RECO, NEE and QC on
    the kept rows, NaN elsewhere; ``report``: counts and the names of dropped sites.

    Two passes of ``batch_rows`` rows: the site ids and dates (for the axes), then every needed
    column, each batch's rows filtered by the reference's rules and scattered into the arrays.
    """
    path = Path(path)
    pf = _parquet(path)
    names = pf.schema_arrow.names
    missing = [c for c in TARGET_COLUMNS if c not in names]
    if missing:
        raise InputError(f"{path}: target table lacks column(s) {missing}; it has {names[:12]}"
                         f"{' ...' if len(names) > 12 else ''}")
    v1 = "network" not in names
    cols = list(TARGET_COLUMNS) + ([] if v1 else ["network"])

    def batches(columns, desc):
        with bar(total=pf.metadata.num_rows, desc=f"{path.name}: {desc}", unit="row", progress=progress) as b:
            for batch in _iter_batches(pf, path, batch_size=batch_rows, columns=columns, use_threads=False):
                yield batch.to_pandas()
                b.update(batch.num_rows)

    def ids(raw: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        raw = raw.astype(str).to_numpy()
        return (np.asarray([x.split("_")[1] if "_" in x else x for x in raw], dtype=object),
                np.asarray([x.split("_")[0] for x in raw], dtype=object)) if v1 else (raw, None)

    def parse(col: pd.Series) -> pd.Series:
        try:
            return _stamps(col)
        except (ValueError, TypeError) as e:
            raise DataError(f"{path}: column TIMESTAMP is not YYYYMMDD ({e})") from e

    # pass 1: which sites, which days
    all_sites: set[str] = set()
    last = None
    for df in batches(["TIMESTAMP", "site"], "sites and days"):
        site, _ = ids(df["site"])
        all_sites.update(site.tolist())
        date = parse(df["TIMESTAMP"])
        top = date[date >= START].max() if (date >= START).any() else None
        last = top if last is None or (top is not None and top > last) else last
    sites = pd.Index(sorted(all_sites))
    if last is None:
        raise DataError(f"{path}: no row from {START.date()} on; nothing to import")
    days = pd.date_range(START - pd.Timedelta(days=WINDOW - 1), last, freq="D")
    n_sites, n_days = len(sites), len(days)
    out = np.full((4, n_sites * n_days), np.nan, np.float32)
    seen = np.zeros(n_sites * n_days, bool)
    first_row = {}  # site index -> (lat, lon, IGBP, network) of its first kept row
    kop, short = _koppen_of(sites.to_numpy(), koppen), _koppen_of(sites.to_numpy(), koppen_short)
    n_rows = n_kept = n_dup = n_inf = 0
    t0 = days[0].to_datetime64().astype("datetime64[ns]")
    values = [GPP, RECO, NEE, QC]
    # pass 2: the reference's rules, batch by batch
    for df in batches(cols, "rows"):
        n_rows += len(df)
        site, prefix = ids(df["site"])
        network = prefix if v1 else df["network"].astype(object).to_numpy()
        num = {c: pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64, copy=True) for c in ("lat", "lon", *values)}
        for c in num:  # df.replace(-9999, np.nan)
            num[c][num[c] == MISSING] = np.nan
        date = parse(df["TIMESTAMP"]).to_numpy().astype("datetime64[ns]")
        s = sites.get_indexer(site)
        day = (date - t0).astype(np.int64) // 86_400_000_000_000
        in_axis = (day >= 0) & (day < n_days)
        flat = np.where(in_axis, s * n_days + np.clip(day, 0, n_days - 1), -1)
        if v1:  # the v2 table was made with drop_duplicates on (TIMESTAMP, site) over every row
            first = _first_unseen(flat, seen)
            seen[flat[first]] = True
            keep = np.zeros(len(df), bool)
            keep[first] = True
        else:
            keep = np.ones(len(df), bool)
        keep &= date >= START.to_datetime64()
        lat, lon = np.round(num["lat"], 3), np.round(num["lon"], 3)
        igbp = df["IGBP"].astype(object).to_numpy()
        keep &= np.isfinite(lat) & np.isfinite(lon) & pd.notna(igbp) & pd.notna(kop[s]) & pd.notna(short[s])
        n_inf += int(np.count_nonzero(keep & np.any([np.isinf(num[c]) for c in values], axis=0)))
        for c in values:
            keep &= np.isfinite(num[c])
        rows = np.flatnonzero(keep)
        if not v1:  # a (date, site) twice in the v2 table: the store holds the first
            first = rows[_first_unseen(flat[rows], seen)]
            n_dup += rows.size - first.size
            seen[flat[first]] = True
            rows = first
        for j, c in enumerate(values):
            out[j, flat[rows]] = num[c][rows]
        n_kept += rows.size
        uniq, at = np.unique(s[rows], return_index=True)
        for si, r in zip(uniq.tolist(), rows[at].tolist()):
            if si not in first_row:
                first_row[si] = (lat[r], lon[r], str(igbp[r]), str(network[r]))
    if n_dup:
        log.warning("%s: %d duplicated (date, site) target row(s); the first of each is kept", path.name, n_dup)
    if n_inf:
        log.warning("%s: %d row(s) with an infinite target or QC dropped (the reference's dropna would keep them; "
                    "an infinite value is no measurement): check the table", path.name, n_inf)
    kept_idx = sorted(first_row)
    kept = [sites[i] for i in kept_idx]
    no_koppen = sorted(x for x in all_sites if x not in koppen or x not in koppen_short)
    other = sorted(all_sites - set(kept) - set(no_koppen))
    report = {"target_rows": n_rows, "rows_kept": n_kept, "sites_in_table": len(all_sites), "sites_kept": len(kept),
              "dropped_no_koppen": no_koppen, "dropped_no_rows": other}
    if not kept:
        return pd.DataFrame(), days, {}, report
    grid = out.reshape(4, n_sites, n_days)[:, kept_idx]
    have = np.isfinite(grid).any(axis=(0, 1))
    end = int(np.flatnonzero(have)[-1]) + 1
    arrays = {c: np.ascontiguousarray(grid[j, :, :end]) for j, c in enumerate(values)}
    table = pd.DataFrame({
        "site": kept, "lat": [first_row[i][0] for i in kept_idx], "lon": [first_row[i][1] for i in kept_idx],
        "igbp": [first_row[i][2] for i in kept_idx], "koppen": [koppen[x] for x in kept],
        "koppen_detailed": [koppen_short[x] for x in kept],
        "network": [NETWORK_CODES.get(first_row[i][3].upper(), "other") for i in kept_idx],
    })
    return table, days[:end], arrays, report


def _release_arrow_memory() -> None:
    """Hand the memory pyarrow's pool keeps after a pass back to the system."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def _first_unseen(flat: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Positions of the first occurrence of each slot in ``flat`` (>= 0) not already ``seen``."""
    idx = np.flatnonzero(flat >= 0)
    _, first = np.unique(flat[idx], return_index=True)
    first = np.sort(idx[first])
    return first[~seen[flat[first]]]


def feature_columns(sets: dict, era5_names, path) -> list[str]:
    """The ERA5 columns named by feature_sets.json, in first-mention order; InputError naming
    the ones the ERA5 table lacks or the variable catalog does not know."""
    wanted: list[str] = []
    for name, cols in sets.items():
        if not isinstance(cols, list):
            raise InputError(f"{path}: feature set {name!r} must be a list of ERA5 column names")
        wanted += [c for c in cols if c not in wanted]
    lacking = [c for c in wanted if c not in era5_names]
    if lacking:
        raise InputError(f"{path}: feature set(s) name column(s) the ERA5 table lacks: {', '.join(lacking[:10])}"
                         f"{f' (+{len(lacking) - 10} more)' if len(lacking) > 10 else ''}")
    unknown = [c for c in wanted if c not in catalog.variables().index]
    if unknown:
        raise InputError(f"{path}: column(s) {unknown[:10]} are not in the variable catalog (catalogs/variables.csv)")
    return wanted


def warn_implausible(path: Path, arrays: dict[str, np.ndarray], sites: pd.DataFrame, days: pd.DatetimeIndex) -> int:
    """Log one warning per (S, T) array holding values outside the catalog's plausible range
    (``catalogs/variables.csv`` valid_min/valid_max) or non-finite ones; return how many.

    The import keeps them, as the reference's loaders do (only -9999 is missing there): the store
    holds the published rows. A unit mix-up, fill value or damaged table shows in this warning.
    """
    total = 0
    for name, a in arrays.items():
        lo, hi = schema.plausible_range(name)
        bad = schema.implausible(a, lo, hi)
        n = int(np.count_nonzero(bad))
        if n:
            i, t = np.unravel_index(int(np.flatnonzero(bad)[0]), a.shape)
            log.warning("%s: %d value(s) of %s outside its plausible range [%g, %g] (catalogs/variables.csv), e.g. "
                        "%g at %s on %s; kept as the reference's loaders keep them: check the table", path.name, n,
                        name, lo, hi, a[i, t], sites["site"].iloc[i], days[t].date())
            total += n
    return total


class FeatureTable:
    """A feature parquet table streamed into (site, day) slots of a store's axes.

    ``slots()`` makes one pass over the (date, site) columns, ``batch_rows`` rows at a time:
    each row's flat slot ``site * T + day``, or -1 for rows of other sites or days and for
    repeats of a (date, site) already seen (the first row in file order wins). ``scatter(columns)``
    then reads only those columns, batch by batch, into a (len(columns), S, T) float32 array.
    """

    def __init__(self, path, sites, days: pd.DatetimeIndex, *, progress: bool = True, batch_rows: int = BATCH_ROWS):
        self.path = Path(path)
        self.file = _parquet(self.path)
        self.names = self.file.schema_arrow.names
        lacking = [c for c in ("date", "site") if c not in self.names]
        if lacking:
            raise InputError(f"{self.path}: feature table lacks column(s) {lacking}")
        self.sites = pd.Index(list(sites))
        self.days = days
        self.progress, self.batch_rows = progress, batch_rows
        self._slots: np.ndarray | None = None
        self.matched_sites: set[str] = set()
        self.other_sites: set[str] = set()

    @property
    def n_rows(self) -> int:
        return self.file.metadata.num_rows

    def _batches(self, columns: list[str], desc: str):
        with bar(total=self.n_rows, desc=f"{self.path.name}: {desc}", unit="row", progress=self.progress) as b:
            for batch in _iter_batches(self.file, self.path, batch_size=self.batch_rows, columns=columns,
                                       use_threads=False):
                yield batch
                b.update(batch.num_rows)

    def slots(self) -> np.ndarray:
        if self._slots is not None:
            return self._slots
        n_days = len(self.days)
        seen = np.zeros(len(self.sites) * n_days, bool)
        t0 = self.days[0].to_datetime64().astype("datetime64[ns]")
        out = []
        for batch in self._batches(["date", "site"], "rows"):
            ids = batch.column(batch.schema.get_field_index("site"))
            ids = ids.dictionary_encode() if not hasattr(ids, "dictionary") else ids
            uniq = strip_prefix(ids.dictionary.to_pylist())
            code = self.sites.get_indexer(uniq)
            self.matched_sites.update(uniq[code >= 0].tolist())
            self.other_sites.update(uniq[code < 0].tolist())
            s = code[ids.indices.to_numpy(zero_copy_only=False)]
            raw = batch.column(batch.schema.get_field_index("date")).to_pandas()
            try:
                date = pd.to_datetime(raw)  # the reference's `f.date = pd.to_datetime(f.date)`
            except (ValueError, TypeError, OverflowError) as e:
                raise DataError(f"{self.path}: column date cannot be read as dates ({first_line(e)}); the feature "
                                "tables hold one calendar day per row, e.g. 2015-01-01") from e
            date = date.to_numpy().astype("datetime64[ns]")
            delta = (date - t0).astype(np.int64)
            day = delta // 86_400_000_000_000
            ok = (s >= 0) & (delta % 86_400_000_000_000 == 0) & (day >= 0) & (day < n_days) & ~np.isnat(date)
            flat = np.where(ok, s.astype(np.int64) * n_days + day, -1)
            # first occurrence wins: within this batch, then against earlier ones
            idx = np.flatnonzero(flat >= 0)
            _, first = np.unique(flat[idx], return_index=True)
            first_rows = idx[first]
            first_rows = first_rows[~seen[flat[first_rows]]]
            keep = np.full(flat.size, -1, np.int64)
            keep[first_rows] = flat[first_rows]
            seen[flat[first_rows]] = True
            out.append(keep.astype(np.int32 if seen.size < 2**31 else np.int64))
        self._slots = np.concatenate(out) if out else np.zeros(0, np.int32)
        return self._slots

    def scatter(self, columns: list[str]) -> np.ndarray:
        """(len(columns), S, T) float32 values of ``columns``; NaN where no row feeds a slot."""
        lacking = [c for c in columns if c not in self.names]
        if lacking:
            raise InputError(f"{self.path}: table lacks column(s) {', '.join(lacking)}")
        slots = self.slots()
        n_sites, n_days = len(self.sites), len(self.days)
        out = np.full((len(columns), n_sites * n_days), np.nan, np.float32)
        at = 0
        for batch in self._batches(columns, f"{len(columns)} column(s)"):
            pos = slots[at:at + batch.num_rows]
            at += batch.num_rows
            keep = pos >= 0
            if not keep.any():
                continue
            for j in range(len(columns)):
                vals = batch.column(j).to_numpy(zero_copy_only=False)
                out[j, pos[keep]] = np.asarray(vals[keep], dtype=np.float32)
        _release_arrow_memory()
        return out.reshape(len(columns), n_sites, n_days)

    def groups(self, columns: list[str], budget_mb: float = BUDGET_MB) -> Iterator[dict[str, np.ndarray]]:
        """``{column: (S, T) array}`` for ``columns``, as many per pass as ``budget_mb`` holds."""
        # a pass holds its (S, T) arrays and one row group's column chunks, which pyarrow reads
        # whole: ~48 bytes of resident memory per float64 value while decoding (measured)
        rg_rows = max((self.file.metadata.row_group(i).num_rows for i in range(self.file.num_row_groups)), default=0)
        per = max(1, len(self.sites) * len(self.days) * 4 + DECODE_BYTES * rg_rows)
        k = len(columns) if not np.isfinite(budget_mb) else max(1, int(budget_mb * 2**20 // per))
        for i in range(0, len(columns), k):
            part = columns[i:i + k]
            block = self.scatter(part)
            yield {c: block[j] for j, c in enumerate(part)}
            del block


class CarbonBenchImport:
    """One published folder, read into store pieces: the site table, the targets, the features."""

    def __init__(self, folder, *, progress: bool = True, budget_mb: float = BUDGET_MB, batch_rows: int = BATCH_ROWS):
        self.files = layout(folder)
        self.folder = Path(folder)
        self.progress, self.budget_mb = progress, budget_mb
        koppen, short = _read_json(self.files[KOPPEN_JSON]), _read_json(self.files[KOPPEN_SHORT_JSON])
        self.sets = _read_json(self.files[FEATURE_SETS_JSON])
        self.sites, self.days, self._targets, self.report = read_targets(
            self.files["targets"], koppen, short, batch_rows=batch_rows, progress=progress)
        if self.sites.empty:
            raise DataError(f"{self.files['targets']}: no row has the three targets, QC and a Köppen entry "
                            f"from {START.date()} on; nothing to import")
        self._log_drops()
        self.modis = FeatureTable(self.files[MODIS_TABLE], self.sites["site"], self.days, progress=progress,
                                  batch_rows=batch_rows)
        self.era5 = FeatureTable(self.files[ERA5_TABLE], self.sites["site"], self.days, progress=progress,
                                 batch_rows=batch_rows)
        self.modis_columns = [c for c in catalog.modis_bands() if c in self.modis.names]
        lacking = [c for c in catalog.modis_bands() if c not in self.modis.names]
        if lacking:
            raise InputError(f"{self.files[MODIS_TABLE]}: MODIS table lacks column(s) {', '.join(lacking)}")
        self.era5_columns = feature_columns(self.sets, self.era5.names, self.files[FEATURE_SETS_JSON])
        for name in catalog.FEATURE_SETS:
            ours = catalog.era5_bands(name)
            if name in self.sets and list(self.sets[name]) != ours:
                log.warning("%s: feature set %r differs from cbgrid's catalog set (%d vs %d columns); the catalog "
                            "set is what `cbgrid train --feature-set %s` uses", FEATURE_SETS_JSON, name,
                            len(self.sets[name]), len(ours), name)

    def _log_drops(self) -> None:
        r = self.report
        log.info("%s: %d of %d rows kept, %d of %d sites", self.files["targets"].name, r["rows_kept"], r["target_rows"],
                 r["sites_kept"], r["sites_in_table"])
        if r["dropped_no_koppen"]:
            log.warning("%d site(s) dropped: no entry in %s/%s: %s", len(r["dropped_no_koppen"]), KOPPEN_JSON,
                        KOPPEN_SHORT_JSON, ", ".join(r["dropped_no_koppen"]))
        if r["dropped_no_rows"]:
            log.warning("%d site(s) dropped: no row from %s on with the three targets, QC, lat/lon and IGBP: %s",
                        len(r["dropped_no_rows"]), START.date(), ", ".join(r["dropped_no_rows"]))

    def targets(self) -> dict[str, np.ndarray]:
        """(S, T) GPP, RECO, NEE, QC on the kept rows; NaN on every other day."""
        return self._targets

    def check_features(self) -> None:
        self.modis.slots()
        self.era5.slots()
        for table in (self.modis, self.era5):
            if not table.matched_sites:
                raise InputError(f"{table.path}: none of its site ids (e.g. {sorted(table.other_sites)[:3]}) matches a "
                                 f"target site (e.g. {self.sites['site'].tolist()[:3]}); ids are compared after "
                                 "stripping a network prefix such as FLX_")
            lacking = sorted(set(self.sites["site"]) - table.matched_sites)
            if lacking:
                log.warning("%s: no rows for %d target site(s): %s", table.path.name, len(lacking), ", ".join(lacking[:20]))

    def first_part(self) -> xr.Dataset:
        """The targets and QC as a store Dataset (the part written first)."""
        self.check_features()
        warn_implausible(self.files["targets"], self.targets(), self.sites, self.days)
        ds = schema.site_dataset(self.targets(), self.sites, self.days)
        ds.attrs["source"] = f"CarbonBench published data {self.files['targets'].name} ({self.folder})"
        return ds

    def feature_parts(self) -> Iterator[xr.Dataset]:
        """The MODIS then the ERA5 columns as store Datasets, a memory budget's worth at a time."""
        for table, columns in ((self.modis, self.modis_columns), (self.era5, self.era5_columns)):
            for group in table.groups(columns, self.budget_mb):
                warn_implausible(table.path, group, self.sites, self.days)
                yield schema.site_dataset(group, self.sites, self.days)


def read_folder(folder, *, progress: bool = True) -> xr.Dataset:
    """The whole import in memory (small folders, tests): one store Dataset."""
    imp = CarbonBenchImport(folder, progress=progress, budget_mb=float("inf"))
    ds = imp.first_part()
    for part in imp.feature_parts():
        ds = ds.assign(part.data_vars)
    return ds


def write_folder(folder, out, *, overwrite: bool = False, progress: bool = True, budget_mb: float = BUDGET_MB,
                 batch_rows: int = BATCH_ROWS) -> dict:
    """Import a published folder into the store ``out``, in bounded memory.

    New store (or ``overwrite``): built beside ``out`` and renamed into place once complete.
    Existing store: the import is built beside it, then merged with :func:`cbgrid.store.merge`.
    Returns the loader report plus what the store write did.
    """
    out = Path(out)
    imp = CarbonBenchImport(folder, progress=progress, budget_mb=budget_mb, batch_rows=batch_rows)
    if out.exists() and not overwrite:
        scratch = out.with_name(f".{out.name}.import")
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            _build(imp, scratch, progress)
            result = store.merge(store.open_store(scratch), out, progress=progress)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    else:
        with replace_dir(out, overwrite=overwrite, hint="pass --overwrite to replace it") as tmp:
            _build(imp, tmp, progress)
        result = {"created": True, "sites_added": len(imp.sites), "variables_added": [GPP, RECO, NEE, QC,
                                                                                       *imp.modis_columns, *imp.era5_columns]}
    log.info("%s: %d sites x %d days from %s", out, len(imp.sites), len(imp.days), imp.folder)
    return {**imp.report, **result}


def _build(imp: CarbonBenchImport, path: Path, progress: bool) -> None:
    if path.exists():
        raise ExistsError(f"{path} exists")
    store.merge(imp.first_part(), path, progress=progress)
    for part in imp.feature_parts():
        store.add_variables(part, path)


@register_site_source
class CarbonBenchFolder:
    """The folder of the published CarbonBench data (target, MODIS and ERA5 parquet tables)."""

    name = "carbonbench"

    @classmethod
    def recognizes(cls, paths: list[Path]) -> bool:
        return len(paths) == 1 and paths[0].is_dir() and any((paths[0] / t).is_file() for t in TARGET_TABLES)

    def read(self, paths: list[Path], *, sites: pd.DataFrame | None = None) -> xr.Dataset:
        if sites is not None:
            raise InputError("the CarbonBench folder carries its own site table; drop --sites")
        return read_folder(paths[0])

    def write(self, paths: list[Path], out, *, sites: pd.DataFrame | None = None, period=None,
              overwrite: bool = False, progress: bool = True) -> dict:
        if sites is not None:
            raise InputError("the CarbonBench folder carries its own site table; drop --sites")
        if period is not None:
            log.info("the CarbonBench import keeps the days of its tables (%s on); --start/--end are not used",
                     START.date())
        return write_folder(paths[0], out, overwrite=overwrite, progress=progress)


