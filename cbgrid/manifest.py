"""The manifest of a product folder: which ensemble wrote it, and which of its files are done.

A product folder holds the products of one ensemble (recipe, drivers, grid and runs) and nothing
else. ``cbgrid upscale`` claims the folder under its writer lock (:func:`cbgrid.atomic.writer_lock`)
before writing: a folder written by another ensemble is refused unless ``overwrite``, and then
that ensemble's files are removed before the first new one lands, so two ensembles never mix.
Files a killed run left (``.NAME.tmp-*``) are removed, and logged, by the next run.

The manifest ``cbgrid-products.json`` lists the ensemble and each finished file; ``complete`` is
true once the whole recipe ran.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> with claim(folder, {"recipe": "demo", "runs": ["runs/xgboost"]}) as m:
...     _ = (folder / "demo_2020-07.nc").write_text("")
...     m.add(folder / "demo_2020-07.nc")
>>> read(folder)["files"], read(folder)["complete"]
(['demo_2020-07.nc'], True)
>>> with claim(folder, {"recipe": "demo", "runs": ["runs/lightgbm"]}):
...     pass
Traceback (most recent call last):
...
cbgrid.errors.ExistsError: ...holds the products of another ensemble (runs runs/xgboost); ...
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from cbgrid.atomic import replace_file, writer_lock
from cbgrid.errors import ExistsError, InputError
from cbgrid.schema import SchemaError

log = logging.getLogger(__name__)

NAME = "cbgrid-products.json"
#: files a product folder may hold besides the manifest (the products, their scores, quicklooks)
PRODUCT_SUFFIXES = (".nc", ".csv", ".png")


def run_identity(run) -> str:
    """A run as the manifest records it: its folder and the hash of its config, or its name."""
    if isinstance(run, (str, os.PathLike)):
        path = Path(run)
        config = path / "config.json"
        digest = hashlib.sha256(config.read_bytes()).hexdigest()[:12] if config.exists() else "no-config"
        return f"{path.resolve()}#{digest}"
    return str(getattr(run, "name", type(run).__name__))


def ensemble(recipe, runs: Sequence) -> dict:
    """What makes two upscaling runs write the same products: recipe, drivers, grid, runs."""
    return {
        "recipe": recipe.name,
        "drivers": recipe.drivers.name,
        "resolution": float(recipe.grid.resolution),
        "region": [float(v) for v in recipe.grid.region],
        "runs": sorted(run_identity(r) for r in runs),
    }


def read(folder) -> dict | None:
    """The manifest of ``folder``, or None where there is none."""
    path = Path(folder) / NAME
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SchemaError(f"{path}: not a readable manifest ({e}); remove the folder's products and the manifest, "
                          "or write to another output folder") from e
    if not isinstance(doc, dict) or "ensemble" not in doc or "files" not in doc:
        raise SchemaError(f"{path}: not a cbgrid product manifest (no 'ensemble'/'files'); write to another output folder")
    return doc


def _write(folder: Path, doc: Mapping) -> None:
    with replace_file(folder / NAME) as tmp:
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def leftovers(folder) -> list[Path]:
    """Temporary files a killed writer left in ``folder`` (``.NAME.tmp-*``)."""
    folder = Path(folder)
    return sorted(p for p in folder.glob(".*.tmp-*") if p.is_file()) if folder.is_dir() else []


def _describe(doc: Mapping) -> str:
    runs = [r.split("#")[0] for r in doc["ensemble"].get("runs", [])]
    return ", ".join(os.path.relpath(r) if os.path.isabs(r) else r for r in runs)


class Claim:
    """A claimed product folder: :meth:`add` records each finished file."""

    def __init__(self, folder: Path, doc: dict):
        self.folder, self.doc = folder, doc

    def add(self, path) -> None:
        name = Path(path).name
        if name not in self.doc["files"]:
            self.doc["files"].append(name)
        _write(self.folder, self.doc)


@contextmanager
def claim(folder, ens: Mapping, *, overwrite: bool = False) -> Iterator[Claim]:
    """Hold ``folder`` for ensemble ``ens`` while writing into it (see the module doc)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"output folder {folder} is a file; give --output a folder path")
    with writer_lock(folder):
        folder.mkdir(parents=True, exist_ok=True)
        for p in leftovers(folder):
            log.warning("removing %s, left by an interrupted run", p)
            p.unlink(missing_ok=True)
        doc = read(folder)
        ens = json.loads(json.dumps(dict(ens)))  # the JSON form, as it will be compared next time
        if doc is not None and not doc["files"]:
            doc = None  # an ensemble that failed before its first file: nothing of it to mix
        if doc is not None and doc["ensemble"] != ens:
            if not overwrite:
                raise ExistsError(
                    f"{folder} holds the products of another ensemble (runs {_describe(doc)}); write to another "
                    "--output, or pass --overwrite to replace them"
                )
            for name in doc["files"]:
                log.info("removing %s of the previous ensemble", folder / name)
                (folder / name).unlink(missing_ok=True)
            doc = None
        if doc is None:
            strays = sorted(p.name for p in folder.iterdir() if p.suffix in PRODUCT_SUFFIXES and not p.name.startswith("."))
            if strays and not overwrite:
                raise ExistsError(
                    f"{folder} holds files no manifest accounts for ({', '.join(strays[:3])}"
                    f"{', ...' if len(strays) > 3 else ''}); write to another --output, or pass --overwrite to replace them"
                )
            for name in strays:
                log.info("removing %s (no manifest names it)", folder / name)
                (folder / name).unlink()
            doc = {"ensemble": ens, "files": []}
        doc.update(complete=False, started=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        _write(folder, doc)
        handle = Claim(folder, doc)
        yield handle
        doc["complete"] = True
        _write(folder, doc)
