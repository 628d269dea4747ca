"""Product totals: Pg C per month and year, global, zonal and per IGBP, land-fraction weighted,
in the product's attributes and the CSV beside it; ACDD discovery attributes; integer classes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from cbgrid import product, testing, totals
from cbgrid.grid import Grid, cell_area


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    g = Grid(10.0)
    days = pd.date_range("2001-12-30", "2002-01-02")
    f = testing.random_fluxes(g.lat, g.lon, days, seed=4)
    ctx = testing.random_context(g.lat, g.lon, seed=4)
    attrs = product.global_attrs(title="t", source="unit test", runs=["/home/someone/runs/xgb"])
    path = tmp_path_factory.mktemp("totals") / "p.nc"
    product.write_product(f, path, context=ctx, attrs=attrs, chunks=(6, 12))
    return path, f, ctx, g


def test_totals_weight_by_land_fraction_and_sum_days(written):
    path, f, ctx, g = written
    table = pd.read_csv(product.totals_path(path), dtype={"period": str})
    w = cell_area(g.lat, g.lon) * ctx["land_fraction"].values
    gpp = f["GPP"].where(f["RECO"].notnull()).fillna(0).values
    want_year = {"2001": (gpp[:2] * w).sum() / 1e15, "2002": (gpp[2:] * w).sum() / 1e15}
    got = table.query("resolution == 'year' and kind == 'global' and variable == 'GPP'").set_index("period")
    for y, v in want_year.items():
        assert got.loc[y, "total_PgC"] == pytest.approx(v, rel=1e-5)
    assert got.loc["2001", "days"] == 2
    sd = f["GPP_sd"].where(f["GPP"].notnull() & f["RECO"].notnull()).fillna(0).values
    assert got.loc["2001", "sd_PgC"] == pytest.approx((sd[:2] * w).sum() / 1e15, rel=1e-4)
    monthly = table.query("resolution == 'month' and variable == 'NEE'")
    zonal = monthly[monthly["kind"] == "zonal"].groupby("period")["total_PgC"].sum()
    igbp = monthly[monthly["kind"] == "igbp"].groupby("period")["total_PgC"].sum()
    glob = monthly[monthly["kind"] == "global"].set_index("period")["total_PgC"]
    np.testing.assert_allclose(zonal.values, glob.values, rtol=1e-6)
    np.testing.assert_allclose(igbp.values, glob.values, rtol=1e-6)
    with xr.open_dataset(path) as ds:
        np.testing.assert_allclose(ds.attrs["total_GPP_PgC_per_year"], [want_year["2001"], want_year["2002"]], rtol=1e-3)
        assert ds.attrs["total_years"] == "2001 2002" and ds.attrs["totals_file"] == "p_totals.csv"
        assert "total_NEE_30N_to_60N_PgC_per_year" in ds.attrs


def test_acdd_attributes_and_no_local_paths(written):
    path = written[0]
    with xr.open_dataset(path) as ds:
        a = ds.attrs
        for k in ("summary", "license", "creator_name", "creator_type", "time_coverage_start", "time_coverage_end",
                  "geospatial_lat_min", "geospatial_lat_max", "geospatial_lon_min", "geospatial_lon_max"):
            assert a.get(k) not in (None, ""), k
        assert a["time_coverage_start"] == "2001-12-30T00:00:00Z" and a["time_coverage_end"] == "2002-01-03T00:00:00Z"
        assert (a["geospatial_lat_min"], a["geospatial_lat_max"]) == (-90.0, 90.0)
        assert "/home" not in a["history"] and "/home" not in a["runs"] and a["runs"] == "xgb"
        assert "ACDD-1.3" in a["Conventions"]
        for name in ("igbp", "koppen"):
            assert np.issubdtype(ds[name].dtype, np.integer), name
            assert "flag_values" in ds[name].attrs and "flag_meanings" in ds[name].attrs


def test_zone_rows_cover_every_latitude():
    lat = np.array([-89.5, -60.0, -0.5, 0.0, 59.9, 90.0])
    t = totals.Totals(lat, np.array([0.0, 1.0]), pd.date_range("2001-01-01", periods=1),
                      land_fraction=np.ones((6, 2)), igbp=np.ones((6, 2)), cell_area=np.ones((6, 2)))
    t.add(0, 0, GPP=np.ones((1, 6, 2)))
    z = t.table("year").query("kind == 'zonal'").set_index("region")["total_PgC"] * 1e15
    assert z.sum() == 12 and z["60S-30S"] == 2 and z["0-30N"] == 2 and z["60N-90N"] == 2
