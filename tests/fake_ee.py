"""A small evaluating stand-in for the ``ee`` module (and xee's ``open_dataset``).

Images are functions of a sampling context (a site window, a point, or a grid) that return
per-band pixel arrays with masks; the image methods cbgrid uses (select, updateMask,
comparisons, bitwiseAnd, addBands, reduceRegion, reduceResolution, reproject, ...) compute on
those arrays, so the server-side expressions cbgrid builds are really evaluated. Every
request is logged in ``World.calls``; failures are injected per ``getInfo`` call.

Pixel values come from :meth:`World.pixels`, documented formulas in raw MOD09GA digital numbers
and ERA5-Land units, so tests can compute expected values independently with numpy.
"""

from __future__ import annotations

import threading
import types
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import xarray as xr

MODIS_ID = "MODIS/061/MOD09GA"
ERA5_ID = "ECMWF/ERA5_LAND/DAILY_AGGR"
MODIS_FIRST_DAY = pd.Timestamp("2000-02-24")
#: Day-of-year with no MOD09GA image (tests that missing days become NaN).
MODIS_MISSING_DOY = 45
WINDOW = (4, 4)  # 500 m pixels in the 2 km box
STATE_PATTERN = np.array([0, 1, 2, 3, 5, 513, 6])  # cloudy (bits 0-1 == 01): 1, 5, 513
REFL_FILL, ANGLE_FILL = -28672, -32767
ANGLES = ("SensorZenith", "SensorAzimuth", "SolarZenith", "SolarAzimuth")


class EEException(Exception):
    pass


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
    #: getInfo call number (1-based) -> exception to raise at that call
    fail_at: dict = field(default_factory=dict)
    getinfo_calls: int = 0
    initialized_with: list = field(default_factory=list)

    def __post_init__(self):
        self.lock = threading.Lock()

    def log(self, *entry):
        with self.lock:
            self.calls.append(entry)

    def available(self, cid: str, day: pd.Timestamp) -> bool:
        if cid == MODIS_ID:
            return day >= MODIS_FIRST_DAY and day.day_of_year != MODIS_MISSING_DOY
        return True

    def pixels(self, cid: str, band: str, day: pd.Timestamp, ctx: Ctx) -> tuple[np.ndarray, np.ndarray]:
        """Raw pixel values and validity mask of one band of one image."""
        doy = day.day_of_year
        k = np.arange(ctx.lat.size).reshape(ctx.shape)
        lat, lon = ctx.lat, ctx.lon
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
        else:
            raise EEException(f"ImageCollection.load: ImageCollection asset '{cid}' not found.")
        return np.asarray(v, dtype=float), np.ones(ctx.shape, dtype=bool)

    def on_getinfo(self, what):
        with self.lock:
            self.getinfo_calls += 1
            n = self.getinfo_calls
            err = self.fail_at.pop(n, None)
        self.log("getInfo", what)
        if err is not None:
            raise err


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

    @staticmethod
    def first():
        return Reducer("first")


class Geometry:
    def __init__(self, kind, coords, proj=None, geodesic=None):
        self.kind, self.coords, self.proj, self.geodesic = kind, list(coords), proj, geodesic

    @classmethod
    def Point(cls, coords, proj=None):
        return cls("Point", coords, proj)

    @classmethod
    def Rectangle(cls, coords, proj=None, geodesic=None):
        return cls("Rectangle", coords, proj, geodesic)

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

    def neq(self, o):
        return self._binary(o, lambda a, b: (a != b).astype(float), "neq")

    def And(self, o):
        return self._binary(o, lambda a, b: ((a != 0) & (b != 0)).astype(float), "And")

    def bitwiseAnd(self, o):
        return self._binary(o, lambda a, b: (a.astype(np.int64) & int(b)).astype(float), "bitwiseAnd")

    def multiply(self, o):
        return self._binary(o, lambda a, b: a * b, "multiply")

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

    def copyProperties(self, source, properties=None):
        props = {k: source.props[k] for k in (properties or source.props) if k in source.props}
        img = Image(self.world, self.bands, self.fn, {**self.props, **props}, self.ops + [("copyProperties", list(props))])
        return img

    def set(self, key, value):
        return Image(self.world, self.bands, self.fn, {**self.props, key: value}, self.ops)

    def get(self, key):
        return self.props[key]

    def date(self):
        return Date(pd.Timestamp(self.props["system:time_start"], unit="ms"))

    def reduceRegion(self, reducer=None, geometry=None, scale=None, crs=None, **kw):
        self.world.log("reduceRegion", reducer.name, geometry.kind, tuple(geometry.coords), geometry.proj, geometry.geodesic, scale)
        assert reducer.name == "mean"
        lat, lon = geometry.centre()
        ctx = window_ctx(lat, lon, WINDOW if geometry.kind == "Rectangle" else (1, 1))
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
        self.world.on_getinfo(self.what)
        return {
            "type": "FeatureCollection",
            "columns": {},
            "features": [
                {"type": "Feature", "geometry": None, "id": str(i), "properties": f.properties}
                for i, f in enumerate(self.features)
            ],
        }


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
        bands = (
            [f"sur_refl_b0{i}" for i in range(1, 8)] + list(ANGLES) + ["state_1km", "QC_500m"]
            if self.id == MODIS_ID
            else [f"band_{i}" for i in range(3)]
        )
        world, cid = self.world, self.id

        def base(day):
            if cid == MODIS_ID:
                names = bands
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

    def Initialize(project=None, **kw):
        if not world.credentials:
            raise EEException(
                "Please authorize access to your Earth Engine account by running\n\nearthengine "
                "authenticate\n\nin your command line, or ee.Authenticate() in Python, and then retry."
            )
        world.initialized_with.append(project)

    ee.Initialize = Initialize
    ee.data = types.SimpleNamespace(is_initialized=lambda: bool(world.initialized_with))
    return ee


def fake_open_dataset(world: World):
    """Stand-in for ``xr.open_dataset(ic, engine="ee", ...)`` with xee 0.1.x's layout.

    Returns dims (time, y, x) with y descending for a north-up transform, float32 variables,
    and xee's encoding (``scale_factor`` = pixel size), dask-chunked as ``chunks`` asks.
    """

    def open_dataset(ic, *, engine=None, crs=None, crs_transform=None, shape_2d=None, io_chunks=None, chunks=None, **kw):
        assert engine == "ee", engine
        world.log("open_dataset", ic.what, dict(crs=crs, crs_transform=tuple(crs_transform), shape_2d=tuple(shape_2d), io_chunks=io_chunks, chunks=chunks, **kw))
        ctx = grid_ctx(crs_transform, shape_2d)
        images = ic._need_images()
        for img in images:
            world.log("image_ops", ic.id, tuple(img.ops))
        for img in images:  # xee reads both with reduceColumns; a computed image lacking them breaks time
            assert {"system:id", "system:time_start"} <= set(img.props), img.props
        bands = images[0].bands
        times = pd.to_datetime([img.props["system:time_start"] for img in images], unit="ms")
        data = {b: np.empty((len(images),) + ctx.shape, dtype=np.float32) for b in bands}
        for t, img in enumerate(images):
            for b, (v, m) in img.eval(ctx).items():
                data[b][t] = np.where(m, v, np.nan)
        a, _, c, _, e, f = crs_transform
        w, h = shape_2d
        x = np.array([c + a / 2 + i * a for i in range(w)])
        y = np.array([f + e / 2 + i * e for i in range(h)])
        ds = xr.Dataset(
            {b: (("time", "y", "x"), data[b], {"id": b, "crs": crs}) for b in bands},
            coords={"time": times, "y": y, "x": x},
        )
        for b in bands:
            ds[b].encoding = {"source": b, "scale_factor": abs(a), "dtype": np.float32}
        return ds.chunk(chunks) if chunks is not None else ds

    return open_dataset
