"""Stand-ins for Earth Engine at two boundaries, raising what the real clients raise.

1. ``make_module(world)``: a small evaluating stand-in for the ``ee`` module (and
   ``fake_open_dataset`` for xee's backend). Images are functions of a sampling context (a site
   window, a point, a box or a grid) that return per-band pixel arrays with masks; the image
   methods cbgrid uses compute on those arrays, so the server-side expressions cbgrid builds
   are really evaluated. Every request is counted per kind in ``World.requests`` and logged in
   ``World.calls``; ``World.faults[kind][n]`` makes the n-th request of a kind fail with a
   :class:`Fault`, which raises the exact exception types and chains of the real stack
   (``ee.ee_exception.EEException`` raised while handling a ``googleapiclient`` ``HttpError``,
   the built-in ``ConnectionError``/``TimeoutError`` ``ee``'s transport makes of ``requests``
   failures, ``google.auth`` ``TransportError``/``RefreshError``), or stalls until the client
   deadline the code set.
2. ``OfflineHTTP``: Earth Engine's and Google's OAuth endpoints answered locally, installed in
   ``requests``' transport adapter, for the real ``ee`` client: discovery document and algorithm
   list (the ones earthengine-api ships for its own tests), the service-account token exchange
   (the JWT is verified with the key's public half), ``value:compute`` with recorded answers;
   faults as HTTP statuses, ``requests`` connection errors, or a real stall on a local socket.

Pixel values come from :meth:`World.pixels`, documented formulas in raw MOD09GA digital numbers
and ERA5-Land units, so tests can compute expected values independently with numpy.

``python fake_ee.py WORLD.json -- CLI ARGS`` runs ``cbgrid`` with the fake in place (the kill and
resume test starts it as a real subprocess).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import types
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from ee.ee_exception import EEException  # the real exception class
from ee.oauth import SCOPES as EE_SCOPES  # the scopes ee.ServiceAccountCredentials asks for

MODIS_ID = "MODIS/061/MOD09GA"
ERA5_ID = "ECMWF/ERA5_LAND/DAILY_AGGR"
MODIS_FIRST_DAY = pd.Timestamp("2000-02-24")
#: Day-of-year with no MOD09GA image (tests that missing days become NaN).
MODIS_MISSING_DOY = 45
WINDOW = (4, 4)  # 500 m pixels in the 2 km box
STATE_PATTERN = np.array([0, 1, 2, 3, 5, 513, 6])  # cloudy (bits 0-1 == 01): 1, 5, 513; bit 0 set: 1, 3, 5, 513
REFL_FILL, ANGLE_FILL = -28672, -32767
ANGLES = ("SensorZenith", "SensorAzimuth", "SolarZenith", "SolarAzimuth")
ERA5_STEP = 0.1


# --------------------------------------------------------------------------- faults


@dataclass
class Fault:
    """One failure of a request, raised the way the real client stack raises it.

    kinds: ``http`` (status, message: ``EEException(message)`` raised while handling a
    ``googleapiclient.errors.HttpError`` with that status, as ``ee.data`` does), ``ee``
    (``EEException(message)``), ``connection`` / ``timeout`` (``ee``'s transport: the built-in
    ``ConnectionError``/``TimeoutError`` wrapping ``requests``' own), ``transport``
    (``google.auth.exceptions.TransportError``), ``refresh`` (``RefreshError``, ``retryable``),
    ``stall`` (blocks until the client deadline set with ``ee.data.setDeadline``, then the
    ``TimeoutError`` the transport raises; a test error if no deadline was set).
    """

    kind: str
    message: str = ""
    status: int | None = None
    retryable: bool = False

    def raise_(self, world=None):
        import requests

        if self.kind == "http":
            import httplib2
            from googleapiclient.errors import HttpError

            body = json.dumps({"error": {"code": self.status, "message": self.message, "status": "UNAVAILABLE"}})
            try:
                raise HttpError(httplib2.Response({"status": self.status}), body.encode(),
                                uri="https://earthengine.googleapis.com/v1/projects/p/value:compute")
            except HttpError as e:
                raise EEException(e._get_reason())  # noqa: B904 - ee.data raises it exactly so
        if self.kind == "ee":
            raise EEException(self.message)
        if self.kind == "connection":
            inner = requests.exceptions.ConnectionError(self.message or "Connection aborted: RemoteDisconnected")
            raise ConnectionError(inner) from inner
        if self.kind == "timeout":
            inner = requests.exceptions.ReadTimeout(self.message or "Read timed out. (read timeout=330.0)")
            raise TimeoutError(inner) from inner
        if self.kind == "transport":
            from google.auth.exceptions import TransportError

            raise TransportError(self.message or "Failed to retrieve https://oauth2.googleapis.com/token")
        if self.kind == "refresh":
            from google.auth.exceptions import RefreshError

            raise RefreshError(self.message or "invalid_grant: Invalid JWT Signature.", retryable=self.retryable)
        if self.kind == "stall":
            deadline = world.deadline_ms if world is not None else 0
            if not deadline:
                raise AssertionError("a request stalled and no client deadline was set: it would block forever")
            time.sleep(deadline / 1000)
            inner = requests.exceptions.ReadTimeout(f"Read timed out. (read timeout={deadline / 1000})")
            raise TimeoutError(inner) from inner
        raise ValueError(f"unknown fault kind {self.kind!r}")


#: The faults of issue 13, as the real clients produce them.
QUOTA = Fault("http", "Earth Engine compute quota exceeded: EECU time per day limit reached for project p.", 429)
MEMORY = Fault("http", "User memory limit exceeded.", 400)
COMPUTE_TIMEOUT = Fault("http", "Computation timed out.", 400)
UNAVAILABLE = Fault("http", "The service is currently unavailable.", 503)
BAD_GATEWAY = Fault("http", "Bad Gateway", 502)
RATE = Fault("http", "Too many concurrent aggregations.", 429)
CONNECTION = Fault("connection")
TIMEOUT = Fault("timeout")
TOKEN_TRANSPORT = Fault("transport")
TOKEN_REFRESH = Fault("refresh", "invalid_grant: Invalid JWT Signature.")
BAD_BAND = Fault("ee", "Image.select: Pattern 'x' did not match any bands.")
STALL = Fault("stall")


# --------------------------------------------------------------------------- the world


@dataclass
class Ctx:
    """Where an image is evaluated: cell-centre lat/lon arrays of one shape."""

    lat: np.ndarray
    lon: np.ndarray

    @property
    def shape(self):
        return self.lat.shape


def window_ctx(lat, lon, shape=WINDOW) -> Ctx:
    return Ctx(np.full(shape, float(lat)), np.full(shape, float(lon)))


def box_ctx(west, south, east, north, step=ERA5_STEP) -> Ctx:
    """ERA5-Land pixel centres inside a box (at least the one nearest its centre)."""
    lats = np.arange(np.ceil(south / step) * step, north + 1e-9, step) if north - south >= step else np.array([(south + north) / 2])
    lons = np.arange(np.ceil(west / step) * step, east + 1e-9, step) if east - west >= step else np.array([(west + east) / 2])
    la, lo = np.meshgrid(lats, lons, indexing="ij")
    return Ctx(la, lo)


def grid_ctx(transform, shape_2d) -> Ctx:
    a, _, c, _, e, f = transform
    w, h = shape_2d
    lon = c + a * (np.arange(w) + 0.5)
    lat = f + e * (np.arange(h) + 0.5)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    return Ctx(la, lo)


@dataclass
class World:
    """Pixels, the request log, and injected failures."""

    credentials: bool = True
    calls: list = field(default_factory=list)
    #: request kind ('getInfo', 'size', 'open', 'computePixels') -> {n (1-based): Fault}
    faults: dict = field(default_factory=dict)
    requests: dict = field(default_factory=dict)
    initialized_with: list = field(default_factory=list)
    #: ERA5-Land pixels are ocean (masked) where this returns True for (lat, lon) arrays
    ocean: object = None
    #: (collection, band, day) masked everywhere (the band has no value that day)
    masked: set = field(default_factory=set)
    #: ERA5-Land images exist up to this day (its publication lag)
    era5_last_day: pd.Timestamp | None = None
    #: seconds each pixel request takes (lets a subprocess be killed mid-grid)
    pixel_delay: float = 0.0
    #: append one line per pixel request to this file (read by the kill-and-resume test)
    request_log: str | None = None
    deadline_ms: float = 0
    max_retries: int | None = None
    service_accounts: list = field(default_factory=list)

    def __post_init__(self):
        self.lock = threading.Lock()

    def log(self, *entry):
        with self.lock:
            self.calls.append(entry)

    @property
    def getinfo_calls(self) -> int:
        return self.requests.get("getInfo", 0)

    def request(self, kind: str, what=None):
        """Count a request of ``kind``; raise the fault injected for its number, if any."""
        with self.lock:
            n = self.requests.get(kind, 0) + 1
            self.requests[kind] = n
            fault = self.faults.get(kind, {}).pop(n, None)
        self.log(kind, what)
        if fault is not None:
            fault.raise_(self)

    def available(self, cid: str, day: pd.Timestamp) -> bool:
        if cid == MODIS_ID:
            return day >= MODIS_FIRST_DAY and day.day_of_year != MODIS_MISSING_DOY
        return self.era5_last_day is None or day <= self.era5_last_day

    def pixels(self, cid: str, band: str, day: pd.Timestamp, ctx: Ctx) -> tuple[np.ndarray, np.ndarray]:
        """Raw pixel values and validity mask of one band of one image."""
        doy = day.day_of_year
        k = np.arange(ctx.lat.size).reshape(ctx.shape)
        lat, lon = ctx.lat, ctx.lon
        mask = np.ones(ctx.shape, dtype=bool)
        if cid == MODIS_ID:
            if band.startswith("sur_refl_b0"):
                i = int(band[-1])
                v = 500.0 * i + doy + np.round(lat * 10) + 3 * k
                v = np.where(k % 7 == 0, REFL_FILL, v)
            elif band in ANGLES:
                i = ANGLES.index(band) + 1
                v = (1000.0 * i + doy + 2 * k) * (-1 if "Azimuth" in band else 1)
                v = np.where(k % 5 == 4, ANGLE_FILL, v)
            elif band == "state_1km":
                v = STATE_PATTERN[(k + doy) % STATE_PATTERN.size].astype(float)
            elif band == "QC_500m":
                v = np.zeros(ctx.shape)
            else:
                raise EEException(f"Image.select: Pattern '{band}' did not match any bands.")
        elif cid == ERA5_ID:
            v = 250.0 + 0.1 * doy + lat + 0.01 * lon + (sum(map(ord, band)) % 97)
            if self.ocean is not None:
                mask &= ~np.asarray(self.ocean(lat, lon), dtype=bool)
        else:
            raise EEException(f"ImageCollection.load: ImageCollection asset '{cid}' not found.")
        if (cid, band, day) in self.masked:
            mask[:] = False
        return np.asarray(v, dtype=float), mask


# --------------------------------------------------------------------------- objects


class _LazyBands(Mapping):
    """Band name -> pixels, computed on first access (an image's unselected bands cost nothing)."""

    def __init__(self, names, compute):
        self.names, self.compute, self.done = list(names), compute, {}

    def __getitem__(self, name):
        if name not in self.names:
            raise KeyError(name)
        if name not in self.done:
            self.done[name] = self.compute(name)
        return self.done[name]

    def __iter__(self):
        return iter(self.names)

    def __len__(self):
        return len(self.names)


class Reducer:
    def __init__(self, name):
        self.name = name

    @staticmethod
    def mean():
        return Reducer("mean")


class Geometry:
    def __init__(self, kind, coords, proj=None, geodesic=None, ops=()):
        self.kind, self.coords, self.proj, self.geodesic = kind, list(coords), proj, geodesic
        self.ops = tuple(ops)

    @classmethod
    def Point(cls, coords, proj=None):
        return cls("Point", coords, proj)

    @classmethod
    def Rectangle(cls, coords, proj=None, geodesic=None):
        return cls("Rectangle", coords, proj, geodesic)

    def buffer(self, distance):
        return Geometry("Buffer", self.coords, self.proj, None, self.ops + (("buffer", distance),))

    def bounds(self):
        """The buffer's bounding box (a spherical approximation, enough for the fake)."""
        assert self.kind == "Buffer", self.kind
        lon, lat = self.coords
        r = self.ops[-1][1]
        dlat = np.degrees(r / 6371008.8)
        dlon = dlat / max(np.cos(np.radians(lat)), 1e-6)
        return Geometry("Bounds", [lon - dlon, lat - dlat, lon + dlon, lat + dlat], None, None, self.ops + (("bounds",),))

    def centre(self):
        if self.kind == "Point":
            return self.coords[1], self.coords[0]
        w, s, e, n = self.coords
        return (s + n) / 2, (w + e) / 2


class Date:
    def __init__(self, ts):
        self.ts = pd.Timestamp(ts)

    def format(self, fmt):
        assert fmt == "YYYY-MM-dd", fmt
        return self.ts.strftime("%Y-%m-%d")


class Image:
    """An image: ordered band names and ``fn(ctx) -> {band: (values, mask)}``."""

    def __init__(self, world, bands, fn, props=None, ops=()):
        self.world, self.bands, self.fn = world, list(bands), fn
        self.props = dict(props or {})
        self.ops = list(ops)

    def _derive(self, bands, fn, op):
        return Image(self.world, bands, fn, self.props, self.ops + [op])

    def eval(self, ctx):
        return self.fn(ctx)

    def select(self, names):
        names = [names] if isinstance(names, str) else list(names)
        bad = [n for n in names if n not in self.bands]
        if bad:
            raise EEException(f"Image.select: Pattern '{bad[0]}' did not match any bands.")

        def fn(ctx):
            d = self.eval(ctx)
            return {n: d[n] for n in names}

        return self._derive(names, fn, ("select", names))

    def _binary(self, other, f, op):
        def fn(ctx):
            a = self.eval(ctx)
            if isinstance(other, Image):
                b = other.eval(ctx)
                bl = [b[n] for n in other.bands]
                if len(bl) == 1:
                    bl = bl * len(self.bands)
                return {n: (f(a[n][0], bv), a[n][1] & bm) for n, (bv, bm) in zip(self.bands, bl)}
            return {n: (f(a[n][0], other), a[n][1]) for n in self.bands}

        return self._derive(self.bands, fn, (op, other if not isinstance(other, Image) else "image"))

    def gte(self, o):
        return self._binary(o, lambda a, b: (a >= b).astype(float), "gte")

    def lte(self, o):
        return self._binary(o, lambda a, b: (a <= b).astype(float), "lte")

    def eq(self, o):
        return self._binary(o, lambda a, b: (a == b).astype(float), "eq")

    def And(self, o):
        return self._binary(o, lambda a, b: ((a != 0) & (b != 0)).astype(float), "And")

    def bitwiseAnd(self, o):
        return self._binary(o, lambda a, b: (a.astype(np.int64) & int(b)).astype(float), "bitwiseAnd")

    def updateMask(self, mask):
        def fn(ctx):
            a = self.eval(ctx)
            m = mask.eval(ctx)
            ml = [m[n] for n in mask.bands]
            if len(ml) == 1:
                ml = ml * len(self.bands)
            return {n: (a[n][0], a[n][1] & (mv != 0) & mm) for n, (mv, mm) in zip(self.bands, ml)}

        return self._derive(self.bands, fn, ("updateMask",))

    def rename(self, *names):
        names = list(names[0]) if len(names) == 1 and not isinstance(names[0], str) else list(names)
        assert len(names) == len(self.bands)
        return self._derive(names, lambda ctx: dict(zip(names, self.eval(ctx).values())), ("rename", names))

    def addBands(self, other, names=None, overwrite=False):
        dup = set(self.bands) & set(other.bands)
        assert not dup, dup
        return self._derive(self.bands + other.bands, lambda ctx: {**self.eval(ctx), **other.eval(ctx)}, ("addBands", other.bands))

    def toFloat(self):
        return self._derive(self.bands, self.fn, ("toFloat",))

    def toInt16(self):
        return self._derive(self.bands, self.fn, ("toInt16",))

    def resample(self, mode):
        return self._derive(self.bands, self.fn, ("resample", mode))

    def copyProperties(self, source, properties=None):
        props = {k: source.props[k] for k in (properties or source.props) if k in source.props}
        return Image(self.world, self.bands, self.fn, {**self.props, **props}, self.ops + [("copyProperties", list(props))])

    def set(self, key, value):
        return Image(self.world, self.bands, self.fn, {**self.props, key: value}, self.ops)

    def date(self):
        return Date(pd.Timestamp(self.props["system:time_start"], unit="ms"))

    def reduceRegion(self, reducer=None, geometry=None, scale=None, crs=None, bestEffort=False, maxPixels=None, **kw):
        self.world.log("reduceRegion", reducer.name, geometry.kind, tuple(geometry.coords), geometry.proj, geometry.geodesic,
                       scale, bestEffort, maxPixels, geometry.ops, tuple(o[0] for o in self.ops))
        assert reducer.name == "mean"
        lat, lon = geometry.centre()
        if geometry.kind == "Point":
            ctx = window_ctx(lat, lon, (1, 1))
        elif geometry.coords[2] - geometry.coords[0] > 0.05:  # a coastal fallback box: ERA5-Land pixels inside it
            ctx = box_ctx(*geometry.coords)
        else:
            ctx = window_ctx(lat, lon)
        out = {}
        for n, (v, m) in self.eval(ctx).items():
            out[n] = float(v[m].mean()) if m.any() else None
        return out

    def reduceResolution(self, reducer=None, bestEffort=False, maxPixels=64):
        return self._derive(self.bands, self.fn, ("reduceResolution", reducer.name, bestEffort, maxPixels))

    def reproject(self, crs=None, crsTransform=None, scale=None):
        return self._derive(self.bands, self.fn, ("reproject", crs, tuple(crsTransform) if crsTransform else None, scale))


class Feature:
    def __init__(self, geometry, properties=None):
        self.geometry = geometry
        self.properties = dict(properties or {})

    def set(self, key, value):
        return Feature(self.geometry, {**self.properties, key: value})


class FeatureCollection:
    def __init__(self, world, features, what):
        self.world, self.features, self.what = world, list(features), what

    def getInfo(self):
        self.world.request("getInfo", self.what)
        return {
            "type": "FeatureCollection",
            "columns": {},
            # Earth Engine leaves null-valued properties out of the answer
            "features": [
                {"type": "Feature", "geometry": None, "id": str(i),
                 "properties": {k: v for k, v in f.properties.items() if v is not None}}
                for i, f in enumerate(self.features)
            ],
        }


class _Size:
    def __init__(self, ic):
        self.ic = ic

    def getInfo(self):
        self.ic.world.request("size", self.ic.what)
        return len(self.ic._need_images())


class ImageCollection:
    def __init__(self, world, arg, images=None, what=None):
        self.world = world
        if isinstance(arg, str):
            self.id, self.images, self.what = arg, images, what or {"collection": arg}
        else:
            raise TypeError(arg)

    def filterDate(self, start, end):
        a, b = pd.Timestamp(start), pd.Timestamp(end)
        self.world.log("filterDate", self.id, start, end)
        days = [d for d in pd.date_range(a, b - pd.Timedelta(days=1), freq="D") if self.world.available(self.id, d)]
        world, cid = self.world, self.id
        modis_bands = [f"sur_refl_b0{i}" for i in range(1, 8)] + list(ANGLES) + ["state_1km", "QC_500m"]

        def base(day):
            if cid == MODIS_ID:
                names = modis_bands
            else:
                from cbgrid import catalog

                names = catalog.era5_bands("full")
            fn = lambda ctx, day=day, names=names: _LazyBands(names, lambda n: world.pixels(cid, n, day, ctx))  # noqa: E731
            props = {"system:time_start": int(day.value // 10**6), "system:id": f"{cid}/{day:%Y_%m_%d}"}
            return Image(world, names, fn, props, [("load", cid)])

        return ImageCollection(world, cid, [base(d) for d in days], {"collection": cid, "start": start, "end": end})

    def _need_images(self):
        if self.images is None:
            raise EEException("refusing to map over a whole unfiltered collection in the fake")
        return self.images

    def select(self, names):
        self.world.log("select", self.id, list(names))
        return ImageCollection(self.world, self.id, [i.select(names) for i in self._need_images()], self.what)

    def map(self, fn):
        out = [fn(i) for i in self._need_images()]
        if out and all(isinstance(o, Feature) for o in out):
            return FeatureCollection(self.world, out, self.what)
        return ImageCollection(self.world, self.id, out, self.what)

    def size(self):
        return _Size(self)


# --------------------------------------------------------------------------- module


def _cast_features(obj):
    """``ee.FeatureCollection(x)`` as a cast of a mapped collection (possibly empty)."""
    if isinstance(obj, FeatureCollection):
        return obj
    if isinstance(obj, ImageCollection) and not obj._need_images():
        return FeatureCollection(obj.world, [], obj.what)
    raise TypeError(f"the fake ee.FeatureCollection only casts mapped collections, got {type(obj).__name__}")


def _cast_image(obj):
    """``ee.Image(x)``: cbgrid only uses it as a cast of a computed image."""
    if not isinstance(obj, Image):
        raise TypeError(f"the fake ee.Image only casts images, got {type(obj).__name__}")
    return obj


def make_module(world: World) -> types.ModuleType:
    """A module object that stands in for ``ee``."""
    ee = types.ModuleType("ee")
    ee.EEException = EEException
    ee.Reducer = Reducer
    ee.Geometry = Geometry
    ee.Feature = Feature
    ee.FeatureCollection = _cast_features
    ee.Image = _cast_image
    ee.ImageCollection = lambda arg: ImageCollection(world, arg)
    ee.world = world

    def ServiceAccountCredentials(email=None, key_file=None, key_data=None):
        from google.oauth2 import service_account

        creds = service_account.Credentials.from_service_account_file(key_file, scopes=EE_SCOPES)
        world.service_accounts.append(creds)
        return creds

    def Initialize(credentials="persistent", url=None, cloud_api_key=None, http_transport=None, project=None):
        if credentials == "persistent" and not world.credentials:
            raise EEException(
                "Please authorize access to your Earth Engine account by running\n\nearthengine "
                "authenticate\n\nin your command line, or ee.Authenticate() in Python, and then retry."
            )
        world.initialized_with.append(project)

    def setDeadline(ms):
        world.deadline_ms = ms

    def setMaxRetries(n):
        world.max_retries = n

    ee.ServiceAccountCredentials = ServiceAccountCredentials
    ee.Initialize = Initialize
    ee.data = types.SimpleNamespace(is_initialized=lambda: bool(world.initialized_with), setDeadline=setDeadline,
                                    setMaxRetries=setMaxRetries)
    return ee


class _FakeBackendArray(xr.backends.BackendArray):
    """One band of an opened collection: every read is one counted pixel request (xee's layout)."""

    def __init__(self, world, images, band, ctx):
        self.world, self.images, self.band, self.ctx = world, images, band, ctx
        self.shape = (len(images),) + ctx.shape
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, key):
        from xarray.core import indexing

        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.BASIC, self._read)

    def _read(self, key):
        key = tuple(slice(k, k + 1) if isinstance(k, int | np.integer) else k for k in key)
        t, y, x = (range(*k.indices(n)) for k, n in zip(key, self.shape))
        cid = self.images[0].ops[0][1] if self.images else None
        self.world.request("computePixels", (cid, self.band, t.start, t.stop, y.start, y.stop, x.start, x.stop))
        if self.world.request_log:
            with open(self.world.request_log, "a") as f:
                f.write(f"{self.band} {t.start} {t.stop} {y.start} {x.start}\n")
        if self.world.pixel_delay:
            time.sleep(self.world.pixel_delay)
        out = np.empty((len(t), len(y), len(x)), dtype=np.float32)
        for i, ti in enumerate(t):  # pixel values depend on the position in the whole grid
            v, m = self.images[ti].eval(self.ctx)[self.band]
            out[i] = np.where(m, v, np.nan)[y.start:y.stop, x.start:x.stop]
        return out


def fake_open_dataset(world: World):
    """Stand-in for ``xr.open_dataset(ic, engine="ee", ...)`` with xee 0.1.x's layout.

    Returns dims (time, y, x) with y descending for a north-up transform, float32 variables
    read lazily (one counted ``computePixels`` request per read), and xee's encoding
    (``scale_factor`` = pixel size). Opening is itself a counted request ('open').
    """

    def open_dataset(ic, *, engine=None, crs=None, crs_transform=None, shape_2d=None, io_chunks=None, chunks=None, **kw):
        assert engine == "ee", engine
        world.log("open_dataset", ic.what, dict(crs=crs, crs_transform=tuple(crs_transform), shape_2d=tuple(shape_2d),
                                                io_chunks=io_chunks, chunks=chunks, **kw))
        world.request("open", ic.what)
        ctx = grid_ctx(crs_transform, shape_2d)
        images = ic._need_images()
        for img in images:
            world.log("image_ops", ic.id, tuple(img.ops))
        for img in images:  # xee reads both with reduceColumns; a computed image lacking them breaks time
            assert {"system:id", "system:time_start"} <= set(img.props), img.props
        bands = images[0].bands  # an empty collection fails here, as xee 0.1.2 does
        times = pd.to_datetime([img.props["system:time_start"] for img in images], unit="ms")
        a, _, c, _, e, f = crs_transform
        w, h = shape_2d
        x = np.array([c + a / 2 + i * a for i in range(w)])
        y = np.array([f + e / 2 + i * e for i in range(h)])
        from xarray.core import indexing

        data = {b: xr.Variable(("time", "y", "x"), indexing.LazilyIndexedArray(_FakeBackendArray(world, images, b, ctx)),
                               {"id": b, "crs": crs}) for b in bands}
        ds = xr.Dataset(data, coords={"time": times, "y": y, "x": x})
        for b in bands:
            ds[b].encoding = {"source": b, "scale_factor": abs(a), "dtype": np.float32}
        return ds.chunk(chunks) if chunks is not None else ds

    return open_dataset


# --------------------------------------------------------------------------- the real client, offline

ACCESS_TOKEN = "ya29.offline-test-token"


def service_account_key(path: Path, project="cbgrid-offline", email="runner@cbgrid-offline.iam.gserviceaccount.com") -> dict:
    """Write a service-account JSON key with a freshly generated RSA key; return its fields."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    doc = {"type": "service_account", "project_id": project, "private_key_id": os.urandom(20).hex(),
           "private_key": pem, "client_email": email, "client_id": "1" * 21,
           "token_uri": "https://oauth2.googleapis.com/token"}
    Path(path).write_text(json.dumps(doc))
    return {**doc, "public_key": public}


class OfflineHTTP:
    """Earth Engine's and Google's token endpoints, answered in ``requests``' transport adapter.

    ``answers``: a function (parsed value:compute body) -> result, for the API calls a test
    makes; ``faults``: endpoint kind ('token', 'discovery', 'algorithms', 'compute') ->
    {n: ('status', code, message) | ('connection',) | ('stall',)}. ``log`` records (kind,
    method, url, headers, body) of every request.
    """

    def __init__(self, public_key: str | None = None, answers=None):
        self.public_key, self.answers = public_key, answers
        self.faults: dict = {}
        self.log: list = []
        self.counts: dict = {}
        self.lock = threading.Lock()
        self._saved = None
        self._stall = None

    # installation
    def install(self):
        import requests.adapters

        here = Path(sys.modules[EEException.__module__].__file__).parent / "tests"  # data earthengine-api ships
        self.discovery = (here / "cloud_api_discovery_document.json").read_bytes()
        self.algorithms = (here / "algorithms.json").read_bytes()
        self._saved = (requests.adapters.HTTPAdapter.send, urllib.request.urlopen)
        original, this = self._saved[0], self

        def send(adapter, request, **kw):
            return this.send(original, adapter, request, **kw)

        requests.adapters.HTTPAdapter.send = send
        urllib.request.urlopen = this.urlopen
        return self

    def uninstall(self):
        import requests.adapters

        if self._saved:
            requests.adapters.HTTPAdapter.send, urllib.request.urlopen = self._saved
            self._saved = None
        if self._stall is not None:
            self._stall.close()

    def urlopen(self, url, *a, **kw):  # ee fetches its deprecated-asset list with urllib: no network here
        raise urllib.error.URLError("offline")

    # endpoints
    @staticmethod
    def kind(url: str) -> str:
        path = urllib.parse.urlparse(url).path
        if "$discovery" in path:
            return "discovery"
        if path.endswith("/token"):
            return "token"
        if path.endswith("/algorithms"):
            return "algorithms"
        if path.endswith("value:compute"):
            return "compute"
        return "other"

    def send(self, original, adapter, request, **kw):
        import requests

        kind = self.kind(request.url)
        body = request.body.decode() if isinstance(request.body, bytes) else (request.body or "")
        with self.lock:
            n = self.counts.get(kind, 0) + 1
            self.counts[kind] = n
            self.log.append((kind, request.method, request.url, request.headers.copy(), body))
            fault = self.faults.get(kind, {}).pop(n, None)
        if fault is not None:
            if fault[0] == "connection":
                raise requests.exceptions.ConnectionError("('Connection aborted.', RemoteDisconnected('Remote end closed "
                                                          "connection without response'))", request=request)
            if fault[0] == "stall":  # a real socket that accepts and never answers: requests' own timeout fires
                request.url = f"http://127.0.0.1:{self._stall_port()}/stall"
                return original(adapter, request, **kw)
            if fault[0] == "status":
                return self._response(request, fault[1], {"error": {"code": fault[1], "message": fault[2],
                                                                    "status": "UNAVAILABLE"}})
        if kind == "discovery":
            return self._response(request, 200, self.discovery)
        if kind == "algorithms":
            return self._response(request, 200, self.algorithms)
        if kind == "token":
            return self._response(request, 200, self._token(body))
        if kind == "compute":
            if request.headers.get("Authorization") != f"Bearer {ACCESS_TOKEN}":
                return self._response(request, 401, {"error": {"code": 401, "message": "Request had invalid "
                                                               "authentication credentials.", "status": "UNAUTHENTICATED"}})
            return self._response(request, 200, {"result": self.answers(json.loads(body))})
        return self._response(request, 404, {"error": {"code": 404, "message": f"no fake for {request.url}"}})

    def _token(self, body: str) -> dict:
        from google.auth import jwt

        form = dict(urllib.parse.parse_qsl(body))
        assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer", form
        claims = jwt.decode(form["assertion"], certs=self.public_key, audience="https://oauth2.googleapis.com/token")
        with self.lock:
            self.log.append(("token-claims", claims))
        return {"access_token": ACCESS_TOKEN, "expires_in": 3600, "token_type": "Bearer"}

    @staticmethod
    def _response(request, status, content):
        import requests
        from requests.structures import CaseInsensitiveDict

        r = requests.Response()
        r.status_code = status
        r._content = content if isinstance(content, bytes) else json.dumps(content).encode()
        r.headers = CaseInsensitiveDict({"Content-Type": "application/json; charset=UTF-8"})
        r.url, r.request, r.reason = request.url, request, "OK" if status == 200 else "Error"
        r.encoding = "utf-8"
        return r

    def _stall_port(self) -> int:
        if self._stall is None:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(8)
            held = []

            def hold():
                while True:
                    try:
                        held.append(s.accept())  # accept, never answer
                    except OSError:  # closed by uninstall()
                        return

            threading.Thread(target=hold, daemon=True).start()
            self._stall = s
        return self._stall.getsockname()[1]

    def token_claims(self) -> list[dict]:
        return [e[1] for e in self.log if e[0] == "token-claims"]


def offline_worker_plugin(public_key: str):
    """A dask WorkerPlugin installing :class:`OfflineHTTP` in each worker process (tests only)."""
    import distributed

    class OfflineEarthEngine(distributed.WorkerPlugin):
        def __init__(self, public_key):
            self.public_key = public_key

        def setup(self, worker):
            worker.offline_http = OfflineHTTP(self.public_key).install()

    return OfflineEarthEngine(public_key)


def worker_state(dask_worker=None) -> dict:
    """What a worker's ``ee`` client is set up with (run on workers by ``client.run``)."""
    import ee

    state = ee.data._get_state()
    creds = state.credentials
    http = getattr(dask_worker, "offline_http", None)
    return {"initialized": ee.data.is_initialized(), "project": state.cloud_api_user_project,
            "credentials": type(creds).__name__, "email": getattr(creds, "service_account_email", None),
            "scopes": list(getattr(creds, "scopes", None) or []), "deadline_ms": state.deadline_ms,
            "max_retries": state.max_retries, "pid": os.getpid(),
            "token_scopes": [c.get("scope") for c in http.token_claims()] if http else []}


# --------------------------------------------------------------------------- run the CLI with the fake


def main(argv: list[str]) -> int:
    """``fake_ee.py WORLD.json -- ARGS``: run ``cbgrid ARGS`` with the fake ``ee`` and xee backend."""
    cfg = json.loads(Path(argv[0]).read_text())
    rest = argv[argv.index("--") + 1:]
    world = World(pixel_delay=float(cfg.get("pixel_delay", 0)), request_log=cfg.get("request_log"))
    xr.backends.list_engines()
    sys.modules["ee"] = make_module(world)
    xr.open_dataset = fake_open_dataset(world)
    from cbgrid.cli import main as cli

    return cli(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
