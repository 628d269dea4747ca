"""Earth Engine acquisition, tested at the ``ee`` boundary with an evaluating fake (tests/fake_ee.py).

The fake computes the server-side expressions cbgrid builds (masks, cloud bits, window means)
on known pixels; expected values here are computed independently with numpy. The live test
(marked ``network``) runs only where Earth Engine credentials exist.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import dask
import fake_ee
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from fake_ee import ANGLE_FILL, ERA5_ID, MODIS_ID, REFL_FILL, EEException, World

from cbgrid import catalog, schema, store
from cbgrid.cli import main
from cbgrid.recipe import parse_recipe
from cbgrid.sources import earthengine as E
from cbgrid.sources.twin import TwinDrivers

START, END = "2003-12-30", "2004-02-16"  # two year-chunks; 2004-02-14 (doy 45) has no MOD09GA image
REFL = [f"sur_refl_b0{i}" for i in range(1, 8)]
ANGLES = ["SensorZenith", "SensorAzimuth", "SolarZenith", "SolarAzimuth"]
CLOUDY_STATES = [1, 5, 513]  # the fake's state_1km values whose bits 0-1 are 01


@pytest.fixture
def world(monkeypatch):
    # xarray imports every backend (xee, and with it ee) on its first open; do it now, so xee
    # keeps the real ee whatever the test order.
    xr.backends.list_engines()
    w = World()
    monkeypatch.setitem(sys.modules, "ee", fake_ee.make_module(w))
    for var in E.PROJECT_ENV:
        monkeypatch.delenv(var, raising=False)
    w.sleeps = []
    monkeypatch.setattr(E, "_sleep", w.sleeps.append)
    return w


@pytest.fixture
def sites():
    s = catalog.sites()
    return s[s["site"].isin(["AR-SLu", "AT-Neu", "US-Ha1"])].reset_index(drop=True)


def n_tasks(sites, start=START, end=END):
    return len(sites) * len(E.SOURCES) * len(E.time_chunks(start, end))


def expected_site(world, lat, lon, day):
    """Window means computed independently from the fake's raw pixels."""
    ctx = fake_ee.window_ctx(lat, lon)
    out = {}
    for b in REFL:
        v, _ = world.pixels(MODIS_ID, b, day, ctx)
        out[b] = v[v != REFL_FILL].mean() * 1e-4
    for b in ANGLES:
        v, _ = world.pixels(MODIS_ID, b, day, ctx)
        out[b] = v[v != ANGLE_FILL].mean() * 0.01
    state, _ = world.pixels(MODIS_ID, "state_1km", day, ctx)
    out["clouds"] = np.isin(state, CLOUDY_STATES).mean()
    point = fake_ee.window_ctx(lat, lon, (1, 1))
    for b in catalog.era5_bands("minimal"):
        out[b] = world.pixels(ERA5_ID, b, day, point)[0][0, 0]
    return out


# --------------------------------------------------------------------------- requests


def test_window_is_2km_square_around_the_site():
    from pyproj import Geod

    geod = Geod(ellps="WGS84")
    for lat, lon in [(0.0, 10.0), (45.5, -72.2), (-33.46, -66.46), (70.0, 25.0)]:
        w, s, e, n = E.window_bounds(lat, lon)
        assert (w + e) / 2 == pytest.approx(lon) and (s + n) / 2 == pytest.approx(lat)
        ew = geod.inv(w, lat, e, lat)[2]
        ns = geod.inv(lon, s, lon, n)[2]
        assert ew == pytest.approx(2000.0, abs=1.0) and ns == pytest.approx(2000.0, abs=1.0)


def test_site_requests_collections_geometry_scale_and_dates(world, sites, tmp_path):
    E.acquire_sites(sites, START, END, cache_dir=tmp_path, workers=1, progress=False)
    filters = [c[1:] for c in world.calls if c[0] == "filterDate"]
    for cid in (MODIS_ID, ERA5_ID):
        got = sorted({(a, b) for c, a, b in filters if c == cid})
        assert got == [("2003-12-30", "2004-01-01"), ("2004-01-01", "2004-02-17")]
        assert sum(c == cid for c, _, _ in filters) == 2 * len(sites)
    regions = {(c[2], c[3]) for c in world.calls if c[0] == "reduceRegion"}
    for row in sites.itertuples():
        assert ("Rectangle", tuple(E.window_bounds(row.lat, row.lon))) in regions
        assert ("Point", (row.lon, row.lat)) in regions
    for c in world.calls:
        if c[0] == "reduceRegion":
            _, reducer, kind, _, proj, geodesic, scale = c
            assert reducer == "mean"
            if kind == "Rectangle":
                assert (proj, geodesic, scale) == ("EPSG:4326", False, pytest.approx(463.3127, abs=1e-3))
            else:
                assert scale == pytest.approx(11132, abs=1)
    assert world.getinfo_calls == n_tasks(sites)
    assert world.initialized_with == [None]


@pytest.mark.parametrize("feature_set,n", [("minimal", 6), ("standard", 36), ("full", 150)])
def test_era5_band_list_per_feature_set(world, feature_set, n):
    fc = E.site_series(E.ERA5_LAND, 47.1, 11.3, "2004-07-01", "2004-07-03", feature_set)
    selects = [c for c in world.calls if c[0] == "select"]
    assert selects == [("select", ERA5_ID, catalog.era5_bands(feature_set))]
    props = fc.getInfo()["features"][0]["properties"]
    assert len(catalog.era5_bands(feature_set)) == n
    assert set(props) == set(catalog.era5_bands(feature_set)) | {"date"}


def test_time_chunks_are_calendar_years_inside_the_period():
    ch = E.time_chunks("2001-03-05", "2003-01-02")
    assert [(a.date().isoformat(), b.date().isoformat()) for a, b in ch] == [
        ("2001-03-05", "2001-12-31"), ("2002-01-01", "2002-12-31"), ("2003-01-01", "2003-01-02")]
    assert len(E.time_chunks("2004-02-01", "2004-02-01")) == 1
    with pytest.raises(ValueError, match="before"):
        E.time_chunks("2004-02-02", "2004-02-01")


# --------------------------------------------------------------------------- values


def test_site_dataset_names_units_and_values(world, sites, tmp_path):
    ds = E.acquire_sites(sites, START, END, cache_dir=tmp_path, progress=False)
    schema.validate(ds)
    assert list(ds.data_vars) == sorted(ds.data_vars, key=(catalog.modis_bands() + catalog.era5_bands("minimal")).index)
    assert set(ds.data_vars) == set(catalog.features("minimal"))
    assert list(ds.site.values) == list(sites.site)
    assert ds.sizes["time"] == len(pd.date_range(START, END))
    for v in ds.data_vars:
        assert ds[v].dtype == np.float32
        assert ds[v].attrs["units"] == catalog.variable(v)["units"]
    assert ds["sur_refl_b01"].attrs["units"] == "1" and ds["SolarZenith"].attrs["units"] == "degree"
    for i, row in enumerate(sites.itertuples()):
        for day in pd.to_datetime(["2003-12-30", "2004-01-01", "2004-02-13", "2004-02-16"]):
            exp = expected_site(world, row.lat, row.lon, day)
            for name, value in exp.items():
                got = float(ds[name].isel(site=i).sel(time=day))
                assert got == pytest.approx(value, rel=1e-6, abs=1e-7), (row.site, day, name)
    # reflectance in [0, 1], angles in degrees, cloud fraction of a 16-pixel window
    assert float(ds.sur_refl_b07.max()) < 1 and float(ds.SensorZenith.max()) < 180
    clouds = ds.clouds.values[np.isfinite(ds.clouds.values)]
    assert set(np.round(clouds * 16, 6)) <= set(range(17)) and len(set(clouds)) > 1
    # the day without a MOD09GA image is NaN for MODIS and present for ERA5-Land
    gap = ds.sel(time="2004-02-14")
    assert all(bool(gap[b].isnull().all()) for b in catalog.modis_bands())
    assert bool(gap.temperature_2m.notnull().all())


def test_days_before_modis_are_nan_and_cached(world, sites, tmp_path):
    ds = E.acquire_sites(sites.iloc[:1], "1999-12-30", "2000-02-26", cache_dir=tmp_path, progress=False)
    modis = ds.sur_refl_b01.isel(site=0).to_series()
    assert modis[:"2000-02-23"].isna().all() and modis["2000-02-24":].notna().all()
    assert bool(ds.temperature_2m.notnull().all())
    empty = tmp_path / "modis" / sites.site[0] / "1999-12-30_1999-12-31.csv"
    assert empty.exists()
    assert len(pd.read_csv(empty)) == 0  # an empty answer is a result, cached like any other
    calls = world.getinfo_calls
    E.acquire_sites(sites.iloc[:1], "1999-12-30", "2000-02-26", cache_dir=tmp_path, progress=False)
    assert world.getinfo_calls == calls


def test_cloud_state_bits_decoding(world):
    """Only bits 0-1 == 01 counts as cloudy: mixed (10), not set (11) and higher bits do not."""
    ee = sys.modules["ee"]
    img = ee.ImageCollection(MODIS_ID).filterDate("2004-07-01", "2004-07-02").images[0]
    stats = E.modis_image(img).reduceRegion(reducer=ee.Reducer.mean(), geometry=ee.Geometry.Point([0, 0]), scale=1)
    state = world.pixels(MODIS_ID, "state_1km", pd.Timestamp("2004-07-01"), fake_ee.window_ctx(0, 0, (1, 1)))[0]
    assert stats["clouds"] == float(int(state[0, 0]) in CLOUDY_STATES)
    box = E.modis_image(img).reduceRegion(reducer=ee.Reducer.mean(), geometry=ee.Geometry.Rectangle([-1, -1, 1, 1]), scale=1)
    values = world.pixels(MODIS_ID, "state_1km", pd.Timestamp("2004-07-01"), fake_ee.window_ctx(0, 0))[0].astype(int)
    manual = np.array([(v % 4) == 1 for v in values.ravel()]).mean()
    assert box["clouds"] == pytest.approx(manual) and 0 < manual < 1


def test_features_to_frame_nulls_scales_and_dates():
    info = {"features": [
        {"properties": {"date": "2004-01-02", "sur_refl_b01": 1234.0, "SensorZenith": None}},
        {"properties": {"date": "2004-01-01", "sur_refl_b01": None}},
    ]}
    df = E.features_to_frame(info, ["sur_refl_b01", "SensorZenith", "clouds"])
    assert list(df.index.strftime("%Y-%m-%d")) == ["2004-01-01", "2004-01-02"]
    assert df.loc["2004-01-02", "sur_refl_b01"] == pytest.approx(0.1234)
    assert df.isna().sum().tolist() == [1, 2, 2]
    assert E.features_to_frame({"features": []}, ["clouds"]).empty


# --------------------------------------------------------------------------- robustness


def test_retries_rate_limits_with_backoff(world, sites, tmp_path):
    world.fail_at = {1: EEException("Too many concurrent aggregations."), 2: EEException("HTTP Error 503: Service Unavailable")}
    ds = E.acquire_sites(sites, START, END, cache_dir=tmp_path, workers=1, progress=False)
    assert world.getinfo_calls == n_tasks(sites) + 2
    assert len(world.sleeps) == 2
    assert 1.0 <= world.sleeps[0] <= 2.0 and 2.0 <= world.sleeps[1] <= 4.0
    assert bool(ds.sur_refl_b01.notnull().any())


def test_gives_up_after_max_tries(world, sites, tmp_path):
    world.fail_at = {i: EEException("Computation timed out.") for i in range(1, 4)}
    with pytest.raises(E.EarthEngineError, match="still failing after 3 tries"):
        E.acquire_sites(sites, START, END, cache_dir=tmp_path, workers=1, max_tries=3, progress=False)
    assert len(world.sleeps) == 2


def test_non_transient_error_fails_at_once_naming_site_and_chunk(world, sites, tmp_path):
    world.fail_at = {1: EEException("User memory limit exceeded.")}
    with pytest.raises(E.EarthEngineError) as err:
        E.acquire_sites(sites, START, END, cache_dir=tmp_path, workers=1, progress=False)
    msg = str(err.value)
    assert "modis AR-SLu 2003-12-30..2003-12-31" in msg and "User memory limit" in msg and "re-run" in msg
    assert world.sleeps == []


def test_resume_after_failure_fetches_only_missing_chunks(world, sites, tmp_path):
    world.fail_at = {4: EEException("ImageCollection.load: asset not found.")}
    with pytest.raises(E.EarthEngineError):
        E.acquire_sites(sites, START, END, cache_dir=tmp_path / "cache", workers=1, progress=False)
    cached = len(list((tmp_path / "cache").rglob("*.csv")))
    assert 3 <= cached < n_tasks(sites)
    assert not list((tmp_path / "cache").rglob(".*tmp*"))
    before = world.getinfo_calls
    resumed = E.acquire_sites(sites, START, END, cache_dir=tmp_path / "cache", workers=2, progress=False)
    assert world.getinfo_calls - before == n_tasks(sites) - cached
    clean = E.acquire_sites(sites, START, END, cache_dir=tmp_path / "clean", workers=3, progress=False)
    xr.testing.assert_identical(resumed, clean)
    # complete cache: a re-run fetches nothing and needs no Earth Engine at all
    world.credentials = False
    calls = world.getinfo_calls
    again = E.acquire_sites(sites, START, END, cache_dir=tmp_path / "cache", progress=False)
    assert world.getinfo_calls == calls
    xr.testing.assert_identical(again, clean)


def test_cache_of_a_larger_feature_set_serves_a_smaller_one(world, sites, tmp_path):
    E.acquire_sites(sites.iloc[:1], "2004-03-01", "2004-03-05", feature_set="standard", cache_dir=tmp_path, progress=False)
    calls = world.getinfo_calls
    ds = E.acquire_sites(sites.iloc[:1], "2004-03-01", "2004-03-05", feature_set="minimal", cache_dir=tmp_path, progress=False)
    assert world.getinfo_calls == calls
    assert set(ds.data_vars) == set(catalog.features("minimal"))
    E.acquire_sites(sites.iloc[:1], "2004-03-01", "2004-03-05", feature_set="full", cache_dir=tmp_path, progress=False)
    assert world.getinfo_calls == calls + 1  # only ERA5-Land is fetched again


def test_missing_credentials_say_what_to_run(world, sites, tmp_path):
    world.credentials = False
    with pytest.raises(E.CredentialsError, match="earthengine authenticate") as err:
        E.acquire_sites(sites, START, END, cache_dir=tmp_path, progress=False)
    assert "EARTHENGINE_PROJECT" in str(err.value) and "--project" in str(err.value)
    assert world.getinfo_calls == 0


def test_project_from_argument_then_environment(world, monkeypatch):
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "gcp-proj")
    assert E.initialize() == "gcp-proj"
    monkeypatch.setenv("EARTHENGINE_PROJECT", "ee-proj")
    assert E.initialize() == "ee-proj"
    assert E.initialize("cli-proj") == "cli-proj"
    assert E.initialize("cli-proj") == "cli-proj"  # already initialised for this project
    assert world.initialized_with == ["gcp-proj", "ee-proj", "cli-proj"]


# --------------------------------------------------------------------------- CLI and store


def test_cli_sites_creates_then_merges_into_a_store(world, sites, tmp_path, capsys):
    out, cache = tmp_path / "sites.zarr", tmp_path / "cache"
    # an existing store with targets for two of the sites
    days = pd.date_range(START, END)
    gpp = np.arange(2 * len(days), dtype=np.float32).reshape(2, -1)
    store.write_store(schema.site_dataset({schema.GPP: gpp}, sites.iloc[:2], days), out, progress=False)
    argv = ["-q", "acquire", "sites", "--out", str(out), "--cache", str(cache)]
    argv += [a for s in sites.site for a in ("--site", s)]
    assert main(argv) == 0  # period taken from the store
    ds = store.open_store(out)
    assert list(ds.site.values) == list(sites.site)
    assert set(ds.data_vars) == {schema.GPP, *catalog.features("minimal")}
    np.testing.assert_array_equal(ds[schema.GPP].values[:2], gpp)
    assert bool(ds[schema.GPP].isel(site=2).isnull().all())
    direct = E.acquire_sites(sites, START, END, cache_dir=cache, progress=False)
    for v in direct.data_vars:
        np.testing.assert_array_equal(ds[v].values, direct[v].values)
    assert "updated" in capsys.readouterr().out
    calls = world.getinfo_calls
    assert main(argv) == 0  # nothing new to fetch or add
    assert world.getinfo_calls == calls


def test_merge_keeps_or_replaces_features_only_for_the_acquired_sites(sites, tmp_path):
    days = pd.date_range("2004-01-01", periods=5)
    path = tmp_path / "s.zarr"
    first = {"temperature_2m": np.ones((3, 5)), schema.GPP: np.zeros((3, 5))}
    store.write_store(schema.site_dataset(first, sites, days), path, progress=False)
    again = schema.site_dataset({"temperature_2m": np.full((1, 5), 2.0)}, sites.iloc[1:2], days)
    r = store.merge(again, path)
    assert r["sites_added"] == 0 and r["variables_added"] == []
    assert float(store.open_store(path).temperature_2m.sum()) == 15
    store.merge(again, path, overwrite=True)
    np.testing.assert_array_equal(store.open_store(path).temperature_2m.values[:, 0], [1, 2, 1])


def test_cli_sites_failure_leaves_no_store_then_resumes(world, sites, tmp_path, capsys):
    out = tmp_path / "new.zarr"
    argv = ["-q", "acquire", "sites", "--out", str(out), "--start", START, "--end", END, "--workers", "1",
            "--site", "AT-Neu", "--features", "minimal"]
    world.fail_at = {2: EEException("Image.select: Pattern 'x' did not match any bands.")}
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "AT-Neu" in err and "nothing was merged" in err
    assert not out.exists()
    assert main(argv) == 0
    assert store.open_store(out).sizes["site"] == 1
    assert (tmp_path / "new.zarr.ee-cache" / "modis" / "AT-Neu").is_dir()


def test_cli_without_credentials(world, tmp_path, capsys):
    world.credentials = False
    rc = main(["-q", "acquire", "sites", "--out", str(tmp_path / "s.zarr"), "--site", "AT-Neu", "--start", START, "--end", END])
    assert rc == 1
    assert "earthengine authenticate" in capsys.readouterr().err


# --------------------------------------------------------------------------- grids


def _recipe(**grid):
    return parse_recipe({
        "name": "ee-test",
        "drivers": {"source": "earthengine", "feature_set": "minimal", "project": "rec-proj"},
        "grid": {"resolution": 0.5, "region": [5, 45, 7, 46.5], **grid},
        "period": {"start": "2003-12-25", "end": "2004-02-16"},
        "runs": ["runs/x"], "output": "out", "chunks": {"lat": 2, "lon": 3},
    })


class _NoCompute:
    def __call__(self, dsk, keys, **kw):
        raise AssertionError("the grid must stay lazy: something computed")


@pytest.fixture
def fake_xee(world, monkeypatch):
    monkeypatch.setattr(xr, "open_dataset", fake_ee.fake_open_dataset(world))
    return world


def test_open_grid_layout_names_units_and_laziness(fake_xee):
    recipe = _recipe()
    with dask.config.set(scheduler=_NoCompute()):
        ds = E.open_grid(recipe, chunks={"time": 10})
    assert dict(ds.sizes) == {"time": 54, "lat": 3, "lon": 4}
    assert tuple(ds[v].dims for v in ds.data_vars) == (("time", "lat", "lon"),) * len(ds.data_vars)
    np.testing.assert_array_equal(ds.lat.values, recipe.grid.lat)
    np.testing.assert_array_equal(ds.lon.values, recipe.grid.lon)
    assert ds.lat.attrs["units"] == "degrees_north" and ds.lon.attrs["standard_name"] == "longitude"
    assert set(ds.data_vars) == set(catalog.features("minimal"))
    for v in ds.data_vars:
        assert ds[v].dtype == np.float32 and isinstance(ds[v].data, dask.array.Array)
        assert ds[v].attrs["units"] == catalog.variable(v)["units"]
        assert "scale_factor" not in ds[v].encoding
    assert ds.chunks["time"][0] == 10 and ds.chunks["lat"][0] == 2 and ds.chunks["lon"][0] == 3
    assert fake_xee.initialized_with == ["rec-proj"]


def test_open_grid_requests_and_values(fake_xee):
    recipe = _recipe()
    ds = E.open_grid(recipe).compute()
    transform = (0.5, 0.0, 5.0, 0.0, -0.5, 46.5)
    opens = [c for c in fake_xee.calls if c[0] == "open_dataset"]
    assert len(opens) == 4  # two sources x two calendar years
    for _, _what, kw in opens:
        assert kw["crs"] == "EPSG:4326" and kw["crs_transform"] == transform and kw["shape_2d"] == (4, 3)
        assert kw["io_chunks"] == {"index": 32, "width": 3, "height": 2}
    assert sorted((w["collection"], w["start"], w["end"]) for _, w, _ in opens) == sorted(
        (c, a, b) for c in (MODIS_ID, ERA5_ID) for a, b in [("2003-12-25", "2004-01-01"), ("2004-01-01", "2004-02-17")]
    )
    ops = [c for c in fake_xee.calls if c[0] == "image_ops"]
    assert len(ops) == 2 * 54 - 1  # one MODIS day is missing
    for _, _, seq in ops:
        names = [o[0] for o in seq]
        rr, rp = seq[names.index("reduceResolution")], seq[names.index("reproject")]
        assert rr == ("reduceResolution", "mean", True, 65535)
        assert rp == ("reproject", "EPSG:4326", transform, None)
        assert names.index("reduceResolution") < names.index("reproject")
    # values: the fake grid in xee's north-up order, flipped to ascending lat, masked and scaled
    ctx = fake_ee.grid_ctx(transform, (4, 3))
    np.testing.assert_allclose(ctx.lat[::-1, 0], ds.lat.values)
    for day in pd.to_datetime(["2003-12-25", "2004-01-01", "2004-02-16"]):
        for b, scale, fill in [("sur_refl_b02", 1e-4, REFL_FILL), ("SolarAzimuth", 0.01, ANGLE_FILL)]:
            raw = fake_xee.pixels(MODIS_ID, b, day, ctx)[0][::-1]
            exp = np.where(raw == fill, np.nan, raw * scale)
            np.testing.assert_allclose(ds[b].sel(time=day).values, exp, rtol=1e-6)
        state = fake_xee.pixels(MODIS_ID, "state_1km", day, ctx)[0][::-1]
        np.testing.assert_array_equal(ds.clouds.sel(time=day).values, np.isin(state, CLOUDY_STATES).astype(np.float32))
        t2m = fake_xee.pixels(ERA5_ID, "temperature_2m", day, ctx)[0][::-1]
        np.testing.assert_allclose(ds.temperature_2m.sel(time=day).values, t2m, rtol=1e-6)
    assert bool(ds.sur_refl_b01.sel(time="2004-02-14").isnull().all())
    assert bool(ds.temperature_2m.sel(time="2004-02-14").notnull().all())


def test_open_grid_retries_a_rate_limited_open(fake_xee, monkeypatch):
    opened = fake_ee.fake_open_dataset(fake_xee)
    tries = []

    def flaky(ic, **kw):
        tries.append(ic.id)
        if len(tries) == 1:
            raise EEException("Too many concurrent aggregations.")
        return opened(ic, **kw)

    monkeypatch.setattr(xr, "open_dataset", flaky)
    ds = E.open_grid(_recipe())
    assert len(tries) == 5 and tries[0] == tries[1] and len(fake_xee.sleeps) == 1
    assert set(ds.data_vars) == set(catalog.features("minimal"))


def test_large_time_chunks_are_fetched_in_requests_under_the_limit(fake_xee):
    lat = lon = 20.05 + 0.1 * np.arange(300)
    ds = E.open_drivers(lat, lon, "2004-01-01", "2004-01-02", chunks={"time": 366, "lat": 300, "lon": 300})
    io = [c[2]["io_chunks"] for c in fake_xee.calls if c[0] == "open_dataset"]
    assert io and all(i == {"index": 61, "width": 300, "height": 300} for i in io)  # 366 days in 6 requests
    assert 61 * 300 * 300 * 9 <= E.REQUEST_BYTE_LIMIT
    assert ds.chunks["lat"] == (300,)


def test_open_grid_rejects_other_sources_and_huge_chunks(fake_xee):
    with pytest.raises(ValueError, match="not 'earthengine'"):
        E.open_grid(_recipe().replace(drivers=TwinDrivers()))
    with pytest.raises(ValueError, match="per-request limit"):
        E.open_drivers(np.arange(2500) * 0.1, np.arange(2500) * 0.1, "2004-01-01", "2004-01-02", chunks={"lat": 2500, "lon": 2500})
    with pytest.raises(ValueError, match="regular"):
        E.grid_transform([0.0, 0.5, 1.5], [0.0, 0.5])


def test_grid_without_image_times_is_an_error():
    ds = xr.Dataset({"clouds": (("time", "y", "x"), np.zeros((2, 1, 1)))}, coords={"time": [0, 1], "y": [0.5], "x": [0.5]})
    with pytest.raises(E.EarthEngineError, match="system:time_start"):
        E.normalise_grid(ds, [0.5], [0.5], "2004-01-01", "2004-01-02")


def test_cli_grid_saves_zarr(fake_xee, tmp_path, capsys):
    import yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "ee-cli", "drivers": {"source": "earthengine", "feature_set": "minimal"},
        "grid": {"resolution": 1.0, "region": [10, 40, 12, 43]},
        "period": {"start": "2004-06-01", "end": "2004-06-10"}, "runs": ["runs/x"], "output": "o",
    }))
    out = tmp_path / "grid.zarr"
    assert main(["-q", "acquire", "grid", str(recipe), "--zarr", str(out), "--project", "p"]) == 0
    assert "ee-cli" in capsys.readouterr().out
    saved = xr.open_zarr(out)
    assert dict(saved.sizes) == {"time": 10, "lat": 3, "lon": 2}
    np.testing.assert_array_equal(saved.lat.values, [40.5, 41.5, 42.5])
    assert saved.sur_refl_b01.attrs["units"] == "1" and saved.temperature_2m.attrs["units"] == "K"
    assert float(saved.sur_refl_b03.max()) < 1
    assert main(["-q", "acquire", "grid", str(recipe), "--zarr", str(out)]) == 2  # exists, no --overwrite


# --------------------------------------------------------------------------- the real ee client, offline

RECORDED = Path(__file__).parent / "data" / "ee"


@pytest.fixture
def real_ee(monkeypatch):
    """The real earthengine-api, initialised offline with the algorithm signatures it ships.

    Every method and argument cbgrid uses is then checked by the real client; requests end
    at ``ee.data.computeValue``, which the tests answer with recorded responses.
    """
    ee = pytest.importorskip("ee")
    apitestcase = pytest.importorskip("ee.apitestcase")
    monkeypatch.setattr(ee.data, "_install_cloud_api_resource", lambda: None)
    monkeypatch.setattr(ee.data, "getAlgorithms", apitestcase.GetAlgorithms)
    monkeypatch.setattr(ee.deprecation, "_FetchDataCatalogStac", lambda: {})
    ee.Reset()
    ee.Initialize(None, "", project="offline")
    ee.projects = []
    monkeypatch.setattr(ee, "Initialize", lambda project=None, **kw: ee.projects.append(project))
    monkeypatch.setattr(E, "_sleep", lambda s: None)
    yield ee
    ee.Reset()


def invocations(obj) -> list[tuple[str, dict]]:
    """(function name, arguments) of every call in an ee object's serialized graph."""
    doc = json.loads(obj.serialize(for_cloud_api=True))
    values, out = doc["values"], []

    def walk(node):
        if not isinstance(node, dict):
            return node
        if "valueReference" in node:
            return walk(values[node["valueReference"]])
        if "constantValue" in node:
            return node["constantValue"]
        if "functionInvocationValue" in node:
            f = node["functionInvocationValue"]
            args = {k: walk(v) for k, v in f.get("arguments", {}).items()}
            out.append((f["functionName"], args))
            return {"fn": f["functionName"], **args}
        if "functionDefinitionValue" in node:
            return walk(values[node["functionDefinitionValue"]["body"]])
        if "arrayValue" in node:
            return [walk(v) for v in node["arrayValue"]["values"]]
        if "argumentReference" in node:
            return "arg"
        return node

    walk(values[doc["result"]])
    return out


def _calls(obj, name):
    return [a for n, a in invocations(obj) if n == name]


def test_real_client_accepts_the_site_requests(real_ee):
    lat, lon = 42.5378, -72.1715
    modis = E.site_series(E.MODIS, lat, lon, "2004-01-01", "2004-01-03")
    assert [a["id"] for a in _calls(modis, "ImageCollection.load")] == [MODIS_ID]
    assert _calls(modis, "DateRange") == [{"start": "2004-01-01", "end": "2004-01-04"}]
    (rr,) = _calls(modis, "Image.reduceRegion")
    assert rr["scale"] == E.MODIS_SCALE_M and rr["reducer"]["fn"] == "Reducer.mean"
    box = rr["geometry"]
    assert box["fn"] == "GeometryConstructors.Rectangle" and box["geodesic"] is False
    assert box["coordinates"] == list(E.window_bounds(lat, lon)) and box["crs"]["crs"] == "EPSG:4326"
    (bits,) = _calls(modis, "Image.bitwiseAnd")
    assert bits["image1"]["bandSelectors"] == ["state_1km"] and bits["image2"]["value"] == 3
    (cloudy,) = [a for a in _calls(modis, "Image.eq") if a["image1"]["fn"] == "Image.bitwiseAnd"]
    assert cloudy["image2"]["value"] == 1
    masks = _calls(modis, "Image.updateMask")
    assert [m["image"]["bandSelectors"] for m in masks] == [list(REFL), list(ANGLES)]
    limits = {(c["image1"]["bandSelectors"][0], n, c["image2"]["value"]) for n in ("Image.gte", "Image.lte") for c in _calls(modis, n)}
    assert limits == {("sur_refl_b01", "Image.gte", -100), ("sur_refl_b01", "Image.lte", 16000),
                      ("SensorZenith", "Image.gte", -18000), ("SensorZenith", "Image.lte", 18000)}
    era5 = E.site_series(E.ERA5_LAND, lat, lon, "2004-01-01", "2004-01-03", "standard")
    assert [a["id"] for a in _calls(era5, "ImageCollection.load")] == [ERA5_ID]
    (rr,) = _calls(era5, "Image.reduceRegion")
    assert rr["geometry"] == {"fn": "GeometryConstructors.Point", "coordinates": [lon, lat]}
    assert rr["scale"] == E.ERA5_LAND_SCALE_M
    assert [a["bandSelectors"] for a in _calls(era5, "Image.select")] == [catalog.era5_bands("standard")]


def test_real_client_accepts_the_grid_requests(real_ee):
    transform = (0.1, 0.0, -11.0, 0.0, -0.1, 71.0)
    for source in E.SOURCES:
        ic = E.grid_collection(source, "2021-01-01", "2021-01-31", crs_transform=transform)
        (rr,) = _calls(ic, "Image.reduceResolution")
        assert (rr["reducer"]["fn"], rr["bestEffort"], rr["maxPixels"]) == ("Reducer.mean", True, 65535)
        (rp,) = _calls(ic, "Image.reproject")
        assert rp["crsTransform"] == list(transform) and rp["crs"]["crs"] == "EPSG:4326"
        kept = [c["properties"] for c in _calls(ic, "Image.copyProperties")]
        assert kept and all(k == ["system:id", "system:time_start"] for k in kept)


def test_real_client_end_to_end_with_recorded_responses(real_ee, monkeypatch, tmp_path):
    """acquire_sites through the real client: getInfo -> computeValue -> recorded JSON."""
    asked = []

    def compute_value(obj):
        (load,) = _calls(obj, "ImageCollection.load")
        (dates,) = _calls(obj, "DateRange")
        asked.append((load["id"], dates["start"], dates["end"]))
        if len(asked) == 1:
            raise real_ee.EEException("Too many concurrent aggregations.")
        source = "modis" if load["id"] == MODIS_ID else "era5_land"
        return json.loads((RECORDED / f"{source}_US-Ha1_2004-01-01_2004-01-03.json").read_text())

    monkeypatch.setattr(real_ee.data, "computeValue", compute_value)
    s = catalog.sites()
    ds = E.acquire_sites(s[s.site == "US-Ha1"], "2004-01-01", "2004-01-03", cache_dir=tmp_path, workers=1, project="proj-x", progress=False)
    assert real_ee.projects == ["proj-x"]
    assert len(asked) == 3 and asked[0] == asked[1]  # the rate-limited request was retried
    assert {a[1:] for a in asked} == {("2004-01-01", "2004-01-04")}
    site = ds.isel(site=0)
    np.testing.assert_allclose(site.sur_refl_b02.values, [0.2210, np.nan, 0.215075], rtol=1e-6)
    np.testing.assert_allclose(site.SensorAzimuth.values, [102.455, -78.22, 98.10], rtol=1e-6)
    np.testing.assert_allclose(site.clouds.values, [0.0, 1.0, 0.25])
    np.testing.assert_allclose(site.temperature_2m.values, [268.41, 271.05, 265.77], rtol=1e-6)
    assert site.temperature_2m.attrs["units"] == "K"


def _unique(calls, name, has=None):
    (one,) = {json.dumps(a, sort_keys=True): a for n, a in calls if n == name and (has is None or has in a)}.values()
    return one


def _grid_value(cid, band, day, lat, lon):
    """Raw pixel values the recorded-style computePixels answers with (before cbgrid's scaling)."""
    if cid == ERA5_ID:
        return 250.0 + 0.1 * day.day_of_year + lat + 0.01 * lon
    if band == "clouds":
        return (np.round(lat * 2) % 2).astype(float)  # a cloudy-fraction band
    k = int(band[-1]) if band.startswith("sur_refl") else 10 + ANGLES.index(band)
    return 100.0 * k + day.day_of_year + np.round(lat * 10) + 0.1 * lon


def test_real_xee_opens_the_grid_end_to_end(real_ee, monkeypatch):
    """open_grid through the real xee 0.1.x backend and real ee client; EE answers recorded-style."""
    xee_ext = pytest.importorskip("xee.ext")
    assert xee_ext.ee is real_ee
    pixel_requests = []

    def compute_value(obj):  # xee's one metadata request per collection
        calls = invocations(obj)
        cid = _unique(calls, "ImageCollection.load")["id"]
        dr = _unique(calls, "DateRange")
        days = pd.date_range(dr["start"], pd.Timestamp(dr["end"]) - pd.Timedelta(days=1))
        bands = catalog.modis_bands() if cid == MODIS_ID else _unique(calls, "Image.select")["bandSelectors"]
        first = {"type": "Image", "bands": [{"id": b, "data_type": {"type": "PixelType", "precision": "double"}} for b in bands]}
        return [len(days), {}, first, [[f"{cid}/{d:%Y%m%d}" for d in days], [int(d.value // 10**6) for d in days]]]

    def compute_pixels(params):
        calls = invocations(params["expression"])
        cid = _unique(calls, "ImageCollection.load")["id"]
        dr = _unique(calls, "DateRange")
        days = pd.date_range(dr["start"], pd.Timestamp(dr["end"]) - pd.Timedelta(days=1))
        band = _unique(calls, "Image.addBands", has="names")["names"][0]  # xee stacks one band per request
        to_list = _unique(calls, "Collection.toList")
        offset, n = to_list["offset"], to_list["count"]
        g = params["grid"]
        t, dims = g["affineTransform"], g["dimensions"]
        pixel_requests.append((cid, band, offset, n, t["translateX"], t["translateY"], dims["width"], dims["height"]))
        lat = t["translateY"] + t["scaleY"] * (np.arange(dims["height"]) + 0.5)
        lon = t["translateX"] + t["scaleX"] * (np.arange(dims["width"]) + 0.5)
        la, lo = np.meshgrid(lat, lon, indexing="ij")
        out = np.empty((dims["height"], dims["width"]), dtype=[(f"{i}_{band}", "<f8") for i in range(n)])
        for i in range(n):
            v = _grid_value(cid, band, days[offset + i], la, lo)
            v[(la > 46) & (lo > 6.5)] = np.iinfo(np.int32).max  # xee's mask value: no data there
            out[f"{i}_{band}"] = v
        return out

    monkeypatch.setattr(real_ee.data, "computeValue", compute_value)
    monkeypatch.setattr(real_ee.data, "computePixels", compute_pixels)
    recipe = _recipe()
    ds = E.open_grid(recipe, chunks={"time": 20})
    assert pixel_requests == []  # lazy: only metadata so far
    assert dict(ds.sizes) == {"time": 54, "lat": 3, "lon": 4}
    np.testing.assert_array_equal(ds.lat.values, recipe.grid.lat)
    ds = ds[["temperature_2m", "sur_refl_b04", "SolarZenith", "clouds"]].compute()
    # one request per variable, time chunk and spatial tile (2 x 3 cells of a 3 x 4 grid)
    era5 = {r for r in pixel_requests if r[0] == ERA5_ID and r[1] == "temperature_2m"}
    assert {(r[2], r[3]) for r in era5} == {(0, 7), (0, 20), (20, 20), (40, 7)}
    assert {(r[4], r[5], r[6], r[7]) for r in era5} == {(5.0, 46.5, 3, 2), (6.5, 46.5, 1, 2), (5.0, 45.5, 3, 1), (6.5, 45.5, 1, 1)}
    la, lo = np.meshgrid(recipe.grid.lat, recipe.grid.lon, indexing="ij")
    nodata = (la > 46) & (lo > 6.5)
    for day in pd.to_datetime(["2003-12-25", "2004-01-01", "2004-02-16"]):
        for b, scale in [("temperature_2m", 1.0), ("sur_refl_b04", 1e-4), ("SolarZenith", 0.01), ("clouds", 1.0)]:
            cid = ERA5_ID if b == "temperature_2m" else MODIS_ID
            exp = np.where(nodata, np.nan, _grid_value(cid, b, day, la, lo) * scale)
            np.testing.assert_allclose(ds[b].sel(time=day).values, exp, rtol=1e-6, err_msg=f"{b} {day.date()}")


# --------------------------------------------------------------------------- live


@pytest.mark.network
def test_live_earth_engine_one_site_one_week(tmp_path):
    pytest.importorskip("ee")
    try:
        E.initialize()
    except E.EarthEngineError as e:
        pytest.skip(f"no Earth Engine credentials: {e}")
    s = catalog.sites()
    ds = E.acquire_sites(s[s.site == "US-Ha1"], "2010-07-01", "2010-07-07", cache_dir=tmp_path, progress=False)
    schema.validate(ds)
    assert 270 < float(ds.temperature_2m.mean()) < 310
    refl = ds.sur_refl_b02.values
    assert np.nanmin(refl) > -0.01 and np.nanmax(refl) < 1.0
    assert 0 <= float(ds.clouds.min()) <= float(ds.clouds.max()) <= 1
