"""A grid download that survives being killed: one Zarr chunk per request, one marker per chunk.

A folder holds ``grid.zarr`` (the final chunking, created empty first, all-NaN until written)
and ``done/<variable>/<t>.<y>.<x>``: a marker written (beside, then renamed) only after its chunk
is in the store, saying ``final`` or ``provisional`` (data that may still change at the source).
A run fetches every chunk without a ``final`` marker, so a run killed at any moment resumes with
the chunks it had not finished, and provisional chunks are fetched again. The store records
what it was created for (``cbgrid_request``); a different request never mixes into it.

The source of the chunks is any object with the :class:`BlockSource` methods (the Earth Engine
grid in ``cbgrid.sources.earthengine``); fetch failures go through the retry rules of
``cbgrid.sources.earthengine_faults`` inside ``fetch``.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np
import xarray as xr
import zarr

from cbgrid import schema
from cbgrid.atomic import replace_dir, replace_file
from cbgrid.errors import InputError
from cbgrid.progress import bar as progress_bar
from cbgrid.sources.earthengine_faults import EarthEngineError

log = logging.getLogger(__name__)

STORE = "grid.zarr"
DONE = "done"
FINAL, PROVISIONAL = "final", "provisional"


class BlockSource(Protocol):
    """What :func:`download` needs from a grid."""

    def signature(self) -> dict:
        """JSON-able description of the request; a store made for another one is refused."""

    def template(self) -> xr.Dataset:
        """The lazy (dask) Dataset whose chunks are the blocks; never computed here."""

    def blocks(self, var: str) -> Iterable[tuple[int, ...]]:
        """Block indices of a variable."""

    def region(self, var: str, idx: tuple[int, ...]) -> tuple[slice, ...]:
        """Where block ``idx`` of ``var`` goes in the store."""

    def fetch(self, var: str, idx: tuple[int, ...]) -> np.ndarray:
        """The block's values (retried and classified inside)."""

    def provisional(self, var: str, idx: tuple[int, ...]) -> bool:
        """Whether the block's data may still change at the source (fetched again next run)."""


def _marker(folder: Path, var: str, idx) -> Path:
    return folder / DONE / var / ".".join(str(i) for i in idx)


def markers(folder: Path) -> dict[tuple[str, tuple[int, ...]], str]:
    """Every finished block in ``folder``: (variable, index) -> 'final' | 'provisional'."""
    out = {}
    root = Path(folder) / DONE
    if not root.is_dir():
        return out
    for vdir in os.scandir(root):
        if not vdir.is_dir() or vdir.name.startswith("."):
            continue
        for m in os.scandir(vdir.path):
            if m.name.startswith("."):  # a marker killed while being written
                continue
            try:
                idx = tuple(int(i) for i in m.name.split("."))
                state = Path(m.path).read_text().strip()
            except (ValueError, OSError):
                continue
            out[(vdir.name, idx)] = state
    return out


def _create(source: BlockSource, folder: Path) -> None:
    store = folder / STORE
    sig = json.dumps(source.signature(), sort_keys=True)
    if store.exists():
        try:
            had = xr.open_zarr(store, consolidated=False).attrs.get("cbgrid_request")
        except Exception as e:  # noqa: BLE001 - any unreadable store is reported the same way
            raise InputError(f"{store} is not a readable grid store ({type(e).__name__}); delete {folder} to start over") from e
        if had != sig:
            raise InputError(f"{folder} holds the download of a different request (grid, period, features or "
                             f"request sizes differ); delete it, or write to another path")
        return
    ds = source.template()
    coords = xr.Dataset(coords=ds.coords, attrs={**ds.attrs, "cbgrid_request": sig})
    enc = {"time": {"units": schema.TIME_UNITS, "calendar": "proleptic_gregorian", "dtype": "int32"}}
    with replace_dir(store, overwrite=False) as tmp:
        # coordinates through xarray, empty arrays straight through zarr: no dask graph to build
        coords.to_zarr(tmp, mode="w-", zarr_format=3, consolidated=False, encoding=enc)
        group = zarr.open_group(tmp, mode="r+", zarr_format=3)
        for name, var in ds.data_vars.items():
            group.create_array(name, shape=var.shape, chunks=tuple(c[0] for c in var.chunks), dtype="float32",
                               fill_value=np.float32("nan"), dimension_names=var.dims, attributes=dict(var.attrs))
    (folder / DONE).mkdir(exist_ok=True)


def download(source: BlockSource, folder, *, workers: int = 8, progress: bool = True, what: str = "grid") -> dict:
    """Fetch every block of ``source`` into ``folder`` that is not finished there yet.

    Blocks are fetched by ``workers`` threads; each is written into the store, then marked. On
    the first failure no new block is started, the ones in flight finish, and
    :class:`EarthEngineError` says how far the run got and that the same command resumes.
    Returns counts: blocks, cached, fetched, provisional.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _create(source, folder)
    done = markers(folder)
    todo, total, provisional = [], 0, 0
    for var in source.template().data_vars:
        for idx in source.blocks(var):
            total += 1
            state = done.get((var, tuple(idx)))
            if state != FINAL:
                todo.append((var, tuple(idx)))
            if state == PROVISIONAL:
                provisional += 1
    log.info("%s: %d of %d blocks already downloaded in %s (%d provisional, fetched again); %d to fetch",
             what, total - len(todo), total, folder, provisional, len(todo))
    counts = {"blocks": total, "cached": total - len(todo), "fetched": 0, "provisional": 0}
    if not todo:
        return counts
    group = zarr.open_group(folder / STORE, mode="r+", zarr_format=3)
    arrays = {v: group[v] for v in {v for v, _ in todo}}

    def one(var, idx):
        values = source.fetch(var, idx)
        arrays[var][source.region(var, idx)] = values
        state = PROVISIONAL if source.provisional(var, idx) else FINAL
        with replace_file(_marker(folder, var, idx)) as tmp:
            tmp.write_text(state + "\n")
        return state

    failed = None
    with progress_bar(total=len(todo), desc=f"downloading {what}", unit="block", progress=progress) as bar, \
            concurrent.futures.ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        pending = iter(todo)
        running = {}

        def submit():
            for var, idx in pending:
                running[pool.submit(one, var, idx)] = (var, idx)
                return True
            return False

        try:
            for _ in range(max(1, int(workers)) * 2):
                if not submit():
                    break
            while running:
                finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                for fut in finished:
                    running.pop(fut)
                    err = fut.exception()
                    if err is not None:
                        failed = failed or err
                        continue
                    counts["fetched"] += 1
                    counts["provisional"] += fut.result() == PROVISIONAL
                    bar.update(1)
                    if failed is None:
                        submit()
        except BaseException:  # Ctrl-C: start nothing new; blocks in flight finish (bounded by the deadline)
            for fut in running:
                fut.cancel()
            raise
    if failed is not None:
        left = len(todo) - counts["fetched"]
        kind = type(failed) if isinstance(failed, EarthEngineError) else EarthEngineError
        resume = "" if "re-run" in str(failed) else "; re-run the same command to resume"
        raise kind(
            f"{failed}{resume} ({counts['fetched']} block(s) newly downloaded, {counts['cached'] + counts['fetched']} "
            f"of {total} in {folder}, {left} left)"
        ) from failed
    return counts


def finish(folder, path, *, overwrite: bool) -> Path:
    """Move a complete download's store to ``path`` (atomically) and remove the folder."""
    folder, path = Path(folder), Path(path)
    with replace_dir(path, overwrite=overwrite, hint="pass --overwrite to replace it") as tmp:
        os.replace(folder / STORE, tmp)
    shutil.rmtree(folder, ignore_errors=True)
    return path
