"""Data sources: ONEFlux files (``fluxnet``), the synthetic twin (``twin``), local driver files
(``local``) and Google Earth Engine (``earthengine``).

Gridded driver sources — what a recipe's ``drivers: {source: NAME, ...}`` block names — are
registered here under their recipe name: each is a config class (``cbgrid.contracts.DriverSource``)
in its own module, decorated with :func:`register_driver_source`. Adding one is a new module
plus its name in ``DRIVER_MODULES``.
"""

from __future__ import annotations

import importlib

#: Modules that define driver sources, imported on first lookup.
DRIVER_MODULES = ("twin", "local", "earthengine")
_DRIVERS: dict[str, type] = {}


def register_driver_source(cls: type) -> type:
    """Class decorator: make ``cls`` the driver source called ``cls.name`` in recipes."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"driver source {cls.__name__} needs a class attribute name = '<recipe name>'")
    _DRIVERS[name] = cls
    return cls


def _load_all() -> None:
    for module in DRIVER_MODULES:
        importlib.import_module(f"cbgrid.sources.{module}")


def driver_sources() -> list[str]:
    """The names a recipe's ``drivers.source`` may take.

    >>> driver_sources()
    ['twin', 'local', 'earthengine']
    """
    _load_all()
    return list(_DRIVERS)


def driver_source(name: str) -> type:
    """The config class of driver source ``name``; ValueError listing the known ones."""
    _load_all()
    if name not in _DRIVERS:
        raise ValueError(f"unknown driver source {name!r}; use one of {', '.join(_DRIVERS)}")
    return _DRIVERS[name]
