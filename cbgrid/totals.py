"""Carbon budgets of a product: global, zonal and per-IGBP totals in Pg C per month and per year.

A cell's total of a day is its flux (g m-2 d-1, per m² of land) × its area × its land fraction,
so partly-land coastal cells count for their land only. :class:`Totals` accumulates those
daily totals block by block (the product writer feeds it every block it writes; memory is one
row of numbers per day and region, whatever the grid), and :meth:`Totals.table` sums them into
months and years.

The spread: a product stores each cell's ensemble standard deviation, not the members. The
members of one ensemble err alike across cells (the same model, the same drivers), so the
spread of a total is given as the sum of the cells' spreads (``*_sd``: the spread if member
deviations are fully correlated across cells and days, the upper bound of the spread of the
total; the lower bound, independent deviations, is far smaller and hides the ensemble's
disagreement on the budget).

>>> import numpy as np, pandas as pd
>>> lat, lon = np.array([-45.0, 45.0]), np.array([-90.0, 90.0])
>>> t = Totals(lat, lon, pd.date_range("2001-01-01", periods=2), land_fraction=np.ones((2, 2)), igbp=np.ones((2, 2)))
>>> t.add(0, 0, GPP=np.ones((2, 2, 2)))
>>> row = t.table("year").query("region == 'global'")
>>> float(row["total_PgC"].iloc[0]) == float(2 * t.weights.sum() / 1e15)
True
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from cbgrid import schema
from cbgrid.grid import cell_area as grid_cell_area

#: Latitude bands of the zonal totals (degrees north, south edge first).
ZONES = ((-90, -60), (-60, -30), (-30, 0), (0, 30), (30, 60), (60, 90))
G_PER_PG = 1e15
COLUMNS = ["period", "kind", "region", "variable", "total_PgC", "sd_PgC", "days"]


def zone_name(lo: float, hi: float) -> str:
    """'30S-0', '0-30N', '60N-90N'.

    >>> zone_name(-30, 0), zone_name(30, 60)
    ('30S-0', '30N-60N')
    """
    def f(v):
        return "0" if v == 0 else f"{abs(v):g}{'N' if v > 0 else 'S'}"
    return f"{f(lo)}-{f(hi)}"


class Totals:
    """Daily totals per region, fed block by block; tables per month or year.

    ``land_fraction``, ``igbp`` (codes 0..16; others count in no class) and ``cell_area``
    (m², from the grid when omitted) are (lat, lon) arrays of the product grid.
    """

    def __init__(self, lat, lon, days, *, land_fraction, igbp, cell_area=None):
        self.lat, self.lon = np.asarray(lat, float), np.asarray(lon, float)
        self.days = pd.DatetimeIndex(days)
        area = grid_cell_area(self.lat, self.lon) if cell_area is None else np.asarray(cell_area, float)
        self.weights = area * np.nan_to_num(np.asarray(land_fraction, float))  # m² of land per cell
        codes = np.asarray(igbp).astype(np.int64)
        names = list(schema.IGBP_CLASSES)
        zone = np.full(self.lat.size, -1)
        for k, (lo, hi) in enumerate(ZONES):
            zone[(self.lat >= lo) & (self.lat < hi if hi < 90 else self.lat <= hi)] = k
        self.regions = [("global", "global")] + [("zonal", zone_name(*z)) for z in ZONES] + [("igbp", n) for n in names]
        # region membership is built per block from these (not held as a (lat, lon, region)
        # array, which would grow with the grid for every open writer)
        self._zone = zone
        self._codes = np.where((codes >= 0) & (codes < len(names)), codes, -1).astype(np.int8)
        self._present = np.isin(np.arange(len(names)), self._codes)
        self.sums: dict[str, np.ndarray] = {}

    def _membership(self, sl) -> np.ndarray:
        """(cells, region) 0/1 weights of the cells of block ``sl``: global, zone, IGBP class."""
        codes = self._codes[sl]
        zone = np.broadcast_to(self._zone[sl[0]][:, None], codes.shape).ravel()
        m = np.zeros((codes.size, len(self.regions)))
        m[:, 0] = 1.0
        rows = np.arange(codes.size)
        ok = zone >= 0
        m[rows[ok], 1 + zone[ok]] = 1.0
        c = codes.ravel().astype(np.int64)
        ok = c >= 0
        m[rows[ok], 1 + len(ZONES) + c[ok]] = 1.0
        return m

    def add(self, i0: int, j0: int, **fluxes) -> None:
        """Add a (time, lat, lon) block at (i0, j0) of each named flux (g m-2 d-1, NaN = none);
        ``X_sd`` names add to the spread of ``X``."""
        for name, block in fluxes.items():
            block = np.asarray(block, dtype=np.float64)
            if block.ndim != 3:
                continue
            ny, nx = block.shape[1:]
            sl = (slice(i0, i0 + ny), slice(j0, j0 + nx))
            w = (np.nan_to_num(block) * self.weights[sl]).reshape(block.shape[0], -1)
            m = self._membership(sl)
            part = w @ m  # (time, region) grams per day
            if name not in self.sums:
                self.sums[name] = np.zeros((len(self.days), len(self.regions)))
            self.sums[name] += part

    def table(self, period: str = "month") -> pd.DataFrame:
        """Long table: period (YYYY-MM or YYYY), kind (global/zonal/igbp), region, variable,
        total_PgC, sd_PgC (NaN without a spread layer), days summed. IGBP classes with no land
        in the product are left out."""
        key = self.days.strftime("%Y-%m" if period == "month" else "%Y")
        rows = []
        fluxes = [n for n in self.sums if not n.endswith("_sd")]
        for name in fluxes:
            tot = pd.DataFrame(self.sums[name], index=key).groupby(level=0, sort=True).sum() / G_PER_PG
            sd = (pd.DataFrame(self.sums[f"{name}_sd"], index=key).groupby(level=0, sort=True).sum() / G_PER_PG
                  if f"{name}_sd" in self.sums else None)
            ndays = pd.Series(1, index=key).groupby(level=0, sort=True).sum()
            for r, (kind, region) in enumerate(self.regions):
                if kind == "igbp" and not self._present[r - 1 - len(ZONES)]:
                    continue
                for p in tot.index:
                    rows.append((p, kind, region, name, float(tot.loc[p, r]),
                                 float(sd.loc[p, r]) if sd is not None else np.nan, int(ndays[p])))
        return pd.DataFrame(rows, columns=COLUMNS)

    def attrs(self) -> dict:
        """Global attributes: each year's global and zonal totals per flux, with their spreads, and
        the days behind each (fewer than the year's where the file covers part of it)."""
        yearly = self.table("year")
        out: dict = {"totals_comment": (
            "Pg C per year: sum over days and cells of flux x cell_area x land_fraction; *_sd is the sum of "
            "the cells' ensemble spreads (members fully correlated). Monthly, zonal and per-IGBP totals in "
            "the totals CSV beside the file.")}
        for name, grp in yearly[yearly["kind"].isin(["global", "zonal"])].groupby("variable", sort=False):
            for kind, sub in grp.groupby("kind", sort=False):
                if kind == "global":
                    out[f"total_{name}_PgC_per_year"] = np.round(sub["total_PgC"].to_numpy(), 4)
                    if sub["sd_PgC"].notna().all():
                        out[f"total_{name}_sd_PgC_per_year"] = np.round(sub["sd_PgC"].to_numpy(), 4)
                else:
                    for region, z in sub.groupby("region", sort=False):
                        out[f"total_{name}_{region.replace('-', '_to_')}_PgC_per_year"] = np.round(z["total_PgC"].to_numpy(), 4)
        out["total_years"] = " ".join(sorted(yearly["period"].unique()))
        days = yearly.drop_duplicates("period").sort_values("period")["days"].to_numpy()
        # a file covering part of a year sums the days it has: the year's total needs them all
        out["total_days_per_year"] = days.astype(np.int32)
        return out


def product_totals(ds, *, block_rows: int = 30) -> Totals:
    """Totals of an opened product (``cbgrid.product.open_product``), read ``block_rows`` rows
    of cells at a time."""
    days = ds.indexes["time"].normalize()
    t = Totals(ds["lat"].values, ds["lon"].values, days, land_fraction=ds["land_fraction"].values,
               igbp=ds["igbp"].values, cell_area=ds["cell_area"].values if "cell_area" in ds else None)
    names = [n for n in ("GPP", "RECO", "NEE", "GPP_sd", "RECO_sd", "NEE_sd") if n in ds]
    for i0 in range(0, ds.sizes["lat"], block_rows):
        block = ds[names].isel(lat=slice(i0, i0 + block_rows)).load()
        t.add(i0, 0, **{n: block[n].values for n in names})
    return t


def totals_tables(t: Totals) -> Mapping[str, pd.DataFrame]:
    """{'month': ..., 'year': ...} tables, one CSV layout."""
    return {"month": t.table("month"), "year": t.table("year")}
