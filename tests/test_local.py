"""Local driver files: CDS-style names and coordinates, units, sub-daily input, regridding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from cbgrid.errors import DataError
from cbgrid.sources import local

SHARED_GRIB = local.Path(__file__).resolve().parents[2] / "shared" / "data" / "era5" / "era5-levels-members.grib"


def _cds_file(res=0.5, days=None, hourly=False) -> xr.Dataset:
    """An ERA5-Land file as the CDS writes it: short names, 0..360 lon, descending lat, valid_time."""
    lat = np.arange(90 - res / 2, -90, -res)[::-1][::-1]  # north to south
    lon = np.arange(res / 2, 360, res)
    t = pd.date_range("2020-07-01", periods=(days or 3) * (24 if hourly else 1), freq="h" if hourly else "D")
    shape = (len(t), lat.size, lon.size)
    rng = np.random.default_rng(0)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    t2m = np.broadcast_to(20.0 - 0.3 * np.abs(la), shape) + np.arange(len(t))[:, None, None] * 0.01
    hours = np.asarray(t.hour)
    # accumulation since 00 UTC; the 00 UTC value holds the previous day's total (24 mm)
    tp = np.broadcast_to(np.where(hours == 0, 24.0, hours.astype(float))[:, None, None], shape) / 1000.0
    ds = xr.Dataset(
        {
            "t2m": (("valid_time", "latitude", "longitude"), t2m.astype(np.float32), {"units": "degC"}),
            "tp": (("valid_time", "latitude", "longitude"), tp.astype(np.float32), {"units": "m"}),
            "lai_hv": (("valid_time", "latitude", "longitude"), rng.random(shape).astype(np.float32), {"units": "m**2 m**-2"}),
            "mylai": (("valid_time", "latitude", "longitude"), np.full(shape, 2.0, np.float32), {"units": "m2 m-2"}),
        },
        coords={"valid_time": t, "latitude": lat, "longitude": lon, "number": 0, "expver": "0001"},
    )
    return ds


def test_netcdf_names_coordinates_and_units(tmp_path):
    path = tmp_path / "era5land.nc"
    _cds_file().to_netcdf(path)
    lat = np.arange(-89.75, 90, 0.5)
    lon = np.arange(-179.75, 180, 0.5)
    days = pd.date_range("2020-07-01", periods=2)
    ds = local.open_local([str(path)], variables={"leaf_area_index_low_vegetation": "mylai"}, lat=lat, lon=lon,
                          days=days, chunks={"lat": 90, "lon": 180})
    assert set(ds.data_vars) == {"temperature_2m", "total_precipitation_sum", "leaf_area_index_high_vegetation",
                                 "leaf_area_index_low_vegetation"}
    assert ds["temperature_2m"].dims == ("time", "lat", "lon") and ds["temperature_2m"].dtype == np.float32
    assert ds.chunks["lat"][0] == 90 and ds.chunks["time"] == (2,)
    assert (np.diff(ds["lat"].values) > 0).all() and ds["lon"].values.min() == pytest.approx(-179.75)
    # degC -> K, and the value at a known place is unchanged by the coordinate shuffle
    v = float(ds["temperature_2m"].sel(lat=45.25, lon=-100.25).isel(time=0))
    assert v == pytest.approx(20.0 - 0.3 * 45.25 + 273.15, abs=1e-3)
    assert ds["temperature_2m"].attrs["units"] == "K"


def test_hourly_files_become_days(tmp_path):
    path = tmp_path / "hourly.nc"
    _cds_file(res=30.0, days=3, hourly=True).to_netcdf(path)
    ds = local.open_local([str(path)], days=pd.date_range("2020-07-01", periods=2))
    # the daily total of an accumulated field is its 00 UTC value of the next day
    np.testing.assert_allclose(ds["total_precipitation_sum"].values, 0.024, rtol=1e-6)
    # state variables: the daily mean
    raw = _cds_file(res=30.0, days=3, hourly=True)["t2m"].sel(latitude=45.0, longitude=195.0)
    want = float(raw.isel(valid_time=slice(24, 48)).mean()) + 273.15
    assert float(ds["temperature_2m"].sel(lat=45.0, lon=-165.0).isel(time=1)) == pytest.approx(want, rel=1e-6)


def test_finer_grids_are_block_averaged_and_others_interpolated(tmp_path):
    path = tmp_path / "fine.nc"
    _cds_file(res=0.5, days=1).to_netcdf(path)
    lat, lon = np.arange(-89.5, 90, 1.0), np.arange(-179.5, 180, 1.0)
    ds = local.open_local([str(path)], lat=lat, lon=lon)
    fine = local.open_local([str(path)])
    want = fine["leaf_area_index_high_vegetation"].isel(time=0).sel(lat=[45.25, 45.75], lon=[10.25, 10.75]).mean()
    got = ds["leaf_area_index_high_vegetation"].isel(time=0).sel(lat=45.5, lon=10.5)
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    odd = local.open_local([str(path)], lat=np.arange(-88.5, 90, 3.0), lon=np.arange(-178.5, 180, 3.0))
    assert odd.sizes == {"time": 1, "lat": 60, "lon": 120}


def test_zarr_and_errors(tmp_path):
    z = tmp_path / "drivers.zarr"
    _cds_file(res=10.0).drop_vars("expver").to_zarr(z)
    ds = local.open_local([str(z)])
    assert "temperature_2m" in ds and ds.sizes["time"] == 3
    with pytest.raises(ValueError, match="lack 2 of the 4 days"):
        local.open_local([str(z)], days=pd.date_range("2020-07-02", periods=4))
    with pytest.raises(KeyError, match="surface_pressure"):
        local.open_local([str(z)], variables={"surface_pressure": "sp_hpa"})
    with pytest.raises(FileNotFoundError, match="no driver file"):
        local.open_local([str(tmp_path / "nothing_*.nc")])
    bad = _cds_file(res=10.0)
    bad["t2m"].attrs["units"] = "furlongs"
    bad.to_netcdf(tmp_path / "bad.nc")
    with pytest.raises(ValueError, match="'temperature_2m' is in 'furlongs'"):
        local.open_local([str(tmp_path / "bad.nc")])


def test_grib_needs_cfgrib_or_reads_the_real_file():
    if not SHARED_GRIB.exists():
        pytest.skip("the shared GRIB sample is not present")
    try:
        import cfgrib  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install cfgrib"):
            local.open_local([str(SHARED_GRIB)])
        return
    with pytest.raises(ValueError, match="extra dimension|dimension"):
        local.open_local([str(SHARED_GRIB)])  # pressure levels x ensemble members: not a driver grid


def test_daily_files_stamped_at_noon_stay_daily(tmp_path):
    ds = _cds_file(res=30.0, days=3)
    ds = ds.assign_coords(valid_time=ds.indexes["valid_time"] + local.pd.Timedelta(hours=12))
    ds.to_netcdf(tmp_path / "noon.nc")
    out = local.open_local([str(tmp_path / "noon.nc")], days=local.pd.date_range("2020-07-01", periods=3))
    assert out.sizes["time"] == 3 and np.isfinite(out["total_precipitation_sum"].values).all()


def test_time_is_sorted_and_a_repeated_time_refused(tmp_path):
    ds = _cds_file(res=30.0, days=4)
    ds.isel(valid_time=[0, 2, 1, 3]).to_netcdf(tmp_path / "shuffled.nc")
    out = local.open_local([str(tmp_path / "shuffled.nc")])
    assert out.indexes["time"].is_monotonic_increasing
    np.testing.assert_array_equal(out["temperature_2m"].values,
                                  local.open_local([str(_write(ds, tmp_path / "sorted.nc"))])["temperature_2m"].values)
    xr.concat([ds, ds.isel(valid_time=[1])], "valid_time").to_netcdf(tmp_path / "repeat.nc")
    with pytest.raises(ValueError, match=r"repeat.nc: time 2020-07-02 00:00:00 appears more than once"):
        local.open_local([str(tmp_path / "repeat.nc")])


def _write(ds: xr.Dataset, path):
    ds.to_netcdf(path)
    return path


def test_a_file_that_cannot_be_read_is_named(tmp_path):
    data = _write(_cds_file(res=30.0), tmp_path / "full.nc").read_bytes()
    (tmp_path / "cut.nc").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut.nc: cannot be read with engine 'netcdf4' .*check the file is complete"):
        local.open_local([str(tmp_path / "cut.nc")])


def test_implausible_values_are_refused_as_the_chunks_are_computed(tmp_path):
    """Celsius labelled K passes the units check; the plausible range of the catalog catches it,
    in the chunk that holds it, without a pass of its own."""
    ds = _cds_file(res=10.0)
    ds["t2m"].attrs["units"] = "K"  # the values are °C
    ds.to_netcdf(tmp_path / "celsius.nc")
    out = local.open_local([str(tmp_path / "celsius.nc")], chunks={"lat": 6, "lon": 36})
    assert out["temperature_2m"].data.npartitions == 3  # lazy: nothing read yet
    with pytest.raises(DataError, match=r"celsius.nc: temperature_2m = -?[\d.]+ K outside its plausible range "
                                        r"\[150, 350\] .*units attribute"):
        out["temperature_2m"].compute()
    assert np.isfinite(out["leaf_area_index_high_vegetation"].values).all()  # the other variables read as before
