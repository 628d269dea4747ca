"""Product recipes: which drivers, which grid, which period, which trained runs, where to write.

A recipe is a small YAML file (see ``products/*.yaml``)::

    name: twin-1deg-2020-07
    drivers:
      source: twin            # twin | local | earthengine
      seed: 0                 # twin only
      # local:  paths: [era5land_*.nc, modis_*.nc], engine: netcdf4|h5netcdf|cfgrib|zarr,
      #         variables: {store_name: name_in_file}   (only where names differ)
      # earthengine: project: my-gcp-project (or $EARTHENGINE_PROJECT), feature_set: minimal
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

import numpy as np
import pandas as pd
import yaml

SOURCES = ("twin", "local", "earthengine")
PERIODS = ("month", "year")


class RecipeError(ValueError):
    """A recipe file is malformed; the message names the key and what to write instead."""


@dataclass(frozen=True)
class Drivers:
    source: str
    seed: int = 0
    paths: tuple[str, ...] = ()
    engine: str | None = None
    variables: dict = field(default_factory=dict)
    project: str | None = None
    feature_set: str = "minimal"


@dataclass(frozen=True)
class Grid:
    resolution: float
    region: tuple[float, float, float, float] = (-180.0, -90.0, 180.0, 90.0)

    @property
    def lat(self) -> np.ndarray:
        """Cell-centre latitudes, south to north."""
        lon0, lat0, lon1, lat1 = self.region
        n = int(round((lat1 - lat0) / self.resolution))
        return np.round(lat0 + self.resolution * (np.arange(n) + 0.5), 10)

    @property
    def lon(self) -> np.ndarray:
        """Cell-centre longitudes, west to east."""
        lon0, lat0, lon1, lat1 = self.region
        n = int(round((lon1 - lon0) / self.resolution))
        return np.round(lon0 + self.resolution * (np.arange(n) + 0.5), 10)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.lat.size, self.lon.size)


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
    drivers: Drivers
    grid: Grid
    period: Period
    runs: tuple[Path, ...]
    output: Path
    chunks: dict = field(default_factory=lambda: {"lat": 45, "lon": 90})
    source_file: Path | None = None

    def replace(self, **kw) -> Recipe:
        return dataclasses.replace(self, **kw)


def _need(d: dict, key: str, where: str):
    if key not in d or d[key] in (None, ""):
        raise RecipeError(f"{where}: missing required key {key!r}")
    return d[key]


def parse_recipe(doc: dict, source_file: Path | None = None) -> Recipe:
    """Validate a recipe mapping and build a Recipe; errors name the offending key."""
    where = str(source_file or "recipe")
    if not isinstance(doc, dict):
        raise RecipeError(f"{where}: expected a mapping at the top level, got {type(doc).__name__}")
    unknown = set(doc) - {"name", "drivers", "grid", "period", "runs", "output", "chunks", "description"}
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {sorted(unknown)}")
    d = _need(doc, "drivers", where)
    src = _need(d, "source", f"{where}: drivers")
    if src not in SOURCES:
        raise RecipeError(f"{where}: drivers.source is {src!r}; use one of {', '.join(SOURCES)}")
    if src == "local" and not d.get("paths"):
        raise RecipeError(f"{where}: drivers.paths must list the local NetCDF/GRIB/Zarr files for source 'local'")
    drivers = Drivers(
        source=src,
        seed=int(d.get("seed", 0)),
        paths=tuple(str(p) for p in d.get("paths", ()) or ()),
        engine=d.get("engine"),
        variables=dict(d.get("variables", {}) or {}),
        project=d.get("project"),
        feature_set=str(d.get("feature_set", "minimal")),
    )
    g = _need(doc, "grid", where)
    res = float(_need(g, "resolution", f"{where}: grid"))
    if not (0 < res <= 10):
        raise RecipeError(f"{where}: grid.resolution {res} must be in (0, 10] degrees")
    region = tuple(float(x) for x in g.get("region", (-180, -90, 180, 90)))
    if len(region) != 4:
        raise RecipeError(f"{where}: grid.region must be [lon_min, lat_min, lon_max, lat_max]")
    lon0, lat0, lon1, lat1 = region
    if not (-180 <= lon0 < lon1 <= 180 and -90 <= lat0 < lat1 <= 90):
        raise RecipeError(f"{where}: grid.region {list(region)} is not a valid lon/lat box within [-180, 180] x [-90, 90]")
    for span, nm in ((lon1 - lon0, "longitude"), (lat1 - lat0, "latitude")):
        if abs(span / res - round(span / res)) > 1e-6:
            raise RecipeError(f"{where}: the region's {nm} span {span} is not a multiple of the resolution {res}")
    p = _need(doc, "period", where)
    try:
        start, end = pd.Timestamp(_need(p, "start", f"{where}: period")), pd.Timestamp(_need(p, "end", f"{where}: period"))
    except (ValueError, TypeError) as e:
        raise RecipeError(f"{where}: period start/end must be dates like 2020-07-01 ({e})") from e
    if end < start:
        raise RecipeError(f"{where}: period.end {end.date()} is before period.start {start.date()}")
    per = p.get("per", "month")
    if per not in PERIODS:
        raise RecipeError(f"{where}: period.per is {per!r}; use one of {', '.join(PERIODS)}")
    runs = _need(doc, "runs", where)
    runs = (runs,) if isinstance(runs, str) else tuple(runs)
    chunks = dict(doc.get("chunks", {"lat": 45, "lon": 90}))
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
    """Read and validate a recipe YAML file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no recipe at {path}")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML ({e})") from e
    return parse_recipe(doc, source_file=path)
