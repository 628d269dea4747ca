"""The benchmark store on disk: one Zarr v3 group, dims (site, time).

Crash safety: every write ends by updating a *commit record* in the root attributes
(``cbgrid_commit``: the committed number of sites and the committed variables). Readers see only
committed data; the next write rolls back anything beyond the record. A new store is written
beside its final path and renamed into place, so a crash or Ctrl-C never leaves a store that
opens but is half written, and an interrupted append is simply redone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
import zarr

from cbgrid import catalog, schema
from cbgrid.atomic import recover_if_missing, replace_dir, writer_lock
from cbgrid.errors import InputError, MissingError
from cbgrid.progress import compute as progress_compute
from cbgrid.schema import GPP, QC, SITE, TIME, SchemaError

log = logging.getLogger(__name__)

COMMIT = "cbgrid_commit"
#: Store schema versions this cbgrid reads (``cbgrid_schema`` root attribute).
SCHEMA_VERSIONS = ("1",)


def _encoding(ds: xr.Dataset) -> dict:
    enc = {TIME: {"units": schema.TIME_UNITS, "calendar": "proleptic_gregorian", "dtype": "int32"}}
    for name, var in ds.data_vars.items():
        enc[name] = {
            "chunks": (min(schema.STORE_CHUNKS[SITE], var.shape[0]), min(schema.STORE_CHUNKS[TIME], var.shape[1])),
            "fill_value": np.float32("nan"),
        }
    return enc


def _commit(path: Path, n_sites: int, variables, pending=()) -> None:
    """Record the committed sites and variables; ``pending`` names the arrays a write is about
    to add (the only arrays a rollback may delete)."""
    g = zarr.open_group(str(path), mode="r+", zarr_format=3)
    g.attrs[COMMIT] = {"n_sites": int(n_sites), "variables": sorted(variables), "pending": sorted(pending)}


def _read_commit(path: Path) -> dict:
    try:
        g = zarr.open_group(str(path), mode="r", zarr_format=3)
    except Exception as e:  # FileNotFoundError, GroupNotFoundError, bad metadata
        raise SchemaError(f"{path} is not a readable Zarr v3 store ({e.__class__.__name__}: {e})") from e
    commit = g.attrs.get(COMMIT)
    if not commit:
        raise SchemaError(
            f"{path} is not a cbgrid store: it has no {COMMIT!r} record (another schema, or a "
            "write that never finished)"
        )
    return dict(commit)


def write_store(ds: xr.Dataset, path, *, overwrite: bool = False, progress: bool = True) -> Path:
    """Write a schema-conformant Dataset as a new store at ``path``, atomically.

    Data are computed chunk by chunk (dask), written beside the target, then renamed in place.
    An existing store is replaced only with ``overwrite=True``, and only after the new one is
    complete.
    """
    path = Path(path)
    schema.validate(ds)
    ds = ds.chunk({SITE: schema.STORE_CHUNKS[SITE], TIME: schema.STORE_CHUNKS[TIME]})
    with replace_dir(path, overwrite=overwrite, hint="pass overwrite=True (--overwrite) to replace it") as tmp:
        delayed = ds.to_zarr(tmp, mode="w-", zarr_format=3, consolidated=False, compute=False, encoding=_encoding(ds))
        progress_compute(delayed, desc=f"writing {path.name}", progress=progress)
        _commit(tmp, ds.sizes[SITE], list(ds.data_vars))
    log.info("wrote %s: %d sites x %d days, %d variables", path, ds.sizes[SITE], ds.sizes[TIME], len(ds.data_vars))
    return path


def open_store(path, *, validate: bool = True, chunks="auto") -> xr.Dataset:
    """Open a store lazily (dask-backed): only its committed sites and variables.

    ``chunks='auto'`` keeps the on-disk chunks; pass a dict to read with other chunks.
    """
    path = Path(path)
    recover_if_missing(path)
    if not path.exists():
        raise MissingError(f"no store at {path}")
    commit = _read_commit(path)
    group = zarr.open_group(str(path), mode="r", zarr_format=3)
    version = group.attrs.get("cbgrid_schema")
    if version is not None and str(version) not in SCHEMA_VERSIONS:
        raise SchemaError(f"{path} has store schema version {version!r}; this cbgrid reads version(s) "
                          f"{', '.join(SCHEMA_VERSIONS)}: upgrade cbgrid, or rebuild the store with this one")
    ds = _open_committed_sites(path, group, commit["n_sites"], {} if chunks == "auto" else chunks)
    # xarray finds non-index coordinates through the data variables' `coordinates` attribute,
    # which variables added later may lack: the schema, not that attribute, says what they are.
    ds = ds.set_coords([c for c in schema.SITE_COORDS if c in ds.data_vars])
    uncommitted = [v for v in ds.data_vars if v not in commit["variables"]]
    ds = ds.drop_vars(uncommitted)
    ds[SITE] = ds[SITE].astype(object)
    # Site coordinates are tiny and every consumer needs them: hold them in memory.
    ds = ds.assign_coords({c: ds[c].compute() for c in schema.SITE_COORDS if c in ds.coords})
    order = {name: i for i, name in enumerate(schema_order())}
    ds = ds[sorted(ds.data_vars, key=lambda v: (order.get(v, len(order)), v))]
    ds.attrs.pop(COMMIT, None)
    ds.encoding["source"] = str(path)
    return schema.validate(ds) if validate else ds


def _site_axis(arr: zarr.Array) -> int | None:
    """The axis of ``arr`` along ``site``; None when it has none."""
    dims = tuple(arr.metadata.dimension_names or ())
    return dims.index(SITE) if SITE in dims else None


def _open_committed_sites(path: Path, group: zarr.Group, n_sites: int, chunks) -> xr.Dataset:
    """xarray's view of the store cut to its ``n_sites`` committed sites.

    An append resizes the arrays along ``site`` one at a time, so while one runs, or after one
    was killed and before the next write rolls it back, the arrays' site lengths differ (never
    below the committed count) and xarray cannot open the group whole: each array is then
    opened alone, cut to the committed sites and merged, without writing to the store.
    """
    kw = {"consolidated": False, "chunks": chunks}
    arrays = dict(group.arrays())
    lengths = {arr.shape[axis] for arr in arrays.values() if (axis := _site_axis(arr)) is not None}
    if len(lengths) <= 1:
        return xr.open_zarr(str(path), **kw).isel({SITE: slice(0, n_sites)})
    log.info("%s: an append is under way or was interrupted; reading its %d committed sites", path, n_sites)
    parts = []
    for name in arrays:
        part = xr.open_zarr(str(path), drop_variables=[a for a in arrays if a != name], **kw)
        parts.append(part.isel({SITE: slice(0, n_sites)}) if SITE in part.dims else part)
    return xr.merge(parts, compat="override", join="exact", combine_attrs="override")


def schema_order() -> list[str]:
    """Catalog order of variables: ERA5-Land bands, MODIS bands, then targets and QC."""
    return list(catalog.variables().index)


def _rollback(path: Path) -> dict:
    """Undo what an interrupted cbgrid write left beyond the commit record: the arrays it had
    announced as pending, and sites beyond the committed count. Arrays cbgrid did not write are
    left alone (and stay invisible to ``open_store``)."""
    commit = _read_commit(path)
    g = zarr.open_group(str(path), mode="r+", zarr_format=3)
    n = commit["n_sites"]
    keep = set(commit["variables"]) | {SITE, TIME, *schema.SITE_COORDS}
    pending = set(commit.get("pending", ()))
    for name, arr in list(g.arrays()):
        if name in pending and name not in keep:
            log.warning("%s: removing variable %r left half-written by an interrupted write", path, name)
            del g[name]
            continue
        if name not in keep:
            log.info("%s: array %r is not part of the cbgrid store; left as it is", path, name)
            continue
        axis = _site_axis(arr)
        if axis is not None and arr.shape[axis] != n:
            log.warning("%s: rolling %r back to the %d committed sites", path, name, n)
            shape = list(arr.shape)
            shape[axis] = n
            arr.resize(tuple(shape))
    return commit


def _check_overlap(new: xr.Dataset, days: pd.DatetimeIndex, path: Path) -> None:
    """InputError naming each site of ``new`` whose observed days all lie outside ``days``."""
    targets = [v for v in schema.TARGETS if v in new.data_vars]
    if not targets or new.sizes[TIME] == 0:
        return
    seen = np.logical_or.reduce([np.isfinite(new[v].transpose(SITE, TIME).values) for v in targets])
    inside = new.indexes[TIME].isin(days)
    lost = [i for i in range(new.sizes[SITE]) if seen[i].any() and not seen[i, inside].any()]
    if lost:
        t = new.indexes[TIME]
        first = [str(t[np.flatnonzero(seen[i])[0]].date()) for i in lost]
        last = [str(t[np.flatnonzero(seen[i])[-1]].date()) for i in lost]
        spans = ", ".join(f"{new[SITE].values[i]} ({a}..{b})" for i, a, b in zip(lost, first, last, strict=True))
        raise InputError(
            f"{path}: the observations of site(s) {spans} lie outside the store period "
            f"{days[0].date()}..{days[-1].date()}; ingest them into a store whose --start/--end cover them"
        )


def append_sites(new: xr.Dataset, path) -> list[str]:
    """Add the sites of ``new`` to an existing store without rewriting it.

    ``new`` is aligned to the store's time axis (days outside it are dropped, with a warning)
    and variables (those it lacks are NaN; ones the store lacks are an error). Sites already in
    the store are skipped with a warning, so re-running an interrupted ingest is safe. Returns
    the ids of the sites added.
    """
    path = Path(path)
    schema.validate(new)
    with writer_lock(path):
        return _append_sites(new, path)


def _append_sites(new: xr.Dataset, path: Path) -> list[str]:
    commit = _rollback(path)
    cur = open_store(path)
    extra = sorted(set(new.data_vars) - set(cur.data_vars))
    if extra:
        raise SchemaError(
            f"variables {extra} are not in {path}; add them to every site with add_variables() first"
        )
    present = set(cur[SITE].values.tolist())
    dup = [s for s in new[SITE].values.tolist() if s in present]
    if dup:
        log.warning("%s already holds site(s) %s; skipped", path, dup)
        new = new.drop_sel({SITE: dup})
    if new.sizes[SITE] == 0:
        return []
    t = cur.indexes[TIME]
    _check_overlap(new, t, path)
    outside = int((~new.indexes[TIME].isin(t)).sum())
    if outside:
        log.warning(
            "%d day(s) of the new sites fall outside the store period %s..%s and are dropped",
            outside, t[0].date(), t[-1].date(),
        )
    new = new.reindex({TIME: t})
    for v in cur.data_vars:
        if v not in new:
            new[v] = xr.full_like(cur[v].isel({SITE: slice(0, 1)}), np.nan).squeeze(SITE, drop=True).expand_dims({SITE: new[SITE]}).transpose(*schema.DIMS)
    new = new[list(cur.data_vars)].load()
    n, k = commit["n_sites"], new.sizes[SITE]
    g = zarr.open_group(str(path), mode="r+", zarr_format=3)
    for _name, arr in g.arrays():
        axis = _site_axis(arr)
        if axis is not None:
            shape = list(arr.shape)
            shape[axis] = n + k
            arr.resize(tuple(shape))
    region = new.drop_vars(TIME)
    for c in region.coords:
        region[c].encoding = {}
    for v in region.data_vars:
        region[v].encoding = {}
    region.to_zarr(str(path), region={SITE: slice(n, n + k)}, consolidated=False, zarr_format=3)
    # xarray leaves the index coordinate out of region writes: write the new ids ourselves.
    g[SITE][n : n + k] = np.asarray([str(s) for s in new[SITE].values], dtype=object)
    _commit(path, n + k, commit["variables"])
    added = [str(s) for s in new[SITE].values]
    log.info("appended %d site(s) to %s: %s", k, path, ", ".join(added))
    return added


def add_variables(new: xr.Dataset, path, *, overwrite: bool = False) -> list[str]:
    """Add variables (e.g. features fetched from Earth Engine) for the store's sites.

    ``new`` is aligned to the store's sites and days; missing entries are NaN. Existing
    variables are replaced only with ``overwrite=True``. The variables become visible only once
    all are written.
    """
    path = Path(path)
    with writer_lock(path):
        return _add_variables(new, path, overwrite)


def _add_variables(new: xr.Dataset, path: Path, overwrite: bool) -> list[str]:
    commit = _rollback(path)
    cur = open_store(path)
    names = list(new.data_vars)
    clash = [v for v in names if v in cur.data_vars]
    if clash and not overwrite:
        raise SchemaError(f"{path} already has variable(s) {clash}; pass overwrite=True to replace them")
    if clash:
        # replacing data in place could lose it half-way: rewrite the store beside, then swap
        aligned = new.reindex({SITE: cur[SITE].values, TIME: cur.indexes[TIME]})
        rest = [v for v in names if v not in clash]
        merged = cur.drop_vars(clash).assign({
            v: aligned[v].reset_coords(drop=True).transpose(*schema.DIMS).astype(np.float32)
            .assign_attrs(schema.variable_attrs(v)) for v in names})
        write_store(merged.assign_attrs(cur.attrs), path, overwrite=True, progress=False)
        log.info("replaced %d and added %d variable(s) in %s", len(clash), len(rest), path)
        return names
    new = new.reindex({SITE: cur[SITE].values, TIME: cur.indexes[TIME]})
    data = {v: new[v].transpose(*schema.DIMS).data for v in names}
    sites = pd.DataFrame({c: schema.decode(c, cur[c].values) if c in schema.CATEGORICALS else cur[c].values for c in schema.SITE_COORDS})
    sites.insert(0, "site", cur[SITE].values)
    staged = schema.site_dataset(data, sites, cur.indexes[TIME])
    staged = staged.chunk({SITE: schema.STORE_CHUNKS[SITE], TIME: schema.STORE_CHUNKS[TIME]})
    _commit(path, commit["n_sites"], commit["variables"], pending=names)
    enc = {k: v for k, v in _encoding(staged).items() if k in names}
    staged[names].drop_vars(list(schema.SITE_COORDS) + [TIME, SITE]).to_zarr(
        str(path), mode="a", consolidated=False, zarr_format=3, encoding=enc
    )
    _commit(path, commit["n_sites"], sorted(set(commit["variables"]) | set(names)))
    log.info("added %d variable(s) to %s", len(names), path)
    return names


def merge(ds: xr.Dataset, path, *, overwrite: bool = False, period=None, progress: bool = True) -> dict:
    """Write ``ds`` as a new store, or merge it into an existing one (the one create-or-merge).

    New store: its time axis is ``period`` (first, last day) when given, else that of ``ds``.
    Existing store: variables it lacks are added for its sites, then sites it lacks are
    appended; variables it already has are kept unless ``overwrite`` (then replaced for the
    given sites only). Days outside the store period are dropped, with a warning.

    >>> merge(fluxnet.read_many(files), "flux.zarr", period=("2000-02-24", "2024-12-31"))  # doctest: +SKIP
    {'created': True, 'sites_added': 3, 'variables_added': [...]}
    """
    path = Path(path)
    with writer_lock(path):
        return _merge(ds, path, overwrite, period, progress)


def _merge(ds: xr.Dataset, path: Path, overwrite: bool, period, progress: bool) -> dict:
    if not path.exists():
        if period is not None:
            days = schema.days(period[0], period[1])
            _check_overlap(ds, days, path)
            outside = int((~ds.indexes[TIME].isin(days)).sum())
            if outside:
                log.warning("%d day(s) fall outside %s..%s and are dropped", outside, days[0].date(), days[-1].date())
            ds = ds.reindex({TIME: days})
        write_store(ds, path, progress=progress)
        return {"created": True, "sites_added": ds.sizes[SITE], "variables_added": list(ds.data_vars)}
    cur = open_store(path)
    in_store = ds[SITE].isin(cur[SITE].values.tolist())
    new_vars = [v for v in ds.data_vars if v not in cur.data_vars]
    kept = [v for v in ds.data_vars if v in cur.data_vars]
    if new_vars:
        add_variables(ds[new_vars], path)
    if kept and overwrite and bool(in_store.any()):
        mask = cur[SITE].isin(ds[SITE].values).values[:, None]
        sub = ds[kept].reindex({SITE: cur[SITE].values, TIME: cur.indexes[TIME]})
        # Loaded before writing: the replaced arrays are deleted from the store first.
        merged = xr.Dataset(
            {v: cur[v].copy(data=da.where(mask, sub[v].transpose(*schema.DIMS).data, cur[v].data)) for v in kept}
        ).compute()
        add_variables(merged, path, overwrite=True)
    elif kept and bool(in_store.any()):
        log.warning("%s already has %s for its sites; kept (pass overwrite to replace)", path, ", ".join(kept))
    added = append_sites(ds.sel({SITE: ~in_store}), path) if bool((~in_store).any()) else []
    replaced = kept if overwrite and bool(in_store.any()) else []
    return {"created": False, "sites_added": len(added), "variables_added": new_vars, "variables_replaced": replaced}


def summary(ds: xr.Dataset) -> dict:
    """Counts a user wants first: sites, period, variables, classes, observations, QC."""
    t = ds.indexes[TIME]
    out = {
        "sites": int(ds.sizes[SITE]),
        "period": (str(t[0].date()), str(t[-1].date())) if len(t) else None,
        "days": int(ds.sizes[TIME]),
        "variables": list(ds.data_vars),
        "igbp": pd.Series(schema.class_names(ds, "igbp")).value_counts().sort_index().to_dict(),
        "koppen": pd.Series(schema.class_names(ds, "koppen")).value_counts().sort_index().to_dict(),
    }
    if GPP in ds:
        obs = ds[GPP].notnull()
        out["site_days_observed"] = int(obs.sum().compute())
    if QC in ds:
        qc = ds[QC].data
        qc = qc if isinstance(qc, da.Array) else da.from_array(qc)
        flat = qc.ravel()
        valid = flat[~da.isnan(flat)]
        hist, _ = da.histogram(valid, bins=[0, 0.25, 0.5, 0.75, 1.0 - 1e-6, 1.0 + 1e-6])
        hist = hist.compute()
        out["qc"] = {"[0,0.25)": int(hist[0]), "[0.25,0.5)": int(hist[1]), "[0.5,0.75)": int(hist[2]), "[0.75,1)": int(hist[3]), "==1": int(hist[4])}
    return out
