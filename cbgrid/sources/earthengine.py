"""Earth Engine acquisition: per-site features for the store, driver grids for upscaling.

Sites: for every site and calendar-year chunk, one server-side computation per collection —
MOD09GA (``MODIS/061/MOD09GA``) reflectance, view/sun angles and the ``state_1km`` cloud
fraction averaged over a 2 km × 2 km window centred on the tower, and ERA5-Land daily
aggregates (``ECMWF/ERA5_LAND/DAILY_AGGR``) at the tower's pixel (``method="default"``), or the
CarbonBench reference extraction (``method="reference"``) — cached one file per (source, site,
chunk), and assembled into a store Dataset only when every chunk is present. Chunks that end
within a source's publication latency are cached as provisional and fetched again next run;
coastal towers whose ERA5-Land pixel is ocean fall back to the land pixels of a larger box.

Grids: the same collections aggregated server-side onto a regular lat/lon grid, read through
xee one request per dask chunk (:class:`EarthEngineGrid`); requests are sized by
``cbgrid.sources.earthengine_plan`` and a download survives being killed
(``cbgrid.sources.earthengine_cache``).

Every request goes through the retry rules of ``cbgrid.sources.earthengine_faults`` (transient
failures retried a bounded number of times, deterministic ones fail at once). Nothing here talks
to Earth Engine at import: :func:`initialize` (called by the functions that fetch) sets the
client up with the user's credentials or a service-account key, a client deadline and no
hidden retries; on a dask.distributed cluster every worker does the same
(:func:`init_workers`). Credentials are never written or logged.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import functools
import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from cbgrid import catalog, schema
from cbgrid.atomic import replace_file
from cbgrid.errors import ExistsError, InputError, MissingError, first_line
from cbgrid.progress import bar as progress_bar
from cbgrid.recipe import RecipeError, check_keys
from cbgrid.runtime import require
from cbgrid.sources import earthengine_cache, register_driver_source
from cbgrid.sources.earthengine_faults import (
    CredentialsError,
    EarthEngineError,
    QuotaError,
    RequestTooLargeError,
    RetryPolicy,
    call_with_retries,
    classify,
    is_transient,
)
from cbgrid.sources.earthengine_plan import (
    MAX_PIXELS_PER_CELL,
    MODIS_PIXEL_M,
    PIXELS_PER_REQUEST,
    TILE,
    Plan,
    grid_plan,
    site_plan,
    time_chunks,
    time_pieces,
)

__all__ = [
    "CredentialsError", "EarthEngineError", "QuotaError", "RequestTooLargeError", "RetryPolicy", "call_with_retries",
    "classify", "is_transient", "time_chunks", "Connection", "initialize", "init_workers", "acquire_sites",
    "assemble_sites", "sites_plan", "EarthEngineGrid", "open_drivers", "open_grid", "grid_for_recipe", "save_grid",
    "EarthEngineDrivers",
]

log = logging.getLogger(__name__)

ERA5_LAND = "era5_land"
MODIS = "modis"
SOURCES = (MODIS, ERA5_LAND)
DEFAULT, REFERENCE = "default", "reference"
METHODS = (DEFAULT, REFERENCE)

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
MODIS_SCALE_M = MODIS_PIXEL_M
ERA5_LAND_SCALE_M = 11131.949079327358
#: Half side of the MODIS averaging window around the tower (2 km × 2 km).
WINDOW_HALF_M = 1000.0
#: The reference extraction (CarbonBench scripts/getMOD09GA.py, scripts/getERA5Land.py): a
#: 1 km buffer's bounding box, reduceRegion at 500 m (MODIS) or at 2 km on bilinear-resampled
#: ERA5-Land, bestEffort, maxPixels 1e13.
REFERENCE_BUFFER_M = 1000
REFERENCE_MODIS_SCALE_M = 500
REFERENCE_ERA5_SCALE_M = 2000
REFERENCE_MAX_PIXELS = 1e13
#: Coastal fallback: half sides of the boxes tried, in order, when the tower's ERA5-Land pixel
#: has no value (ocean); the first box holding land pixels gives their mean.
COASTAL_HALF_SIDES_M = (5000.0, 10000.0, 20000.0, 40000.0)
#: First MOD09GA day; days of the latest ``LATENCY_DAYS`` may still be missing or change at the
#: source (ERA5-Land is published about three months behind).
MODIS_FIRST_DAY = pd.Timestamp("2000-02-24")
LATENCY_DAYS = {MODIS: 30, ERA5_LAND: 120}

#: Image properties computed images must keep: xee reads both to build the time axis.
KEEP_PROPERTIES = ("system:id", "system:time_start")

PROJECT_ENV = ("EARTHENGINE_PROJECT", "GOOGLE_CLOUD_PROJECT")
KEY_ENV = "GOOGLE_APPLICATION_CREDENTIALS"
#: Client deadline per HTTP request: a little over the 5-minute limit of interactive requests,
#: so a stalled connection fails (and is retried) instead of blocking a worker forever.
DEADLINE_S = 330.0
#: Runs with at least this many requests print their plan before starting.
LARGE_RUN = 1000
PLUGIN_NAME = "cbgrid-earthengine"

_AUTH_HELP = (
    "Earth Engine is not set up for this user. Run `earthengine authenticate` (or `gcloud auth "
    "application-default login --scopes=https://www.googleapis.com/auth/earthengine,"
    "https://www.googleapis.com/auth/cloud-platform`) once, or pass a service-account key with "
    "--service-account KEY.json (or $GOOGLE_APPLICATION_CREDENTIALS), then give the Cloud project with the "
    "Earth Engine API enabled via --project or the EARTHENGINE_PROJECT environment variable"
)


def _ee():
    try:
        import ee
    except ImportError as e:  # pragma: no cover - earthengine-api is a dependency of the extra
        raise EarthEngineError("earthengine-api is not installed: pip install 'cbgrid[earthengine]'") from e
    return ee


def _today() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC").tz_localize(None).normalize()


# --------------------------------------------------------------------------- setup


def resolve_project(project: str | None = None) -> str | None:
    """The Cloud project: the argument, else $EARTHENGINE_PROJECT, else $GOOGLE_CLOUD_PROJECT."""
    if project:
        return project
    for var in PROJECT_ENV:
        if os.environ.get(var):
            return os.environ[var]
    return None


def service_account_key(path=None) -> Path | None:
    """The service-account key to use: ``path``, else $GOOGLE_APPLICATION_CREDENTIALS when it
    names a service-account key; None for user credentials. Checks the file, never logs it."""
    explicit = path is not None
    if path is None:
        path = os.environ.get(KEY_ENV) or None
        if path is None:
            return None
    path = Path(path).expanduser()
    where = f"--service-account {path}" if explicit else f"${KEY_ENV} ({path})"
    if not path.is_file():
        raise MissingError(f"{where}: no such file; give the JSON key of a service account")
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{where} is not a JSON key file ({type(e).__name__}); give the JSON key of a service "
                         "account (Cloud console: IAM > Service accounts > Keys)") from None
    kind = doc.get("type") if isinstance(doc, dict) else None
    if kind != "service_account":
        if explicit:
            raise InputError(f"{where} is a {kind!r} credentials file, not a service-account key (type "
                             "'service_account'); for user credentials run `earthengine authenticate` instead")
        return None  # application-default user credentials: ee finds them itself
    missing = [k for k in ("client_email", "private_key", "token_uri") if not doc.get(k)]
    if missing:
        raise InputError(f"{where} lacks {', '.join(missing)}; download a fresh key for the service account")
    return path.resolve()


def _key_project(path: Path) -> str | None:
    return json.loads(Path(path).read_text()).get("project_id") or None


@dataclass(frozen=True)
class Connection:
    """How to reach Earth Engine: the Cloud project, a service-account key file (or None for the
    user's own credentials) and the client deadline. Holds a path, never key contents, so it
    travels to dask workers safely; workers must see the key at the same path.

    >>> Connection(project="my-project").project
    'my-project'
    """

    project: str | None = None
    service_account: str | None = None
    deadline_s: float = DEADLINE_S

    @classmethod
    def resolve(cls, project: str | None = None, service_account=None, deadline_s: float = DEADLINE_S) -> Connection:
        """Project from the argument or environment (else the key's own project), key from the
        argument or $GOOGLE_APPLICATION_CREDENTIALS."""
        key = service_account_key(service_account)
        project = resolve_project(project) or (_key_project(key) if key else None)
        return cls(project, str(key) if key else None, float(deadline_s))


_init_lock = threading.Lock()
_initialized: dict = {}


def initialize(project: str | None = None, *, service_account=None, deadline_s: float = DEADLINE_S,
               connection: Connection | None = None) -> str | None:
    """Initialise Earth Engine; return the project used.

    With a service-account key (``service_account`` or $GOOGLE_APPLICATION_CREDENTIALS) the
    credentials are ``ee.ServiceAccountCredentials`` with Earth Engine's scopes; otherwise ``ee``
    finds the user's own. Then the client gets a deadline of ``deadline_s`` per HTTP request and
    no retries of its own (cbgrid's retry rules count every attempt). Raises
    :class:`CredentialsError` saying what to run when credentials or the project are missing.

    >>> initialize(project="my-project")  # doctest: +SKIP
    'my-project'
    """
    conn = connection or Connection.resolve(project, service_account, deadline_s)
    ee = _ee()
    with _init_lock:
        if _initialized.get("connection") == conn and ee.data.is_initialized():
            return conn.project  # e.g. upscaling opens one grid per month

        def init():
            if conn.service_account:
                credentials = ee.ServiceAccountCredentials(None, key_file=conn.service_account)
                ee.Initialize(credentials, project=conn.project)
            else:
                ee.Initialize(project=conn.project)

        try:
            call_with_retries(init, what="ee.Initialize", policy=RetryPolicy(max_tries=3))
        except CredentialsError as e:
            said = first_line(e.__cause__ or e)
            raise CredentialsError(f"{_AUTH_HELP}; Earth Engine said: {said}") from None
        except EarthEngineError as e:
            said = first_line(e.__cause__ or e)
            if re.search(r"project|credentials", said, re.I):
                raise CredentialsError(f"{_AUTH_HELP}; Earth Engine said: {said}") from None
            raise
        ee.data.setMaxRetries(0)
        if conn.deadline_s:
            ee.data.setDeadline(int(conn.deadline_s * 1000))
        _initialized["connection"] = conn
    log.info("Earth Engine initialised (project %s, %s, deadline %g s)", conn.project or "from credentials",
             "service-account key file" if conn.service_account else "user credentials", conn.deadline_s)
    return conn.project


def ensure_initialized(conn: Connection) -> None:
    """Initialise with ``conn`` unless this process already is (a worker's first request)."""
    if _initialized.get("connection") != conn or not _ee().data.is_initialized():
        initialize(connection=conn)


def _worker_setup(conn: Connection) -> None:
    initialize(connection=conn)


@functools.lru_cache(maxsize=1)
def _plugin_class():
    distributed = require("distributed", "Earth Engine on a dask.distributed cluster")

    class EarthEngineInit(distributed.WorkerPlugin):
        """Initialise Earth Engine on a worker when it starts (and on every worker joining later)."""

        def __init__(self, connection: Connection):
            self.connection = connection

        def setup(self, worker):
            _worker_setup(self.connection)

    return EarthEngineInit


def worker_plugin(conn: Connection):
    """A ``distributed.WorkerPlugin`` that initialises Earth Engine with ``conn`` on each worker."""
    return _plugin_class()(conn)


def init_workers(client, conn: Connection) -> None:
    """Make every worker of a dask.distributed ``client``, now and later, initialise Earth Engine.

    >>> init_workers(Client("tcp://scheduler:8786"), Connection.resolve())  # doctest: +SKIP
    """
    client.register_plugin(worker_plugin(conn), name=PLUGIN_NAME)
    log.info("Earth Engine initialisation registered on the cluster's workers (%d now)",
             len(client.scheduler_info().get("workers", {})))


def _active_client():
    """The default dask.distributed client of this process, if one is running."""
    if "distributed" not in sys.modules:
        return None
    try:
        return sys.modules["distributed"].default_client()
    except ValueError:
        return None


# --------------------------------------------------------------------------- catalog


def collection_id(source: str) -> str:
    """The Earth Engine collection of a source ('modis' or 'era5_land'), from the variable catalog."""
    v = catalog.variables()
    ids = v.loc[v["source"] == source, "collection"].unique()
    if len(ids) != 1:
        raise InputError(f"variable catalog has {len(ids)} collections for source {source!r}: {list(ids)}")
    return str(ids[0])


def source_variables(source: str, feature_set: str = "minimal") -> list[str]:
    """Store names fetched from a source for a feature set."""
    if source == ERA5_LAND:
        return catalog.era5_bands(feature_set)
    if source == MODIS:
        return catalog.modis_bands()
    raise InputError(f"unknown Earth Engine source {source!r}; use one of {SOURCES}")


def _scale_offset(names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    v = catalog.variables().loc[list(names)]
    return v["scale"].astype(float).to_numpy(), v["offset"].astype(float).to_numpy()


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise InputError(f"method is {method!r}; use one of {', '.join(METHODS)}")
    return method


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


def modis_image_reference(img):
    """A MOD09GA image as the reference extraction builds it: raw bands, nothing masked, and
    ``clouds`` = ``state_1km`` bit 0 set (cloud states 01 "cloudy" and 11 "not set").

    The reference ORs two more tests, ``bitwiseAnd(2).eq(1)`` and ``bitwiseAnd(4).eq(1)``; a
    value ANDed with 2 or 4 is never 1, so they never add a pixel and are left out.
    """
    ee = _ee()
    clouds = img.select(CLOUD_STATE_BAND).bitwiseAnd(1).eq(1).rename("clouds").toInt16()
    out = img.select(list(REFLECTANCE_BANDS) + list(ANGLE_BANDS)).addBands(clouds)
    return ee.Image(out.copyProperties(img, list(KEEP_PROPERTIES)))


def source_collection(source: str, start, end, feature_set: str = "minimal", method: str = DEFAULT):
    """The source's ImageCollection over [start, end] (days, inclusive), bands = store names."""
    ee = _ee()
    start, end = pd.Timestamp(start), pd.Timestamp(end)
    ic = ee.ImageCollection(collection_id(source)).filterDate(
        start.strftime("%Y-%m-%d"), (end + pd.Timedelta(days=1)).strftime("%Y-%m-%d")
    )
    if source == MODIS:
        return ic.map(modis_image_reference if method == REFERENCE else modis_image)
    return ic.select(source_variables(ERA5_LAND, feature_set))


def window_bounds(lat: float, lon: float, half_m: float = WINDOW_HALF_M) -> tuple[float, float, float, float]:
    """(west, south, east, north) of the square of side ``2 * half_m`` metres centred on a site.

    Uses the WGS84 meridional and prime-vertical radii of curvature at the site's latitude.

    >>> [round(v, 4) for v in window_bounds(0.0, 10.0)]
    [9.991, -0.009, 10.009, 0.009]
    """
    a, e2 = 6378137.0, 6.69437999014e-3
    phi = math.radians(lat)
    w = 1.0 - e2 * math.sin(phi) ** 2
    m_radius = a * (1 - e2) / w**1.5
    n_radius = a / math.sqrt(w)
    dlat = math.degrees(half_m / m_radius)
    dlon = math.degrees(half_m / (n_radius * max(math.cos(phi), 1e-6)))
    return lon - dlon, lat - dlat, lon + dlon, lat + dlat


def site_geometry(source: str, lat: float, lon: float, method: str = DEFAULT, half_m: float | None = None):
    """Where a source is sampled for a site.

    default: the 2 km box (MODIS) or the tower point (ERA5-Land); reference: the bounding box of
    a 1 km buffer around the tower for both; ``half_m``: a box of that half side (the coastal
    fallback).
    """
    ee = _ee()
    if half_m is not None:
        return ee.Geometry.Rectangle(list(window_bounds(lat, lon, half_m)), "EPSG:4326", False)
    if method == REFERENCE:
        return ee.Geometry.Point([lon, lat]).buffer(REFERENCE_BUFFER_M).bounds()
    if source == MODIS:
        return ee.Geometry.Rectangle(list(window_bounds(lat, lon)), "EPSG:4326", False)
    return ee.Geometry.Point([lon, lat])


def site_series(source: str, lat: float, lon: float, start, end, feature_set: str = "minimal", method: str = DEFAULT,
                half_m: float | None = None):
    """FeatureCollection with one feature per image: ``date`` and the source's means at the site."""
    ee = _ee()
    geometry = site_geometry(source, lat, lon, method, half_m)
    if half_m is None and method == REFERENCE:
        scale = REFERENCE_MODIS_SCALE_M if source == MODIS else REFERENCE_ERA5_SCALE_M
        extra = {"bestEffort": True, "maxPixels": REFERENCE_MAX_PIXELS}
    else:
        scale, extra = (MODIS_SCALE_M if source == MODIS else ERA5_LAND_SCALE_M), {}
    bilinear = source == ERA5_LAND and method == REFERENCE and half_m is None

    def reduce(img):
        pixels = img.resample("bilinear") if bilinear else img
        stats = pixels.reduceRegion(reducer=ee.Reducer.mean(), geometry=geometry, scale=scale, **extra)
        return ee.Feature(None, stats).set("date", img.date().format("YYYY-MM-dd"))

    return ee.FeatureCollection(source_collection(source, start, end, feature_set, method).map(reduce))


def features_to_frame(info: dict, names: Sequence[str], *, complete_days: bool = False) -> pd.DataFrame:
    """A FeatureCollection's ``getInfo()`` -> daily table of physical values (catalog scales).

    Masked bands come back missing or null and become NaN; with ``complete_days`` a day missing
    any band is dropped (the reference's rule).
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
    if complete_days:
        df = df.dropna(how="any")
    return df.groupby(level=0).mean().sort_index()


# --------------------------------------------------------------------------- site acquisition


@dataclass(frozen=True)
class Task:
    """One request: a source, a site, a chunk of days, a sampling method."""

    source: str
    site: str
    lat: float
    lon: float
    start: pd.Timestamp
    end: pd.Timestamp
    method: str = DEFAULT

    @property
    def label(self) -> str:
        return f"{self.source} {self.site} {self.start.date()}..{self.end.date()}"

    def _dir(self, cache_dir: Path) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", self.site)
        root = Path(cache_dir) / REFERENCE if self.method == REFERENCE else Path(cache_dir)
        return root / self.source / safe

    def cache_path(self, cache_dir, provisional: bool = False) -> Path:
        tail = ".provisional.csv" if provisional else ".csv"
        return self._dir(cache_dir) / f"{self.start:%Y-%m-%d}_{self.end:%Y-%m-%d}{tail}"

    def sampling_path(self, cache_dir) -> Path:
        return self._dir(cache_dir) / "sampling.json"

    def provisional(self, today: pd.Timestamp) -> bool:
        """Whether the chunk ends within the source's latency (its data may still come or change)."""
        return self.end > today - pd.Timedelta(days=LATENCY_DAYS[self.source])


def _read_frame(path: Path, names: Sequence[str]) -> pd.DataFrame | None:
    if not path.exists():
        return None
    df = pd.read_csv(path, index_col="date", parse_dates=["date"])
    if not set(names) <= set(df.columns):
        return None
    return df[list(names)]


def _read_cached(task: Task, cache_dir, names: Sequence[str], *, final_only: bool = False) -> pd.DataFrame | None:
    """A cached chunk holding every wanted variable (final, else provisional unless ``final_only``)."""
    df = _read_frame(task.cache_path(cache_dir), names)
    if df is None and not final_only:
        df = _read_frame(task.cache_path(cache_dir, provisional=True), names)
    return df


def _write_cached(df: pd.DataFrame, path: Path) -> None:
    with replace_file(path) as tmp:
        df.to_csv(tmp, index_label="date", date_format="%Y-%m-%d")


def _coastal_half_side(task: Task, cache_dir) -> float | None:
    path = task.sampling_path(cache_dir)
    if not path.exists():
        return None
    return float(json.loads(path.read_text())["half_side_m"])


def _fetch(task: Task, feature_set: str, cache_dir: Path, policy: RetryPolicy, today: pd.Timestamp) -> bool:
    """Fetch one chunk into the cache; True if it is provisional."""
    names = source_variables(task.source, feature_set)

    def get(half_m):
        fc = site_series(task.source, task.lat, task.lon, task.start, task.end, feature_set, task.method, half_m)
        what = task.label if half_m is None else f"{task.label} ({2 * half_m / 1000:g} km box)"
        return features_to_frame(call_with_retries(fc.getInfo, what=what, policy=policy), names)

    half = _coastal_half_side(task, cache_dir) if task.source == ERA5_LAND else None
    df = get(half)
    if task.source == ERA5_LAND and half is None and len(df) and df.isna().all().all():
        for half in COASTAL_HALF_SIDES_M:
            alt = get(half)
            if alt.notna().any().any():
                with replace_file(task.sampling_path(cache_dir)) as tmp:
                    tmp.write_text(json.dumps({"half_side_m": half, "why": "no ERA5-Land value at the tower (ocean pixel)"}))
                log.warning("%s: no ERA5-Land value at the tower (ocean pixel); using the mean of the land pixels in a "
                            "%g km box around it", task.site, 2 * half / 1000)
                df = alt
                break
        else:
            log.warning("%s: no ERA5-Land land pixel within %g km of the tower; its ERA5-Land features stay NaN",
                        task.site, COASTAL_HALF_SIDES_M[-1] / 1000)
    if task.method == REFERENCE:
        df = df.dropna(how="any")
    df = df.loc[(df.index >= task.start) & (df.index <= task.end)]
    provisional = task.provisional(today)
    _write_cached(df, task.cache_path(cache_dir, provisional=provisional))
    if not provisional:
        task.cache_path(cache_dir, provisional=True).unlink(missing_ok=True)
    return provisional


def site_tasks(sites: pd.DataFrame, start, end, feature_set: str = "minimal", method: str = DEFAULT) -> list[Task]:
    """Every (source, site, year-chunk) request of a site acquisition."""
    schema.site_coords(sites)  # fail on bad coordinates before any request
    source_variables(ERA5_LAND, feature_set)
    _check_method(method)
    return [
        Task(source, str(row.site), float(row.lat), float(row.lon), a, b, method)
        for row in sites.itertuples(index=False)
        for source in SOURCES
        for a, b in time_chunks(start, end)
    ]


def sites_plan(n_sites: int, start, end, *, feature_set: str = "minimal", workers: int = 10,
               method: str = DEFAULT) -> Plan:
    """The request plan of a site acquisition (no Earth Engine needed).

    >>> sites_plan(474, "2000-01-01", "2024-12-31", feature_set="full").requests
    23700
    """
    bands = {MODIS: catalog.modis_bands(), ERA5_LAND: catalog.era5_bands(feature_set)}
    plan = site_plan(int(n_sites), start, end, bands, workers=workers, method=_check_method(method))
    plan.title += f", {feature_set} features ({len(bands[ERA5_LAND])} ERA5-Land + {len(bands[MODIS])} MODIS), {method} sampling"
    return plan


def acquire_sites(
    sites: pd.DataFrame,
    start,
    end,
    *,
    feature_set: str = "minimal",
    cache_dir,
    project: str | None = None,
    service_account=None,
    workers: int = 10,
    max_tries: int = 6,
    progress: bool = True,
    method: str = DEFAULT,
    today=None,
    policy: RetryPolicy | None = None,
    deadline_s: float = DEADLINE_S,
) -> xr.Dataset:
    """Fetch MODIS and ERA5-Land features for ``sites`` over [start, end]; return the store Dataset.

    Chunks already in ``cache_dir`` are not fetched again, so an interrupted run resumes where
    it stopped; provisional chunks (ending within a source's latency of ``today``) are fetched
    again. If any chunk fails, the others are kept in the cache and :class:`EarthEngineError`
    is raised: no partial Dataset is ever returned.

    >>> ds = acquire_sites(catalog.sites().head(2), "2010-01-01", "2010-12-31", cache_dir="ee-cache")  # doctest: +SKIP
    """
    cache_dir = Path(cache_dir)
    today = _today() if today is None else pd.Timestamp(today).normalize()
    policy = policy or RetryPolicy(max_tries=max_tries)
    tasks = site_tasks(sites, start, end, feature_set, method)
    todo = [t for t in tasks if _read_cached(t, cache_dir, source_variables(t.source, feature_set), final_only=True) is None]
    log.info("%d of %d site chunks cached in %s; %d to fetch", len(tasks) - len(todo), len(tasks), cache_dir, len(todo))
    if todo:
        initialize(project, service_account=service_account, deadline_s=deadline_s)
        _run(todo, feature_set, cache_dir, workers=workers, policy=policy, today=today,
             bar=progress_bar(total=len(todo), desc="Earth Engine site chunks", unit="chunk", progress=progress))
    return assemble_sites(sites, start, end, feature_set=feature_set, cache_dir=cache_dir, method=method)


def _run(todo: list[Task], feature_set: str, cache_dir: Path, *, workers: int, policy: RetryPolicy, today, bar) -> None:
    failed: list[tuple[Task, BaseException]] = []
    provisional = 0
    with bar, concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(_fetch, t, feature_set, cache_dir, policy, today): t for t in todo}
        try:
            for fut in concurrent.futures.as_completed(futures):
                if fut.cancelled():
                    continue
                task = futures[fut]
                err = fut.exception()
                if err is None:
                    provisional += bool(fut.result())
                    bar.set_postfix_str(task.site, refresh=False)
                    bar.update(1)
                    continue
                failed.append((task, err))
                # Stop scheduling: the same cause (quota, permissions) would fail the rest too.
                for f in futures:
                    f.cancel()
        except BaseException:  # Ctrl-C: cancel what has not started; what is cached stays cached
            for f in futures:
                f.cancel()
            raise
    if provisional:
        log.info("%d chunk(s) end within the sources' latency and are cached as provisional; the next run "
                 "fetches them again", provisional)
    if failed:
        task, err = failed[0]
        if not isinstance(err, EarthEngineError):
            err = EarthEngineError(f"{task.label}: {type(err).__name__}: {err}")
        done = sum(1 for f in futures if f.done() and not f.cancelled() and f.exception() is None)
        resume = "" if "re-run" in str(err) else "; re-run the same command to resume"
        raise type(err)(
            f"{err}{resume} ({len(failed)} chunk(s) failed, {done} newly cached; nothing was merged; "
            f"the cache is {cache_dir})"
        ) from err


def assemble_sites(sites: pd.DataFrame, start, end, *, feature_set: str = "minimal", cache_dir,
                   method: str = DEFAULT) -> xr.Dataset:
    """Build the (site, time) Dataset from a complete cache; raise if any chunk is missing."""
    cache_dir = Path(cache_dir)
    days = pd.date_range(pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize(), freq="D")
    tasks = site_tasks(sites, start, end, feature_set, method)
    names = {s: source_variables(s, feature_set) for s in SOURCES}
    data = {n: np.full((len(sites), len(days)), np.nan, dtype=np.float32) for s in SOURCES for n in names[s]}
    row = {str(s): i for i, s in enumerate(sites["site"])}
    missing, coastal = [], set()
    for t in tasks:
        df = _read_cached(t, cache_dir, names[t.source])
        if df is None:
            missing.append(t.label)
            continue
        if t.source == ERA5_LAND and t.sampling_path(cache_dir).exists():
            coastal.add(t.site)
        if df.empty:
            continue
        cols = days.get_indexer(df.index)
        ok = cols >= 0
        for n in names[t.source]:
            data[n][row[t.site], cols[ok]] = df[n].to_numpy(np.float32)[ok]
    if missing:
        raise EarthEngineError(f"{len(missing)} chunk(s) are not in {cache_dir} (first: {missing[0]}); run the acquisition first")
    ds = schema.site_dataset(data, sites, days)
    if method == REFERENCE:
        how = (f"{collection_id(MODIS)} (mean over the 1 km buffer's bounding box at 500 m, clouds = state_1km bit 0), "
               f"{collection_id(ERA5_LAND)} (bilinear, mean over the same box at 2 km); days missing a band dropped")
    else:
        how = (f"{collection_id(MODIS)} (2 km x 2 km window mean), {collection_id(ERA5_LAND)} (tower pixel)")
    ds.attrs.update(source=f"Google Earth Engine: {how}", feature_set=feature_set, sampling=method)
    if coastal:
        ds.attrs["era5_land_coastal_fallback"] = ", ".join(sorted(coastal))
    return ds


# --------------------------------------------------------------------------- grids (xee)


def grid_transform(lat, lon) -> tuple[tuple[float, ...], tuple[int, int]]:
    """xee's ``crs_transform`` (north-up, EPSG:4326) and ``shape_2d`` (width, height) of a grid.

    ``lat``/``lon`` are ascending, regularly spaced cell centres with equal spacing.

    >>> grid_transform([0.5, 1.5], [10.5, 11.5, 12.5])
    ((1.0, 0.0, 10.0, 0.0, -1.0, 2.0), (3, 2))
    """
    lat, lon = np.asarray(lat, dtype=float), np.asarray(lon, dtype=float)
    if lat.size < 1 or lon.size < 1:
        raise InputError("the grid needs at least one latitude and one longitude")
    steps = np.concatenate([np.diff(lat), np.diff(lon)])
    res = float(steps[0]) if steps.size else 1.0
    if steps.size and (res <= 0 or not np.allclose(steps, res, rtol=0, atol=1e-9 * max(1.0, abs(res)))):
        raise InputError(
            f"Earth Engine grids must be regular, ascending and square: lat steps {np.unique(np.diff(lat))[:5]}, "
            f"lon steps {np.unique(np.diff(lon))[:5]}"
        )
    transform = (res, 0.0, float(lon[0] - res / 2), 0.0, -res, float(lat[-1] + res / 2))
    return transform, (int(lon.size), int(lat.size))


def grid_collection(source: str, start, end, *, feature_set: str = "minimal", crs: str = "EPSG:4326", crs_transform):
    """The source's images over [start, end], area-averaged server-side onto the output grid.

    ``reduceResolution(mean)`` + ``reproject`` weights every input pixel by its overlap with
    the output cell, so MODIS pixels become cell means (and ``clouds`` the cloudy fraction of the
    cell) rather than one nearest-neighbour sample, and ERA5-Land is averaged where the output
    grid is offset from or coarser than its 0.1° grid. ``maxPixels`` bounds the inputs per cell
    (``bestEffort`` reads a coarser pyramid level beyond it: see ``earthengine_plan``).
    """
    ee = _ee()

    def to_grid(img):
        out = img.reduceResolution(reducer=ee.Reducer.mean(), bestEffort=True, maxPixels=MAX_PIXELS_PER_CELL)
        out = out.reproject(crs=crs, crsTransform=list(crs_transform))
        return ee.Image(out.copyProperties(img, list(KEEP_PROPERTIES)))

    return source_collection(source, start, end, feature_set).map(to_grid)


def image_days(ds: xr.Dataset, start, end) -> np.ndarray:
    """Day index (from ``start``) of each image xee opened; -1 for duplicates and days outside."""
    if not np.issubdtype(ds["time"].dtype, np.datetime64):
        raise EarthEngineError(
            "xee could not read the images' system:time_start (time came back as an index); "
            "the collection's images must keep their system:id and system:time_start properties"
        )
    start, end = pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize()
    t = pd.DatetimeIndex(ds.indexes["time"]).normalize()
    day = np.asarray((t - start).days, dtype=np.int64)
    day[t.duplicated() | (t < start) | (t > end)] = -1
    return day


@dataclass
class _Piece:
    """One opened collection piece: the lazy xee Dataset (None when empty) and its images' days."""

    offset: int
    days: int
    data: xr.Dataset | None = None
    image_day: np.ndarray | None = None
    provisional: bool = False


class EarthEngineGrid:
    """ERA5-Land and MOD09GA on a regular lat/lon grid, one Earth Engine request per chunk.

    Chunks (time x lat x lon, per source) are the requests the plan sizes
    (``earthengine_plan.grid_plan``); the collections are opened through xee (metadata only)
    on :meth:`open` or the first :meth:`fetch`, one piece of at most 366 days at a time, and a
    piece known to be empty (MODIS before 2000-02-24, the latest months) costs no pixel request.
    :meth:`dataset` is the lazy (dask) grid; ``earthengine_cache.download`` writes it
    chunk by chunk, resumably. Pickles without its opened pieces: a dask worker opens them
    itself after initialising Earth Engine with the grid's :class:`Connection`.

    >>> g = EarthEngineGrid(np.arange(35.05, 71, 0.1), np.arange(-10.95, 32, 0.1), "2021-01-01", "2021-12-31")
    >>> g.plan.requests
    2088
    """

    def __init__(self, lat, lon, start, end, *, feature_set: str = "minimal", connection: Connection | None = None,
                 policy: RetryPolicy | None = None, workers: int = 8, max_days: int | None = None,
                 tile: int = TILE, pixels_per_request: float = PIXELS_PER_REQUEST, today=None):
        self.lat, self.lon = np.asarray(lat, dtype=float), np.asarray(lon, dtype=float)
        self.transform, self.shape_2d = grid_transform(self.lat, self.lon)
        self.days = pd.date_range(pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize(), freq="D")
        if len(self.days) == 0:
            raise InputError(f"end {pd.Timestamp(end).date()} is before start {pd.Timestamp(start).date()}")
        self.feature_set = feature_set
        self.connection = connection or Connection()
        self.policy = policy or RetryPolicy()
        self.today = _today() if today is None else pd.Timestamp(today).normalize()
        self.names = {s: source_variables(s, feature_set) for s in (ERA5_LAND, MODIS)}
        self.source_of = {n: s for s, names in self.names.items() for n in names}
        self.collections = {s: collection_id(s) for s in self.names}
        self.scales = {n: (float(a), float(b)) for names in self.names.values() for n, a, b in zip(names, *_scale_offset(names))}
        self.plan, self.chunks = grid_plan(self.lat, self.lon, self.days[0], self.days[-1],
                                           {s: len(v) for s, v in self.names.items()}, workers=workers,
                                           max_days=max_days, tile=tile, pixels_per_request=pixels_per_request)
        self.bounds = {s: time_pieces(self.days[0], self.days[-1], c.days) for s, c in self.chunks.items()}
        self._pieces: dict[str, list[_Piece]] | None = None
        self._lock = threading.Lock()
        self._template: xr.Dataset | None = None

    # pickling: no opened xee objects, no lock
    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_pieces=None, _lock=None, _template=None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- opening

    def open(self) -> EarthEngineGrid:
        """Initialise Earth Engine and open every piece's collection through xee (metadata only)."""
        with self._lock:
            if self._pieces is not None:
                return self
            if importlib.util.find_spec("xee") is None:
                raise EarthEngineError("xee is not installed: pip install 'cbgrid[earthengine]'")
            ensure_initialized(self.connection)
            self._pieces = {s: [self._open_piece(s, a, b) for a, b in self.bounds[s]] for s in self.chunks}
        return self

    def _open_piece(self, source: str, a: pd.Timestamp, b: pd.Timestamp) -> _Piece:
        piece = _Piece(offset=(a - self.days[0]).days, days=(b - a).days + 1,
                       provisional=b > self.today - pd.Timedelta(days=LATENCY_DAYS[source]))
        cid = collection_id(source)
        if source == MODIS and b < MODIS_FIRST_DAY:
            log.info("%s has no images before %s: %s..%s is empty", cid, MODIS_FIRST_DAY.date(), a.date(), b.date())
            return piece
        c = self.chunks[source]
        ic = grid_collection(source, a, b, feature_set=self.feature_set, crs_transform=self.transform)
        if piece.provisional or (source == MODIS and a < MODIS_FIRST_DAY):
            n = call_with_retries(lambda: ic.size().getInfo(), what=f"counting {cid} images {a.date()}..{b.date()}",
                                  policy=self.policy)
            if not n:
                log.info("%s has no images for %s..%s yet: left empty (provisional)", cid, a.date(), b.date())
                return piece
        kwargs = dict(engine="ee", crs="EPSG:4326", crs_transform=self.transform, shape_2d=self.shape_2d,
                      io_chunks={"index": c.days, "width": c.width, "height": c.height},
                      getitem_kwargs={"max_retries": 0})
        ds = call_with_retries(lambda: xr.open_dataset(ic, **kwargs), what=f"opening {cid} {a.date()}..{b.date()}",
                               policy=self.policy)
        names = self.names[source]
        missing = sorted(set(names) - set(ds.data_vars))
        if missing:
            raise EarthEngineError(f"{cid} opened without band(s) {missing} ({a.date()}..{b.date()})")
        y, x = ds["y"].values, ds["x"].values
        if y.size != self.lat.size or x.size != self.lon.size:
            raise EarthEngineError(f"xee returned a {y.size} x {x.size} grid; expected {self.lat.size} x {self.lon.size}")
        for name, got, want in (("lat", y[::-1], self.lat), ("lon", x, self.lon)):
            if not np.allclose(got, want, rtol=0, atol=1e-6):
                i = int(np.argmax(np.abs(got - want)))
                raise EarthEngineError(f"xee {name} {got[i]} differs from the grid's {want[i]} at index {i}")
        piece.data, piece.image_day = ds[names], image_days(ds, a, b)
        return piece

    def _piece(self, source: str, day: int) -> _Piece:
        self.open()
        pieces = self._pieces[source]
        i = bisect.bisect_right([p.offset for p in pieces], day) - 1
        return pieces[i]

    # ---------------------------------------------------------------- the BlockSource contract

    def key(self) -> str:
        """A short name for this request (period, features, a hash of the rest)."""
        digest = hashlib.sha1(json.dumps(self.signature(), sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.days[0]:%Y%m%d}-{self.days[-1]:%Y%m%d}-{self.feature_set}-{digest}"

    def signature(self) -> dict:
        def axis(v):
            return [round(float(v[0]), 9), round(float(v[1] - v[0]) if v.size > 1 else 0.0, 12), int(v.size)]

        return {"lat": axis(self.lat), "lon": axis(self.lon), "start": str(self.days[0].date()),
                "end": str(self.days[-1].date()), "feature_set": self.feature_set, "version": 1,
                "chunks": {s: [c.days, c.height, c.width, c.level] for s, c in sorted(self.chunks.items())}}

    def _chunks(self, source: str) -> tuple[tuple[int, ...], ...]:
        c = self.chunks[source]

        def split(n, step):
            return tuple(min(step, n - i) for i in range(0, n, step))

        return split(len(self.days), c.days), split(self.lat.size, c.height), split(self.lon.size, c.width)

    def blocks(self, var: str):
        return list(np.ndindex(*(len(c) for c in self._chunks(self.source_of[var]))))

    def region(self, var: str, idx) -> tuple[slice, ...]:
        c = self.chunks[self.source_of[var]]
        sizes = (len(self.days), self.lat.size, self.lon.size)
        steps = (c.days, c.height, c.width)
        return tuple(slice(i * s, min((i + 1) * s, n)) for i, s, n in zip(idx, steps, sizes))

    def provisional(self, var: str, idx) -> bool:
        source = self.source_of[var]
        t = self.region(var, idx)[0]
        last = self.days[t.stop - 1]
        return bool(last > self.today - pd.Timedelta(days=LATENCY_DAYS[source]))

    def fetch(self, var: str, idx) -> np.ndarray:
        """One chunk of ``var``: (days, lat ascending, lon) float32 in store units; NaN where no data."""
        source = self.source_of[var]
        t, rows, cols = self.region(var, idx)
        out = np.full((t.stop - t.start, rows.stop - rows.start, cols.stop - cols.start), np.nan, dtype=np.float32)
        piece = self._piece(source, t.start)
        if piece.data is None:
            return out
        l0, l1 = t.start - piece.offset, t.stop - piece.offset
        sel = np.flatnonzero((piece.image_day >= l0) & (piece.image_day < l1))
        if sel.size == 0:
            return out  # no image on these days: no request
        i0, i1 = int(sel[0]), int(sel[-1]) + 1
        y0, y1 = self.lat.size - rows.stop, self.lat.size - rows.start  # xee rows run north to south
        band = piece.data[var]
        what = (f"{self.collections[source]} {var} {self.days[t.start].date()}..{self.days[t.stop - 1].date()} "
                f"lat {self.lat[rows.start]:g}..{self.lat[rows.stop - 1]:g} lon {self.lon[cols.start]:g}..{self.lon[cols.stop - 1]:g}")
        ensure_initialized(self.connection)
        raw = call_with_retries(lambda: np.asarray(band[i0:i1, y0:y1, cols.start:cols.stop].values),
                                what=what, policy=self.policy)
        days = piece.image_day[i0:i1]
        keep = (days >= l0) & (days < l1)
        out[days[keep] - l0] = raw[keep][:, ::-1, :]
        scale, offset = self.scales[var]
        if scale != 1 or offset != 0:
            out = (out * scale + offset).astype(np.float32)
        return out

    def template(self) -> xr.Dataset:
        if self._template is None:
            self._template = self.dataset()
        return self._template

    # ---------------------------------------------------------------- the lazy grid

    def dataset(self) -> xr.Dataset:
        """The grid as a lazy Dataset: dims (time, lat, lon), lat ascending, store names, units and
        attributes, float32 dask arrays whose every chunk is one :meth:`fetch`."""
        token = tokenize(json.dumps(self.signature(), sort_keys=True), self.connection)
        ref = f"earthengine-grid-{token}"
        out = {}
        for var in catalog.features(self.feature_set):
            name = f"earthengine-{var}-{token}"
            chunks = self._chunks(self.source_of[var])
            dsk = {ref: self}
            for idx in np.ndindex(*(len(c) for c in chunks)):
                dsk[(name, *idx)] = (_fetch_block, ref, var, idx)
            arr = da.Array(HighLevelGraph.from_collections(name, dsk, dependencies=()), name, chunks, dtype=np.float32)
            out[var] = xr.DataArray(arr, dims=("time", "lat", "lon"), attrs=schema.variable_attrs(var))
        ds = xr.Dataset(out, coords={
            "time": ("time", self.days.values.astype("datetime64[ns]"), {"standard_name": "time", "axis": "T"}),
            "lat": ("lat", self.lat, schema.lat_attrs("latitude of cell centre", axis=True)),
            "lon": ("lon", self.lon, schema.lon_attrs("longitude of cell centre", axis=True)),
        })
        ds.attrs.update(
            Conventions="CF-1.8",
            source=f"Google Earth Engine via xee: {collection_id(ERA5_LAND)}, {collection_id(MODIS)} "
            "(area-weighted means on the grid)",
            feature_set=self.feature_set,
        )
        return ds


def _fetch_block(grid: EarthEngineGrid, var: str, idx) -> np.ndarray:
    return grid.fetch(var, idx)


def open_drivers(lat, lon, start, end, *, feature_set: str = "minimal", project: str | None = None,
                 service_account=None, chunks: dict | None = None, max_tries: int = 6, workers: int = 8) -> xr.Dataset:
    """Open ERA5-Land and MOD09GA drivers lazily through xee on a regular lat/lon grid.

    Returns dims (time, lat, lon): daily ``time`` over [start, end], ``lat`` ascending cell
    centres equal to ``lat``, ``lon`` equal to ``lon``; one float32 dask variable per feature of
    ``feature_set``, named and unitised as in the store. Each dask chunk is one Earth Engine
    request, sized by the plan (``chunks`` keys time, lat, lon cap it), retried up to
    ``max_tries`` attempts on transient failures.

    >>> ds = open_drivers(np.arange(40.05, 41, 0.1), np.arange(10.05, 11, 0.1), "2021-01-01", "2021-12-31")  # doctest: +SKIP
    """
    chunks = dict(chunks or {})
    tile = min(int(chunks.get("lat", TILE)), int(chunks.get("lon", TILE)))
    grid = EarthEngineGrid(lat, lon, start, end, feature_set=feature_set, workers=workers,
                           connection=Connection.resolve(project, service_account),
                           policy=RetryPolicy(max_tries=max_tries), max_days=chunks.get("time"), tile=tile)
    return grid.open().dataset()


def grid_for_recipe(recipe, *, project: str | None = None, service_account=None, chunks: dict | None = None,
                    max_tries: int = 6, workers: int = 8, pixels_per_request: float = PIXELS_PER_REQUEST,
                    deadline_s: float = DEADLINE_S) -> EarthEngineGrid:
    """The :class:`EarthEngineGrid` of a product recipe (source 'earthengine'); nothing is fetched.

    The project comes from ``project``, else ``drivers.project``, else $EARTHENGINE_PROJECT; the
    key from ``service_account``, else ``drivers.service_account``, else the environment.
    """
    if recipe.drivers.name != "earthengine":
        raise InputError(f"recipe {recipe.name!r} has drivers.source {recipe.drivers.name!r}, not 'earthengine'")
    chunks = dict(chunks or {})
    tile = min(int(chunks.get("lat", TILE)), int(chunks.get("lon", TILE)))
    key = service_account or _relative(recipe.base, recipe.drivers.service_account)
    conn = Connection.resolve(project or recipe.drivers.project, key, deadline_s)
    return EarthEngineGrid(recipe.grid.lat, recipe.grid.lon, recipe.period.start, recipe.period.end,
                           feature_set=recipe.drivers.feature_set, connection=conn,
                           policy=RetryPolicy(max_tries=max_tries), workers=workers, max_days=chunks.get("time"),
                           tile=tile, pixels_per_request=pixels_per_request)


def open_grid(recipe, *, project: str | None = None, chunks: dict | None = None, max_tries: int = 6) -> xr.Dataset:
    """Open the driver grids of a product recipe (source 'earthengine') lazily through xee.

    Uses the recipe's grid (region, resolution), period and ``drivers.feature_set``. See
    :func:`open_drivers` and :func:`grid_for_recipe`.

    >>> ds = open_grid(load_recipe("products/earthengine-europe.yaml"))  # doctest: +SKIP
    """
    return grid_for_recipe(recipe, project=project, chunks=chunks, max_tries=max_tries).open().dataset()


def save_grid(grid: EarthEngineGrid, path, *, overwrite: bool = False, workers: int = 8, progress: bool = True) -> Path:
    """Download a grid to Zarr v3 at ``path``, resumably: blocks go into ``.NAME.partial`` beside
    it (a killed run re-run with the same arguments fetches only what is missing), then the
    finished store is renamed into place.

    >>> save_grid(grid_for_recipe(load_recipe("products/earthengine-europe.yaml")), "drivers.zarr")  # doctest: +SKIP
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ExistsError(f"{path} exists; pass --overwrite to replace it")
    folder = path.with_name(f".{path.name}.partial")
    counts = earthengine_cache.download(grid, folder, workers=workers, progress=progress, what=path.name)
    if counts["provisional"]:
        log.warning("%d block(s) of %s end within the sources' latency: their data may still change at the source",
                    counts["provisional"], path)
    earthengine_cache.finish(folder, path, overwrite=overwrite)
    log.info("wrote %s: %d blocks (%d fetched now, %d from an earlier run)", path, counts["blocks"],
             counts["fetched"], counts["cached"])
    return path


# --------------------------------------------------------------------------- as a recipe's driver source


def _relative(base, path) -> str | None:
    if path in (None, ""):
        return None
    p = Path(str(path)).expanduser()
    return str(p if p.is_absolute() else Path(base) / p)


@register_driver_source
@dataclass(frozen=True)
class EarthEngineDrivers:
    """``drivers: {source: earthengine, project: ..., feature_set: minimal, service_account: KEY.json,
    cache: DIR, workers: 8}``: ERA5-Land and MOD09GA area-averaged onto the recipe grid
    server-side and read through xee.

    With ``cache`` (a folder, relative to the recipe's) every period piece is downloaded there
    first, block by block, so a killed ``cbgrid upscale`` re-run resumes from what it had; on a
    dask.distributed cluster the folder must be readable by the workers. Without it the blocks
    stream straight into the inference. On a cluster every worker initialises Earth Engine itself.
    """

    name = "earthengine"
    project: str | None = None
    feature_set: str = "minimal"
    service_account: str | None = None
    cache: str | None = None
    workers: int = 8

    @classmethod
    def from_mapping(cls, doc, where: str) -> EarthEngineDrivers:
        d = check_keys(doc, ("project", "feature_set", "service_account", "cache", "workers"), where)
        feature_set = str(d.get("feature_set", "minimal"))
        if feature_set not in catalog.FEATURE_SETS:
            raise RecipeError(f"{where}: feature_set is {feature_set!r}; use one of {', '.join(catalog.FEATURE_SETS)}")
        workers = d.get("workers", 8)
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise RecipeError(f"{where}: workers is {workers!r}; it must be a whole number of concurrent requests >= 1")

        def opt(key):
            v = d.get(key)
            return None if v in (None, "") else str(v)

        return cls(project=opt("project"), feature_set=feature_set, service_account=opt("service_account"),
                   cache=opt("cache"), workers=workers)

    def open(self, grid, days, context, *, chunks, base: Path) -> xr.Dataset:
        days = pd.DatetimeIndex(days)
        conn = Connection.resolve(self.project, _relative(base, self.service_account))
        client = _active_client()
        if client is not None:
            init_workers(client, conn)
        g = EarthEngineGrid(grid.lat, grid.lon, days[0], days[-1], feature_set=self.feature_set, connection=conn,
                            workers=self.workers)
        if g.plan.requests >= LARGE_RUN:
            log.info("%s", g.plan.describe())
        if self.cache is None:
            return g.open().dataset()
        folder = Path(_relative(base, self.cache)) / g.key()
        earthengine_cache.download(g, folder, workers=self.workers, what=f"drivers {days[0].date()}..{days[-1].date()}")
        return xr.open_zarr(folder / earthengine_cache.STORE, consolidated=False)
