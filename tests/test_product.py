"""The CF-1.8 product writer: layout, encodings, NEE balance, atomic writes, compliance."""

from __future__ import annotations

import shutil
import subprocess

import netCDF4
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from cbgrid import product
from cbgrid.grid import Grid
from cbgrid.testing import random_context, random_fluxes


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    g = Grid(10.0)
    days = pd.date_range("2020-07-01", periods=6, freq="D")
    f = random_fluxes(g.lat, g.lon, days)
    ctx = random_context(g.lat, g.lon)
    attrs = product.global_attrs(title="test product", source="unit test", runs=["runs/a", "runs/b"],
                                 extra=product.score_attrs(pd.DataFrame({
                                     "target": ["GPP_NT_VUT_USTAR50"] * 3, "metric": ["R2", "RMSE", "nMAE"],
                                     "n_sites": [12] * 3, "p25": [0.5, 1.0, 0.2], "p50": [0.7, 1.5, 0.3],
                                     "p75": [0.8, 2.0, 0.4]}), "koppen (seed 0)"))
    path = tmp_path_factory.mktemp("product") / "p_2020-07.nc"
    product.write_product(f, path, context=ctx, attrs=attrs, chunks=(6, 12))
    return path, f, ctx


def test_opens_with_netcdf4_and_xarray_with_cf_coordinates(written):
    path, f, _ = written
    with netCDF4.Dataset(path) as nc:
        assert nc.Conventions == "CF-1.8, ACDD-1.3"
        for c, units, axis in (("lat", "degrees_north", "Y"), ("lon", "degrees_east", "X")):
            v = nc[c]
            assert (v.units, v.axis, v.bounds, v.standard_name) == (units, axis, f"{c}_bnds", {"lat": "latitude", "lon": "longitude"}[c])
            assert "_FillValue" not in v.ncattrs()
            b = nc[f"{c}_bnds"][:]
            np.testing.assert_allclose(b[:, 1] - b[:, 0], 10.0)
            assert ((b[:, 0] <= v[:]) & (v[:] <= b[:, 1])).all()
        t = nc["time"]
        assert t.dtype == np.float64 and t.units == "days since 2000-01-01 00:00:00" and t.calendar == "standard"
        assert t.standard_name == "time" and t.bounds == "time_bnds" and "_FillValue" not in t.ncattrs()
        assert np.all(nc["time_bnds"][:, 0] < t[:]) and np.all(t[:] < nc["time_bnds"][:, 1])
        gpp = nc["GPP"]
        assert gpp.standard_name == "gross_primary_productivity_of_biomass_expressed_as_carbon"
        assert gpp.units == "g m-2 d-1" and "carbon" in gpp.long_name
        assert gpp.dtype == np.float32 and gpp._FillValue == product.FILL
        assert gpp.filters()["zlib"] and gpp.chunking() == [6, 6, 12]
        assert gpp.ancillary_variables == "GPP_sd" and gpp.cell_measures == "area: cell_area"
        assert "time: mean" in gpp.cell_methods
        for name in ("RECO", "NEE"):
            v = nc[name]
            assert "standard_name" not in v.ncattrs() and v.long_name and "carbon" in v.long_name
        assert "positive = carbon flux from the land to the atmosphere" in nc["NEE"].comment
        assert nc["land_fraction"].standard_name == "land_area_fraction"
        assert nc["cell_area"].standard_name == "cell_area" and nc["cell_area"].units == "m2"
        assert nc.zero_shot_GPP_R2_median == pytest.approx(0.7)
        assert nc.zero_shot_split == "koppen (seed 0)"
    ds = xr.open_dataset(path, decode_cf=True)
    assert dict(ds["GPP"].sizes) == {"time": 6, "lat": 18, "lon": 36}
    assert ds.indexes["time"].normalize().equals(f.indexes["time"])
    assert ds["GPP"].dtype == np.float32
    np.testing.assert_array_equal(np.isnan(ds["GPP"].values), np.isnan(f["GPP"].values))
    np.testing.assert_allclose(ds["GPP"].values, f["GPP"].values)
    # class layers stay int8 codes for every reader (no _FillValue; "no_data" is a flag of its own)
    for name in ("igbp", "koppen"):
        assert ds[name].dtype == np.int8 and "_FillValue" not in ds[name].encoding
    flags = dict(zip(ds["igbp"].attrs["flag_values"].tolist(), ds["igbp"].attrs["flag_meanings"].split()))
    assert flags[0] == "WAT" and flags[-1] == "no_data" and flags[16] == "BSV"


def test_nee_is_reco_minus_gpp_bit_for_bit(written):
    path, f, _ = written
    assert product.check_product(path) == []
    with netCDF4.Dataset(path) as nc:
        nc.set_auto_mask(False)
        g, r, n = (nc[k][:] for k in ("GPP", "RECO", "NEE"))
    ok = n != product.FILL
    assert ok.sum() > 0 and (~ok).sum() > 0
    assert np.array_equal((r[ok] - g[ok]).view(np.uint32), n[ok].view(np.uint32))
    # fill exactly where either input is missing; the sd layers are masked alike
    assert np.array_equal(~ok, np.isnan(f["GPP"].values) | np.isnan(f["RECO"].values))


def test_check_product_finds_a_broken_balance(written, tmp_path):
    path, _, _ = written
    bad = tmp_path / "bad.nc"
    shutil.copy(path, bad)
    with netCDF4.Dataset(bad, "a") as nc:
        nee = nc["NEE"][:]
        nee[0, 5, 5] += 1.0
        nc["NEE"][:] = nee
    assert any("NEE != RECO - GPP" in p for p in product.check_product(bad))


def test_compliance_checker_reports_no_errors(written):
    pytest.importorskip("compliance_checker")
    res = product.compliance(written[0])
    assert res["errors"] == []
    assert res["warnings"] == []


def test_cdo_reads_the_product(written):
    if shutil.which("cdo") is None:
        pytest.skip("cdo is not installed")
    out = subprocess.run(["cdo", "sinfo", str(written[0])], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "lonlat" in out.stdout and "points=648 (36x18)" in out.stdout and "Bounds = true" in out.stdout
    names = subprocess.run(["cdo", "-s", "showname", str(written[0])], capture_output=True, text=True, timeout=120)
    assert {"GPP", "RECO", "NEE", "GPP_sd", "land_fraction"} <= set(names.stdout.split())


def test_no_partial_file_under_the_final_name(tmp_path):
    g = Grid(30.0)
    days = pd.date_range("2020-01-01", periods=2)
    f = random_fluxes(g.lat, g.lon, days)
    path = tmp_path / "x.nc"
    with pytest.raises(RuntimeError, match="boom"):
        with product.ProductWriter(path, g.lat, g.lon, days, context=random_context(g.lat, g.lon), attrs={"Conventions": "CF-1.8"}) as w:
            assert not path.exists() and w.tmp.exists() and w.tmp.parent == path.parent
            w.write(0, 0, gpp=f.GPP.values, reco=f.RECO.values, gpp_sd=f.GPP_sd.values, reco_sd=f.RECO_sd.values, nee_sd=f.NEE_sd.values)
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_cell_area_sums_to_the_sphere():
    g = Grid(1.0)
    area = product.cell_area(g.lat, g.lon)
    assert area.shape == (180, 360)
    assert area.sum() == pytest.approx(4 * np.pi * product.EARTH_RADIUS**2, rel=1e-9)
    assert area[90, 0] > area[0, 0] > 0


def test_score_attrs_without_scores_say_so():
    attrs = product.score_attrs(None)
    assert "not available" in attrs["zero_shot_scores"]


def test_the_writer_caches_two_chunks_per_layer_not_the_layer(tmp_path):
    g = Grid(2.0)
    ctx = random_context(g.lat, g.lon)
    days = pd.date_range("2020-07-01", "2020-07-31")
    with product.ProductWriter(tmp_path / "p.nc", g.lat, g.lon, days, context=ctx, attrs={}, chunks=(9, 18)) as w:
        for name in ("GPP", "RECO", "NEE", "GPP_sd", "RECO_sd", "NEE_sd"):
            size, _, preemption = w._nc[name].get_var_chunk_cache()
            assert size == 2 * 31 * 9 * 18 * 4 and preemption == 1.0
