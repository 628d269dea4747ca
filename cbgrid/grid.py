"""Regular lat/lon grids: the recipe grid, cell edges and cell areas on the authalic sphere."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cbgrid.errors import InputError

EARTH_RADIUS = 6371007.181  # m, authalic sphere (as MODIS grids use)


@dataclass(frozen=True)
class Grid:
    """A regular lat/lon grid of ``resolution``-degree cells covering ``region``
    (lon_min, lat_min, lon_max, lat_max).

    >>> Grid(90.0).shape
    (2, 4)
    >>> Grid(90.0).lat.tolist()
    [-45.0, 45.0]
    """

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


def bounds(centres: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """(n, 2) cell edges of a regular 1-D grid of cell centres, clipped to [lo, hi].

    >>> bounds(np.array([-45.0, 45.0]), -90, 90).tolist()
    [[-90.0, 0.0], [0.0, 90.0]]
    """
    c = np.asarray(centres, dtype=np.float64)
    if c.size == 1:
        raise InputError("a grid axis needs at least 2 cells to define its spacing")
    step = np.diff(c)
    if not np.allclose(step, step[0], rtol=1e-6, atol=1e-9):
        raise InputError(f"grid axis is not regular: spacings range {step.min()}..{step.max()}")
    half = abs(step[0]) / 2
    b = np.stack([c - half, c + half], axis=1)
    if lo is not None or hi is not None:
        b = np.clip(b, lo, hi)
    return np.round(b, 10)


def cell_area(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Area in m2 of each (lat, lon) cell of a regular grid on the authalic sphere.

    >>> g = Grid(10.0)
    >>> bool(np.isclose(cell_area(g.lat, g.lon).sum(), 4 * np.pi * EARTH_RADIUS**2))
    True
    """
    lb = np.deg2rad(bounds(lat, -90, 90))
    ob = np.deg2rad(bounds(lon))
    band = np.abs(np.sin(lb[:, 1]) - np.sin(lb[:, 0]))
    width = np.abs(ob[:, 1] - ob[:, 0])
    return EARTH_RADIUS**2 * band[:, None] * width[None, :]
