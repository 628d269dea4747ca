"""Earth Engine acquisition, tested at the ``ee`` boundary (tests/fake_ee.py) and, offline, through
the real earthengine-api / google-auth / googleapiclient / requests stack with the HTTP answered
locally.

The fake computes the server-side expressions cbgrid builds (masks, cloud bits, window means)
on known pixels; expected values here are computed independently with numpy. Faults are the
real exception types (and chains) the real clients raise. The live test (marked ``network``)
runs only where Earth Engine credentials exist.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask
import fake_ee
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from fake_ee import ANGLE_FILL, ERA5_ID, MODIS_ID, REFL_FILL, EEException, Fault, World

from cbgrid import catalog, schema, store
from cbgrid.cli import main
from cbgrid.recipe import Period, parse_recipe
from cbgrid.sources import earthengine as E
from cbgrid.sources import earthengine_cache as C
from cbgrid.sources import earthengine_faults as F
from cbgrid.sources import earthengine_plan as P
from cbgrid.sources.twin import TwinDrivers

START, END = "2003-12-30", "2004-02-16"  # two year-chunks; 2004-02-14 (doy 45) has no MOD09GA image
REFL = [f"sur_refl_b0{i}" for i in range(1, 8)]
ANGLES = ["SensorZenith", "SensorAzimuth", "SolarZenith", "SolarAzimuth"]
CLOUDY_STATES = [1, 5, 513]  # the fake's state_1km values whose bits 0-1 are 01
BIT0_STATES = [1, 3, 5, 513]  # ... whose bit 0 is set (the reference's clouds)
FAR_FUTURE = "2100-01-01"  # "today" for which no chunk is within the sources' latency


@pytest.fixture
def world(monkeypatch):
    # xarray imports every backend (xee, and with it ee) on its first open; do it now, so xee
    # keeps the real ee whatever the test order.
    xr.backends.list_engines()
    w = World()
    monkeypatch.setitem(sys.modules, "ee", fake_ee.make_module(w))
    for var in (*E.PROJECT_ENV, E.KEY_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(E, "_initialized", {})
    w.sleeps = []
    monkeypatch.setattr(F, "_sleep", w.sleeps.append)
    return w


@pytest.fixture
def sites():
    s = catalog.sites()
    return s[s["site"].isin(["AR-SLu", "AT-Neu", "US-Ha1"])].reset_index(drop=True)


def n_tasks(sites, start=START, end=END):
    return len(sites) * len(E.SOURCES) * len(E.time_chunks(start, end))


def acquire(sites, cache, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("today", FAR_FUTURE)
    return E.acquire_sites(sites, kw.pop("start", START), kw.pop("end", END), cache_dir=cache, **kw)


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


# --------------------------------------------------------------------------- site requests and values


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
    acquire(sites, tmp_path, workers=1)
    filters = [c[1:] for c in world.calls if c[0] == "filterDate"]
    for cid in (MODIS_ID, ERA5_ID):
        got = sorted({(a, b) for c, a, b in filters if c == cid})
        assert got == [("2003-12-30", "2004-01-01"), ("2004-01-01", "2004-02-17")]
        assert sum(c == cid for c, _, _ in filters) == 2 * len(sites)
    rr = [c for c in world.calls if c[0] == "reduceRegion"]
    regions = {(c[2], c[3]) for c in rr}
    for row in sites.itertuples():
        assert ("Rectangle", tuple(E.window_bounds(row.lat, row.lon))) in regions
        assert ("Point", (row.lon, row.lat)) in regions
    for _, reducer, kind, _, proj, geodesic, scale, best, max_px, _, ops in rr:
        assert reducer == "mean" and best is False and max_px is None and "resample" not in ops
        if kind == "Rectangle":
            assert (proj, geodesic, scale) == ("EPSG:4326", False, pytest.approx(463.3127, abs=1e-3))
        else:
            assert scale == pytest.approx(11132, abs=1)
    assert world.getinfo_calls == n_tasks(sites)
    assert world.initialized_with == [None]
    # the client is set up with a deadline and without hidden retries of its own
    assert world.deadline_ms == E.DEADLINE_S * 1000 and world.max_retries == 0


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


def test_site_dataset_names_units_and_values(world, sites, tmp_path):
    ds = acquire(sites, tmp_path)
    schema.validate(ds)
    assert list(ds.data_vars) == sorted(ds.data_vars, key=(catalog.modis_bands() + catalog.era5_bands("minimal")).index)
    assert set(ds.data_vars) == set(catalog.features("minimal"))
    assert list(ds.site.values) == list(sites.site)
    assert ds.sizes["time"] == len(pd.date_range(START, END))
    for v in ds.data_vars:
        assert ds[v].dtype == np.float32
        assert ds[v].attrs["units"] == catalog.variable(v)["units"]
    for i, row in enumerate(sites.itertuples()):
        for day in pd.to_datetime(["2003-12-30", "2004-01-01", "2004-02-13", "2004-02-16"]):
            exp = expected_site(world, row.lat, row.lon, day)
            for name, value in exp.items():
                got = float(ds[name].isel(site=i).sel(time=day))
                assert got == pytest.approx(value, rel=1e-6, abs=1e-7), (row.site, day, name)
    assert float(ds.sur_refl_b07.max()) < 1 and float(ds.SensorZenith.max()) < 180
    clouds = ds.clouds.values[np.isfinite(ds.clouds.values)]
    assert set(np.round(clouds * 16, 6)) <= set(range(17)) and len(set(clouds)) > 1
    gap = ds.sel(time="2004-02-14")  # no MOD09GA image that day
    assert all(bool(gap[b].isnull().all()) for b in catalog.modis_bands())
    assert bool(gap.temperature_2m.notnull().all())
    assert ds.attrs["sampling"] == "default"


def test_days_before_modis_are_nan_and_cached(world, sites, tmp_path):
    ds = acquire(sites.iloc[:1], tmp_path, start="1999-12-30", end="2000-02-26")
    modis = ds.sur_refl_b01.isel(site=0).to_series()
    assert modis[:"2000-02-23"].isna().all() and modis["2000-02-24":].notna().all()
    assert bool(ds.temperature_2m.notnull().all())
    empty = tmp_path / "modis" / sites.site[0] / "1999-12-30_1999-12-31.csv"
    assert empty.exists() and len(pd.read_csv(empty)) == 0  # an empty answer is a result, cached like any other
    calls = world.getinfo_calls
    acquire(sites.iloc[:1], tmp_path, start="1999-12-30", end="2000-02-26")
    assert world.getinfo_calls == calls


def test_cloud_state_bits_decoding(world):
    """Only bits 0-1 == 01 counts as cloudy: mixed (10), not set (11) and higher bits do not."""
    ee = sys.modules["ee"]
    img = ee.ImageCollection(MODIS_ID).filterDate("2004-07-01", "2004-07-02").images[0]
    stats = E.modis_image(img).reduceRegion(reducer=ee.Reducer.mean(), geometry=ee.Geometry.Point([0, 0]), scale=1)
    state = world.pixels(MODIS_ID, "state_1km", pd.Timestamp("2004-07-01"), fake_ee.window_ctx(0, 0, (1, 1)))[0]
    assert stats["clouds"] == float(int(state[0, 0]) in CLOUDY_STATES)
    box = E.modis_image(img).reduceRegion(reducer=ee.Reducer.mean(), geometry=ee.Geometry.Rectangle([-0.01, -0.01, 0.01, 0.01]), scale=1)
    values = world.pixels(MODIS_ID, "state_1km", pd.Timestamp("2004-07-01"), fake_ee.window_ctx(0, 0))[0].astype(int)
    manual = np.array([(v % 4) == 1 for v in values.ravel()]).mean()
    assert box["clouds"] == pytest.approx(manual) and 0 < manual < 1


def test_features_to_frame_nulls_scales_and_dates():
    info = {"features": [
        {"properties": {"date": "2004-01-02", "sur_refl_b01": 1234.0, "SensorZenith": None}},
        {"properties": {"date": "2004-01-01", "sur_refl_b01": None}},
        {"properties": {"date": "2004-01-03", "sur_refl_b01": 10.0, "SensorZenith": 20.0, "clouds": 0.5}},
    ]}
    df = E.features_to_frame(info, ["sur_refl_b01", "SensorZenith", "clouds"])
    assert list(df.index.strftime("%Y-%m-%d")) == ["2004-01-01", "2004-01-02", "2004-01-03"]
    assert df.loc["2004-01-02", "sur_refl_b01"] == pytest.approx(0.1234)
    assert df.isna().sum().tolist() == [1, 2, 2]
    complete = E.features_to_frame(info, ["sur_refl_b01", "SensorZenith", "clouds"], complete_days=True)
    assert list(complete.index.strftime("%Y-%m-%d")) == ["2004-01-03"]
    assert E.features_to_frame({"features": []}, ["clouds"]).empty


# --------------------------------------------------------------------------- the reference extraction


def test_reference_method_samples_as_the_published_scripts(world, sites, tmp_path):
    """1 km buffer bounds, MODIS at 500 m unmasked with clouds = bit 0, ERA5-Land bilinear at 2 km,
    bestEffort and maxPixels 1e13; a day missing any band dropped."""
    site = sites.iloc[[2]].reset_index(drop=True)
    dropped = pd.Timestamp("2004-01-05")
    world.masked = {(MODIS_ID, "sur_refl_b03", dropped)}
    ds = acquire(site, tmp_path, method="reference").isel(site=0)
    default = acquire(site, tmp_path / "default").isel(site=0)
    rr = [c for c in world.calls if c[0] == "reduceRegion"]
    ref = rr[: len(rr) // 2]
    for _, _, kind, _, _, _, scale, best, max_px, geo_ops, img_ops in ref:
        assert kind == "Bounds" and geo_ops == (("buffer", 1000), ("bounds",))
        assert best is True and max_px == 1e13
        assert scale in (500, 2000)
        assert ("resample" in img_ops) == (scale == 2000)  # ERA5-Land only, bilinear
        assert "updateMask" not in img_ops  # the reference masks nothing
    row = site.iloc[0]
    day = pd.Timestamp("2004-01-06")
    ctx = fake_ee.window_ctx(row.lat, row.lon)
    raw = world.pixels(MODIS_ID, "sur_refl_b01", day, ctx)[0]
    assert float(ds.sur_refl_b01.sel(time=day)) == pytest.approx(raw.mean() * 1e-4, rel=1e-6)  # fill values included
    state = world.pixels(MODIS_ID, "state_1km", day, ctx)[0]
    assert float(ds.clouds.sel(time=day)) == pytest.approx(np.isin(state, BIT0_STATES).mean())
    assert np.isin(state, BIT0_STATES).mean() != np.isin(state, CLOUDY_STATES).mean()  # the two definitions differ here
    # a day missing one band: the reference drops the whole day, the default keeps the other bands
    assert bool(ds[catalog.modis_bands()].sel(time=dropped).to_array().isnull().all())
    kept = default[catalog.modis_bands()].sel(time=dropped)
    assert bool(kept.sur_refl_b03.isnull().all()) and bool(kept.sur_refl_b01.notnull().all())
    assert ds.attrs["sampling"] == "reference" and (tmp_path / "reference" / "modis").is_dir()


# --------------------------------------------------------------------------- coastal sites, latency, empty periods


def test_coastal_site_falls_back_to_the_nearest_land_pixels_and_remembers(world, sites, tmp_path, caplog):
    site = sites.iloc[[1]].reset_index(drop=True)
    lat, lon = float(site.lat[0]), float(site.lon[0])
    world.ocean = lambda la, lo: lo > lon - 0.05  # the tower's pixel (and everything east) is sea
    with caplog.at_level(logging.WARNING, logger="cbgrid.sources.earthengine"):
        ds = acquire(site, tmp_path, workers=1)
    assert "no ERA5-Land value at the tower" in caplog.text and site.site[0] in caplog.text
    sampling = json.loads((tmp_path / "era5_land" / site.site[0] / "sampling.json").read_text())
    assert sampling["half_side_m"] == 10000.0  # the 20 km box: the 10 km one holds no ERA5-Land pixel centre
    west, south, east, north = E.window_bounds(lat, lon, 10000.0)
    box = fake_ee.box_ctx(west, south, east, north)
    land = ~world.ocean(box.lat, box.lon)
    assert land.any() and (~land).any()
    day = pd.Timestamp("2004-01-10")
    exp = world.pixels(ERA5_ID, "temperature_2m", day, box)[0][land].mean()
    assert float(ds.temperature_2m.isel(site=0).sel(time=day)) == pytest.approx(exp, rel=1e-6)
    assert bool(ds.temperature_2m.notnull().all()) and ds.attrs["era5_land_coastal_fallback"] == site.site[0]
    # first ERA5-Land chunk: tower + 5 km + 10 km box; the second goes straight to the 10 km box
    era5 = [c for c in world.calls if c[0] == "getInfo" and c[1]["collection"] == ERA5_ID]
    assert len(era5) == 4


def test_chunks_within_the_latency_are_provisional_and_fetched_again(world, sites, tmp_path):
    site = sites.iloc[:1]
    world.era5_last_day = pd.Timestamp("2004-02-10")  # ERA5-Land not yet published for the last days
    today = pd.Timestamp("2004-02-20")  # within 120 days of both ERA5-Land chunks, 30 days of the 2004 MODIS one
    ds = acquire(site, tmp_path, today=today)
    assert bool(ds.temperature_2m.sel(time=slice("2004-02-11", None)).isnull().all())
    assert sorted(p.name for p in (tmp_path / "era5_land" / site.site[0]).iterdir()) == [
        "2003-12-30_2003-12-31.provisional.csv", "2004-01-01_2004-02-16.provisional.csv"]
    assert sorted(p.name for p in (tmp_path / "modis" / site.site[0]).iterdir()) == [
        "2003-12-30_2003-12-31.csv", "2004-01-01_2004-02-16.provisional.csv"]
    calls = world.getinfo_calls
    acquire(site, tmp_path, today=today)
    assert world.getinfo_calls == calls + 3  # the provisional chunks again, the final one not
    world.era5_last_day = None  # published meanwhile
    later = acquire(site, tmp_path, today="2004-09-01")
    assert world.getinfo_calls == calls + 6 and bool(later.temperature_2m.notnull().all())
    assert sorted(p.name for p in (tmp_path / "era5_land" / site.site[0]).iterdir()) == [
        "2003-12-30_2003-12-31.csv", "2004-01-01_2004-02-16.csv"]
    acquire(site, tmp_path, today="2004-09-01")
    assert world.getinfo_calls == calls + 6  # final now


def test_resume_after_failure_fetches_only_missing_chunks(world, sites, tmp_path):
    world.faults = {"getInfo": {4: fake_ee.BAD_BAND}}
    with pytest.raises(E.EarthEngineError):
        acquire(sites, tmp_path / "cache", workers=1)
    cached = len(list((tmp_path / "cache").rglob("*.csv")))
    assert 3 <= cached < n_tasks(sites)
    assert not list((tmp_path / "cache").rglob(".*tmp*"))
    before = world.getinfo_calls
    resumed = acquire(sites, tmp_path / "cache", workers=2)
    assert world.getinfo_calls - before == n_tasks(sites) - cached
    clean = acquire(sites, tmp_path / "clean", workers=3)
    xr.testing.assert_identical(resumed, clean)
    world.credentials = False  # complete cache: a re-run needs no Earth Engine at all
    calls = world.getinfo_calls
    xr.testing.assert_identical(acquire(sites, tmp_path / "cache"), clean)
    assert world.getinfo_calls == calls


def test_cache_of_a_larger_feature_set_serves_a_smaller_one(world, sites, tmp_path):
    kw = dict(start="2004-03-01", end="2004-03-05")
    acquire(sites.iloc[:1], tmp_path, feature_set="standard", **kw)
    calls = world.getinfo_calls
    ds = acquire(sites.iloc[:1], tmp_path, feature_set="minimal", **kw)
    assert world.getinfo_calls == calls and set(ds.data_vars) == set(catalog.features("minimal"))
    acquire(sites.iloc[:1], tmp_path, feature_set="full", **kw)
    assert world.getinfo_calls == calls + 1  # only ERA5-Land is fetched again


# --------------------------------------------------------------------------- faults: what each does


TRANSIENT_FAULTS = {
    "HTTP 503 service unavailable": fake_ee.UNAVAILABLE,
    "HTTP 502 bad gateway": fake_ee.BAD_GATEWAY,
    "HTTP 429 too many concurrent aggregations": fake_ee.RATE,
    "requests ConnectionError via ee's transport": fake_ee.CONNECTION,
    "requests ReadTimeout via ee's transport": fake_ee.TIMEOUT,
    "google-auth TransportError on token refresh": fake_ee.TOKEN_TRANSPORT,
    "google-auth RefreshError, retryable": Fault("refresh", "Internal Failure", retryable=True),
}


@pytest.mark.parametrize("fault", list(TRANSIENT_FAULTS.values()), ids=list(TRANSIENT_FAULTS))
def test_transient_faults_are_retried_with_backoff(world, sites, tmp_path, fault):
    world.faults = {"getInfo": {2: fault}}
    ds = acquire(sites.iloc[:1], tmp_path, workers=1)
    assert world.getinfo_calls == n_tasks(sites.iloc[:1]) + 1
    assert len(world.sleeps) == 1 and 1.0 <= world.sleeps[0] <= 2.0
    xr.testing.assert_identical(ds, acquire(sites.iloc[:1], tmp_path / "clean"))


DETERMINISTIC_FAULTS = {
    "compute quota used up": (fake_ee.QUOTA, E.QuotaError, "compute quota is used up"),
    "user memory limit": (fake_ee.MEMORY, E.RequestTooLargeError, "too heavy"),
    "bad band": (fake_ee.BAD_BAND, E.EarthEngineError, "did not match any bands"),
    "RefreshError invalid_grant": (fake_ee.TOKEN_REFRESH, E.CredentialsError, "refused the credentials"),
    "HTTP 403 permission denied": (Fault("http", "Caller does not have required permission to use project p.", 403),
                                   E.CredentialsError, "refused the credentials"),
}


@pytest.mark.parametrize("fault,error,says", list(DETERMINISTIC_FAULTS.values()), ids=list(DETERMINISTIC_FAULTS))
def test_deterministic_faults_fail_at_once_saying_what_to_change(world, sites, tmp_path, fault, error, says):
    world.faults = {"getInfo": {1: fault}}
    with pytest.raises(error) as err:
        acquire(sites, tmp_path, workers=1)
    msg = str(err.value)
    assert says in msg and "modis AR-SLu 2003-12-30..2003-12-31" in msg and "re-run" in msg
    assert world.sleeps == [] and world.getinfo_calls <= 2  # no retry; at most the one request already queued


def _attempts(world, cid, start):
    return sum(1 for c in world.calls if c[0] == "getInfo" and c[1]["collection"] == cid and c[1]["start"] == start)


def test_attempts_are_bounded_in_total(world, sites, tmp_path):
    world.faults = {"getInfo": {i: fake_ee.UNAVAILABLE for i in range(1, 50)}}
    with pytest.raises(E.EarthEngineError, match="still failing after 4 tries"):
        acquire(sites.iloc[:1], tmp_path, workers=1, max_tries=4)
    assert _attempts(world, MODIS_ID, START) == 4  # ee's own retries are off: 4 attempts in all
    assert world.max_retries == 0


def test_server_timeouts_are_retried_once_then_reported_as_too_heavy(world, sites, tmp_path):
    world.faults = {"getInfo": {1: fake_ee.COMPUTE_TIMEOUT, 2: fake_ee.COMPUTE_TIMEOUT}}
    with pytest.raises(E.RequestTooLargeError, match="after 2 tries"):
        acquire(sites.iloc[:1], tmp_path, workers=1)
    assert _attempts(world, MODIS_ID, START) == 2


def test_a_stalled_connection_times_out_at_the_deadline_and_is_retried(world, sites, tmp_path):
    world.faults = {"getInfo": {1: fake_ee.STALL}}
    t0 = time.monotonic()
    ds = acquire(sites.iloc[:1], tmp_path, workers=1, deadline_s=0.2)
    assert 0.2 <= time.monotonic() - t0 < 5 and world.deadline_ms == 200
    assert world.getinfo_calls == n_tasks(sites.iloc[:1]) + 1 and bool(ds.temperature_2m.notnull().all())


def test_classify_reads_real_exception_chains():
    import httplib2
    import requests
    from google.auth.exceptions import RefreshError, TransportError
    from googleapiclient.errors import HttpError

    def raised(fault):
        try:
            fault.raise_()
        except Exception as e:  # noqa: BLE001
            return e

    e503 = raised(fake_ee.UNAVAILABLE)
    assert type(e503) is EEException and "503" not in str(e503)  # the status is only on the chain
    assert F.http_status(e503) == 503 and F.classify(e503).kind == F.TRANSIENT
    assert F.classify(raised(fake_ee.QUOTA)).kind == F.QUOTA
    assert F.classify(raised(fake_ee.MEMORY)).kind == F.TOO_LARGE
    assert F.classify(raised(fake_ee.COMPUTE_TIMEOUT)).kind == F.SLOW
    assert F.classify(HttpError(httplib2.Response({"status": 504}), b"{}")).kind == F.TRANSIENT
    assert F.classify(requests.exceptions.ConnectionError("reset")).kind == F.TRANSIENT
    assert F.classify(requests.exceptions.ReadTimeout("slow")).kind == F.TRANSIENT
    assert F.classify(TransportError("dns")).kind == F.TRANSIENT
    assert F.classify(RefreshError("invalid_grant")).kind == F.CREDENTIALS
    assert F.classify(RefreshError("temporary", retryable=True)).kind == F.TRANSIENT
    assert F.classify(EEException("Image.select: Pattern 'x' did not match any bands.")).kind == F.FATAL
    assert F.RetryPolicy(max_tries=6).worst_case_wait() == 2 + 4 + 8 + 16 + 32


# --------------------------------------------------------------------------- credentials


def test_missing_credentials_say_what_to_run(world, sites, tmp_path):
    world.credentials = False
    with pytest.raises(E.CredentialsError, match="earthengine authenticate") as err:
        acquire(sites, tmp_path)
    assert "EARTHENGINE_PROJECT" in str(err.value) and "--service-account" in str(err.value)
    assert world.getinfo_calls == 0


def test_project_from_argument_then_environment(world, monkeypatch):
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "gcp-proj")
    assert E.initialize() == "gcp-proj"
    monkeypatch.setenv("EARTHENGINE_PROJECT", "ee-proj")
    assert E.initialize() == "ee-proj"
    assert E.initialize("cli-proj") == "cli-proj"
    assert E.initialize("cli-proj") == "cli-proj"  # already initialised for this project
    assert world.initialized_with == ["gcp-proj", "ee-proj", "cli-proj"]


def test_service_account_key_from_flag_or_environment(world, monkeypatch, tmp_path):
    key = tmp_path / "sa.json"
    doc = fake_ee.service_account_key(key)
    assert E.initialize(service_account=key) == "cbgrid-offline"  # the key's own project
    (creds,) = world.service_accounts
    assert creds.service_account_email == doc["client_email"]
    assert "https://www.googleapis.com/auth/earthengine" in creds.scopes  # never an empty scope
    monkeypatch.setattr(E, "_initialized", {})
    monkeypatch.setenv(E.KEY_ENV, str(key))
    assert E.initialize("other-proj") == "other-proj" and len(world.service_accounts) == 2
    # user application-default credentials in the variable are left to ee
    adc = tmp_path / "adc.json"
    adc.write_text(json.dumps({"type": "authorized_user", "refresh_token": "x"}))
    monkeypatch.setenv(E.KEY_ENV, str(adc))
    assert E.service_account_key() is None
    with pytest.raises(ValueError, match="not a service-account key"):
        E.service_account_key(adc)
    with pytest.raises(FileNotFoundError, match="no such file"):
        E.service_account_key(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": "service_account", "client_email": "a@b"}))
    with pytest.raises(ValueError, match="lacks private_key, token_uri") as err:
        E.service_account_key(bad)
    assert str(bad) in str(err.value)


# --------------------------------------------------------------------------- CLI and store


def test_cli_sites_creates_then_merges_into_a_store(world, sites, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(E, "_today", lambda: pd.Timestamp(FAR_FUTURE))
    out, cache = tmp_path / "sites.zarr", tmp_path / "cache"
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
    direct = acquire(sites, cache)
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


def test_cli_failure_is_one_line_leaves_no_store_then_resumes(world, sites, tmp_path, capsys):
    out = tmp_path / "new.zarr"
    argv = ["-q", "acquire", "sites", "--out", str(out), "--start", START, "--end", END, "--workers", "1",
            "--site", "AT-Neu", "--max-tries", "2"]
    world.faults = {"getInfo": {2: fake_ee.CONNECTION, 3: fake_ee.CONNECTION}}
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "AT-Neu" in err and "still failing after 2 tries" in err and "nothing was merged" in err
    assert not out.exists()
    assert main(argv) == 0
    assert store.open_store(out).sizes["site"] == 1
    assert (tmp_path / "new.zarr.ee-cache" / "modis" / "AT-Neu").is_dir()


def test_cli_without_credentials(world, tmp_path, capsys):
    world.credentials = False
    rc = main(["-q", "acquire", "sites", "--out", str(tmp_path / "s.zarr"), "--site", "AT-Neu", "--start", START, "--end", END])
    assert rc == 1
    assert "earthengine authenticate" in capsys.readouterr().err


def test_cli_dry_run_prints_the_plan_and_asks_nothing(world, tmp_path, capsys):
    world.credentials = False
    argv = ["acquire", "sites", "--out", str(tmp_path / "s.zarr"), "--start", "2000-01-01", "--end", "2024-12-31",
            "--features", "full", "--dry-run", "--workers", "10"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    n = len(catalog.sites())
    assert f"{n} sites x 25 calendar years x 2 collections = {n * 50:,} requests" in text
    assert f"total {n * 50:,} requests" in text
    assert world.requests == {} and not (tmp_path / "s.zarr").exists()


# --------------------------------------------------------------------------- request plans


def test_the_plans_of_issue_13():
    """474 sites x 2000-2024 and a global daily year at 0.25 and 0.1 degrees."""
    for features in ("minimal", "full"):
        p = E.sites_plan(474, "2000-01-01", "2024-12-31", feature_set=features, workers=10)
        assert p.requests == 474 * 25 * 2 == 23_700
    assert E.sites_plan(474, "2000-01-01", "2024-12-31", workers=4).hours(5) == pytest.approx(23_700 * 5 / 4 / 3600)
    for res, requests in ((0.25, 16_308), (0.1, 62_640)):
        lat = np.arange(-90 + res / 2, 90, res)
        lon = np.arange(-180 + res / 2, 180, res)
        plan, chunks = P.grid_plan(lat, lon, "2021-01-01", "2021-12-31", {"era5_land": 6, "modis": 12}, workers=10)
        assert plan.requests == requests
        for c in chunks.values():
            assert c.days * c.height * c.width * (c.itemsize + 1) <= P.REQUEST_BYTE_LIMIT
            assert c.input_pixels <= P.PIXELS_PER_REQUEST


@pytest.mark.parametrize("res", [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0])
def test_grid_requests_stay_within_the_limits_at_any_resolution(res):
    lat = np.arange(-90 + res / 2, 90, res)
    lon = np.arange(-180 + res / 2, 180, res)
    for source in ("modis", "era5_land"):
        c = P.grid_chunks(source, 1, res, lat.size, lon.size)
        assert c.days >= 1 and c.height * c.width >= 1
        assert c.days * c.height * c.width * (c.itemsize + 1) <= P.REQUEST_BYTE_LIMIT
        assert c.input_pixels <= P.PIXELS_PER_REQUEST or (c.days, c.height, c.width) == (1, 1, 1)
        assert c.inputs_per_cell <= (np.sqrt(P.MAX_PIXELS_PER_CELL) + 1) ** 2
    # 0.1 deg cells read MODIS' 2x2 pyramid level, 0.25 deg its 4x4 level, 0.01 deg the native pixels
    assert [P.pyramid_level(r, P.MODIS_PIXEL_M)[0] for r in (0.01, 0.1, 0.25)] == [0, 1, 2]


# --------------------------------------------------------------------------- grids


def _recipe(**drivers):
    return parse_recipe({
        "name": "ee-test",
        "drivers": {"source": "earthengine", "feature_set": "minimal", "project": "rec-proj", **drivers},
        "grid": {"resolution": 0.5, "region": [5, 45, 7, 46.5]},
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


def _grid(recipe=None, **kw):
    kw.setdefault("chunks", {"time": 10, "lat": 2, "lon": 3})
    g = E.grid_for_recipe(recipe or _recipe(), **kw)
    g.today = pd.Timestamp(FAR_FUTURE)
    return g


def test_open_grid_layout_names_units_and_laziness(fake_xee):
    recipe = _recipe()
    with dask.config.set(scheduler=_NoCompute()):
        ds = E.open_grid(recipe, chunks={"time": 10, "lat": 2, "lon": 3})
    assert dict(ds.sizes) == {"time": 54, "lat": 3, "lon": 4}
    assert tuple(ds[v].dims for v in ds.data_vars) == (("time", "lat", "lon"),) * len(ds.data_vars)
    np.testing.assert_array_equal(ds.lat.values, recipe.grid.lat)
    np.testing.assert_array_equal(ds.lon.values, recipe.grid.lon)
    assert ds.lat.attrs["units"] == "degrees_north" and ds.lon.attrs["standard_name"] == "longitude"
    assert set(ds.data_vars) == set(catalog.features("minimal"))
    for v in ds.data_vars:
        assert ds[v].dtype == np.float32 and isinstance(ds[v].data, dask.array.Array)
        assert ds[v].attrs["units"] == catalog.variable(v)["units"]
        assert ds[v].chunks == ((10,) * 5 + (4,), (2, 1), (2, 2))  # square tiles: min(lat, lon) caps
    assert fake_xee.initialized_with == ["rec-proj"]
    assert fake_xee.requests.get("computePixels", 0) == 0


def test_grid_requests_values_and_one_request_per_chunk(fake_xee):
    recipe = _recipe()
    grid = _grid(recipe).open()
    ds = grid.dataset().compute()
    transform = (0.5, 0.0, 5.0, 0.0, -0.5, 46.5)
    opens = [c for c in fake_xee.calls if c[0] == "open_dataset"]
    assert len(opens) == 2  # one piece per source: 54 days fit in one
    for _, _what, kw in opens:
        assert kw["crs"] == "EPSG:4326" and kw["crs_transform"] == transform and kw["shape_2d"] == (4, 3)
        assert kw["io_chunks"] == {"index": 10, "width": 2, "height": 2}
        assert kw["getitem_kwargs"] == {"max_retries": 0} and kw["chunks"] is None
    assert sorted((w["collection"], w["start"], w["end"]) for _, w, _ in opens) == [
        (ERA5_ID, "2003-12-25", "2004-02-17"), (MODIS_ID, "2003-12-25", "2004-02-17")]
    for _, _, seq in (c for c in fake_xee.calls if c[0] == "image_ops"):
        names = [o[0] for o in seq]
        assert seq[names.index("reduceResolution")] == ("reduceResolution", "mean", True, P.MAX_PIXELS_PER_CELL)
        assert seq[names.index("reproject")] == ("reproject", "EPSG:4326", transform, None)
        assert names.index("reduceResolution") < names.index("reproject")
    # one pixel request per chunk and variable: 6 time x 2 lat x 2 lon chunks, 18 variables
    assert fake_xee.requests["computePixels"] == 6 * 2 * 2 * 18 == grid.plan.requests
    ctx = fake_ee.grid_ctx(transform, (4, 3))
    np.testing.assert_allclose(ctx.lat[::-1, 0], ds.lat.values)
    for day in pd.to_datetime(["2003-12-25", "2004-01-01", "2004-02-16"]):
        for b, scale, fill in [("sur_refl_b02", 1e-4, REFL_FILL), ("SolarAzimuth", 0.01, ANGLE_FILL)]:
            raw = fake_xee.pixels(MODIS_ID, b, day, ctx)[0][::-1]
            np.testing.assert_allclose(ds[b].sel(time=day).values, np.where(raw == fill, np.nan, raw * scale), rtol=1e-6)
        state = fake_xee.pixels(MODIS_ID, "state_1km", day, ctx)[0][::-1]
        np.testing.assert_array_equal(ds.clouds.sel(time=day).values, np.isin(state, CLOUDY_STATES).astype(np.float32))
        t2m = fake_xee.pixels(ERA5_ID, "temperature_2m", day, ctx)[0][::-1]
        np.testing.assert_allclose(ds.temperature_2m.sel(time=day).values, t2m, rtol=1e-6)
    assert bool(ds.sur_refl_b01.sel(time="2004-02-14").isnull().all())
    assert bool(ds.temperature_2m.sel(time="2004-02-14").notnull().all())


def test_empty_periods_open_without_a_crash_and_cost_no_pixel_request(fake_xee):
    recipe = _recipe().replace(period=Period(pd.Timestamp("1999-11-01"), pd.Timestamp("2000-03-05")))
    grid = _grid(recipe, chunks={"time": 366, "lat": 3, "lon": 4})
    grid.today = pd.Timestamp("2000-03-08")  # ERA5-Land published up to 2000-02-10 only
    fake_xee.era5_last_day = pd.Timestamp("2000-02-10")
    ds = grid.open().dataset().compute()
    modis = ds.sur_refl_b01.isel(lat=0, lon=0).to_series()
    assert modis[:"2000-02-23"].isna().all() and modis["2000-02-24":].notna().all()
    era5 = ds.temperature_2m.isel(lat=0, lon=0).to_series()
    assert era5[:"2000-02-10"].notna().all() and era5["2000-02-11":].isna().all()
    assert fake_xee.requests["size"] == 2  # both pieces reach into the latency window or before MODIS
    # a period with no image at all: no crash, all NaN, nothing requested for pixels
    fake_xee.requests.clear()
    recipe = _recipe().replace(period=Period(pd.Timestamp("2000-02-12"), pd.Timestamp("2000-02-20")))
    grid = _grid(recipe, chunks={"time": 366, "lat": 3, "lon": 4})
    grid.today = pd.Timestamp("2000-03-08")
    ds = grid.open().dataset().compute()
    assert bool(ds.to_array().isnull().all()) and "computePixels" not in fake_xee.requests
    assert all(grid.provisional("temperature_2m", idx) for idx in grid.blocks("temperature_2m"))


def test_grid_open_retries_a_rate_limited_open(fake_xee):
    fake_xee.faults = {"open": {1: fake_ee.RATE}}
    ds = _grid().open().dataset()
    assert fake_xee.requests["open"] == 3 and len(fake_xee.sleeps) == 1
    assert set(ds.data_vars) == set(catalog.features("minimal"))


def test_save_grid_resumes_after_failing_mid_grid_and_ends_identical(fake_xee, tmp_path):
    out = tmp_path / "drivers.zarr"
    recipe = _recipe().replace(period=Period(pd.Timestamp("2003-12-25"), pd.Timestamp("2004-01-13")))
    # a connection reset (retried), a 503 (retried), then a memory-limit error (stops the run)
    fake_xee.faults = {"computePixels": {3: fake_ee.CONNECTION, 7: fake_ee.UNAVAILABLE, 12: fake_ee.MEMORY}}
    grid = _grid(recipe)
    with pytest.raises(E.RequestTooLargeError, match="re-run the same command to resume") as err:
        E.save_grid(grid, out, workers=2, progress=False)
    assert "User memory limit exceeded" in str(err.value)
    partial = tmp_path / ".drivers.zarr.partial"
    done = C.markers(partial)
    assert not out.exists() and 9 <= len(done) < grid.plan.requests
    assert all(state == "final" for state in done.values())
    before = fake_xee.requests["computePixels"]
    E.save_grid(_grid(recipe), out, workers=3, progress=False)
    assert fake_xee.requests["computePixels"] - before == grid.plan.requests - len(done)
    assert not partial.exists()
    clean = tmp_path / "clean.zarr"
    E.save_grid(_grid(recipe), clean, progress=False)
    xr.testing.assert_identical(xr.open_zarr(out, consolidated=False), xr.open_zarr(clean, consolidated=False))
    saved = xr.open_zarr(out, consolidated=False)
    assert saved.sur_refl_b01.attrs["units"] == "1" and saved.temperature_2m.dtype == np.float32
    assert saved["clouds"].encoding["chunks"] == (10, 2, 2)


def test_a_stall_mid_grid_times_out_and_is_retried(fake_xee, tmp_path):
    fake_xee.faults = {"computePixels": {5: fake_ee.STALL}}
    grid = _grid(_recipe().replace(period=Period(pd.Timestamp("2004-01-01"), pd.Timestamp("2004-01-10"))), deadline_s=0.2)
    E.save_grid(grid, tmp_path / "g.zarr", workers=2, progress=False)
    assert fake_xee.deadline_ms == 200
    assert fake_xee.requests["computePixels"] == grid.plan.requests + 1


def test_a_partial_download_of_another_request_is_never_mixed_in(fake_xee, tmp_path):
    fake_xee.faults = {"computePixels": {4: fake_ee.BAD_BAND}}
    with pytest.raises(E.EarthEngineError):
        E.save_grid(_grid(), tmp_path / "g.zarr", progress=False)
    with pytest.raises(ValueError, match="different request"):
        E.save_grid(_grid(chunks={"time": 5, "lat": 2, "lon": 3}), tmp_path / "g.zarr", progress=False)


def test_open_grid_rejects_other_sources_and_irregular_grids(fake_xee):
    with pytest.raises(ValueError, match="not 'earthengine'"):
        E.open_grid(_recipe().replace(drivers=TwinDrivers()))
    with pytest.raises(ValueError, match="regular"):
        E.grid_transform([0.0, 0.5, 1.5], [0.0, 0.5])


def test_grid_without_image_times_is_an_error():
    ds = xr.Dataset({"clouds": (("time", "y", "x"), np.zeros((2, 1, 1)))}, coords={"time": [0, 1], "y": [0.5], "x": [0.5]})
    with pytest.raises(E.EarthEngineError, match="system:time_start"):
        E.image_days(ds, "2004-01-01", "2004-01-02")


def test_cli_grid_saves_zarr_and_dry_run(fake_xee, tmp_path, capsys):
    import yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "ee-cli", "drivers": {"source": "earthengine", "feature_set": "minimal"},
        "grid": {"resolution": 1.0, "region": [10, 40, 12, 43]},
        "period": {"start": "2004-06-01", "end": "2004-06-10"}, "runs": ["runs/x"], "output": "o",
    }))
    out = tmp_path / "grid.zarr"
    assert main(["-q", "acquire", "grid", str(recipe), "--dry-run"]) == 0
    assert "ee-cli" not in capsys.readouterr().out and fake_xee.requests == {}
    assert main(["-q", "acquire", "grid", str(recipe), "--zarr", str(out), "--project", "p"]) == 0
    assert "ee-cli" in capsys.readouterr().out
    saved = xr.open_zarr(out, consolidated=False)
    assert dict(saved.sizes) == {"time": 10, "lat": 3, "lon": 2}
    np.testing.assert_array_equal(saved.lat.values, [40.5, 41.5, 42.5])
    assert saved.sur_refl_b01.attrs["units"] == "1" and saved.temperature_2m.attrs["units"] == "K"
    assert float(saved.sur_refl_b03.max()) < 1
    assert main(["-q", "acquire", "grid", str(recipe), "--zarr", str(out)]) == 2  # exists, no --overwrite


def test_upscale_driver_cache_resumes_and_needs_no_requests_once_complete(fake_xee, tmp_path):
    recipe = _recipe(cache=str(tmp_path / "cache"))
    drivers = recipe.drivers
    assert drivers.cache == str(tmp_path / "cache")
    days = pd.date_range("2004-01-01", "2004-01-20")
    fake_xee.faults = {"computePixels": {6: fake_ee.BAD_BAND}}
    with pytest.raises(E.EarthEngineError, match="resume"):
        drivers.open(recipe.grid, days, None, chunks=recipe.chunks, base=tmp_path)
    done = fake_xee.requests["computePixels"]
    ds = drivers.open(recipe.grid, days, None, chunks=recipe.chunks, base=tmp_path)
    assert dict(ds.sizes) == {"time": 20, "lat": 3, "lon": 4} and set(ds.data_vars) == set(catalog.features("minimal"))
    n = fake_xee.requests["computePixels"]
    assert n > done
    again = drivers.open(recipe.grid, days, None, chunks=recipe.chunks, base=tmp_path)
    assert fake_xee.requests["computePixels"] == n  # complete: read from the cache
    xr.testing.assert_identical(ds.load(), again.load())
    with pytest.raises(Exception, match="workers"):
        parse_recipe({**{"name": "x", "runs": ["r"], "output": "o", "grid": {"resolution": 1.0},
                         "period": {"start": "2004-01-01", "end": "2004-01-02"}},
                      "drivers": {"source": "earthengine", "workers": 0}})


@pytest.mark.slow
def test_acquire_grid_killed_at_any_moment_resumes_and_ends_identical(tmp_path):
    """A real subprocess (the fake ee in place) SIGKILLed at several points, then re-run."""
    import yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "ee-kill", "drivers": {"source": "earthengine", "feature_set": "minimal", "project": "p"},
        "grid": {"resolution": 0.5, "region": [5, 45, 7, 46.5]},
        "period": {"start": "2004-01-01", "end": "2004-02-29"}, "runs": ["runs/x"], "output": "o",
    }))
    log = tmp_path / "requests.log"
    cfg = tmp_path / "world.json"
    cfg.write_text(json.dumps({"pixel_delay": 0.02, "request_log": str(log)}))
    here = Path(__file__).parent

    def start(zarr):
        cmd = [sys.executable, str(here / "fake_ee.py"), str(cfg), "--", "-q", "acquire", "grid", str(recipe),
               "--zarr", str(zarr), "--chunk-days", "5", "--workers", "2"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")])}
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def lines():
        return log.read_text().splitlines() if log.exists() else []

    out = tmp_path / "killed.zarr"
    total = 12 * 18  # 12 five-day chunks x 1 tile x 18 variables
    kills = []
    for at in (5, 60, 150):
        proc = start(out)
        while len(lines()) < at and proc.poll() is None:
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done = len(C.markers(tmp_path / ".killed.zarr.partial"))
        kills.append((len(lines()), done))
        log.unlink()
    assert [d for _, d in kills] == sorted(d for _, d in kills) and 0 < kills[0][1] < kills[-1][1] < total
    proc = start(out)
    assert proc.wait(timeout=120) == 0, proc.communicate()
    # the final run fetched exactly what the last killed one had not finished
    assert len(lines()) == total - kills[-1][1]
    log.unlink()
    clean = tmp_path / "clean.zarr"
    proc = start(clean)
    assert proc.wait(timeout=120) == 0, proc.communicate()
    assert len(lines()) == total
    xr.testing.assert_identical(xr.open_zarr(out, consolidated=False), xr.open_zarr(clean, consolidated=False))


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
    monkeypatch.setattr(E, "_initialized", {})
    ee.Reset()
    ee.Initialize(None, "", project="offline")
    ee.projects = []
    monkeypatch.setattr(ee, "Initialize", lambda project=None, **kw: ee.projects.append(project))
    monkeypatch.setattr(F, "_sleep", lambda s: None)
    yield ee
    ee.Reset()


def invocations(obj) -> list[tuple[str, dict]]:
    """(function name, arguments) of every call in an ee object's serialized graph."""
    return _walk(json.loads(obj.serialize(for_cloud_api=True)))


def _walk(doc) -> list[tuple[str, dict]]:
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


def test_real_client_accepts_the_reference_requests(real_ee):
    lat, lon = 42.5378, -72.1715
    modis = E.site_series(E.MODIS, lat, lon, "2004-01-01", "2004-01-03", method="reference")
    (rr,) = _calls(modis, "Image.reduceRegion")
    assert (rr["scale"], rr["bestEffort"], rr["maxPixels"]) == (500, True, 1e13)
    bounds = rr["geometry"]
    assert bounds["fn"] == "Geometry.bounds" and bounds["geometry"]["fn"] == "Geometry.buffer"
    assert bounds["geometry"]["distance"] == 1000
    assert bounds["geometry"]["geometry"] == {"fn": "GeometryConstructors.Point", "coordinates": [lon, lat]}
    (bits,) = _calls(modis, "Image.bitwiseAnd")
    assert bits["image1"]["bandSelectors"] == ["state_1km"] and bits["image2"]["value"] == 1
    assert _calls(modis, "Image.updateMask") == []
    era5 = E.site_series(E.ERA5_LAND, lat, lon, "2004-01-01", "2004-01-03", method="reference")
    (rr,) = _calls(era5, "Image.reduceRegion")
    assert (rr["scale"], rr["bestEffort"], rr["maxPixels"]) == (2000, True, 1e13)
    assert rr["image"]["fn"] == "Image.resample" and rr["image"]["mode"] == "bilinear"


def test_real_client_accepts_the_grid_requests(real_ee):
    transform = (0.1, 0.0, -11.0, 0.0, -0.1, 71.0)
    for source in E.SOURCES:
        ic = E.grid_collection(source, "2021-01-01", "2021-01-31", crs_transform=transform)
        (rr,) = _calls(ic, "Image.reduceResolution")
        assert (rr["reducer"]["fn"], rr["bestEffort"], rr["maxPixels"]) == ("Reducer.mean", True, P.MAX_PIXELS_PER_CELL)
        (rp,) = _calls(ic, "Image.reproject")
        assert rp["crsTransform"] == list(transform) and rp["crs"]["crs"] == "EPSG:4326"
        kept = [c["properties"] for c in _calls(ic, "Image.copyProperties")]
        assert kept and all(k == ["system:id", "system:time_start"] for k in kept)


def _recorded(load_id):
    source = "modis" if load_id == MODIS_ID else "era5_land"
    return json.loads((RECORDED / f"{source}_US-Ha1_2004-01-01_2004-01-03.json").read_text())


def test_real_client_end_to_end_with_recorded_responses(real_ee, monkeypatch, tmp_path):
    """acquire_sites through the real client: getInfo -> computeValue -> recorded JSON."""
    asked = []

    def compute_value(obj):
        (load,) = _calls(obj, "ImageCollection.load")
        (dates,) = _calls(obj, "DateRange")
        asked.append((load["id"], dates["start"], dates["end"]))
        if len(asked) == 1:
            raise real_ee.EEException("Too many concurrent aggregations.")
        return _recorded(load["id"])

    monkeypatch.setattr(real_ee.data, "computeValue", compute_value)
    s = catalog.sites()
    ds = acquire(s[s.site == "US-Ha1"], tmp_path, start="2004-01-01", end="2004-01-03", workers=1, project="proj-x")
    assert real_ee.projects == ["proj-x"]
    assert len(asked) == 3 and asked[0] == asked[1]  # the rate-limited request was retried
    site = ds.isel(site=0)
    np.testing.assert_allclose(site.sur_refl_b02.values, [0.2210, np.nan, 0.215075], rtol=1e-6)
    np.testing.assert_allclose(site.SensorAzimuth.values, [102.455, -78.22, 98.10], rtol=1e-6)
    np.testing.assert_allclose(site.clouds.values, [0.0, 1.0, 0.25])
    np.testing.assert_allclose(site.temperature_2m.values, [268.41, 271.05, 265.77], rtol=1e-6)


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


def test_real_xee_reads_the_grid_end_to_end(real_ee, monkeypatch):
    """The grid through the real xee 0.1.x backend and real ee client; EE answers recorded-style."""
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
    grid = _grid(recipe, chunks={"time": 20, "lat": 2, "lon": 3})
    ds = grid.open().dataset()
    assert pixel_requests == []  # lazy: only metadata so far
    assert dict(ds.sizes) == {"time": 54, "lat": 3, "lon": 4}
    np.testing.assert_array_equal(ds.lat.values, recipe.grid.lat)
    ds = ds[["temperature_2m", "sur_refl_b04", "SolarZenith", "clouds"]].compute()
    # one computePixels per variable and chunk: 3 time chunks x 2 x 2 tiles; xee rows run north to south
    era5 = {r for r in pixel_requests if r[0] == ERA5_ID and r[1] == "temperature_2m"}
    assert {(r[2], r[3]) for r in era5} == {(0, 20), (20, 20), (40, 14)}
    assert {(r[4], r[5], r[6], r[7]) for r in era5} == {(5.0, 46.0, 2, 2), (6.0, 46.0, 2, 2), (5.0, 46.5, 2, 1), (6.0, 46.5, 2, 1)}
    assert len(pixel_requests) == 4 * 3 * 4
    modis = {(r[2], r[3]) for r in pixel_requests if r[0] == MODIS_ID and r[1] == "clouds"}
    assert modis == {(0, 20), (20, 20), (40, 14)}
    la, lo = np.meshgrid(recipe.grid.lat, recipe.grid.lon, indexing="ij")
    nodata = (la > 46) & (lo > 6.5)
    for day in pd.to_datetime(["2003-12-25", "2004-01-01", "2004-02-16"]):
        for b, scale in [("temperature_2m", 1.0), ("sur_refl_b04", 1e-4), ("SolarZenith", 0.01), ("clouds", 1.0)]:
            cid = ERA5_ID if b == "temperature_2m" else MODIS_ID
            exp = np.where(nodata, np.nan, _grid_value(cid, b, day, la, lo) * scale)
            np.testing.assert_allclose(ds[b].sel(time=day).values, exp, rtol=1e-6, err_msg=f"{b} {day.date()}")


# --------------------------------------------------------------------------- service accounts, real client, HTTP boundary


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """The real ee client with Earth Engine's and Google's token endpoints answered locally."""
    ee = pytest.importorskip("ee")
    key = tmp_path / "key.json"
    doc = fake_ee.service_account_key(key)

    def answers(body):
        calls = _walk(body["expression"])
        return _recorded(_unique(calls, "ImageCollection.load")["id"])

    http = fake_ee.OfflineHTTP(doc["public_key"], answers).install()
    for var in (*E.PROJECT_ENV, E.KEY_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(E, "_initialized", {})
    monkeypatch.setattr(F, "_sleep", lambda s: None)
    ee.Reset()
    yield http, key, doc
    http.uninstall()
    ee.Reset()


def test_service_account_through_the_real_client_with_faults_and_no_leaks(offline, tmp_path, caplog, capsys):
    """``--service-account KEY`` reaches ee.Initialize with ee.ServiceAccountCredentials and Earth
    Engine's scope; a 503, a connection reset and a real stalled socket are each retried; the key
    never shows up in logs, output or the cache."""
    http, key, doc = offline
    http.faults = {"compute": {1: ("status", 503, "The service is currently unavailable."), 2: ("connection",),
                               3: ("stall",)}}
    out = tmp_path / "s.zarr"
    argv = ["-vv", "acquire", "sites", "--out", str(out), "--site", "US-Ha1", "--start", "2004-01-01",
            "--end", "2004-01-03", "--service-account", str(key), "--workers", "1", "--timeout", "0.5"]
    with caplog.at_level(logging.DEBUG):
        assert main(argv) == 0
    printed = capsys.readouterr()
    (claims, *_) = http.token_claims()
    assert "https://www.googleapis.com/auth/earthengine" in claims["scope"].split()
    assert claims["iss"] == doc["client_email"] and claims["aud"] == "https://oauth2.googleapis.com/token"
    computes = [e for e in http.log if e[0] == "compute"]
    assert len(computes) == 2 + 3  # two chunks, three failures retried
    assert all(e[3]["Authorization"] == f"Bearer {fake_ee.ACCESS_TOKEN}" for e in computes)
    assert all("/projects/cbgrid-offline/" in e[2] for e in computes)  # the key's own project
    import ee

    state = ee.data._get_state()
    assert type(state.credentials).__name__ == "Credentials" and state.credentials.service_account_email == doc["client_email"]
    assert state.max_retries == 0 and state.deadline_ms == 500
    ds = store.open_store(out)
    np.testing.assert_allclose(ds.temperature_2m.isel(site=0).values, [268.41, 271.05, 265.77], rtol=1e-6)
    # the key's secrets appear nowhere cbgrid writes or says
    secrets = [doc["private_key_id"], *[line for line in doc["private_key"].splitlines() if "PRIVATE" not in line][:3]]
    written = [p.read_bytes().decode(errors="replace") for p in tmp_path.rglob("*") if p.is_file() and p != key]
    for text in [caplog.text, printed.out, printed.err, *written]:
        assert not any(s in text for s in secrets)
    assert json.loads(key.read_text()) == {k: v for k, v in doc.items() if k != "public_key"}


def test_key_in_google_application_credentials_gets_earth_engine_scopes(offline, monkeypatch):
    http, key, doc = offline
    monkeypatch.setenv(E.KEY_ENV, str(key))
    assert E.initialize() == "cbgrid-offline"
    (claims,) = http.token_claims()
    assert "https://www.googleapis.com/auth/earthengine" in claims["scope"].split()


def test_a_key_the_token_endpoint_rejects_says_what_to_do(offline, capsys):
    http, key, _ = offline
    http.faults = {"token": {1: ("status", 400, "invalid_grant")}}
    with pytest.raises(E.CredentialsError, match="service-account"):
        E.initialize(service_account=key)


@pytest.mark.slow
def test_every_worker_of_a_local_cluster_initialises_itself(offline):
    distributed = pytest.importorskip("distributed")
    import cloudpickle

    http, key, doc = offline
    cloudpickle.register_pickle_by_value(fake_ee)
    conn = E.Connection.resolve(None, key)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=logging.ERROR) as cluster, distributed.Client(cluster) as client:
        client.register_plugin(fake_ee.offline_worker_plugin(doc["public_key"]), name="offline-http")
        E.init_workers(client, conn)
        cluster.scale(3)
        client.wait_for_workers(3, timeout=60)
        states = client.run(fake_ee.worker_state)
    assert len(states) == 3 and len({s["pid"] for s in states.values()}) == 3
    for s in states.values():
        assert s["initialized"] and s["project"] == "cbgrid-offline" and s["email"] == doc["client_email"]
        assert "https://www.googleapis.com/auth/earthengine" in s["scopes"]
        assert s["deadline_ms"] == E.DEADLINE_S * 1000 and s["max_retries"] == 0
        assert any("https://www.googleapis.com/auth/earthengine" in (t or "") for t in s["token_scopes"])


@pytest.mark.slow
def test_driver_source_registers_worker_initialisation_on_the_active_client(world, monkeypatch):
    distributed = pytest.importorskip("distributed")
    registered = []
    monkeypatch.setattr(E, "init_workers", lambda client, conn: registered.append((client, conn)))
    monkeypatch.setattr(xr, "open_dataset", fake_ee.fake_open_dataset(world))
    recipe = _recipe()
    with distributed.Client(processes=False, n_workers=1, dashboard_address=None) as client:
        recipe.drivers.open(recipe.grid, pd.date_range("2004-01-01", "2004-01-03"), None, chunks={}, base=Path("."))
    assert registered and registered[0][0] is client and registered[0][1].project == "rec-proj"


# --------------------------------------------------------------------------- live


@pytest.mark.network
def test_live_earth_engine_one_site_one_week(tmp_path):
    pytest.importorskip("ee")
    try:
        E.initialize()
    except (E.EarthEngineError, ValueError, FileNotFoundError) as e:
        pytest.skip(f"no Earth Engine credentials: {e}")
    s = catalog.sites()
    ds = E.acquire_sites(s[s.site == "US-Ha1"], "2010-07-01", "2010-07-07", cache_dir=tmp_path, progress=False)
    schema.validate(ds)
    assert 270 < float(ds.temperature_2m.mean()) < 310
    refl = ds.sur_refl_b02.values
    assert np.nanmin(refl) > -0.01 and np.nanmax(refl) < 1.0
    assert 0 <= float(ds.clouds.min()) <= float(ds.clouds.max()) <= 1
