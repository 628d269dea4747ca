"""How many Earth Engine requests a run makes, how large each is, and how long it may take.

Pure arithmetic (no Earth Engine): the same functions size the requests cbgrid sends and print
the plan ``cbgrid acquire ... --dry-run`` shows.

Limits used, from Earth Engine's documentation:

* an interactive request must finish within 5 minutes and ``computePixels`` answers at most
  48 MB (xee counts each value's bytes plus one mask byte against it);
* a project runs at most 40 interactive requests at a time (default quota);
* ``reduceResolution(maxPixels=...)`` combines at most that many input pixels per output pixel
  ("setting this too large will cause out-of-memory problems"); with ``bestEffort`` Earth
  Engine reads a coarser level of the input's pyramid (each level halves the resolution) until
  a cell needs no more than ``maxPixels`` inputs. cbgrid uses 256, four times the documented
  default of 64: 0.1° cells average MOD09GA's 2 x 2-pixel pyramid level (926 m), 0.25° cells
  its 4 x 4 level (1.85 km); mean pyramids of reflectance make both the area mean of the
  native pixels up to the cells' edges;
* Earth Engine's export guard (``maxPixels`` 1e8 by default) is taken as the budget of input
  pixels one request may read: that sets how many days a MODIS request covers.

The time estimate is requests x seconds per request / concurrent requests; seconds per request
cannot be known offline, so plans show a range (5-30 s by default) and the progress bar of the
real run shows the measured rate.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cbgrid.errors import InputError

#: MOD09GA's 500 m bands sit on the sinusoidal grid's 463.3127 m pixels; ERA5-Land on 0.1°.
MODIS_PIXEL_M = 463.312716528
ERA5_LAND_RES_DEG = 0.1
EQUATOR_M_PER_DEG = math.pi / 180 * 6378137.0
#: Earth Engine's computePixels answer limit (xee's request_byte_limit).
REQUEST_BYTE_LIMIT = 48 * 2**20
#: reduceResolution maxPixels: inputs combined per output cell (EE default 64, maximum 65535).
MAX_PIXELS_PER_CELL = 256
#: Input pixels one grid request may read (Earth Engine's default export maxPixels).
PIXELS_PER_REQUEST = 1e8
#: Output tile of a grid request: Earth Engine computes in 256 x 256 pixel tiles.
TILE = 256
#: Days of one opened collection piece (xee indexes into a collection; keep pieces short).
MAX_PIECE_DAYS = 366
#: Interactive requests a project may run at once (Earth Engine's default quota).
CONCURRENT_REQUESTS = 40
#: Assumed seconds per request for the time estimate (not measurable offline).
SECONDS_PER_REQUEST = (5.0, 30.0)
#: Bytes per value in a computePixels answer: MODIS features are computed as float32,
#: ERA5-Land bands are doubles.
ITEMSIZE = {"modis": 4, "era5_land": 8}


def time_chunks(start, end) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """Calendar-year pieces of [start, end] (inclusive days): one site request per piece.

    >>> [(a.date().isoformat(), b.date().isoformat()) for a, b in time_chunks("2001-11-30", "2002-01-02")]
    [('2001-11-30', '2001-12-31'), ('2002-01-01', '2002-01-02')]
    """
    start, end = pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize()
    if end < start:
        raise InputError(f"end {end.date()} is before start {start.date()}")
    out = []
    for year in range(start.year, end.year + 1):
        a = max(start, pd.Timestamp(year=year, month=1, day=1))
        b = min(end, pd.Timestamp(year=year, month=12, day=31))
        out.append((a, b))
    return out


def time_pieces(start, end, chunk_days: int) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """Consecutive pieces of [start, end], each a whole number of ``chunk_days`` and at most
    :data:`MAX_PIECE_DAYS` long (or one chunk, if longer), so no grid chunk straddles two pieces.

    >>> [(a.date().isoformat(), b.date().isoformat()) for a, b in time_pieces("2004-01-01", "2004-12-31", 100)]
    [('2004-01-01', '2004-10-26'), ('2004-10-27', '2004-12-31')]
    """
    days = pd.date_range(pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize(), freq="D")
    if len(days) == 0:
        raise InputError(f"end {pd.Timestamp(end).date()} is before start {pd.Timestamp(start).date()}")
    step = max(1, int(chunk_days)) * max(1, MAX_PIECE_DAYS // max(1, int(chunk_days)))
    return [(days[i], days[min(i + step, len(days)) - 1]) for i in range(0, len(days), step)]


def pyramid_level(resolution_deg: float, native_m: float, max_pixels: int = MAX_PIXELS_PER_CELL) -> tuple[int, float]:
    """(level, inputs per cell) reduceResolution(bestEffort) uses for cells of ``resolution_deg``.

    Level 0 is the native resolution ``native_m``; level L has pixels 2**L times wider. Inputs
    per cell count the pixels a cell touches at the equator (its largest area), partial ones
    at its edges included.

    >>> pyramid_level(0.1, MODIS_PIXEL_M)
    (1, 169.3...)
    """
    native = (resolution_deg * EQUATOR_M_PER_DEG / native_m) ** 2
    level = 0
    while native / 4**level > max_pixels:
        level += 1
    return level, (math.sqrt(native / 4**level) + 1) ** 2


@dataclass(frozen=True)
class GridChunks:
    """The request (and dask chunk) shape of one source's grid: ``days`` x ``height`` x ``width``."""

    source: str
    variables: int
    days: int
    height: int
    width: int
    level: int
    inputs_per_cell: float
    itemsize: int

    @property
    def response_bytes(self) -> int:
        return self.days * self.height * self.width * self.itemsize

    @property
    def input_pixels(self) -> float:
        return self.days * self.height * self.width * self.inputs_per_cell


def grid_chunks(source: str, variables: int, resolution: float, n_lat: int, n_lon: int, *, max_days: int | None = None,
                tile: int = TILE, pixels_per_request: float = PIXELS_PER_REQUEST,
                byte_limit: int = REQUEST_BYTE_LIMIT) -> GridChunks:
    """The largest request within the byte limit and the input-pixel budget for one source.

    >>> c = grid_chunks("modis", 12, 0.25, 720, 1440)
    >>> (c.days, c.height, c.width, c.level)
    (5, 256, 256, 2)
    """
    native = MODIS_PIXEL_M if source == "modis" else ERA5_LAND_RES_DEG * EQUATOR_M_PER_DEG
    level, inputs = pyramid_level(resolution, native)
    itemsize = ITEMSIZE[source]
    h, w = min(tile, n_lat), min(tile, n_lon)
    while h * w > 1 and (h * w * inputs > pixels_per_request or h * w * (itemsize + 1) > byte_limit):
        h, w = max(1, h // 2), max(1, w // 2)
    days = min(byte_limit // (h * w * (itemsize + 1)), int(pixels_per_request // (h * w * inputs)), MAX_PIECE_DAYS)
    if max_days:
        days = min(days, int(max_days))
    return GridChunks(source, variables, max(1, int(days)), h, w, level, inputs, itemsize)


@dataclass
class PlanLine:
    """One kind of request: how many, how large."""

    what: str
    requests: int
    response_bytes: float
    detail: str = ""


@dataclass
class Plan:
    """Requests, bytes and time of a run; :meth:`describe` is what ``--dry-run`` prints."""

    title: str
    lines: list[PlanLine]
    workers: int
    arithmetic: list[str] = field(default_factory=list)
    seconds_per_request: tuple[float, float] = SECONDS_PER_REQUEST

    @property
    def requests(self) -> int:
        return sum(line.requests for line in self.lines)

    @property
    def response_bytes(self) -> float:
        return sum(line.response_bytes for line in self.lines)

    @property
    def concurrency(self) -> int:
        return max(1, min(int(self.workers), CONCURRENT_REQUESTS))

    def hours(self, seconds_per_request: float) -> float:
        """Wall-clock hours at ``seconds_per_request`` with :attr:`concurrency` requests in flight."""
        return self.requests * seconds_per_request / self.concurrency / 3600

    def describe(self) -> str:
        """The plan as text: one line per kind of request, the arithmetic, the totals."""
        lo, hi = self.seconds_per_request
        out = [f"plan: {self.title}"]
        width = max(len(line.what) for line in self.lines) if self.lines else 0
        for line in self.lines:
            out.append(f"  {line.what:<{width}}  {line.requests:>9,} requests  {_size(line.response_bytes):>9}"
                       + (f"  {line.detail}" if line.detail else ""))
        out += [f"  {a}" for a in self.arithmetic]
        out.append(f"  total {self.requests:,} requests, {_size(self.response_bytes)} of responses; at {self.concurrency} "
                   f"concurrent requests (--workers; the project quota allows {CONCURRENT_REQUESTS}) and {lo:g}-{hi:g} s "
                   f"per request: {self.hours(lo):.1f}-{self.hours(hi):.1f} h")
        return "\n".join(out)


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def site_row_bytes(names) -> int:
    """Bytes of one day in a site answer: a GeoJSON feature with a date and a double per band.

    >>> site_row_bytes(["temperature_2m", "total_precipitation_sum"])
    169
    """
    value = float(np.float64(np.pi * 100))  # a full-precision double, as Earth Engine writes them
    props = {"date": "2004-01-01", **{str(n): value for n in names}}
    return len(json.dumps({"type": "Feature", "geometry": None, "id": "0", "properties": props}))


def site_plan(n_sites: int, start, end, bands: dict[str, list], *, workers: int, method: str = "default") -> Plan:
    """The plan of a site acquisition: one request per source, site and calendar year.

    ``bands`` maps each source ('modis', 'era5_land') to the names of the values a day carries.

    >>> p = site_plan(474, "2000-01-01", "2024-12-31", {"modis": ["a"] * 12, "era5_land": ["b"] * 6}, workers=10)
    >>> p.requests
    23700
    """
    chunks = time_chunks(start, end)
    days = sum((b - a).days + 1 for a, b in chunks)
    lines = []
    for source, names in bands.items():
        lines.append(PlanLine(f"{source} (site x year)", n_sites * len(chunks), n_sites * days * site_row_bytes(names),
                              f"{len(names)} values a day, <= 366 days per request"))
    arithmetic = [f"{n_sites} sites x {len(chunks)} calendar years x {len(bands)} collections = "
                  f"{n_sites * len(chunks) * len(bands):,} requests ({method} sampling); "
                  f"{days:,} days per site"]
    title = f"{n_sites} sites, {pd.Timestamp(start).date()} .. {pd.Timestamp(end).date()}"
    return Plan(title, lines, workers, arithmetic)


def grid_plan(lat, lon, start, end, variables: dict[str, int], *, workers: int, max_days: int | None = None,
              tile: int = TILE, pixels_per_request: float = PIXELS_PER_REQUEST) -> tuple[Plan, dict[str, GridChunks]]:
    """The plan of a grid: requests per source and the request shape (= dask chunks) of each.

    ``variables`` maps each source to its number of variables; xee asks for one variable per request.

    >>> lat = np.arange(-89.875, 90, 0.25); lon = np.arange(-179.875, 180, 0.25)
    >>> plan, chunks = grid_plan(lat, lon, "2021-01-01", "2021-12-31", {"era5_land": 6, "modis": 12}, workers=10)
    >>> plan.requests, chunks["modis"].days, chunks["era5_land"].days
    (16308, 5, 85)
    """
    lat, lon = np.asarray(lat, dtype=float), np.asarray(lon, dtype=float)
    res = float(np.diff(lon)[0]) if lon.size > 1 else float(np.diff(lat)[0]) if lat.size > 1 else 1.0
    n_days = (pd.Timestamp(end).normalize() - pd.Timestamp(start).normalize()).days + 1
    lines, shapes, arithmetic = [], {}, []
    for source, n_vars in variables.items():
        c = grid_chunks(source, n_vars, res, lat.size, lon.size, max_days=max_days, tile=tile,
                        pixels_per_request=pixels_per_request)
        shapes[source] = c
        pieces = time_pieces(start, end, c.days)
        t_chunks = sum(math.ceil(((b - a).days + 1) / c.days) for a, b in pieces)
        tiles = math.ceil(lat.size / c.height) * math.ceil(lon.size / c.width)
        n = n_vars * t_chunks * tiles
        lines.append(PlanLine(f"{source} ({n_vars} variables)", n, n_vars * n_days * lat.size * lon.size * c.itemsize,
                              f"{c.days} days x {c.height} x {c.width} cells per request, "
                              f"{_size(c.response_bytes)} each"))
        read = (f"pyramid level {c.level} ({c.inputs_per_cell:.0f} inputs/cell), {c.input_pixels:.2e} input pixels "
                f"per request (budget {pixels_per_request:.0e})")
        arithmetic.append(f"{source}: {n_vars} variables x {t_chunks} time chunks x {tiles} tiles = {n:,}; {read}")
    title = (f"{lat.size} x {lon.size} cells at {res:g} deg, {n_days} days "
             f"({pd.Timestamp(start).date()} .. {pd.Timestamp(end).date()})")
    return Plan(title, lines, workers, arithmetic), shapes
