"""Earth Engine acquisition: per-site features for the store, lazy driver grids for upscaling.

Sites: for every site and calendar-year chunk, one server-side computation per collection —
MOD09GA (``MODIS/061/MOD09GA``) reflectance, view/sun angles and the ``state_1km`` cloud
fraction averaged over a 2 km × 2 km window centred on the tower, and ERA5-Land daily
aggregates (``ECMWF/ERA5_LAND/DAILY_AGGR``) at the tower's pixel — fetched with retries,
cached one file per (source, site, chunk), and assembled into a store Dataset only when every
chunk is present. Grids: the same collections aggregated server-side onto a regular lat/lon
grid and opened lazily through xee.

Nothing here talks to Earth Engine at import: call :func:`initialize` (the acquisition
functions do so when they have something to fetch).
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import logging
import math
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from cbgrid import catalog, schema
from cbgrid.atomic import replace_dir, replace_file
from cbgrid.progress import bar as progress_bar
from cbgrid.progress import compute as progress_compute
from cbgrid.recipe import RecipeError, check_keys
from cbgrid.sources import register_driver_source

log = logging.getLogger(__name__)

ERA5_LAND = "era5_land"
MODIS = "modis"
SOURCES = (MODIS, ERA5_LAND)

#: MOD09GA reflectance and geometry bands (raw int16 digital numbers on Earth Engine).
REFLECTANCE_BANDS = tuple(f"sur_refl_b0{i}" for i in range(1, 8))
ANGLE_BANDS = ("SensorZenith", "SensorAzimuth", "SolarZenith", "SolarAzimuth")
CLOUD_STATE_BAND = "state_1km"
#: Valid ranges from the MOD09 user guide; everything outside (fill -28672 for reflectance,
#: -32767 for angles) is masked before averaging.
REFLECTANCE_VALID = (-100, 16000)
ANGLE_VALID = (-18000, 18000)
#: ``state_1km`` bits 0-1: 00 clear, 01 cloudy, 10 mixed, 11 not set (assumed clear).
#: Only "cloudy" counts as cloudy, as the variable catalog defines ``clouds``.
CLOUD_STATE_MASK, CLOUD_STATE_CLOUDY = 0b11, 0b01

#: Nominal MOD09GA 500 m pixel (the sinusoidal grid's 463.3127 m) and ERA5-Land's 0.1° pixel.
MODIS_SCALE_M = 463.312716528
ERA5_LAND_SCALE_M = 11131.949079327358
#: Half side of the MODIS averaging window around the tower (2 km × 2 km).
WINDOW_HALF_M = 1000.0

#: Image properties computed images must keep: xee reads both to build the time axis.
KEEP_PROPERTIES = ("system:id", "system:time_start")

PROJECT_ENV = ("EARTHENGINE_PROJECT", "GOOGLE_CLOUD_PROJECT")

_AUTH_HELP = (
    "Earth Engine is not set up for this user. Run `earthengine authenticate` (or `gcloud auth "
    "application-default login --scopes=https://www.googleapis.com/auth/earthengine,"
    "https://www.googleapis.com/auth/cloud-platform`) once, then give the Cloud project with the "
    "Earth Engine API enabled via --project or the EARTHENGINE_PROJECT environment variable"
)

#: Messages (or HTTP codes) of Earth Engine errors worth retrying.
_TRANSIENT = re.compile(
    r"too many (concurrent|requests)|quota exceeded|rate limit|capacity exceeded|"
    r"computation timed out|deadline exceeded|timed? ?out|internal error|backend error|"
    r"service unavailable|temporarily|connection (reset|aborted|refused)|"
    r"\b(429|500|502|503|504)\b",
    re.IGNORECASE,
)

_sleep = time.sleep  # replaced in tests to keep retry tests instant


class EarthEngineError(RuntimeError):
    """An Earth Engine request failed; the message names what and where."""


class CredentialsError(EarthEngineError):
    """Earth Engine credentials or project are missing."""


# --------------------------------------------------------------------------- setup


def _ee():
    try:
        import ee
    except ImportError as e:  # pragma: no cover - earthengine-api is a dependency
        raise EarthEngineError("earthengine-api is not installed: pip install earthengine-api") from e
    return ee


def resolve_project(project: str | None = None) -> str | None:
    """The Cloud project: the argument, else $EARTHENGINE_PROJECT, else $GOOGLE_CLOUD_PROJECT."""
    if project:
        return project
    for var in PROJECT_ENV:
        if os.environ.get(var):
            return os.environ[var]
    return None


_init_lock = threading.Lock()
_initialized: dict = {}


def initialize(project: str | None = None) -> str | None:
    """Initialise Earth Engine with the user's own credentials; return the project used.

    Raises :class:`CredentialsError` with what to run when credentials or the project are
    missing. Credentials are never read, written or logged here: ``ee`` finds them itself.
    """
    ee = _ee()
    project = resolve_project(project)
    with _init_lock:
        if _initialized.get("project", ()) == project and ee.data.is_initialized():
            return project  # e.g. upscaling opens one grid per month
        try:
            ee.Initialize(project=project)
        except ee.EEException as e:
            msg = str(e)
            if re.search(r"authorize access|credentials|authenticate", msg, re.I):
                raise CredentialsError(_AUTH_HELP) from None
            if re.search(r"project", msg, re.I):
                raise CredentialsError(f"{_AUTH_HELP}; Earth Engine said: {msg.splitlines()[0]}") from None
            raise EarthEngineError(f"ee.Initialize(project={project!r}) failed: {msg}") from e
        except Exception as e:  # google.auth errors when application-default credentials are absent
            if "credentials" in f"{type(e).__name__} {e}".lower():
                raise CredentialsError(f"{_AUTH_HELP} ({type(e).__name__})") from None
            raise
        _initialized["project"] = project
    log.info("Earth Engine initialised (project %s)", project or "from credentials")
    return project


# --------------------------------------------------------------------------- retries


def is_transient(err: BaseException) -> bool:
    """Whether an error is a rate limit or transient failure that a retry may cure."""
    if isinstance(err, (TimeoutError, ConnectionError, socket.timeout)):
        return True
    return bool(_TRANSIENT.search(str(err)))


def call_with_retries(fn: Callable, *, what: str, max_tries: int = 6, base_delay: float = 2.0, max_delay: float = 120.0):
    """Call ``fn()``, retrying transient errors with exponential backoff and full jitter.

    Non-transient errors fail at once; both raise :class:`EarthEngineError` naming ``what``.
    """
    for attempt in range(1, max_tries + 1):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - classified below
            if not is_transient(e):
                raise EarthEngineError(f"{what}: {type(e).__name__}: {e}") from e
            if attempt == max_tries:
                raise EarthEngineError(f"{what}: still failing after {max_tries} tries: {e}") from e
            delay = min(max_delay, base_delay * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            log.warning("%s: %s; retry %d/%d in %.1f s", what, str(e).splitlines()[0], attempt, max_tries - 1, delay)
            _sleep(delay)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- catalog


def collection_id(source: str) -> str:
    """The Earth Engine collection of a source ('modis' or 'era5_land'), from the variable catalog."""
    v = catalog.variables()
    ids = v.loc[v["source"] == source, "collection"].unique()
    if len(ids) != 1:
        raise ValueError(f"variable catalog has {len(ids)} collections for source {source!r}: {list(ids)}")
    return str(ids[0])


def source_variables(source: str, feature_set: str = "minimal") -> list[str]:
    """Store names fetched from a source for a feature set."""
    if source == ERA5_LAND:
        return catalog.era5_bands(feature_set)
    if source == MODIS:
        return catalog.modis_bands()
    raise ValueError(f"unknown Earth Engine source {source!r}; use one of {SOURCES}")


def _scale_offset(names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    v = catalog.variables().loc[list(names)]
    return v["scale"].astype(float).to_numpy(), v["offset"].astype(float).to_numpy()


# --------------------------------------------------------------------------- server-side images


def modis_image(img):
    """A MOD09GA image as the 12 MODIS features in raw units, float, invalid pixels masked.

    Reflectance and angles keep their digital numbers (scaled client-side from the catalog);
    ``clouds`` is 1 where the ``state_1km`` cloud state (bits 0-1) is "cloudy", else 0, so its
    window mean is the cloudy-pixel fraction. Fill values fall outside the valid ranges.
    """
    ee = _ee()
    refl = img.select(list(REFLECTANCE_BANDS))
    refl = refl.updateMask(refl.gte(REFLECTANCE_VALID[0]).And(refl.lte(REFLECTANCE_VALID[1])))
    ang = img.select(list(ANGLE_BANDS))
    ang = ang.updateMask(ang.gte(ANGLE_VALID[0]).And(ang.lte(ANGLE_VALID[1])))
    clouds = img.select(CLOUD_STATE_BAND).bitwiseAnd(CLOUD_STATE_MASK).eq(CLOUD_STATE_CLOUDY).rename("clouds")
    out = refl.addBands(ang).addBands(clouds).toFloat()
    return ee.Image(out.copyProperties(img, list(KEEP_PROPERTIES)))


def source_collection(source: str, start, end, feature_set: str = "minimal"):
    """The source's ImageCollection over [start, end] (days, inclusive), bands = store names."""
    ee = _ee()
    start, end = pd.Timestamp(start), pd.Timestamp(end)
    ic = ee.ImageCollection(collection_id(source)).filterDate(
        start.strftime("%Y-%m-%d"), (end + pd.Timedelta(days=1)).strftime("%Y-%m-%d")
    )
    if source == MODIS:
        return ic.map(modis_image)
    return ic.select(source_variables(ERA5_LAND, feature_set))


def window_bounds(lat: float, lon: float, half_m: float = WINDOW_HALF_M) -> tuple[float, float, float, float]:
    """(west, south, east, north) of the square of side ``2 * half_m`` metres centred on a site.

    Uses the WGS84 meridional and prime-vertical radii of curvature at the site's latitude.
    """
    a, e2 = 6378137.0, 6.69437999014e-3
    phi = math.radians(lat)
    w = 1.0 - e2 * math.sin(phi) ** 2
    m_radius = a * (1 - e2) / w**1.5
    n_radius = a / math.sqrt(w)
    dlat = math.degrees(half_m / m_radius)
    dlon = math.degrees(half_m / (n_radius * max(math.cos(phi), 1e-6)))
    return lon - dlon, lat - dlat, lon + dlon, lat + dlat


def site_geometry(source: str, lat: float, lon: float):
    """Where a source is sampled for a site: the 2 km box (MODIS) or the tower point (ERA5-Land)."""
    ee = _ee()
    if source == MODIS:
        return ee.Geometry.Rectangle(list(window_bounds(lat, lon)), "EPSG:4326", False)
    return ee.Geometry.Point([lon, lat])


def site_series(source: str, lat: float, lon: float, start, end, feature_set: str = "minimal"):
    """FeatureCollection with one feature per image: ``date`` and the source's window means."""
    ee = _ee()
    geometry = site_geometry(source, lat, lon)
    scale = MODIS_SCALE_M if source == MODIS else ERA5_LAND_SCALE_M

    def reduce(img):
        stats = img.reduceRegion(reducer=ee.Reducer.mean(), geometry=geometry, scale=scale)
        return ee.Feature(None, stats).set("date", img.date().format("YYYY-MM-dd"))

    return ee.FeatureCollection(source_collection(source, start, end, feature_set).map(reduce))


def features_to_frame(info: dict, names: Sequence[str]) -> pd.DataFrame:
    """A FeatureCollection's ``getInfo()`` -> daily table of physical values (catalog scales).

    Masked bands come back missing or null and become NaN.
    """
    rows = [f.get("properties") or {} for f in info.get("features", [])]
    if not rows:
        return pd.DataFrame(columns=list(names), index=pd.DatetimeIndex([], name="date"), dtype=float)
    df = pd.DataFrame.from_records(rows)
    if "date" not in df:
        raise EarthEngineError(f"Earth Engine returned features without a 'date' property: {sorted(df.columns)[:10]}")
    df.index = pd.DatetimeIndex(pd.to_datetime(df.pop("date")), name="date")
    df = df.reindex(columns=list(names)).apply(pd.to_numeric, errors="coerce").astype(float)
    scale, offset = _scale_offset(names)
    df = df * scale + offset
    return df.groupby(level=0).mean().sort_index()


# --------------------------------------------------------------------------- site acquisition


def time_chunks(start, end) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """Calendar-year pieces of [start, end] (inclusive days): one request per site and piece."""
    start, end = pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize()
    if end < start:
        raise ValueError(f"end {end.date()} is before start {start.date()}")
    out = []
    for year in range(start.year, end.year + 1):
        a = max(start, pd.Timestamp(year=year, month=1, day=1))
        b = min(end, pd.Timestamp(year=year, month=12, day=31))
        out.append((a, b))
    return out


@dataclass(frozen=True)
class Task:
    """One request: a source, a site, a chunk of days."""

    source: str
    site: str
    lat: float
    lon: float
    start: pd.Timestamp
    end: pd.Timestamp

    @property
    def label(self) -> str:
        return f"{self.source} {self.site} {self.start.date()}..{self.end.date()}"

    def cache_path(self, cache_dir: Path) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", self.site)
        return cache_dir / self.source / safe / f"{self.start:%Y-%m-%d}_{self.end:%Y-%m-%d}.csv"


def _read_cached(path: Path, names: Sequence[str]) -> pd.DataFrame | None:
    """A cached chunk if present and holding every wanted variable, else None."""
    if not path.exists():
        return None
    df = pd.read_csv(path, index_col="date", parse_dates=["date"])
    if not set(names) <= set(df.columns):
        return None
    return df[list(names)]


def _write_cached(df: pd.DataFrame, path: Path) -> None:
    with replace_file(path) as tmp:
        df.to_csv(tmp, index_label="date", date_format="%Y-%m-%d")


def _fetch(task: Task, feature_set: str, cache_dir: Path, max_tries: int) -> None:
    names = source_variables(task.source, feature_set)
    fc = site_series(task.source, task.lat, task.lon, task.start, task.end, feature_set)
    info = call_with_retries(fc.getInfo, what=task.label, max_tries=max_tries)
    df = features_to_frame(info, names)
    df = df.loc[(df.index >= task.start) & (df.index <= task.end)]
    _write_cached(df, task.cache_path(cache_dir))


def plan_sites(sites: pd.DataFrame, start, end, feature_set: str = "minimal") -> list[Task]:
    """Every (source, site, year-chunk) request of a site acquisition."""
    schema.site_coords(sites)  # fail on bad coordinates before any request
    source_variables(ERA5_LAND, feature_set)
    return [
        Task(source, str(row.site), float(row.lat), float(row.lon), a, b)
        for row in sites.itertuples(index=False)
        for source in SOURCES
        for a, b in time_chunks(start, end)
    ]


def acquire_sites(
    sites: pd.DataFrame,
    start,
    end,
    *,
    feature_set: str = "minimal",
    cache_dir,
    project: str | None = None,
    workers: int = 4,
    max_tries: int = 6,
    progress: bool = True,
) -> xr.Dataset:
    """Fetch MODIS and ERA5-Land features for ``sites`` over [start, end]; return the store Dataset.

    Chunks already in ``cache_dir`` are not fetched again, so an interrupted run resumes where
    it stopped. If any chunk fails, the others are kept in the cache and
    :class:`EarthEngineError` is raised: no partial Dataset is ever returned.
    """
    cache_dir = Path(cache_dir)
    tasks = plan_sites(sites, start, end, feature_set)
    todo = [t for t in tasks if _read_cached(t.cache_path(cache_dir), source_variables(t.source, feature_set)) is None]
    log.info("%d of %d site chunks cached in %s; %d to fetch", len(tasks) - len(todo), len(tasks), cache_dir, len(todo))
    if todo:
        initialize(project)
        _run(todo, feature_set, cache_dir, workers=workers, max_tries=max_tries, bar=progress_bar(total=len(todo), desc="Earth Engine site chunks", unit="chunk", progress=progress))
    return assemble_sites(sites, start, end, feature_set=feature_set, cache_dir=cache_dir)


def _run(todo: list[Task], feature_set: str, cache_dir: Path, *, workers: int, max_tries: int, bar) -> None:
    failed: list[tuple[Task, BaseException]] = []
    with bar, concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(_fetch, t, feature_set, cache_dir, max_tries): t for t in todo}
        for fut in concurrent.futures.as_completed(futures):
            if fut.cancelled():
                continue
            task = futures[fut]
            err = fut.exception()
            if err is None:
                bar.set_postfix_str(task.site, refresh=False)
                bar.update(1)
                continue
            failed.append((task, err))
            # Stop scheduling: the same cause (quota, permissions) would fail the rest too.
            for f in futures:
                f.cancel()
    if failed:
        task, err = failed[0]
        if not isinstance(err, EarthEngineError):
            err = EarthEngineError(f"{task.label}: {type(err).__name__}: {err}")
        done = sum(1 for f in futures if f.done() and not f.cancelled() and f.exception() is None)
        raise EarthEngineError(
            f"{err} ({len(failed)} chunk(s) failed, {done} newly cached; nothing was merged; "
            f"re-run the same command to resume from the cache in {cache_dir})"
        ) from err


def assemble_sites(sites: pd.DataFrame, start, end, *, feature_set: str = "minimal", cache_dir) -> xr.Dataset:
    """Build the (site, time) Dataset from a complete cache; raise if any chunk is missing."""
    cache_dir = Path(cache_dir)
    days = pd.date_range(pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize(), freq="D")
    tasks = plan_sites(sites, start, end, feature_set)
    names = {s: source_variables(s, feature_set) for s in SOURCES}
    data = {n: np.full((len(sites), len(days)), np.nan, dtype=np.float32) for s in SOURCES for n in names[s]}
    row = {str(s): i for i, s in enumerate(sites["site"])}
    missing = []
    for t in tasks:
        df = _read_cached(t.cache_path(cache_dir), names[t.source])
        if df is None:
            missing.append(t.label)
            continue
        if df.empty:
            continue
        cols = days.get_indexer(df.index)
        ok = cols >= 0
        for n in names[t.source]:
            data[n][row[t.site], cols[ok]] = df[n].to_numpy(np.float32)[ok]
    if missing:
        raise EarthEngineError(f"{len(missing)} chunk(s) are not in {cache_dir} (first: {missing[0]}); run the acquisition first")
    ds = schema.site_dataset(data, sites, days)
    ds.attrs.update(
        source=f"Google Earth Engine: {collection_id(MODIS)} (2 km x 2 km window mean), "
        f"{collection_id(ERA5_LAND)} (tower pixel)",
        feature_set=feature_set,
    )
    return ds


# --------------------------------------------------------------------------- grids (xee)

#: Earth Engine's computePixels limit per request (xee's default request_byte_limit).
REQUEST_BYTE_LIMIT = 48 * 2**20
#: reduceResolution may combine at most this many input pixels per output pixel (EE maximum);
#: beyond it (MODIS 500 m onto grids coarser than ~1.2°) bestEffort starts from a coarser pyramid level.
MAX_PIXELS_PER_CELL = 65535


def grid_transform(lat, lon) -> tuple[tuple[float, ...], tuple[int, int]]:
    """xee's ``crs_transform`` (north-up, EPSG:4326) and ``shape_2d`` (width, height) of a grid.

    ``lat``/``lon`` are ascending, regularly spaced cell centres with equal spacing.
    """
    lat, lon = np.asarray(lat, dtype=float), np.asarray(lon, dtype=float)
    if lat.size < 1 or lon.size < 1:
        raise ValueError("the grid needs at least one latitude and one longitude")
    steps = np.concatenate([np.diff(lat), np.diff(lon)])
    res = float(steps[0]) if steps.size else 1.0
    if steps.size and not np.allclose(steps, res, rtol=0, atol=1e-9 * max(1.0, abs(res))):
        raise ValueError(
            f"Earth Engine grids must be regular, ascending and square: lat steps {np.unique(np.diff(lat))[:5]}, "
            f"lon steps {np.unique(np.diff(lon))[:5]}"
        )
    transform = (res, 0.0, float(lon[0] - res / 2), 0.0, -res, float(lat[-1] + res / 2))
    return transform, (int(lon.size), int(lat.size))


def grid_collection(source: str, start, end, *, feature_set: str = "minimal", crs: str = "EPSG:4326", crs_transform):
    """The source's images over [start, end], area-averaged server-side onto the output grid.

    ``reduceResolution(mean)`` + ``reproject`` weights every native pixel by its overlap with
    the output cell, so MODIS 500 m/1 km pixels become cell means (and ``clouds`` the cloudy
    fraction of the cell) rather than one nearest-neighbour sample, and ERA5-Land is averaged
    where the output grid is offset from or coarser than its 0.1° grid.
    """
    ee = _ee()

    def to_grid(img):
        out = img.reduceResolution(reducer=ee.Reducer.mean(), bestEffort=True, maxPixels=MAX_PIXELS_PER_CELL)
        out = out.reproject(crs=crs, crsTransform=list(crs_transform))
        return ee.Image(out.copyProperties(img, list(KEEP_PROPERTIES)))

    return source_collection(source, start, end, feature_set).map(to_grid)


def open_drivers(
    lat,
    lon,
    start,
    end,
    *,
    feature_set: str = "minimal",
    project: str | None = None,
    chunks: dict | None = None,
    max_tries: int = 6,
) -> xr.Dataset:
    """Open ERA5-Land and MOD09GA drivers lazily through xee on a regular lat/lon grid.

    Returns dims (time, lat, lon): daily ``time`` over [start, end], ``lat`` ascending cell
    centres equal to ``lat``, ``lon`` equal to ``lon``; one float32 dask variable per feature of
    ``feature_set``, named and unitised as in the store. ``chunks`` (keys time, lat, lon;
    default 32 days × 90 × 90 cells) are the dask chunks; xee fetches each per variable in
    computePixels requests of that tile and as many days as fit Earth Engine's 48 MB limit,
    retried with backoff up to ``max_tries`` times. Each calendar year is opened as its own
    collection so no request indexes deep into a long collection.
    """
    lat, lon = np.asarray(lat, dtype=float), np.asarray(lon, dtype=float)
    chunks = {"time": 32, "lat": 90, "lon": 90, **(chunks or {})}
    ct, cy, cx = int(chunks["time"]), min(int(chunks["lat"]), lat.size), min(int(chunks["lon"]), lon.size)
    per_day = cy * cx * 9  # float64 + mask byte per pixel, the worst case Earth Engine counts
    if per_day > REQUEST_BYTE_LIMIT:
        raise ValueError(
            f"one day of a {cy} x {cx} cell chunk exceeds Earth Engine's {REQUEST_BYTE_LIMIT // 2**20} MB "
            "per-request limit; use smaller lat/lon chunks"
        )
    io_days = min(math.ceil(ct / math.ceil(ct * per_day / REQUEST_BYTE_LIMIT)), REQUEST_BYTE_LIMIT // per_day)
    if importlib.util.find_spec("xee") is None:
        raise EarthEngineError("xee is not installed: pip install 'xee>=0.1,<0.2'")
    crs = "EPSG:4326"
    transform, shape_2d = grid_transform(lat, lon)
    names = {s: source_variables(s, feature_set) for s in SOURCES}
    initialize(project)
    pieces = []
    for a, b in time_chunks(start, end):
        parts = []
        for source in SOURCES:
            ic = grid_collection(source, a, b, feature_set=feature_set, crs=crs, crs_transform=transform)
            kwargs = dict(
                engine="ee",
                crs=crs,
                crs_transform=transform,
                shape_2d=shape_2d,
                io_chunks={"index": io_days, "width": cx, "height": cy},
                chunks={"time": ct, "y": cy, "x": cx},
                getitem_kwargs={"max_retries": max_tries, "initial_delay": 1000},
            )
            # xee retries pixel requests itself; its metadata request on open is retried here.
            part = call_with_retries(
                lambda ic=ic, kwargs=kwargs: xr.open_dataset(ic, **kwargs),
                what=f"opening {collection_id(source)} {a.date()}..{b.date()}",
                max_tries=max_tries,
            )
            missing = sorted(set(names[source]) - set(part.data_vars))
            if missing:
                raise EarthEngineError(f"{collection_id(source)} opened without band(s) {missing} ({a.date()}..{b.date()})")
            parts.append(part[names[source]])
        pieces.append(xr.merge(parts, join="outer", compat="override"))
    ds = xr.concat(pieces, dim="time") if len(pieces) > 1 else pieces[0]
    return normalise_grid(ds, lat, lon, start, end, feature_set=feature_set, chunks=(ct, cy, cx))


def normalise_grid(ds: xr.Dataset, lat, lon, start, end, *, feature_set: str = "minimal", chunks=(32, 90, 90)) -> xr.Dataset:
    """xee's (time, y, x) layout -> (time, lat, lon), lat ascending, store names, units and scales.

    Lazy: only coordinates are touched; data stay dask arrays.
    """
    lat, lon = np.asarray(lat, dtype=float), np.asarray(lon, dtype=float)
    if not np.issubdtype(ds["time"].dtype, np.datetime64):
        raise EarthEngineError(
            "xee could not read the images' system:time_start (time came back as an index); "
            "the collection's images must keep their system:id and system:time_start properties"
        )
    ds = ds.rename({"y": "lat", "x": "lon"})
    if ds.sizes["lat"] != lat.size or ds.sizes["lon"] != lon.size:
        raise EarthEngineError(f"xee returned a {ds.sizes['lat']} x {ds.sizes['lon']} grid; expected {lat.size} x {lon.size}")
    if ds.sizes["lat"] > 1 and ds["lat"].values[0] > ds["lat"].values[-1]:
        ds = ds.isel(lat=slice(None, None, -1))
    for name, want in (("lat", lat), ("lon", lon)):
        got = ds[name].values
        if not np.allclose(got, want, rtol=0, atol=1e-6):
            i = int(np.argmax(np.abs(got - want)))
            raise EarthEngineError(f"xee {name} {got[i]} differs from the grid's {want[i]} at index {i}")
    ds = ds.assign_coords(lat=("lat", lat, schema.lat_attrs("latitude of cell centre", axis=True)),
                          lon=("lon", lon, schema.lon_attrs("longitude of cell centre", axis=True)))
    t = pd.DatetimeIndex(ds.indexes["time"]).normalize()
    ds = ds.assign_coords(time=t)
    if t.has_duplicates:
        ds = ds.isel(time=~t.duplicated())
    days = pd.date_range(pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize(), freq="D")
    ds = ds.reindex(time=days)
    ds["time"].attrs.update(standard_name="time", axis="T")
    out = {}
    names = catalog.features(feature_set)
    scale, offset = _scale_offset(names)
    for name, s, o in zip(names, scale, offset):
        var = ds[name].transpose("time", "lat", "lon")
        if s != 1 or o != 0:
            var = var * s + o
        var = var.astype(np.float32)
        var.attrs = schema.variable_attrs(name)
        var.encoding = {}
        out[name] = var
    grid = xr.Dataset(out).chunk(dict(zip(("time", "lat", "lon"), chunks)))
    for c in grid.coords:
        grid[c].encoding = {}
    grid.attrs.update(
        Conventions="CF-1.8",
        source=f"Google Earth Engine via xee: {collection_id(ERA5_LAND)}, {collection_id(MODIS)} "
        "(area-weighted means on the grid)",
        feature_set=feature_set,
    )
    return grid


def open_grid(recipe, *, project: str | None = None, chunks: dict | None = None, max_tries: int = 6) -> xr.Dataset:
    """Open the driver grids of a product recipe (source 'earthengine') lazily through xee.

    Uses the recipe's grid (region, resolution), period and ``drivers.feature_set``; the
    project comes from ``project``, else ``drivers.project``, else $EARTHENGINE_PROJECT.
    ``chunks`` defaults to 32 days × the recipe's spatial chunks. See :func:`open_drivers`.
    """
    if recipe.drivers.name != "earthengine":
        raise ValueError(f"recipe {recipe.name!r} has drivers.source {recipe.drivers.name!r}, not 'earthengine'")
    chunks = {"time": 32, **dict(recipe.chunks), **(chunks or {})}
    return open_drivers(
        recipe.grid.lat,
        recipe.grid.lon,
        recipe.period.start,
        recipe.period.end,
        feature_set=recipe.drivers.feature_set,
        project=project or recipe.drivers.project,
        chunks=chunks,
        max_tries=max_tries,
    )


def save_grid(ds: xr.Dataset, path, *, overwrite: bool = False, progress: bool = True) -> Path:
    """Persist an opened grid to Zarr v3, computing chunk by chunk; atomic (write beside, rename)."""
    path = Path(path)
    enc = {"time": {"units": schema.TIME_UNITS, "calendar": "proleptic_gregorian", "dtype": "int32"}}
    enc.update({v: {"fill_value": np.float32("nan")} for v in ds.data_vars})
    with replace_dir(path, overwrite=overwrite, hint="pass --overwrite to replace it") as tmp:
        delayed = ds.to_zarr(tmp, mode="w-", zarr_format=3, consolidated=False, compute=False, encoding=enc)
        progress_compute(delayed, desc=f"writing {path.name}", progress=progress)
    log.info("wrote %s: %s", path, dict(ds.sizes))
    return path


# --------------------------------------------------------------------------- as a recipe's driver source


@register_driver_source
@dataclass(frozen=True)
class EarthEngineDrivers:
    """``drivers: {source: earthengine, project: ..., feature_set: minimal}``: ERA5-Land and
    MOD09GA area-averaged onto the recipe grid server-side and read lazily through xee."""

    name = "earthengine"
    project: str | None = None
    feature_set: str = "minimal"

    @classmethod
    def from_mapping(cls, doc, where: str) -> EarthEngineDrivers:
        d = check_keys(doc, ("project", "feature_set"), where)
        feature_set = str(d.get("feature_set", "minimal"))
        if feature_set not in catalog.FEATURE_SETS:
            raise RecipeError(f"{where}: feature_set is {feature_set!r}; use one of {', '.join(catalog.FEATURE_SETS)}")
        project = d.get("project")
        return cls(project=None if project in (None, "") else str(project), feature_set=feature_set)

    def open(self, grid, days, context, *, chunks, base: Path) -> xr.Dataset:
        days = pd.DatetimeIndex(days)
        return open_drivers(grid.lat, grid.lon, days[0], days[-1], feature_set=self.feature_set, project=self.project,
                            chunks={"time": len(days), **dict(chunks)})
