import numpy as np
import pytest
import xarray as xr
import zarr

from cbgrid import schema, store
from cbgrid.schema import SchemaError
from cbgrid.testing import site_store as random_site_dataset


def test_roundtrip_is_lazy_and_exact(tmp_path, small_ds):
    p = store.write_store(small_ds, tmp_path / "s.zarr", progress=False)
    ds = store.open_store(p)
    assert ds[schema.GPP].chunks is not None  # dask-backed
    xr.testing.assert_equal(ds[schema.GPP].load(), small_ds[schema.GPP])
    assert list(ds.site.values) == list(small_ds.site.values)
    assert ds.to_dataarray("variable").dims == ("variable", "site", "time")
    meta = zarr.open_group(str(p), mode="r")
    assert meta[schema.GPP].chunks == (6, 60)  # capped at the array size


def test_existing_store_is_not_replaced_without_overwrite(tmp_path, small_ds):
    p = store.write_store(small_ds, tmp_path / "s.zarr", progress=False)
    with pytest.raises(FileExistsError, match="overwrite"):
        store.write_store(small_ds, p, progress=False)


def test_failed_write_leaves_previous_store_intact(tmp_path, small_ds, monkeypatch):
    p = store.write_store(small_ds, tmp_path / "s.zarr", progress=False)
    bigger = random_site_dataset(n_sites=8, seed=1)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "_commit", boom)
    with pytest.raises(KeyboardInterrupt):
        store.write_store(bigger, p, overwrite=True, progress=False)
    assert store.open_store(p).sizes["site"] == 6
    assert [x.name for x in tmp_path.iterdir() if not x.name.endswith(".lock")] == ["s.zarr"]  # no temp left behind


def test_append_sites_and_skip_duplicates(tmp_path):
    a = random_site_dataset(n_sites=4, seed=0)
    b = random_site_dataset(n_sites=7, seed=1).isel(site=slice(3, 7))  # overlaps site 3
    p = store.write_store(a, tmp_path / "s.zarr", progress=False)
    added = store.append_sites(b, p)
    assert added == [str(s) for s in b.site.values[1:]]
    ds = store.open_store(p)
    assert ds.sizes["site"] == 7
    xr.testing.assert_equal(ds[schema.GPP].isel(site=slice(4, 7)).load(), b[schema.GPP].isel(site=slice(1, 4)))
    xr.testing.assert_equal(ds[schema.GPP].isel(site=slice(0, 4)).load(), a[schema.GPP])


def test_append_aligns_time_and_fills_missing_variables(tmp_path):
    a = random_site_dataset(n_sites=2, seed=0)
    b = random_site_dataset(n_sites=4, seed=1, start="2010-02-01").isel(site=[2, 3]).drop_vars("temperature_2m")
    p = store.write_store(a, tmp_path / "s.zarr", progress=False)
    store.append_sites(b, p)
    ds = store.open_store(p).load()
    assert ds.sizes["time"] == 60
    assert np.isnan(ds["temperature_2m"].isel(site=[2, 3])).all()
    np.testing.assert_array_equal(ds[schema.GPP].isel(site=2).sel(time="2010-02-01").values, b[schema.GPP].isel(site=0, time=0).values)


def test_interrupted_append_is_invisible_then_redone(tmp_path, monkeypatch):
    a = random_site_dataset(n_sites=3, seed=0)
    b = random_site_dataset(n_sites=5, seed=1).isel(site=[3, 4])
    p = store.write_store(a, tmp_path / "s.zarr", progress=False)
    real_commit = store._commit

    def crash(path, n, variables):
        raise KeyboardInterrupt  # after the arrays were resized and written

    monkeypatch.setattr(store, "_commit", crash)
    with pytest.raises(KeyboardInterrupt):
        store.append_sites(b, p)
    assert zarr.open_group(str(p))[schema.GPP].shape[0] == 5  # data physically there ...
    assert store.open_store(p).sizes["site"] == 3  # ... but not committed
    monkeypatch.setattr(store, "_commit", real_commit)
    store.append_sites(b, p)
    ds = store.open_store(p)
    assert ds.sizes["site"] == 5
    xr.testing.assert_equal(ds[schema.GPP].isel(site=[3, 4]).load(), b[schema.GPP])


def test_add_variables_commits_atomically(tmp_path, small_ds):
    p = store.write_store(small_ds.drop_vars("temperature_2m"), tmp_path / "s.zarr", progress=False)
    new = small_ds[["temperature_2m"]]
    store.add_variables(new, p)
    ds = store.open_store(p)
    xr.testing.assert_equal(ds["temperature_2m"].load(), small_ds["temperature_2m"])
    with pytest.raises(SchemaError, match="already has variable"):
        store.add_variables(new, p)


def test_append_rejects_unknown_variables(tmp_path, small_ds):
    p = store.write_store(small_ds.drop_vars("temperature_2m"), tmp_path / "s.zarr", progress=False)
    other = random_site_dataset(n_sites=8, seed=3).isel(site=[7])
    with pytest.raises(SchemaError, match="temperature_2m"):
        store.append_sites(other, p)


def test_foreign_zarr_is_rejected(tmp_path):
    xr.Dataset({"x": ("a", np.arange(3.0))}).to_zarr(tmp_path / "other.zarr", zarr_format=3, consolidated=False)
    with pytest.raises(SchemaError, match="not a cbgrid store"):
        store.open_store(tmp_path / "other.zarr")
    with pytest.raises(FileNotFoundError):
        store.open_store(tmp_path / "missing.zarr")


def test_summary_counts(small_ds):
    s = store.summary(small_ds)
    assert s["sites"] == 6 and s["days"] == 60
    assert s["site_days_observed"] == 360
    assert sum(s["qc"].values()) == 360 and s["qc"]["==1"] > 0


def test_replacing_every_data_variable_keeps_site_coordinates(tmp_path, small_ds):
    only = small_ds[["temperature_2m"]]
    p = store.write_store(only, tmp_path / "s.zarr", progress=False)
    store.add_variables(only + 1.0, p, overwrite=True)
    ds = store.open_store(p)
    assert set(schema.SITE_COORDS) <= set(ds.coords)
    xr.testing.assert_allclose(ds["temperature_2m"].load(), only["temperature_2m"] + 1.0)


@pytest.mark.parametrize("resized", [1, 3, 8])
def test_append_killed_between_array_resizes_leaves_the_committed_store(tmp_path, monkeypatch, resized):
    # an append resizes its arrays one at a time: killed after `resized` of them, the arrays'
    # site lengths differ until the next write rolls them back
    a = random_site_dataset(n_sites=3, seed=0)
    b = random_site_dataset(n_sites=5, seed=1).isel(site=[3, 4])
    p = store.write_store(a, tmp_path / "s.zarr", progress=False)
    before = store.open_store(p).load()
    real_resize, calls = zarr.Array.resize, []

    def resize(self, shape):
        if len(calls) == resized:
            raise KeyboardInterrupt
        calls.append(self.name)
        return real_resize(self, shape)

    monkeypatch.setattr(zarr.Array, "resize", resize)
    with pytest.raises(KeyboardInterrupt):
        store.append_sites(b, p)
    monkeypatch.setattr(zarr.Array, "resize", real_resize)
    lengths = {arr.shape[0] for _, arr in zarr.open_group(str(p), mode="r").arrays() if arr.ndim and arr.metadata.dimension_names[0] == "site"}
    assert lengths == {3, 5}  # the state a reader meets
    xr.testing.assert_identical(store.open_store(p).load(), before)
    store.append_sites(b, p)  # rolls back, then appends
    ds = store.open_store(p)
    assert list(ds.site.values) == list(a.site.values) + list(b.site.values)
    xr.testing.assert_equal(ds[schema.GPP].isel(site=[3, 4]).load(), b[schema.GPP])
