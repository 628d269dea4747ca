"""Zero-shot scores: metric exactness against scikit-learn, the QC/test-site rules, edge cases,
quantile tables across sites, ensembles and the published-baseline comparison."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from cbgrid import catalog, schema, testing
from cbgrid import evaluation as ev
from cbgrid.schema import GPP, NEE, QC, RECO, TARGETS


def make_store(n_sites=10, n_days=300, seed=0, sites=None, qc_fraction=0.7):
    """A small schema-conformant store with random targets, a random QC = 1 mask and GPP gaps."""
    return testing.site_store(n_sites, "2005-01-01", n_days, seed, sites=sites, qc_fraction=qc_fraction, gaps=0.05,
                              extra=())


make_predictions = testing.predictions


def all_test(store):
    return pd.DataFrame({"site": store.site.values, "set": "test", "split": "igbp"})


def test_metrics_match_scikit_learn_to_1e10():
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    store = make_store(n_sites=12, n_days=500, seed=3)
    pred = make_predictions(store, noise=1.5, seed=4)
    scores = ev.evaluate(pred, store, all_test(store), min_days=1)
    worst = 0.0
    for target in TARGETS:
        y_all = store[target].values.astype(np.float64)
        p_all = pred["prediction"].sel(target=target).values.astype(np.float64)
        for i, site in enumerate(store.site.values):
            keep = (store[QC].values[i] == 1) & np.isfinite(y_all[i]) & np.isfinite(p_all[i])
            y, p = y_all[i, keep], p_all[i, keep]
            mae = mean_absolute_error(y, p)
            want = {
                "R2": r2_score(y, p),
                "RMSE": np.sqrt(mean_squared_error(y, p)),
                "nMAE": mae / abs(y.mean()),
                "RAE": mae / mean_absolute_error(y, np.full_like(y, y.mean())),
            }
            assert int(scores["n_days"].sel(site=site, target=target)) == keep.sum()
            for m, v in want.items():
                got = float(scores["score"].sel(metric=m, site=site, target=target))
                worst = max(worst, abs(got - v))
                assert got == pytest.approx(v, rel=1e-10, abs=1e-10), (m, site, target)
    assert worst < 1e-10


def test_metric_objects_on_plain_arrays():
    rng = np.random.default_rng(0)
    y = xr.DataArray(rng.normal(size=(4, 50)), dims=("site", "time"))
    p = y + rng.normal(scale=0.5, size=(4, 50))
    from sklearn.metrics import r2_score

    r2 = ev.metric("r2").compute(y, p)
    np.testing.assert_allclose(r2.values, [r2_score(y[i], p[i]) for i in range(4)], rtol=1e-12)
    assert ev.metric("RMSE").units == schema.TARGET_UNITS
    with pytest.raises(KeyError, match="choose one of"):
        ev.metric("MAPE")


def test_only_test_sites_and_qc1_days_are_scored():
    store = make_store(seed=5)
    pred = make_predictions(store, seed=6)
    split = pd.DataFrame({"site": store.site.values, "set": ["test"] * 4 + ["train"] * 6, "split": "igbp"})
    scores = ev.evaluate(pred, store, split)
    assert list(scores.site.values) == list(store.site.values[:4])
    # Ruin the predictions on every QC < 1 day: the scores must not move.
    bad = pred.copy(deep=True)
    low_qc = (store[QC] < 1).transpose("site", "time")
    bad["prediction"] = bad["prediction"].where(~low_qc, 1e6)
    xr.testing.assert_allclose(ev.evaluate(bad, store, split)["score"], scores["score"])
    assert (scores["score"].sel(metric="R2") > 0.5).all()


def test_split_path_and_site_list(tmp_path):
    store = make_store(n_sites=6)
    pred = make_predictions(store)
    sites = list(store.site.values[:3])
    by_list = ev.evaluate(pred, store, sites)
    assert list(by_list.site.values) == sites
    with pytest.raises(ValueError, match="not in the store"):
        ev.evaluate(pred, store, ["XX-Nope"])


def test_edge_cases_give_nan_with_a_logged_reason(caplog):
    store = make_store(n_sites=5, n_days=200, seed=7)
    s = store.site.values
    store[GPP][0] = 2.5  # constant observations
    store[QC][1, :190] = 0.5  # 10 QC = 1 days at most
    store[QC][2] = 1.0
    nee = store[NEE].values.copy()
    nee[2] = np.where(np.arange(200) % 2 == 0, 1.25, -1.25)  # site mean exactly zero
    store[NEE] = (("site", "time"), nee.astype(np.float32), store[NEE].attrs)
    pred = make_predictions(store, seed=8).drop_sel(site=[s[4]])  # site 4 never predicted
    with caplog.at_level(logging.WARNING, logger="cbgrid.evaluation"):
        scores = ev.evaluate(pred, store, all_test(store), min_days=30)
    sc = scores["score"]
    assert np.isnan(sc.sel(site=s[0], target=GPP, metric=["R2", "RAE"])).all()
    assert np.isfinite(sc.sel(site=s[0], target=GPP, metric=["RMSE", "nMAE"])).all()
    assert np.isnan(sc.sel(site=s[1])).all() and (scores["n_days"].sel(site=s[1]) < 30).all()
    assert np.isnan(sc.sel(site=s[2], target=NEE, metric="nMAE"))
    assert np.isfinite(sc.sel(site=s[2], target=NEE, metric="R2"))
    assert np.isnan(sc.sel(site=s[4])).all()
    st = scores["status"]
    assert int(st.sel(site=s[0], target=GPP)) == ev.CONSTANT_OBSERVATIONS
    assert (st.sel(site=s[1]) == ev.TOO_FEW_DAYS).all()
    assert int(st.sel(site=s[2], target=NEE)) == ev.ZERO_MEAN_OBSERVATIONS
    assert (st.sel(site=s[4]) == ev.NO_PREDICTION).all()
    assert int(st.sel(site=s[3]).sum()) == 0
    text = caplog.text
    for phrase in ("fewer than 30 QC = 1 days", "constant observations", "site mean of observations of zero", "no prediction"):
        assert phrase in text
    table = ev.excluded(ev.to_frame(scores))
    assert set(table["reason"]) == {"constant_observations", "too_few_qc_days", "zero_site_mean", "no_prediction"}


def test_lazy_store_gives_the_same_scores():
    store = make_store(seed=9)
    pred = make_predictions(store, seed=10)
    eager = ev.evaluate(pred, store, all_test(store))
    lazy = ev.evaluate(pred.chunk({"site": 5}), store.chunk({"site": 5, "time": 150}), all_test(store))
    xr.testing.assert_allclose(eager, lazy)


def test_quantiles_are_across_sites_with_counts():
    store = make_store(n_sites=9, seed=11)
    scores = ev.evaluate(make_predictions(store, seed=12), store, all_test(store))
    frame = ev.to_frame(scores)
    q = ev.quantile_table(frame)
    row = q[(q.target == RECO) & (q.metric == "RMSE")].iloc[0]
    vals = scores["score"].sel(metric="RMSE", target=RECO).values
    assert row.n_sites == 9
    np.testing.assert_allclose([row.p25, row.p50, row.p75], np.quantile(vals, [0.25, 0.5, 0.75]))
    by = ev.breakdown(frame, "igbp")
    counts = by[(by.target == RECO) & (by.metric == "R2")].set_index("igbp")["n_sites"]
    assert counts.to_dict() == pd.Series(scores.igbp.values).value_counts().to_dict()
    table = ev.published_format(q)
    assert table.loc[0, "n GPP"] == 9
    assert "[" in table.loc[0, "GPP R2"]
    assert ev.markdown_table(table).count("\n") == 2


def test_ensemble_scores_the_mean_and_reports_seed_spread():
    store = make_store(seed=13)
    runs = [make_predictions(store, noise=2.0, seed=20 + k, seeds=str(k), run=f"r{k}") for k in range(3)]
    ens = ev.ensemble(runs)
    mean = sum(r["prediction"].astype(np.float64) for r in runs) / 3
    np.testing.assert_allclose(ens["prediction"].values, mean.values, rtol=1e-6, atol=1e-6)
    assert "prediction_std" in ens and ens.attrs["seeds"] == "0 1 2"
    split = all_test(store)
    s_ens = ev.evaluate(ens, store, split)
    singles = [ev.evaluate(r, store, split) for r in runs]
    # Averaging independent errors must beat every single run (noise variance / 3).
    for s in singles:
        assert float(s["score"].sel(metric="RMSE").median()) > float(s_ens["score"].sel(metric="RMSE").median())
    spread = ev.seed_spread([ev.to_frame(s) for s in singles])
    r = spread[(spread.metric == "R2") & (spread.target == GPP)].iloc[0]
    assert r.n_runs == 3 and r.median_std > 0 and r.median_min <= r.median_mean <= r.median_max


def test_ranking_orders_by_median():
    store = make_store(seed=14)
    split = all_test(store)
    good = ev.to_frame(ev.evaluate(make_predictions(store, noise=0.5, model="good"), store, split))
    bad = ev.to_frame(ev.evaluate(make_predictions(store, noise=3.0, model="bad"), store, split))
    rank = ev.ranking(ev.quantile_table(pd.concat([bad, good])))
    first = rank.groupby("target").first()["model"]
    assert set(first) == {"good"}


def test_scores_round_trip_netcdf(tmp_path):
    store = make_store(seed=15)
    scores = ev.evaluate(make_predictions(store), store, all_test(store))
    scores.to_netcdf(tmp_path / "scores.nc")
    back = xr.open_dataset(tmp_path / "scores.nc")
    xr.testing.assert_allclose(back["score"], scores["score"])
    assert back["igbp"].values.tolist() == scores["igbp"].values.tolist()
    assert back.attrs["min_days"] == ev.MIN_QC_DAYS


def test_published_comparison_uses_the_same_sites():
    official = catalog.official_test_sites("igbp")["site"]
    in_store = [s for s in official if s in set(catalog.sites()["site"])][:6]
    store = make_store(sites=in_store, seed=16)
    pred = make_predictions(store, split="official-igbp", feature_set="standard")
    split = pd.DataFrame({"site": in_store, "set": "test", "split": "official-igbp"})
    frame = ev.to_frame(ev.evaluate(pred, store, split))
    pub = ev.published_comparison(frame)
    assert set(pub["site"]) == set(in_store)
    assert set(pub["model"]) >= {"XGBoost", "LightGBM", "lstm", "tam-rl"}
    # Tree baselines exist only with the minimal feature set; the others match the run's.
    assert set(pub.loc[pub.model == "lstm", "feature_set"]) == {"standard"}
    assert set(pub.loc[pub.model == "XGBoost", "feature_set"]) == {"minimal"}
    ref = catalog.published_scores()
    one = ref[(ref.split_type == "IGBP") & (ref.model == "lstm") & (ref.feature_set == "standard")
              & (ref.target == GPP) & (ref.site == in_store[0])]["R2"].item()
    assert pub[(pub.model == "lstm") & (pub.target == GPP) & (pub.site == in_store[0])]["R2"].item() == one
    side = ev.side_by_side(frame, pub)
    assert len(side) == len(in_store) * 3 and "toy" in side and "lstm (published)" in side
    with pytest.raises(ValueError, match="official"):
        ev.published_comparison(frame.assign(split="igbp"))


def test_package_level_call_survives_module_import():
    import cbgrid.evaluation  # noqa: F401  (must not rebind cbgrid.evaluate)

    store = make_store(n_sites=3, n_days=120)
    scores = cbgrid.evaluate(make_predictions(store), store, all_test(store))
    assert scores["score"].dims == ("metric", "site", "target")
    assert set(scores.coords) >= {"igbp", "koppen", "lat", "lon"}


def test_metric_code_imports_no_plotting_library():
    import subprocess
    import sys

    code = "import sys, cbgrid.evaluation, cbgrid.cli.evaluate; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------------------------
# `cbgrid evaluate` end to end, on a synthetic-twin store
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def twin_runs(tmp_path_factory):
    """A twin store, its official-IGBP split, and three run directories laid out as
    ``cbgrid train`` writes them (predictions.nc, config.json naming the store, split.csv):
    two seeds of 'toy' (small errors) and one run of 'rough' (large errors)."""
    import json

    from cbgrid import splits, store
    from cbgrid.sources import twin

    root = tmp_path_factory.mktemp("eval")
    store.write_store(twin.twin_store(n_sites=40, start="2010-01-01", end="2011-06-30", seed=0), root / "twin.zarr", progress=False)
    ds = store.open_store(root / "twin.zarr")
    split = splits.make_split(ds, by="official-igbp")
    splits.write_split(split, root / "split.csv")
    obs = ds[list(TARGETS)].to_dataarray("target").transpose("site", "time", "target").load()
    runs = []
    for model, noise, seed in (("toy", 0.8, 0), ("toy", 0.8, 1), ("rough", 2.5, 0)):
        rng = np.random.default_rng([seed, int(noise * 10)])
        p = obs.fillna(obs.mean("time")) + rng.normal(0, noise, obs.shape)
        p = p.drop_vars([c for c in p.coords if c not in ("site", "time", "target")]).astype(np.float32)
        pred = xr.Dataset({"prediction": p}, attrs=dict(model=model, split="official-igbp", feature_set="minimal", seeds=str(seed), run=f"{model}-{seed}"))
        pred["prediction"].attrs["units"] = schema.TARGET_UNITS
        d = root / f"{model}-{seed}"
        d.mkdir()
        pred.to_netcdf(d / "predictions.nc")
        store_path = "../twin.zarr" if seed else str(root / "twin.zarr")  # relative to the run, or absolute
        (d / "config.json").write_text(json.dumps({"model": model, "split": "official-igbp", "store": store_path}))
        splits.write_split(split, d / "split.csv")
        runs.append(d)
    return root, runs, split


def test_cli_report_end_to_end(twin_runs, capsys):
    from cbgrid.cli import main

    root, runs, split = twin_runs
    out = root / "report"
    assert main(["evaluate", *map(str, runs), "--out", str(out), "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert "toy" in printed and "XGBoost [published]" in printed
    for name in ("scores.nc", "scores.csv", "summary.csv", "summary.md", "breakdown_igbp.csv", "breakdown_koppen.md",
                 "ranking.csv", "seed_spread.csv", "published_site_scores.csv", "per_site_vs_published.csv",
                 "excluded_sites.csv", "report.md"):
        assert (out / name).stat().st_size > 0, name
    scores = xr.open_dataset(out / "scores.nc")
    assert scores["score"].dims == ("experiment", "metric", "site", "target")
    assert dict(zip(scores["model"].values, scores["ensemble_size"].values)) == {"rough": 1, "toy": 2}
    assert "score_seed_std" in scores
    test = set(split.loc[split["set"] == "test", "site"])
    assert set(scores["site"].values) == test

    # The ensemble of two seeds is what is scored: recompute it independently.
    from cbgrid.store import open_store

    store = open_store(root / "twin.zarr")
    preds = [xr.open_dataset(r / "predictions.nc") for r in runs[:2]]
    direct = ev.evaluate(ev.ensemble(preds), store, split)
    # experiments are named model/split/feature set/protocol
    xr.testing.assert_allclose(scores["score"].sel(experiment="toy/official-igbp/minimal/cbgrid").drop_vars(
        ["experiment", "model", "split", "feature_set", "protocol", "min_days", "ensemble_size"]), direct["score"])

    summary = pd.read_csv(out / "summary.csv")
    mine = summary[(summary.source == "this report") & (summary.model == "toy")]
    pub = summary[(summary.source == "published") & (summary.model == "lstm")]
    assert set(mine.n_sites) == set(pub.n_sites)  # the baselines are on the same sites
    rank = pd.read_csv(out / "ranking.csv")
    assert rank.groupby("target")["model"].first().eq("toy").all()
    side = pd.read_csv(out / "per_site_vs_published.csv")
    assert {"toy", "rough", "XGBoost (published)", "tam-rl (published)"} <= set(side.columns)
    assert len(side) == side[["metric", "target", "site"]].drop_duplicates().shape[0]
    report = (out / "report.md").read_text()
    assert "of the 96 official test sites" in report and "fewer than 30 QC = 1 days" in report


def test_cli_needs_store_and_split_when_the_run_does_not_say(twin_runs, tmp_path, capsys):
    from cbgrid.cli import main

    root, runs, _ = twin_runs
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "predictions.nc").write_bytes((runs[2] / "predictions.nc").read_bytes())
    assert main(["evaluate", str(bare), "--out", str(tmp_path / "r"), "--no-plots"]) == 2
    assert "pass --store" in capsys.readouterr().err
    args = ["evaluate", str(bare), "--out", str(tmp_path / "r"), "--no-plots",
            "--store", str(root / "twin.zarr"), "--split", str(root / "split.csv"), "--min-days", "200"]
    assert main(args) == 0
    excluded = pd.read_csv(tmp_path / "r" / "excluded_sites.csv")
    assert (excluded["reason"] == "too_few_qc_days").any()


def test_cli_refuses_to_average_runs_tested_on_different_sites(twin_runs, tmp_path, capsys):
    from cbgrid.cli import main

    _, runs, split = twin_runs
    other = tmp_path / "toy-9"
    other.mkdir()
    for name in ("predictions.nc", "config.json"):
        (other / name).write_bytes((runs[0] / name).read_bytes())
    first_test = split.index[split["set"] == "test"][0]
    split.assign(set=split["set"].where(split.index != first_test, "train")).to_csv(other / "split.csv", index=False)
    (other / "config.json").write_text((runs[0] / "config.json").read_text())
    assert main(["evaluate", str(runs[0]), str(other), "--out", str(tmp_path / "r"), "--no-plots"]) == 2
    assert "tested on different sites" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_report_with_plots(twin_runs):
    from cbgrid.cli import main

    root, runs, split = twin_runs
    out = root / "report-plots"
    site = str(split.loc[split["set"] == "test", "site"].iloc[0])
    assert main(["evaluate", *map(str, runs), "--out", str(out), "--sites", site]) == 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    for kind in ("distribution_GPP", "heatmap_igbp_NEE", "heatmap_koppen_RECO", "map_R2_GPP"):
        assert f"{kind}.png" in pngs
    assert f"timeseries_toy_official-igbp_minimal_cbgrid_{site}.png" in pngs
    assert all((out / p).stat().st_size > 20_000 for p in pngs)
