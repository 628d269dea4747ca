"""Model output scored at the towers: units, reading CMIP-style files, sampling, monthly and
daily scores in the evaluate layout, and every bad input the validation refuses or warns about."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from cbgrid import esm, testing, units, validate
from cbgrid import evaluation as ev
from cbgrid.cli import main
from cbgrid.errors import InputError
from cbgrid.schema import GPP, NEE, QC, RECO, SITE
from cbgrid.store import write_store

pytest.importorskip("cf_units")

RES = 5.0
LAT = np.arange(-90 + RES / 2, 90, RES)
LON = np.arange(-180 + RES / 2, 180, RES)


def _cell(v, axis):
    return np.clip(np.floor((np.asarray(v) - axis[0] + RES / 2) / RES).astype(int), 0, axis.size - 1)


@pytest.fixture(scope="module")
def store():
    """Six catalog sites in distinct 5-degree cells, 2 years, QC = 1 every day."""
    from cbgrid import catalog

    cat = catalog.sites()
    cat = cat.assign(i=_cell(cat["lat"], LAT), j=_cell(cat["lon"], LON)).drop_duplicates(["i", "j"])
    return testing.site_store(sites=cat["site"].iloc[:6].tolist(), start="2001-01-01", days=730, qc_fraction=1.0)


def _truth(store, noise=0.0, seed=0) -> xr.Dataset:
    """(time, lat, lon) GPP_true/RECO_true equal to the store's observations in each site's cell."""
    rng = np.random.default_rng(seed)
    shape = (store.sizes["time"], LAT.size, LON.size)
    gpp, reco = np.full(shape, np.nan), np.full(shape, np.nan)
    i, j = _cell(store["lat"].values, LAT), _cell(store["lon"].values, LON)
    gpp[:, i, j] = store[GPP].values.T + noise * rng.standard_normal((shape[0], i.size))
    reco[:, i, j] = store[RECO].values.T
    return xr.Dataset({"GPP_true": (("time", "lat", "lon"), gpp), "RECO_true": (("time", "lat", "lon"), reco)},
                      coords={"time": store.indexes["time"], "lat": LAT, "lon": LON})


def _model(store, tmp_path, name="m.nc", **kw):
    ds = testing.cmip_model(LAT, LON, "2001-01-01", "2002-12-31", truth=_truth(store, kw.pop("noise", 0.0)), **kw)
    path = tmp_path / name
    ds.to_netcdf(path)
    return path


# ---------------------------------------------------------------------------------------- units
@pytest.mark.parametrize("text, factor", [
    ("gC m-2 d-1", 1.0), ("g m-2 d-1", 1.0), ("kg m-2 s-1", 86400e3), ("kg C m-2 s-1", 86400e3),
    ("g C/m2/day", 1.0), ("gC m-2 yr-1", 1 / 365.242198781), ("umol CO2 m-2 s-1", 86400 * 1e-6 * 12.011),
    ("mol m-2 s-1", 86400 * 12.011),
])
def test_units_convert_to_the_store_unit(text, factor):
    assert units.conversion_factor(text) == pytest.approx(factor, rel=1e-6)


@pytest.mark.parametrize("text, words", [(None, "no 'units'"), ("", "no 'units'"), ("K", "not a carbon flux"),
                                         ("kg m-2", "not a carbon flux"), ("furlongs per fortnight", "not a carbon flux"), ("kgC/m2/s@@", "not readable")])
def test_units_that_are_no_carbon_flux_are_refused(text, words):
    with pytest.raises(InputError, match=words):
        units.conversion_factor(text, what="m.nc: variable 'gpp'")


# ---------------------------------------------------------------------------------------- files
@pytest.mark.parametrize("calendar", ["noleap", "360_day", "standard"])
def test_monthly_file_reads_as_month_means_in_store_units(store, tmp_path, calendar):
    path = _model(store, tmp_path, calendar=calendar, lon_360=True, lat_descending=True)
    ds = esm.open_model(path)
    assert ds.attrs["time_scale"] == "monthly" and ds.attrs["calendar"] == calendar
    assert ds.indexes["time"].equals(pd.date_range("2001-01-01", periods=24, freq="MS"))
    assert np.all(np.diff(ds["lat"].values) > 0) and ds["lon"].values.min() < 0 and np.all(np.diff(ds["lon"].values) > 0)
    s = store.isel(site=0)
    i, j = _cell(float(s["lat"]), LAT), _cell(float(s["lon"]), LON)
    want = s[GPP].to_series().resample("MS").mean().values
    np.testing.assert_allclose(ds[GPP].isel(lat=i, lon=j).values, want, rtol=1e-5)
    np.testing.assert_allclose(ds[NEE].isel(lat=i, lon=j).values, s[NEE].to_series().resample("MS").mean().values,
                               rtol=1e-4, atol=1e-5)
    assert ds.attrs["derivation"] == "GPP = gpp; RECO = ra+rh; NEE = -nep"


def test_subdaily_file_is_averaged_to_days_and_noleap_lacks_29_february(tmp_path):
    st = testing.site_store(n_sites=2, start="2004-02-27", days=4, qc_fraction=1.0)
    truth = _truth(st)
    ds = testing.cmip_model(LAT, LON, "2004-02-27", "2004-03-01", freq="subdaily", truth=truth, calendar="noleap")
    ds.to_netcdf(tmp_path / "m.nc")
    m = esm.open_model(tmp_path / "m.nc")
    assert m.attrs["time_scale"] == "daily"
    assert list(m.indexes["time"].strftime("%m-%d")) == ["02-27", "02-28", "03-01"]
    i, j = _cell(float(st["lat"][0]), LAT), _cell(float(st["lon"][0]), LON)
    np.testing.assert_allclose(m[GPP].isel(lat=i, lon=j).values, st[GPP].isel(site=0).values[[0, 1, 3]], rtol=1e-5)


def test_missing_time_bounds_are_inferred_with_a_named_warning(store, tmp_path):
    path = _model(store, tmp_path, time_bounds=False)
    with pytest.warns(esm.TimeBoundsWarning, match="no time bounds"):
        ds = esm.open_model(path)
    assert ds.sizes["time"] == 24


def test_npp_as_gpp_and_rh_as_reco_are_refused_with_why(store, tmp_path):
    path = _model(store, tmp_path, variables=("npp", "rh"))
    with pytest.raises(InputError, match="NPP < GPP"):
        esm.open_model(path)
    with pytest.raises(InputError, match="NPP is GPP minus autotrophic respiration"):
        esm.open_model(path, mapping={"GPP": "npp"})
    with pytest.raises(InputError, match="Rh is only the heterotrophic part"):
        esm.open_model(path, mapping={"RECO": "rh"})


def test_mapping_names_other_variables_and_nbp_warns(store, tmp_path):
    ds = testing.cmip_model(LAT, LON, "2001-01-01", "2001-12-31", truth=_truth(store), variables=("gpp", "nbp"))
    ds = ds.rename({"gpp": "GPP_mean"})
    ds.to_netcdf(tmp_path / "fx.nc")
    with pytest.warns(esm.ApproximationWarning, match="nbp"):
        m = esm.open_model(tmp_path / "fx.nc", mapping=esm.mapping_from_args(["GPP=GPP_mean"]))
    assert set(m.data_vars) == {GPP, NEE}
    with pytest.raises(InputError, match="no variable maps to"):
        esm.open_model(tmp_path / "fx.nc", targets=["RECO"])
    with pytest.raises(InputError, match="no variable \\['gpp_x'\\]"):
        esm.open_model(tmp_path / "fx.nc", mapping={"GPP": "gpp_x"})


def test_bad_units_and_unreadable_calendar_are_refused(store, tmp_path):
    ds = testing.cmip_model(LAT, LON, "2001-01-01", "2001-03-31", truth=_truth(store), variables=("gpp",))
    bad = ds.copy()
    bad["gpp"].attrs["units"] = "K"
    bad.to_netcdf(tmp_path / "k.nc")
    with pytest.raises(InputError, match="k.nc: variable 'gpp': units 'K' are not a carbon flux"):
        esm.open_model(tmp_path / "k.nc")
    del bad["gpp"].attrs["units"]
    bad.to_netcdf(tmp_path / "none.nc")
    with pytest.raises(InputError, match="no 'units' attribute"):
        esm.open_model(tmp_path / "none.nc")
    raw = xr.Dataset({"gpp": (("time", "lat", "lon"), np.ones((2, 2, 2), np.float32), {"units": "kg m-2 s-1"})},
                     coords={"time": ("time", [15.0, 45.0], {"units": "days since 2001-01-01", "calendar": "martian"}),
                             "lat": [0.5, 1.5], "lon": [0.5, 1.5]})
    raw.to_netcdf(tmp_path / "cal.nc")
    with pytest.raises(InputError, match="cannot be decoded by cftime"):
        esm.open_model(tmp_path / "cal.nc")



def test_a_model_in_the_wrong_units_is_refused_where_it_is_read(store, tmp_path):
    """gC m-2 s-1 labelled kg m-2 s-1 (1000 times too large) passes the units check; the plausible
    range of the store's GPP catches it when the values are read."""
    ds = testing.cmip_model(LAT, LON, "2001-01-01", "2001-03-31", truth=_truth(store), variables=("gpp",))
    ds["gpp"] = (ds["gpp"] * 1000.0).assign_attrs(ds["gpp"].attrs)
    ds.to_netcdf(tmp_path / "g.nc")
    model = esm.open_model(tmp_path / "g.nc")  # lazy: nothing read yet
    with pytest.raises(InputError, match=r"g.nc: GPP_NT_VUT_USTAR50 = [\d.e+]+ gC m-2 d-1 outside its plausible "
                                         r"range \[-10, 60\]"):
        model[GPP].compute()
    data = (tmp_path / "g.nc").read_bytes()
    (tmp_path / "cut.nc").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut.nc: cannot be read \(.*\); check the file is complete"):
        esm.open_model(tmp_path / "cut.nc")


def test_a_model_with_gpp_only_is_scored_and_plotted_for_gpp(store, tmp_path):
    ds = testing.cmip_model(LAT, LON, "2001-01-01", "2002-12-31", truth=_truth(store), variables=("gpp",))
    ds.to_netcdf(tmp_path / "gpp.nc")
    write_store(store, tmp_path / "store.zarr", progress=False)
    assert main(["-q", "validate", str(tmp_path / "gpp.nc"), "--store", str(tmp_path / "store.zarr"),
                 "--out", str(tmp_path / "r"), "--min-scored", "6"]) == 0
    figures = sorted(p.name for p in (tmp_path / "r").glob("*.png"))
    assert "distribution_GPP.png" in figures and not [f for f in figures if "RECO" in f or "NEE" in f]

# ---------------------------------------------------------------------------------------- sampling
def test_nearest_ties_go_to_the_lower_index_and_masked_cells_are_skipped():
    lat, lon = np.array([0.5, 1.5, 2.5]), np.array([0.5, 1.5, 2.5])
    valid = np.ones((3, 3), bool)
    ii, jj, _ = validate.nearest_cells(lat, lon, valid, [1.0, 1.0], [1.0, 1.5])
    assert (ii.tolist(), jj.tolist()) == ([0, 0], [0, 1])
    valid[0, 0] = False
    ii, jj, _ = validate.nearest_cells(lat, lon, valid, [0.6], [0.6])
    assert (int(ii[0]), int(jj[0])) in {(0, 1), (1, 0)} and (int(ii[0]), int(jj[0])) == (0, 1)


def test_bilinear_wraps_the_date_line_and_falls_back_to_nearest():
    lat, lon = np.array([-0.5, 0.5]), np.arange(-179.5, 180, 1.0)
    ii, jj, w, ok = validate.bilinear(lat, lon, np.ones((2, 360), bool), [0.0], [179.9])
    assert sorted(set(jj[0].tolist())) == [0, 359] and w.sum() == pytest.approx(1.0) and ok[0]
    m = xr.Dataset({GPP: (("time", "lat", "lon"), np.arange(4.0).reshape(1, 2, 2))},
                   coords={"time": pd.date_range("2001-01-01", periods=1), "lat": [0.5, 1.5], "lon": [0.5, 1.5]})
    where = validate.sampling(m, pd.DataFrame({"site": ["A"], "lat": [1.0], "lon": [1.0]}), "bilinear")
    assert float(validate.sample(m, where)[GPP].squeeze()) == pytest.approx(1.5)
    m[GPP][0, 1, 1] = np.nan
    where = validate.sampling(m, pd.DataFrame({"site": ["A"], "lat": [1.0], "lon": [1.0]}), "bilinear")
    assert float(validate.sample(m, where)[GPP].squeeze()) == 0.0  # nearest valid cell, ties to the lower index


# ---------------------------------------------------------------------------------------- scoring
def test_monthly_observations_follow_the_qc_and_min_days_rules():
    st = testing.site_store(n_sites=1, start="2001-01-01", days=59, qc_fraction=0.5, seed=3)
    obs = validate.monthly_observations(st, [str(st[SITE].values[0])], [GPP], min_days=10)
    s = st.isel(site=0).to_dataframe()
    good = s[s[QC] == 1]
    for month, grp in good.groupby(good.index.month):
        got = float(obs[GPP].isel(site=0, time=month - 1))
        if len(grp) >= 10:
            assert got == pytest.approx(grp[GPP].mean(), rel=1e-6)
        else:
            assert np.isnan(got)
    assert obs["n_qc_days"].sel(target=GPP).values.ravel().tolist() == good.groupby(good.index.month).size().tolist()


def test_a_model_equal_to_the_observations_scores_perfectly_in_the_evaluate_layout(store, tmp_path):
    path = _model(store, tmp_path, "gpp_Lmon_TEST.nc", calendar="noleap", units="kg m-2 s-1")
    out = tmp_path / "val"
    v = validate.validate_sites([path], store, out, plots=False, min_scored=6)
    s = v.experiments[0].scores
    assert s.attrs["time_scale"] == "monthly" and s.attrs["sites_scored"] == validate.ALL_SITES
    r2 = s["score"].sel(metric="R2").values
    assert np.all(np.isfinite(r2)) and np.allclose(r2, 1.0, atol=1e-5)
    assert (s["n_days"].values == 24).all()
    assert v.experiments[0].key == ("CBGRID-TWIN", "all-sites", validate.PROCESS_MODEL, "monthly")
    for f in ("scores.nc", "scores.csv", "summary.csv", "breakdown_igbp.csv", "report.md"):
        assert (out / f).exists(), f
    assert "every site is out of sample" in (out / "report.md").read_text()


def test_daily_model_is_scored_as_zero_shot_scoring_is(store, tmp_path):
    path = _model(store, tmp_path, "daily.nc", freq="daily", calendar="standard", noise=1.0, units="g m-2 d-1")
    exp, where = validate.score_model([path], store)
    pred = exp.predictions
    direct = ev.evaluate(pred, store, [str(s) for s in store[SITE].values])
    xr.testing.assert_allclose(exp.scores["score"], direct["score"])
    assert exp.scores.attrs["time_scale"] == "daily" and float(exp.scores["score"].sel(metric="R2", target=RECO).min()) > 0.999
    assert float(exp.scores["score"].sel(metric="R2", target=GPP).max()) < 0.99  # the noise is scored


def test_sites_outside_the_grid_are_named_and_no_common_period_is_an_error(store, tmp_path, caplog):
    ds = testing.cmip_model(LAT, LON, "2001-01-01", "2002-12-31", truth=_truth(store))
    first = store.isel(site=0)
    i = _cell(float(first["lat"]), LAT)
    lo = i + 1 if i + 1 < LAT.size else i - 1
    part = ds.isel(lat=slice(lo, None)) if lo > i else ds.isel(lat=slice(None, lo + 1))
    part.to_netcdf(tmp_path / "regional.nc")
    name = str(first[SITE].values)
    exp, where = validate.score_model([tmp_path / "regional.nc"], store, min_scored=6)
    assert name in where.outside and name in caplog.text and "outside the model grid" in caplog.text
    assert int(exp.scores["status"].sel(site=name).max()) & ev.NO_PREDICTION
    old = testing.cmip_model(LAT, LON, "1990-01-01", "1990-12-31", truth=_truth(store).assign_coords(
        time=pd.date_range("1990-01-01", periods=store.sizes["time"])))
    old.to_netcdf(tmp_path / "old.nc")
    with pytest.raises(InputError, match="no common period"):
        validate.score_model([tmp_path / "old.nc"], store)


def test_cli_validate_writes_the_report_and_errors_in_one_line(store, tmp_path, capsys):
    path = _model(store, tmp_path)
    write_store(store, tmp_path / "store.zarr", progress=False)
    rc = main(["-q", "validate", str(path), "--store", str(tmp_path / "store.zarr"), "--out", str(tmp_path / "r"),
               "--no-plots", "--min-scored", "6", "--method", "bilinear"])
    assert rc == 0 and (tmp_path / "r" / "scores.nc").exists()
    assert "CBGRID-TWIN: monthly output" in capsys.readouterr().out
    npp = _model(store, tmp_path, "npp.nc", variables=("npp",))
    rc = main(["-q", "validate", str(npp), "--store", str(tmp_path / "store.zarr"), "--out", str(tmp_path / "r2")])
    err = capsys.readouterr().err
    assert rc == 2 and "NPP" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r2").exists()


def test_cmip_model_from_the_twin_is_cmip_shaped(tmp_path):
    lat, lon = np.array([45.5, 46.5]), np.array([-91.5, -90.5, -89.5])
    ds = testing.cmip_model(lat, lon, "2001-01-01", "2001-02-28")
    assert ds["gpp"].attrs["units"] == "kg m-2 s-1" and ds["lon"].values.min() > 180
    assert ds.sizes["time"] == 2 and "time_bnds" in ds
    ds.to_netcdf(tmp_path / "t.nc")
    m = esm.open_model(tmp_path / "t.nc")
    assert float(m[GPP].mean()) > 0


# ---------------------------------------------------------------------------------------- export
def test_export_ilamb_is_monthly_lowercase_with_bounds_and_nep(tmp_path):
    from cbgrid import export, product
    from cbgrid.grid import Grid

    g = Grid(30.0)
    days = pd.date_range("2004-01-15", "2004-03-31")  # January in part: left out; 29 February averaged in
    f = testing.random_fluxes(g.lat, g.lon, days, seed=2)
    ctx = testing.random_context(g.lat, g.lon, seed=2)
    product.write_product(f, tmp_path / "p.nc", context=ctx, attrs=product.global_attrs(title="t", source="s", runs=[]))
    files = export.ilamb([tmp_path / "p.nc"], tmp_path / "ilamb")
    gpp = xr.open_dataset(files["gpp"])
    nep = xr.open_dataset(files["nep"])
    nee = xr.open_dataset(files["nee"])
    assert list(gpp.indexes["time"].strftime("%Y-%m")) == ["2004-02", "2004-03"]
    assert gpp["time"].encoding["calendar"] == "standard" and "time_bnds" in gpp
    assert (gpp["time_bnds"].values[0, 1] - gpp["time_bnds"].values[0, 0]) / np.timedelta64(1, "D") == 29
    want = f["GPP"].where(f["RECO"].notnull()).sel(time=slice("2004-02-01", "2004-02-29")).mean("time")
    np.testing.assert_allclose(gpp["gpp"].isel(time=0).values, want.values, rtol=1e-5)
    np.testing.assert_allclose(nep["nep"].values, -nee["nee"].values)
    assert nep["nep"].attrs["standard_name"].startswith("surface_net_downward_mass_flux_of_carbon_dioxide")
    assert gpp["gpp"].attrs["standard_name"] == "gross_primary_productivity_of_biomass_expressed_as_carbon"
    cfg = files["cfg"].read_text()
    assert 'source   = "DATA/cbgrid/gpp.nc"' in cfg and "variable: nep" in files["yaml"].read_text()


def test_export_ilamb_sites_is_time_by_data_with_site_positions(store, tmp_path):
    from cbgrid import export

    files = export.ilamb_sites(store, tmp_path / "sites")
    ds = xr.open_dataset(files["gpp"])
    assert ds["gpp"].dims == ("time", "data") and ds.sizes["data"] == store.sizes["site"]
    assert ds["lat"].dims == ("data",) and list(ds["site_name"].values) == [str(s) for s in store[SITE].values]
    want = store[GPP].isel(site=0).to_series().resample("MS").mean().values
    np.testing.assert_allclose(ds["gpp"].isel(data=0).values, want, rtol=1e-5)
    np.testing.assert_allclose(xr.open_dataset(files["nep"])["nep"].values, -xr.open_dataset(files["nee"])["nee"].values)


def test_ilamb_scores_the_export_where_installed(store, tmp_path):
    """Runs ILAMB 2.7 (ilamb-run, needs an MPI runtime) on the site export against a CMIP-style model."""
    import shutil
    import subprocess

    pytest.importorskip("ILAMB")
    if shutil.which("ilamb-run") is None or shutil.which("mpirun") is None:
        pytest.skip("ilamb-run or an MPI runtime is not installed")
    from cbgrid import export

    root = tmp_path / "root"
    export.ilamb_sites(store, root / "DATA" / "cbgrid")
    model = root / "MODELS" / "TWIN"
    model.mkdir(parents=True)
    ds = testing.cmip_model(LAT, LON, "2001-01-01", "2002-12-31", truth=_truth(store, noise=0.5), variables=("gpp",))
    ds.to_netcdf(model / "gpp_Lmon_TWIN.nc")
    cfg = tmp_path / "sites.cfg"
    cfg.write_text('[h1: Ecosystem and Carbon Cycle]\n[h2: Gross Primary Productivity]\nvariable = "gpp"\n\n'
                   '[CBGRID]\nsource = "DATA/cbgrid/gpp.nc"\n')
    res = subprocess.run(["ilamb-run", "--config", str(cfg), "--model_root", str(root / "MODELS"),
                          "--build_dir", str(tmp_path / "_build")], capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "ILAMB_ROOT": str(root)})
    assert res.returncode == 0, res.stderr[-2000:]
    found = list((tmp_path / "_build").rglob("scalar_database.csv"))
    assert found, f"ILAMB wrote no scores: {res.stdout[-2000:]}"
    table = pd.read_csv(found[0])
    got = table[(table["Model"] == "TWIN") & (table["ScalarType"] == "score")].set_index("ScalarName")["Data"]
    assert {"Bias Score", "RMSE Score", "Seasonal Cycle Score"} <= set(got.index), got
    assert ((got > 0) & (got <= 1)).all()


# ---------------------------------------------------------------------------------------- on the grid
@pytest.fixture(scope="module")
def product_file(tmp_path_factory):
    from cbgrid import product
    from cbgrid.grid import Grid

    g = Grid(10.0)
    days = pd.date_range("2003-01-01", "2003-03-31")
    f = testing.random_fluxes(g.lat, g.lon, days, seed=5)
    ctx = testing.random_context(g.lat, g.lon, seed=5)
    path = tmp_path_factory.mktemp("prod") / "p.nc"
    product.write_product(f, path, context=ctx, attrs=product.global_attrs(title="t", source="s", runs=[]))
    truth = xr.Dataset({"GPP_true": f["GPP"].where(f["RECO"].notnull()), "RECO_true": f["RECO"].where(f["GPP"].notnull())})
    return path, truth, g


def test_a_model_equal_to_the_product_has_no_bias_and_the_same_totals(product_file, tmp_path):
    pytest.importorskip("xarray_regrid")
    from cbgrid import compare

    path, truth, g = product_file
    m = testing.cmip_model(g.lat, g.lon, "2003-01-01", "2003-03-31", truth=truth, variables=("gpp", "ra", "rh", "nep"))
    m.to_netcdf(tmp_path / "m.nc")
    c = compare.compare_with_product([tmp_path / "m.nc"], [path], tmp_path / "cmp", plots_=False)
    assert c.regridded == "none (same grid)"
    assert float(np.nanmax(np.abs(c.maps["GPP_bias"]))) < 1e-5
    r = c.maps["GPP_correlation"].values
    assert np.nanmin(r[np.isfinite(r)]) > 0.9999
    t = c.totals.pivot_table(index=["year", "variable"], columns="source", values="total_PgC")
    np.testing.assert_allclose(t["model"], t["product"], rtol=1e-5)
    seas = c.seasonal.query("kind == 'zonal' and variable == 'RECO'").pivot_table(
        index=["region", "month"], columns="source", values="mean")
    np.testing.assert_allclose(seas["model"], seas["product"], rtol=1e-5)
    for f in ("maps.nc", "zonal_means.csv", "seasonal_cycle.csv", "totals.csv"):
        assert (tmp_path / "cmp" / f).exists()


def test_a_coarser_model_is_compared_on_its_grid_and_no_common_period_is_an_error(product_file, tmp_path):
    pytest.importorskip("xarray_regrid")
    from cbgrid import compare

    path, truth, g = product_file
    coarse = truth.coarsen(lat=2, lon=2).mean()
    m = testing.cmip_model(coarse.lat.values, coarse.lon.values, "2003-01-01", "2003-03-31", truth=coarse)
    m.to_netcdf(tmp_path / "m.nc")
    c = compare.compare_with_product([tmp_path / "m.nc"], [path], tmp_path / "cmp", plots_=True, targets=["GPP"])
    assert c.regridded.startswith("product to the model grid (20 degree)")
    assert c.maps.sizes == {"lat": 9, "lon": 18} and (tmp_path / "cmp" / "bias_GPP.png").exists()
    late = testing.cmip_model(g.lat, g.lon, "1990-01-01", "1990-03-31", truth=truth.assign_coords(
        time=pd.date_range("1990-01-01", periods=truth.sizes["time"])))
    late.to_netcdf(tmp_path / "late.nc")
    with pytest.raises(InputError, match="share no month"):
        compare.compare_with_product([tmp_path / "late.nc"], [path], tmp_path / "cmp2")
    assert not (tmp_path / "cmp2").exists()


def test_cli_export_and_validate_product(product_file, tmp_path, capsys):
    pytest.importorskip("xarray_regrid")
    path, truth, g = product_file
    rc = main(["-q", "export", "ilamb", str(path), "--out", str(tmp_path / "ilamb")])
    assert rc == 0 and sorted(p.name for p in (tmp_path / "ilamb").iterdir()) == [
        "gpp.nc", "ilamb.cfg", "ilamb3.yaml", "nee.nc", "nep.nc", "reco.nc"]
    m = testing.cmip_model(g.lat, g.lon, "2003-01-01", "2003-03-31", truth=truth)
    m.to_netcdf(tmp_path / "m.nc")
    rc = main(["-q", "validate", str(tmp_path / "m.nc"), "--product", str(path), "--out", str(tmp_path / "cmp"),
               "--no-plots"])
    assert rc == 0 and "none (same grid)" in capsys.readouterr().out
    rc = main(["-q", "validate", str(tmp_path / "m.nc"), "--out", str(tmp_path / "x")])
    assert rc == 2 and "--store STORE" in capsys.readouterr().err


def test_a_cbgrid_product_opens_as_a_daily_model(product_file):
    path, truth, g = product_file
    m = esm.open_model(path)
    assert m.attrs["time_scale"] == "daily" and set(m.data_vars) == {GPP, RECO, NEE}
    assert m.attrs["derivation"] == "GPP = GPP; RECO = RECO; NEE = NEE" and m.sizes["time"] == 90
    np.testing.assert_allclose(m[GPP].isel(time=5).values, truth["GPP_true"].isel(time=5).values, rtol=1e-6)
