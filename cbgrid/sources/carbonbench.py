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

The feature tables are streamed row group by row group with pyarrow, reading only the needed
columns: one pass over (date, site) finds each row's (site, day) slot, then the value columns
are scattered in groups sized by a memory budget (``budget_mb``), so peak memory does not grow
with the table. A new store is built beside its final path and renamed into place
(:func:`cbgrid.atomic.replace_dir`); an existing one is extended through
:func:`cbgrid.store.merge`, whose commit record keeps the old store intact on interruption.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from cbgrid import catalog, schema, store
from cbgrid.atomic import replace_dir
from cbgrid.errors import DataError, ExistsError, InputError, MissingError
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


def read_targets(path, koppen: dict, koppen_short: dict) -> tuple[pd.DataFrame, dict]:
    """The reference's target rows: (rows, report) — see the module doc for the rules.

    ``rows`` has columns date, site, lat, lon, IGBP, Koppen, Koppen_short, network, the three
    targets and QC, in file order. ``report`` counts and names what was dropped.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    names = pq.ParquetFile(path).schema_arrow.names
    missing = [c for c in TARGET_COLUMNS if c not in names]
    if missing:
        raise InputError(f"{path}: target table lacks column(s) {missing}; it has {names[:12]}"
                         f"{' ...' if len(names) > 12 else ''}")
    cols = list(TARGET_COLUMNS) + (["network"] if "network" in names else [])
    # site ids as categories: a few hundred strings instead of one object per row
    df = pq.read_table(path, columns=cols).to_pandas(strings_to_categorical=True)
    num = [c for c in ("lat", "lon", GPP, RECO, NEE, QC) if pd.api.types.is_numeric_dtype(df[c])]
    df[num] = df[num].mask(df[num] == MISSING)
    try:
        df["TIMESTAMP"] = _stamps(df["TIMESTAMP"])
    except (ValueError, TypeError) as e:
        raise DataError(f"{path}: column TIMESTAMP is not YYYYMMDD ({e})") from e
    df = df.rename(columns={"TIMESTAMP": "date"})
    n_rows = len(df)
    if "network" not in df:
        df["site"] = df["site"].astype(str)
        # the earlier table: prefixed ids; the v2 table was made from it by these three steps
        df["network"] = [x.split("_")[0] for x in df["site"].to_numpy()]
        df["site"] = [x.split("_")[1] if "_" in x else x for x in df["site"].to_numpy()]
        df = df.loc[df[["date", "site"]].drop_duplicates().index]
    all_sites = set(map(str, df["site"].unique()))
    df = df[df["date"] >= START]
    df["lat"], df["lon"] = np.round(df["lat"].to_numpy(float), 3), np.round(df["lon"].to_numpy(float), 3)
    df["Koppen"] = df["site"].map(koppen).astype(object)
    df["Koppen_short"] = df["site"].map(koppen_short).astype(object)
    keep = ["date", "site", "lat", "lon", "IGBP", "Koppen", "Koppen_short", GPP, RECO, NEE, QC]
    rows = df[keep + ["network"]][df[keep].notna().all(axis=1)]
    kept = set(map(str, rows["site"].unique()))
    no_koppen = sorted(s for s in all_sites if s not in koppen or s not in koppen_short)
    other = sorted(all_sites - kept - set(no_koppen))
    dup = rows.duplicated(["date", "site"])
    if dup.any():
        log.warning("%s: %d duplicated (date, site) target row(s), e.g. %s %s; the first is kept", path.name,
                    int(dup.sum()), rows.loc[dup, "site"].iloc[0], rows.loc[dup, "date"].iloc[0].date())
        rows = rows[~dup]
    report = {"target_rows": n_rows, "rows_kept": len(rows), "sites_in_table": len(all_sites),
              "sites_kept": len(kept), "dropped_no_koppen": no_koppen, "dropped_no_rows": other}
    rows = rows.reset_index(drop=True)
    rows["site"] = rows["site"].astype(str).astype("category") if rows["site"].dtype != "category" else \
        rows["site"].cat.remove_unused_categories()
    return rows, report


def _site_table(rows: pd.DataFrame) -> pd.DataFrame:
    first = rows.groupby("site", sort=True, observed=True).first()
    first.index = first.index.astype(str)
    first = first.sort_index()
    varying = rows.groupby("site", observed=True)[["lat", "lon"]].nunique().max(axis=1)
    if (varying > 1).any():
        log.warning("site(s) %s have several lat/lon in the target table; the store keeps the first",
                    varying[varying > 1].index.tolist()[:5])
    return pd.DataFrame({
        "site": first.index.astype(str), "lat": first["lat"].to_numpy(float), "lon": first["lon"].to_numpy(float),
        "igbp": first["IGBP"].astype(str).to_numpy(), "koppen": first["Koppen"].astype(str).to_numpy(),
        "koppen_detailed": first["Koppen_short"].astype(str).to_numpy(),
        "network": [NETWORK_CODES.get(str(n).upper(), "other") for n in first["network"]],
    })


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


class FeatureTable:
    """A feature parquet table streamed into (site, day) slots of a store's axes.

    ``slots()`` makes one pass over the (date, site) columns: each row's flat slot
    ``site * T + day``, or -1 for rows of other sites or days and for repeats of a (date, site)
    already seen (the first row in file order wins). ``scatter(columns)`` then reads only those
    columns, row group by row group, into a (len(columns), S, T) float32 array.
    """

    def __init__(self, path, sites, days: pd.DatetimeIndex, *, progress: bool = True):
        import pyarrow.parquet as pq

        self.path = Path(path)
        self.file = pq.ParquetFile(self.path)
        self.names = self.file.schema_arrow.names
        lacking = [c for c in ("date", "site") if c not in self.names]
        if lacking:
            raise InputError(f"{self.path}: feature table lacks column(s) {lacking}")
        self.sites = pd.Index(list(sites))
        self.days = days
        self.progress = progress
        self._slots: list[np.ndarray] | None = None
        self.matched_sites: set[str] = set()
        self.other_sites: set[str] = set()

    @property
    def n_row_groups(self) -> int:
        return self.file.num_row_groups

    def slots(self) -> list[np.ndarray]:
        if self._slots is not None:
            return self._slots
        n_days = len(self.days)
        seen = np.zeros(len(self.sites) * n_days, bool)
        t0 = self.days[0].to_datetime64().astype("datetime64[ns]")
        out = []
        for rg in bar(range(self.n_row_groups), desc=f"{self.path.name}: rows", unit="row group", progress=self.progress):
            t = self.file.read_row_group(rg, columns=["date", "site"])
            ids = t.column("site").combine_chunks().dictionary_encode()
            uniq = strip_prefix(ids.dictionary.to_pylist())
            code = self.sites.get_indexer(uniq)
            self.matched_sites.update(uniq[code >= 0].tolist())
            self.other_sites.update(uniq[code < 0].tolist())
            s = code[ids.indices.to_numpy(zero_copy_only=False)]
            date = pd.to_datetime(t.column("date").to_pandas()).to_numpy().astype("datetime64[ns]")
            delta = (date - t0).astype(np.int64)
            day = delta // 86_400_000_000_000
            ok = (s >= 0) & (delta % 86_400_000_000_000 == 0) & (day >= 0) & (day < n_days) & ~np.isnat(date)
            flat = np.where(ok, s.astype(np.int64) * n_days + day, -1)
            # first occurrence wins: within this row group, then against earlier ones
            idx = np.flatnonzero(flat >= 0)
            _, first = np.unique(flat[idx], return_index=True)
            first_rows = idx[first]
            first_rows = first_rows[~seen[flat[first_rows]]]
            keep = np.full(flat.size, -1, np.int64)
            keep[first_rows] = flat[first_rows]
            seen[flat[first_rows]] = True
            out.append(keep.astype(np.int32 if seen.size < 2**31 else np.int64))
        self._slots = out
        return out

    def scatter(self, columns: list[str]) -> np.ndarray:
        """(len(columns), S, T) float32 values of ``columns``; NaN where no row feeds a slot."""
        lacking = [c for c in columns if c not in self.names]
        if lacking:
            raise InputError(f"{self.path}: table lacks column(s) {', '.join(lacking)}")
        slots = self.slots()
        n_sites, n_days = len(self.sites), len(self.days)
        out = np.full((len(columns), n_sites * n_days), np.nan, np.float32)
        for rg in bar(range(self.n_row_groups), desc=f"{self.path.name}: {len(columns)} column(s)", unit="row group",
                      progress=self.progress):
            pos = slots[rg]
            keep = pos >= 0
            if not keep.any():
                continue
            t = self.file.read_row_group(rg, columns=columns)
            for j, c in enumerate(columns):
                vals = t.column(c).to_numpy(zero_copy_only=False)
                out[j, pos[keep]] = np.asarray(vals[keep], dtype=np.float32)
        return out.reshape(len(columns), n_sites, n_days)

    def groups(self, columns: list[str], budget_mb: float = BUDGET_MB) -> Iterator[dict[str, np.ndarray]]:
        """``{column: (S, T) array}`` for ``columns``, as many per pass as ``budget_mb`` holds."""
        per = max(1, len(self.sites) * len(self.days) * 4)
        k = len(columns) if not np.isfinite(budget_mb) else max(1, int(budget_mb * 2**20 // per))
        for i in range(0, len(columns), k):
            part = columns[i:i + k]
            block = self.scatter(part)
            yield {c: block[j] for j, c in enumerate(part)}
            del block


class CarbonBenchImport:
    """One published folder, read into store pieces: the site table, the targets, the features."""

    def __init__(self, folder, *, progress: bool = True, budget_mb: float = BUDGET_MB):
        self.files = layout(folder)
        self.folder = Path(folder)
        self.progress, self.budget_mb = progress, budget_mb
        koppen, short = _read_json(self.files[KOPPEN_JSON]), _read_json(self.files[KOPPEN_SHORT_JSON])
        self.sets = _read_json(self.files[FEATURE_SETS_JSON])
        rows, self.report = read_targets(self.files["targets"], koppen, short)
        if rows.empty:
            raise DataError(f"{self.files['targets']}: no row has the three targets, QC and a Köppen entry "
                            f"from {START.date()} on; nothing to import")
        self._log_drops()
        self.sites = _site_table(rows)
        last = rows["date"].max()
        # features exist from WINDOW - 1 days before the first target day (the reference's history)
        self.days = pd.date_range(START - pd.Timedelta(days=WINDOW - 1), last, freq="D")
        self.rows = rows
        self.modis = FeatureTable(self.files[MODIS_TABLE], self.sites["site"], self.days, progress=progress)
        self.era5 = FeatureTable(self.files[ERA5_TABLE], self.sites["site"], self.days, progress=progress)
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
        site = self.rows["site"]
        s = pd.Index(self.sites["site"]).get_indexer(site.cat.categories.astype(str))[site.cat.codes.to_numpy()]
        d = self.days.get_indexer(self.rows["date"])
        out = {}
        for v in (GPP, RECO, NEE, QC):
            arr = np.full((len(self.sites), len(self.days)), np.nan, np.float32)
            arr[s, d] = self.rows[v].to_numpy(np.float64)
            out[v] = arr
        return out

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
        ds = schema.site_dataset(self.targets(), self.sites, self.days)
        ds.attrs["source"] = f"CarbonBench published data {self.files['targets'].name} ({self.folder})"
        return ds

    def feature_parts(self) -> Iterator[xr.Dataset]:
        """The MODIS then the ERA5 columns as store Datasets, a memory budget's worth at a time."""
        for table, columns in ((self.modis, self.modis_columns), (self.era5, self.era5_columns)):
            for group in table.groups(columns, self.budget_mb):
                yield schema.site_dataset(group, self.sites, self.days)


def read_folder(folder, *, progress: bool = True) -> xr.Dataset:
    """The whole import in memory (small folders, tests): one store Dataset."""
    imp = CarbonBenchImport(folder, progress=progress, budget_mb=float("inf"))
    ds = imp.first_part()
    for part in imp.feature_parts():
        ds = ds.assign(part.data_vars)
    return ds


def write_folder(folder, out, *, overwrite: bool = False, progress: bool = True, budget_mb: float = BUDGET_MB) -> dict:
    """Import a published folder into the store ``out``, in bounded memory.

    New store (or ``overwrite``): built beside ``out`` and renamed into place once complete.
    Existing store: the import is built beside it, then merged with :func:`cbgrid.store.merge`.
    Returns the loader report plus what the store write did.
    """
    out = Path(out)
    imp = CarbonBenchImport(folder, progress=progress, budget_mb=budget_mb)
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


