"""The declared seams between cbgrid's stages: one home for each contract.

Each stage talks to the next through one of these protocols, never by probing attributes:

* :class:`Member` — one fitted model of a seed ensemble, tree or network
  (``cbgrid.members.NetworkMember``, ``cbgrid.members.TreeMember``);
* :class:`Predictor` — what upscaling and ``cbgrid predict`` need of a trained run: the driver
  variables it reads, the days of history it needs before the first predicted day, and
  ``predict`` on a (site, time) Dataset (``cbgrid.runs.Run``; ``cbgrid.testing.StubPredictor``);
* :class:`DriverSource` — a recipe's ``drivers:`` block: one config class per source, registered
  under its recipe name in ``cbgrid.sources``, that validates its own keys and opens lazy
  (time, lat, lon) drivers (``twin``, ``local``, ``earthengine``);
* :class:`SiteSource` — a layout of site observations ``cbgrid ingest`` recognises and reads
  (ONEFlux DD files, ...): one class per layout, registered in ``cbgrid.sources``;
* :class:`BlockWriter` — where upscaled blocks go (``cbgrid.product.ProductWriter``;
  ``cbgrid.testing.MemoryWriter``).

The protocols are ``runtime_checkable``, so ``isinstance(obj, Predictor)`` checks the method
names (not the signatures, which the type checker and the tests cover).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import pandas as pd
    import xarray as xr

    from cbgrid.grid import Grid
    from cbgrid.pipeline import Prepared, Scaler, TrainingData


@runtime_checkable
class Member(Protocol):
    """One fitted model of a seed ensemble.

    ``family`` is 'tree' or 'network'; ``seed_independent`` is True when another seed would fit
    the same model (trees without subsampling), so one fit stands for the whole ensemble.
    """

    family: ClassVar[str]
    seed_independent: bool

    def fit(self, data: TrainingData, progress: bool = False) -> pd.DataFrame:
        """Fit on the training sites; return the validation curve (seed, epoch/iteration, losses)."""

    def predict(self, block: Prepared, scaler: Scaler) -> np.ndarray:
        """(site, day, target) predictions in physical units for every day of a prepared block."""

    def save(self, stem: Path) -> None:
        """Write the fitted state beside ``stem`` (``<stem>.pt``, ``<stem>-<target>.ubj``, ...)."""

    def load(self, stem: Path) -> Member:
        """Read the state written by ``save``; returns self."""


@runtime_checkable
class Predictor(Protocol):
    """A trained model as upscaling sees it."""

    @property
    def features(self) -> list[str]:
        """The driver variables read (store names)."""

    @property
    def history_days(self) -> int:
        """Days of drivers needed before the first predicted day (0 for static models)."""

    def predict(self, ds: xr.Dataset, *, block_sites: int | None = None, progress: bool = False) -> xr.Dataset:
        """The predictions contract (docs/architecture.md) for every site and day of ``ds``.

        ``block_sites`` bounds memory (sites read and predicted at a time); None lets the
        caller's chunk be the bound.
        """


@runtime_checkable
class DriverSource(Protocol):
    """A recipe's ``drivers:`` block: validated config that opens lazy gridded drivers."""

    name: ClassVar[str]

    @classmethod
    def from_mapping(cls, doc: Mapping[str, Any], where: str) -> DriverSource:
        """Build from the recipe's mapping; raise ``RecipeError`` naming ``where`` and any bad key."""

    def open(self, grid: Grid, days, context: xr.Dataset, *, chunks: Mapping[str, int], base: Path) -> xr.Dataset:
        """Lazy (time, lat, lon) drivers on ``grid`` over ``days``, store names and units.

        ``context`` is the grid context (IGBP, Köppen, land fraction); ``base`` is the folder
        relative paths of the recipe are taken from.
        """


@runtime_checkable
class SiteSource(Protocol):
    """A layout of per-site observations: recognised from the paths given, read into a store Dataset."""

    name: ClassVar[str]

    @classmethod
    def recognizes(cls, paths: list[Path]) -> bool:
        """Whether ``paths`` (files or one folder) are in this layout."""

    def read(self, paths: list[Path], *, sites: pd.DataFrame | None = None) -> xr.Dataset:
        """A schema-conformant (site, time) Dataset (lazy where the data are large); ``sites``
        is an optional site table for sites the catalog lacks."""

    def write(self, paths: list[Path], out: Path, *, sites: pd.DataFrame | None = None, period=None,
              overwrite: bool = False, progress: bool = True) -> dict:
        """Create or extend the store ``out`` through ``cbgrid.store`` (atomic, bounded memory where the
        layout is large); returns what ``cbgrid.store.merge`` returns, plus the layout's own counts."""


@runtime_checkable
class BlockWriter(Protocol):
    """Receives upscaled (time, lat, lon) blocks; NEE is always written as RECO − GPP."""

    def write(self, i0: int, j0: int, *, gpp, reco, gpp_sd, reco_sd, nee_sd) -> None:
        """Store one block at grid offset (i0, j0)."""

    def set_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Add global attributes known only once every block is written."""
