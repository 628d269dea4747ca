"""Product recipes: which drivers, which grid, which period, which trained runs, where to write.

A recipe is a small YAML file (see ``products/*.yaml``)::

    name: twin-1deg-2020-07
    drivers:
      source: twin            # twin | local | earthengine
      seed: 0                 # twin only
      # local:  paths: [era5land_*.nc, modis_*.nc], engine: netcdf4|h5netcdf|cfgrib|zarr,
      #         variables: {store_name: name_in_file}   (only where names differ)
      # earthengine: project: my-gcp-project (or $EARTHENGINE_PROJECT), feature_set: minimal,
      #         service_account: key.json, cache: ee-cache, workers: 8   (optional)
    grid:
      resolution: 1.0         # degrees; cell centres on a regular lat/lon grid
      region: [-180, -90, 180, 90]   # lon_min, lat_min, lon_max, lat_max
    period: {start: 2020-07-01, end: 2020-07-31, per: month}   # one file per month|year
    runs: [runs/xgboost, runs/ctlstm]
    output: products/out/twin-1deg
    chunks: {lat: 45, lon: 90}   # spatial chunk of the dask inference

Relative paths are taken from the working directory the command runs in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import yaml

from cbgrid import schema, sources
from cbgrid.errors import InputError, MissingError
from cbgrid.grid import Grid

if TYPE_CHECKING:  # pragma: no cover
    from cbgrid.contracts import DriverSource

PERIODS = ("month", "year")
TOP_KEYS = ("name", "description", "drivers", "grid", "period", "runs", "output", "chunks")
GRID_KEYS = ("resolution", "region")
PERIOD_KEYS = ("start", "end", "per")
CHUNK_KEYS = ("lat", "lon")


class RecipeError(InputError):
    """A recipe file is malformed; the message names the key and what to write instead."""


def check_keys(doc, allowed, where: str) -> dict:
    """``doc`` as a dict, or RecipeError naming ``where`` and the keys it does not know.

    >>> check_keys({"seed": 1}, ("seed",), "drivers")
    {'seed': 1}
    """
    if not isinstance(doc, dict):
        raise RecipeError(f"{where}: expected a mapping, got {type(doc).__name__} {doc!r}")
    unknown = sorted(set(doc) - set(allowed))
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(allowed)}")
    return dict(doc)


@dataclass(frozen=True)
class Period:
    start: pd.Timestamp
    end: pd.Timestamp
    per: str = "month"

    @property
    def days(self) -> pd.DatetimeIndex:
        return pd.date_range(self.start, self.end, freq="D")

    def pieces(self) -> list[tuple[str, pd.DatetimeIndex]]:
        """(label, days) of each output file: one per calendar month or year."""
        days = self.days
        key = days.strftime("%Y-%m") if self.per == "month" else days.strftime("%Y")
        return [(k, days[key == k]) for k in pd.unique(key)]


@dataclass(frozen=True)
class Recipe:
    name: str
    drivers: DriverSource
    grid: Grid
    period: Period
    runs: tuple[Path, ...]
    output: Path
    chunks: dict = field(default_factory=lambda: {"lat": 45, "lon": 90})
    source_file: Path | None = None

    def replace(self, **kw) -> Recipe:
        return dataclasses.replace(self, **kw)

    @property
    def base(self) -> Path:
        """The folder relative driver paths are also looked for in (the recipe's own)."""
        return self.source_file.parent if self.source_file is not None else Path.cwd()


def _need(d: dict, key: str, where: str):
    if key not in d or d[key] in (None, ""):
        raise RecipeError(f"{where}: missing required key {key!r}")
    return d[key]


def parse_recipe(doc: dict, source_file: Path | None = None) -> Recipe:
    """Validate a recipe mapping and build a Recipe; errors name the offending key.

    >>> r = parse_recipe({"name": "x", "drivers": {"source": "twin"}, "grid": {"resolution": 10},
    ...                   "period": {"start": "2020-07-01", "end": "2020-07-31"}, "runs": ["runs/a"], "output": "out"})
    >>> r.grid.shape, r.drivers.name
    ((18, 36), 'twin')
    >>> parse_recipe({"name": "x", "drivers": {"source": "twin", "sed": 3}, "grid": {"resolution": 10},
    ...               "period": {"start": "2020-07-01", "end": "2020-07-31"}, "runs": ["a"], "output": "o"})
    Traceback (most recent call last):
    cbgrid.recipe.RecipeError: recipe: drivers (source twin): unknown key(s) ['sed']; allowed: seed, difficulty
    """
    where = str(source_file or "recipe")
    if not isinstance(doc, dict):
        raise RecipeError(f"{where}: expected a mapping at the top level, got {type(doc).__name__}")
    check_keys(doc, TOP_KEYS, where)
    d = _need(doc, "drivers", where)
    if not isinstance(d, dict):
        raise RecipeError(f"{where}: drivers must be a mapping with a 'source' key, got {d!r}")
    src = _need(d, "source", f"{where}: drivers")
    try:
        cls = sources.driver_source(src)
    except ValueError as e:
        raise RecipeError(f"{where}: drivers.source: {e}") from None
    drivers = cls.from_mapping({k: v for k, v in d.items() if k != "source"}, f"{where}: drivers (source {src})")
    g = check_keys(_need(doc, "grid", where), GRID_KEYS, f"{where}: grid")
    res = float(_need(g, "resolution", f"{where}: grid"))
    if not (0 < res <= 10):
        raise RecipeError(f"{where}: grid.resolution {res} must be in (0, 10] degrees")
    region = tuple(float(x) for x in g.get("region", (-180, -90, 180, 90)))
    if len(region) != 4:
        raise RecipeError(f"{where}: grid.region must be [lon_min, lat_min, lon_max, lat_max]")
    lon0, lat0, lon1, lat1 = region
    if not (-180 <= lon0 < lon1 <= 180 and -90 <= lat0 < lat1 <= 90):
        raise RecipeError(f"{where}: grid.region {list(region)} is not a valid lon/lat box within [-180, 180] x [-90, 90]; "
                          "write [lon_min, lat_min, lon_max, lat_max] with min < max (a box across the antimeridian "
                          "takes two recipes)")
    for span, nm in ((lon1 - lon0, "longitude"), (lat1 - lat0, "latitude")):
        if abs(span / res - round(span / res)) > 1e-6:
            raise RecipeError(f"{where}: the region's {nm} span {span} is not a multiple of the resolution {res}")
    p = check_keys(_need(doc, "period", where), PERIOD_KEYS, f"{where}: period")
    start = schema.date(_need(p, "start", f"{where}: period"), f"{where}: period.start")
    end = schema.date(_need(p, "end", f"{where}: period"), f"{where}: period.end")
    if end < start:
        raise RecipeError(f"{where}: period.end {end.date()} is before period.start {start.date()}")
    per = p.get("per", "month")
    if per not in PERIODS:
        raise RecipeError(f"{where}: period.per is {per!r}; use one of {', '.join(PERIODS)}")
    runs = _need(doc, "runs", where)
    runs = (runs,) if isinstance(runs, str) else tuple(runs)
    chunks = check_keys(doc.get("chunks", {"lat": 45, "lon": 90}), CHUNK_KEYS, f"{where}: chunks")
    for k, v in chunks.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise RecipeError(f"{where}: chunks.{k} is {v!r}; it must be a positive whole number of cells")
    return Recipe(
        name=str(doc.get("name") or (source_file.stem if source_file else "product")),
        drivers=drivers,
        grid=Grid(res, region),
        period=Period(start.normalize(), end.normalize(), per),
        runs=tuple(Path(r) for r in runs),
        output=Path(_need(doc, "output", where)),
        chunks=chunks,
        source_file=source_file,
    )


def load_recipe(path) -> Recipe:
    """Read and validate a recipe YAML file.

    >>> from cbgrid import catalog
    >>> load_recipe(catalog.recipe_path("twin-1deg-month.yaml")).name
    'twin-1deg-2020-07'
    """
    path = Path(path)
    if not path.exists():
        raise MissingError(f"no recipe at {path}")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML ({e})") from e
    return parse_recipe(doc, source_file=path)
