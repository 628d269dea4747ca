"""Gridded inference: chunking, spin-up, ensemble spread, masks, distributed, the whole recipe."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from cbgrid import context, evaluation, manifest, product, schema, upscale
from cbgrid.errors import ExistsError, InputError
from cbgrid.grid import Grid
from cbgrid.recipe import parse_recipe
from cbgrid.testing import StubPredictor, banded_context


@pytest.fixture(autouse=True, scope="module")
def _context_cache(tmp_path_factory):
    """Grid contexts computed by these tests are cached in a temporary folder, not the home."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CBGRID_CACHE", str(tmp_path_factory.mktemp("cbgrid-cache")))
    yield
    mp.undo()


def _recipe(tmp_path, res=10.0, chunks=None, start="2020-07-01", end="2020-07-06", per="month"):
    return parse_recipe({
        "name": "test", "drivers": {"source": "twin", "seed": 1}, "grid": {"resolution": res},
        "period": {"start": start, "end": end, "per": per}, "runs": ["unused"],
        "output": str(tmp_path / "out"), "chunks": chunks or {"lat": 7, "lon": 11},
    })


@pytest.fixture(scope="module")
def grid10():
    g = Grid(10.0)
    ctx = banded_context(g)
    days = pd.date_range("2020-06-26", "2020-07-06")
    from cbgrid.sources.twin import twin_grid

    drivers = twin_grid(g.lat, g.lon, days, 1, igbp=ctx["igbp"].values, koppen=ctx["koppen"].values,
                        with_truth=False, chunks={"lat": 7, "lon": 11}).persist()
    return g, ctx, drivers, days


def test_predictions_do_not_depend_on_the_chunking(grid10):
    g, ctx, drivers, days = grid10
    out = days[-6:]
    runs = [StubPredictor(1.0, window=5), StubPredictor(1.2)]
    a = upscale.predict_blocks(drivers, runs, ctx, out, chunks={"lat": 5, "lon": 7}).compute()
    b = upscale.predict_blocks(drivers, runs, ctx, out, chunks={"lat": 18, "lon": 36}).compute()
    assert a.shape == (len(upscale.CHANNELS), 6, 18, 36)
    np.testing.assert_array_equal(a, b)
    modelled = ctx["modelled"].values
    assert np.isfinite(a[:, :, modelled]).all()  # spin-up covers the 5-day window on day 1
    assert np.isnan(a[:, :, ~modelled]).all()  # ocean and ice are never predicted


def test_temporal_runs_get_their_history(grid10):
    g, ctx, drivers, days = grid10
    run = StubPredictor(window=5)
    assert upscale.history_days(run) == 5 and upscale.history_days(StubPredictor()) == 0
    out = days[-3:]
    upscale.predict_blocks(drivers, [run], ctx, out, chunks={"lat": 18, "lon": 36}).compute()
    assert run.seen_days == [(days[0], days[-1])]


def test_ensemble_spread_is_the_spread_of_all_members():
    rng = np.random.default_rng(0)
    members = [rng.normal(size=(3, 50)) for _ in range(6)]  # 2 runs x 3 seeds
    runs = [members[:3], members[3:]]
    means = [np.mean(r, axis=0) for r in runs]
    sds = [np.std(r, axis=0) for r in runs]
    m, s = upscale.combine_members(means, sds)
    np.testing.assert_allclose(m, np.mean(members, axis=0))
    np.testing.assert_allclose(s, np.std(members, axis=0))


def test_upscale_writes_products_scores_and_respects_the_balance(tmp_path):
    g = Grid(10.0)
    recipe = _recipe(tmp_path, start="2020-06-29", end="2020-07-02")  # two months -> two files
    scores = pd.DataFrame({
        "split": "koppen", "model": "m", "feature_set": "minimal",
        "target": np.repeat(list(schema.TARGETS), 4), "site": list("abcd") * 3,
        "R2": np.linspace(0, 1, 12), "RMSE": np.linspace(1, 2, 12), "nMAE": np.linspace(0.1, 0.5, 12),
    })
    res = upscale.upscale(recipe, runs=[StubPredictor(window=3), StubPredictor(1.3)], scores=scores,
                          split="koppen (seed 0)", context=banded_context(g), progress=False)
    assert [p.name for p in res["products"]] == ["test_2020-06.nc", "test_2020-07.nc"]
    for p in res["products"]:
        assert product.check_product(p) == []
    ds = product.open_product(res["products"][1])
    assert ds.sizes["time"] == 2 and ds.attrs["zero_shot_split"] == "koppen (seed 0)"
    assert ds.attrs["zero_shot_GPP_R2_median"] == pytest.approx(np.median(np.linspace(0, 1, 12)[:4]))
    assert ds.attrs["nee_model_head_mean_abs_difference"] == pytest.approx(0.05, abs=1e-4)
    assert float(ds["GPP_sd"].mean()) > 0
    table = pd.read_csv(res["scores"])
    assert set(table["metric"]) == {"R2", "RMSE", "nMAE"} and {"p25", "p50", "p75"} <= set(table.columns)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "cbgrid-products.json", "test_2020-06.nc", "test_2020-06_totals.csv", "test_2020-07.nc",
        "test_2020-07_totals.csv", "test_scores.csv"]
    assert manifest.read(tmp_path / "out")["files"] == [
        "test_scores.csv", "test_2020-06.nc", "test_2020-06_totals.csv", "test_2020-07.nc", "test_2020-07_totals.csv"]


def test_the_twin_simulated_over_a_span_equals_the_twin_simulated_per_month():
    from cbgrid.sources.twin import DRIVER_VARS, twin_grid

    g = Grid(10.0)
    ctx = banded_context(g)
    kw = dict(igbp=ctx["igbp"].values, koppen=ctx["koppen"].values, with_truth=False, chunks={"lat": 9, "lon": 18})
    span = twin_grid(g.lat, g.lon, pd.date_range("2020-05-28", "2020-08-31"), 4, **kw).compute()
    for first, last in (("2020-06-28", "2020-07-31"), ("2020-07-29", "2020-08-31")):
        alone = twin_grid(g.lat, g.lon, pd.date_range(first, last), 4, **kw).compute()
        part = span.sel(time=slice(first, last))
        for v in DRIVER_VARS:
            a, b = alone[v].values, part[v].values
            np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
            scale = max(float(np.nanmax(np.abs(a))), 1e-30)
            assert float(np.nanmax(np.abs(a - b))) <= 1e-5 * scale, v


def test_months_upscaled_together_equal_months_upscaled_one_by_one(tmp_path, monkeypatch):
    from cbgrid.sources import twin

    opened = []
    real = twin.twin_grid
    monkeypatch.setattr(twin, "twin_grid", lambda lat, lon, time, *a, **k: opened.append(len(time)) or
                        real(lat, lon, time, *a, **k))
    g = Grid(10.0)
    ctx = banded_context(g)
    runs = [StubPredictor(window=3), StubPredictor(1.3)]
    products = {}
    for span in (1, upscale.SPAN_DAYS):
        recipe = _recipe(tmp_path / str(span), start="2020-06-28", end="2020-08-02", chunks={"lat": 9, "lon": 12})
        products[span] = upscale.upscale(recipe, runs=runs, scores=None, context=ctx, progress=False, span_days=span)
    # one opening (one spin-up) of the drivers for the three months instead of one per month
    assert opened == [3 + 3, 31 + 3, 2 + 3, 36 + 3]
    for one, together in zip(products[1]["products"], products[upscale.SPAN_DAYS]["products"]):
        assert one.name == together.name and product.check_product(together) == []
        a, b = product.open_product(one).load(), product.open_product(together).load()
        assert a.sizes == b.sizes
        for v in ("GPP", "RECO", "NEE", "GPP_sd", "NEE_sd"):
            np.testing.assert_allclose(b[v].values, a[v].values, rtol=1e-5, atol=1e-6, equal_nan=True)
    t = products[upscale.SPAN_DAYS]["timings"]
    assert set(t["seconds"]) == set(upscale.STAGES) and min(t["seconds"].values()) > 0
    assert t["cell_days"] == int(ctx["modelled"].sum()) * 36 and t["cell_days_per_s"] > 0


def test_piece_plan_refuses_pieces_that_do_not_split_the_days():
    days = pd.date_range("2020-01-01", "2020-01-10")
    with pytest.raises(InputError, match="do not split"):
        upscale.piece_plan(days, days[2:], [3, 4], spin=2)
    with pytest.raises(InputError, match="needs them from 2019-12-31"):
        upscale.piece_plan(days, days[2:], [1, 7], spin=4)


def test_distributed_client_gives_the_same_product(tmp_path, grid10):
    distributed = pytest.importorskip("distributed")
    import cloudpickle

    g, ctx, drivers, days = grid10
    runs = [StubPredictor(window=2)]
    blocks = upscale.predict_blocks(drivers, runs, ctx, days[-4:], chunks={"lat": 9, "lon": 12})
    cloudpickle.dumps(dict(blocks.__dask_graph__()))  # every task ships to a worker process
    recipe = _recipe(tmp_path, start="2020-07-01", end="2020-07-04")
    local = upscale.upscale(recipe, runs=runs, scores=None, context=ctx, progress=False)
    a = product.open_product(local["products"][0]).load()
    recipe2 = recipe.replace(output=tmp_path / "out2")
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        remote = upscale.upscale(recipe2, runs=runs, scores=None, context=ctx, scheduler=client,
                                 progress=False)
    b = product.open_product(remote["products"][0]).load()
    for v in ("GPP", "RECO", "NEE", "NEE_sd"):
        np.testing.assert_array_equal(a[v].values, b[v].values)


@pytest.mark.slow
def test_a_local_cluster_of_two_worker_processes_writes_the_threaded_product(tmp_path):
    pytest.importorskip("distributed")
    g = Grid(10.0)
    ctx = banded_context(g)
    runs = [StubPredictor(window=2), StubPredictor(0.8)]
    recipe = _recipe(tmp_path, start="2020-06-29", end="2020-07-03", chunks={"lat": 9, "lon": 12})
    threaded = upscale.upscale(recipe, runs=runs, scores=None, context=ctx, progress=False)
    cluster = upscale.upscale(recipe.replace(output=tmp_path / "out-cluster"), runs=runs, scores=None, context=ctx,
                              progress=False, scheduler="local:2")
    assert [p.name for p in cluster["products"]] == ["test_2020-06.nc", "test_2020-07.nc"]
    for a, b in zip(threaded["products"], cluster["products"]):
        a, b = product.open_product(a).load(), product.open_product(b).load()
        for v in ("GPP", "RECO", "NEE", "GPP_sd", "RECO_sd", "NEE_sd"):
            np.testing.assert_array_equal(a[v].values, b[v].values)
    assert cluster["timings"]["seconds"]["predict"] > 0 and cluster["timings"]["seconds"]["drivers"] > 0


def test_a_local_cluster_spec_is_local_or_local_n():
    assert upscale.local_cluster_spec("local:3") == 3 and upscale.local_cluster_spec("tcp://h:8786") is None
    assert upscale.local_cluster_spec("local") >= 1
    with pytest.raises(InputError, match="local:N"):
        upscale.local_cluster_spec("local:none")


def test_compare_with_truth(tmp_path, grid10):
    g, ctx, drivers, days = grid10
    recipe = _recipe(tmp_path, start="2020-07-01", end="2020-07-04")
    res = upscale.upscale(recipe, runs=[StubPredictor()], scores=None, context=ctx, progress=False)
    prod = product.open_product(res["products"][0]).load()
    perfect = evaluation.compare_with_truth(prod, prod[["GPP", "RECO", "NEE"]])
    assert np.allclose(perfect[["R2", "R2_mean_map"]], 1.0) and np.allclose(perfect["bias"], 0.0)
    shifted = prod[["GPP", "RECO", "NEE"]] + 1.0
    table = evaluation.compare_with_truth(res["products"][0], shifted)
    assert list(table["variable"]) == ["GPP", "RECO", "NEE"]
    np.testing.assert_allclose(table["bias"], -1.0, atol=1e-5)
    assert (table["cell_days"] == int(ctx["modelled"].sum()) * 4).all()


def test_missing_driver_is_named(grid10):
    g, ctx, drivers, days = grid10

    run = StubPredictor()
    run.features = ["temperature_2m", "soil_moisture_of_mars"]
    with pytest.raises(ValueError, match="soil_moisture_of_mars"):
        upscale.predict_blocks(drivers, [run], ctx, days[-2:])


def test_fill_nearest_gives_coastal_land_a_climate():
    codes = np.array([[0, 0, 3], [0, 0, 0], [2, 0, 0]], dtype=np.int16)
    need = np.array([[1, 0, 0], [0, 0, 1], [0, 0, 0]], dtype=bool)
    out = context._fill_nearest(codes, need)
    assert out[0, 0] == 2 and out[1, 2] == 3 and out[1, 1] == 0


@pytest.mark.slow
def test_grid_context_from_the_real_rasters():
    g = Grid(5.0)
    ctx = context.grid_context(g.lat, g.lon)
    context._grid_context_cached.cache_clear()
    cached = context.grid_context(g.lat, g.lon)  # from the disk cache now
    xr.testing.assert_identical(ctx, cached)

    def at(lat, lon, v):
        return int(ctx[v].sel(lat=lat, lon=lon, method="nearest"))

    assert at(-2.5, -62.5, "igbp") == 2 and at(-2.5, -62.5, "koppen") == 1  # Amazon: EBF, tropical
    assert at(22.5, 7.5, "igbp") == 16 and at(22.5, 7.5, "koppen") == 2  # Sahara: barren, arid
    assert at(-82.5, 2.5, "igbp") == 15 and not ctx["modelled"].sel(lat=-82.5, lon=2.5, method="nearest")
    assert at(2.5, -152.5, "igbp") == 0 and float(ctx["land_fraction"].sel(lat=2.5, lon=-152.5, method="nearest")) == 0
    modelled = ctx["modelled"].values
    assert (ctx["koppen"].values[modelled] >= 1).all()
    land_area = float((ctx["land_fraction"] * ctx["cell_area"]).sum()) / 1e12
    assert 130 < land_area < 160  # Earth's land area is ~149 million km2


# --------------------------------------------------------------------------------------------
# The command line with real (tiny) trained runs
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A tree run and a temporal run trained briefly on a small twin store."""
    from cbgrid import splits, store, train
    from cbgrid.sources import twin

    root = tmp_path_factory.mktemp("runs")
    st = root / "twin.zarr"
    store.write_store(twin.twin_store(n_sites=24, start="2019-06-01", end="2020-08-31", seed=0), st, progress=False)
    ds = store.open_store(st)
    split = splits.make_split(ds, by="koppen", seed=0)
    fast = {"xgboost": {"seeds": 1, "hparams": {"n_estimators": 20, "max_depth": 4}},
            "ctlstm": {"seeds": 2, "max_epochs": 1, "hparams": {"hidden": 16}}}
    paths = []
    for model, kw in fast.items():
        train.fit(ds, split, train.TrainConfig(model=model, threads=2, **kw), out=root / model)
        paths.append(root / model)
    return paths


def test_cli_upscale_names_a_missing_run(tmp_path, capsys):
    from cbgrid.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\ndrivers: {source: twin}\ngrid: {resolution: 10}\n"
                      "period: {start: 2020-07-01, end: 2020-07-01}\nruns: [nope]\noutput: out\n")
    assert main(["-q", "upscale", str(recipe), "--runs", str(tmp_path / "nope")]) == 2
    assert "is not a cbgrid run" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_upscale_with_trained_runs(tmp_path, tiny_runs, capsys):
    import netCDF4

    from cbgrid.cli import main

    g = Grid(10.0)
    # a stand-in context in the cache keeps the rasters out of this fast test
    cache = context._cache_dir() / context._context_key(g.lat, g.lon)
    cache.parent.mkdir(parents=True, exist_ok=True)
    banded_context(g).assign(modelled=lambda d: d["modelled"].astype(np.int8)).to_netcdf(cache)
    context._grid_context_cached.cache_clear()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: tiny\ndrivers: {source: twin, seed: 3}\ngrid: {resolution: 10}\n"
        "period: {start: 2020-07-01, end: 2020-07-03}\n"
        f"runs: [{tiny_runs[0]}, {tiny_runs[1]}]\noutput: {tmp_path / 'out'}\nchunks: {{lat: 9, lon: 18}}\n"
    )
    assert main(["-q", "upscale", str(recipe), "--truth"]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "out" / "tiny_2020-07.nc"
    assert str(path) in out and "against the twin's true fluxes" in out
    assert "land cell-days in" in out and "predict" in out.split("task seconds")[1]
    assert product.check_product(path) == []
    with netCDF4.Dataset(path) as nc:
        assert nc.spin_up_days == 30 and "xgboost" in nc.runs and "ctlstm" in nc.runs
        assert -1 <= nc.zero_shot_GPP_R2_median <= 1 and "koppen" in nc.zero_shot_split
    ds = product.open_product(path)
    modelled = banded_context(g)["modelled"].values
    assert ds["GPP"].notnull().values[:, modelled].all() and float(ds["GPP_sd"].max()) > 0
    assert sorted(p.suffix for p in (tmp_path / "out").iterdir()).count(".png") == 6
    assert (tmp_path / "out" / "tiny_scores.csv").exists()

    # the same recipe on a dask.distributed cluster of worker processes: runs load on the workers
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        assert main(["-q", "upscale", str(recipe), "--scheduler", cluster.scheduler_address, "--no-quicklook",
                     "--output", str(tmp_path / "out-cluster")]) == 0
    remote = product.open_product(tmp_path / "out-cluster" / "tiny_2020-07.nc")
    for v in ("GPP", "RECO", "NEE", "GPP_sd"):
        np.testing.assert_allclose(remote[v].values, ds[v].values, rtol=1e-5, atol=1e-5, equal_nan=True)


def test_demo_quick_runs_the_whole_chain(tmp_path, capsys):
    """The fast end-to-end path CI runs: twin store -> split -> train -> evaluate -> product."""
    from cbgrid.cli import main

    out = tmp_path / "demo"
    assert main(["-q", "demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sites      24" in printed and "QC         [0,0.25)" in printed  # the store summary
    nc = out / "products" / "twin-5deg-2020-07_2020-07.nc"
    assert product.check_product(nc) == []
    assert (out / "report" / "report.md").exists() and (out / "products" / "truth_comparison.csv").exists()
    table = pd.read_csv(out / "products" / "truth_comparison.csv")
    assert list(table["variable"]) == ["GPP", "RECO", "NEE"] and table["R2"].notna().all()
    assert str(nc) in printed and "against the twin's true fluxes" in printed


def test_earthengine_recipe_through_the_fake_xee(tmp_path, monkeypatch):
    """Source 'earthengine': the grid opened through (a stand-in of) xee feeds the same inference."""
    import sys

    fake_ee = pytest.importorskip("fake_ee")
    from cbgrid.sources import earthengine as E

    xr.backends.list_engines()
    world = fake_ee.World()
    monkeypatch.setitem(sys.modules, "ee", fake_ee.make_module(world))
    monkeypatch.setattr(xr, "open_dataset", fake_ee.fake_open_dataset(world))
    for var in E.PROJECT_ENV:
        monkeypatch.delenv(var, raising=False)
    recipe = parse_recipe({
        "name": "ee", "drivers": {"source": "earthengine", "feature_set": "minimal", "project": "p"},
        "grid": {"resolution": 0.5, "region": [5, 45, 7, 46.5]}, "period": {"start": "2004-01-01", "end": "2004-01-03"},
        "runs": ["x"], "output": str(tmp_path / "out"), "chunks": {"lat": 2, "lon": 3},
    })
    g = recipe.grid
    ctx = banded_context(g).assign(igbp=lambda d: xr.full_like(d["igbp"], 4), modelled=lambda d: xr.full_like(d["modelled"], True))

    class FromEra5(StubPredictor):
        features = ["temperature_2m", "surface_net_solar_radiation_sum"]

        def predict(self, ds, **kw):
            ds = ds.assign(surface_solar_radiation_downwards_sum=ds["surface_net_solar_radiation_sum"])
            return super().predict(ds, **kw)

    res = upscale.upscale(recipe, runs=[FromEra5(window=2)], scores=None, context=ctx, progress=False)
    calls = len(world.calls)
    monkeypatch.undo()  # the real xarray.open_dataset again
    prod = product.open_product(res["products"][0])
    assert prod.sizes == {"time": 3, "lat": 3, "lon": 4, "bnds": 2}
    assert prod["GPP"].notnull().all() and product.check_product(res["products"][0]) == []
    assert calls > 0  # the drivers really came through the Earth Engine path


def test_a_product_folder_holds_one_ensemble(tmp_path, caplog):
    g = Grid(10.0)
    recipe = _recipe(tmp_path, start="2020-06-29", end="2020-07-02")
    out = tmp_path / "out"
    first = upscale.upscale(recipe, runs=[StubPredictor(window=3)], context=banded_context(g), progress=False)
    before = {p.name: p.read_bytes() for p in first["products"]}
    (out / ".test_2020-07.tmp-deadbeef.nc").write_bytes(b"half")  # what a SIGKILL leaves
    other = [StubPredictor(window=3, name="other")]
    with pytest.raises(ExistsError, match="holds the products of another ensemble .*--overwrite"):
        upscale.upscale(recipe, runs=other, context=banded_context(g), progress=False)
    assert {p.name: p.read_bytes() for p in first["products"]} == before  # refused: nothing touched
    assert not list(out.glob(".*.tmp-*"))  # the leftover was removed under the lock
    (out / "test_2020-06.png").write_bytes(b"old quicklook")
    res = upscale.upscale(recipe, runs=other, context=banded_context(g), progress=False, overwrite=True)
    assert manifest.read(out)["ensemble"]["runs"] == ["other"] and manifest.read(out)["complete"]
    assert sorted(p.name for p in out.iterdir()) == ["cbgrid-products.json", "test_2020-06.nc", "test_2020-06_totals.csv",
                                                     "test_2020-07.nc", "test_2020-07_totals.csv"]
    assert [p.name for p in res["products"]] == list(before)
    # the same ensemble again rewrites its own files without --overwrite
    upscale.upscale(recipe, runs=other, context=banded_context(g), progress=False)
    (out / "stray.nc").write_bytes(b"")
    manifest_path = out / manifest.NAME
    manifest_path.unlink()
    with pytest.raises(ExistsError, match="files no manifest accounts for"):
        upscale.upscale(recipe, runs=other, context=banded_context(g), progress=False)


def test_output_folder_that_is_a_file(tmp_path):
    recipe = _recipe(tmp_path, start="2020-06-29", end="2020-06-30")
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(InputError, match="is a file; give --output a folder"):
        upscale.upscale(recipe, runs=[StubPredictor(window=3)], context=banded_context(Grid(10.0)), progress=False)
