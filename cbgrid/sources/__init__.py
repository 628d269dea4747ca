"""Data sources: ONEFlux files (``fluxnet``), the published CarbonBench folder (``carbonbench``), the synthetic twin (``twin``), local driver files
(``local``) and Google Earth Engine (``earthengine``).

Two registries live here, each filled by decorators in the source modules:

* gridded driver sources — what a recipe's ``drivers: {source: NAME, ...}`` block names — one
  config class each (``cbgrid.contracts.DriverSource``), :func:`register_driver_source`;
* site sources — the layouts ``cbgrid ingest`` recognises (``cbgrid.contracts.SiteSource``),
  :func:`register_site_source`.

Adding either is a new module plus its name in ``SOURCE_MODULES``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from cbgrid.errors import InputError, MissingError

#: Modules that define driver or site sources, imported on first lookup.
SOURCE_MODULES = ("twin", "local", "earthengine", "fluxnet", "carbonbench")
_DRIVERS: dict[str, type] = {}
_SITES: dict[str, type] = {}


def register_driver_source(cls: type) -> type:
    """Class decorator: make ``cls`` the driver source called ``cls.name`` in recipes."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise InputError(f"driver source {cls.__name__} needs a class attribute name = '<recipe name>'")
    _DRIVERS[name] = cls
    return cls


def register_site_source(cls: type) -> type:
    """Class decorator: make ``cls`` a layout ``cbgrid ingest`` recognises (``cls.name``)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise InputError(f"site source {cls.__name__} needs a class attribute name")
    _SITES[name] = cls
    return cls


def _load_all() -> None:
    for module in SOURCE_MODULES:
        importlib.import_module(f"cbgrid.sources.{module}")


def site_sources() -> list[str]:
    """The layouts ``cbgrid ingest`` recognises."""
    _load_all()
    return list(_SITES)


def site_source_for(paths) -> type:
    """The site source whose layout ``paths`` are in; ValueError naming the layouts otherwise."""
    _load_all()
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise MissingError(f"no such file or folder: {', '.join(missing[:5])}")
    hits = [cls for cls in _SITES.values() if cls.recognizes(paths)]
    if not hits:
        raise InputError(f"{', '.join(str(p) for p in paths[:3])}{' ...' if len(paths) > 3 else ''}: not a layout "
                         f"cbgrid ingests ({', '.join(_SITES)}); see `cbgrid ingest --help`")
    return hits[0]


def driver_sources() -> list[str]:
    """The names a recipe's ``drivers.source`` may take.

    >>> sorted(driver_sources())
    ['earthengine', 'local', 'twin']
    """
    _load_all()
    return list(_DRIVERS)


def driver_source(name: str) -> type:
    """The config class of driver source ``name``; ValueError listing the known ones."""
    _load_all()
    if name not in _DRIVERS:
        raise InputError(f"unknown driver source {name!r}; use one of {', '.join(_DRIVERS)}")
    return _DRIVERS[name]
