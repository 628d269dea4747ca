"""The reference protocol against independent re-statements of the reference implementation's
rules (pandas / scikit-learn written here, not cbgrid's code): windows, test days, scaling,
class weights, the loss, the architectures' sizes, the trees' inputs, runs and reports."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from cbgrid import catalog, models, pipeline, protocol, schema, splits, train, windows
from cbgrid.schema import QC, TARGETS
from cbgrid.sources import twin

pytestmark = pytest.mark.usefixtures("torch_one_thread")
REF = protocol.get("reference")
W, H, S = 30, 15, 15


@pytest.fixture(scope="module")
def arrays():
    """A twin store's training arrays with extra holes: missing ERA-Land days and MODIS days."""
    ds = twin.twin_store(n_sites=8, start="2010-01-01", end="2013-12-31", seed=3).load()
    rng = np.random.default_rng(0)
    era = catalog.era5_bands("minimal")
    for v in era[:2]:
        ds[v] = ds[v].where(rng.random(ds[v].shape) > 0.002)
    ds["sur_refl_b01"] = ds["sur_refl_b01"].where(rng.random(ds["sur_refl_b01"].shape) > 0.2)
    ds[QC] = ds[QC].where(rng.random(ds[QC].shape) > 0.02)  # rows need QC too
    return pipeline.read_arrays(ds, pipeline.feature_variables(ds, "minimal"))


def _reference_frames(a, fraction=0.2):
    """Per site: the reference's row table, its fitting/validation parts (first int(0.8 n) rows)."""
    out = []
    for i in range(len(a.sites)):
        y = pd.DataFrame(a.y[i], columns=list(TARGETS))
        y[QC] = a.qc[i]
        rows = np.flatnonzero(y.notna().all(axis=1).to_numpy())
        cut = int(len(rows) * (1 - fraction))
        out.append((rows[:cut], rows[cut:]))
    return out


def _reference_windows(a, x_scaled, part_rows, stride):
    """The reference's historical_cache + SlidingWindowDataset for one part of one site, in pandas."""
    modis = [j for j, f in enumerate(a.features) if f in set(catalog.modis_bands())]
    keep = []
    for i, rows in enumerate(part_rows):
        if len(rows) == 0:
            continue
        first, last = rows[0], rows[-1]
        start = max(first - (W - 1), 0)
        frame = pd.DataFrame(np.nan, index=np.arange(start, last + 1), columns=range(x_scaled.shape[-1]))
        avail = np.concatenate([np.arange(start, first), rows])  # history days (raw tables) + the part's rows
        frame.loc[avail] = x_scaled[i, avail]
        frame[modis] = frame[modis].interpolate(limit_direction="both")
        target_ok = pd.Series(False, index=frame.index)
        target_ok.loc[rows] = True
        for k in range(0, len(frame) - W + 1, stride):
            win = frame.iloc[k:k + W]
            if not win.isna().any().any() and target_ok.iloc[k + W - H:k + W].all():
                keep.append((i, start + k))
    return keep


def test_windows_are_the_reference_windows(arrays):
    data = pipeline.TrainingData.build(arrays, 0.2, protocol=REF, window=W)
    fit_idx, val_idx = data.index("temporal", protocol.WindowSpec(W, H, S))
    x = (arrays.x - data.scaler.x_mean) / data.scaler.x_std
    parts = _reference_frames(arrays)
    want_fit = _reference_windows(arrays, x, [p[0] for p in parts], S)
    want_val = _reference_windows(arrays, x, [p[1] for p in parts], S)
    assert len(want_fit) > 100 and len(want_val) > 10
    assert [tuple(r) for r in fit_idx.tolist()] == want_fit
    assert [tuple(r) for r in val_idx.tolist()] == want_val
    # cbgrid's own rule keeps more: any window with one observed target day
    own, _ = pipeline.TrainingData.build(arrays, 0.2).index("temporal", protocol.WindowSpec(W, H, S))
    assert len(own) > len(fit_idx)


def test_test_days_are_the_reference_stride1_windows(arrays):
    data = pipeline.TrainingData.build(arrays, 0.2, protocol=REF, window=W)
    block = pipeline.Prepared.for_prediction(arrays, data.scaler, REF, W)
    days = windows.last_step_days(block.complete, W)
    x = (arrays.x - data.scaler.x_mean) / data.scaler.x_std
    all_rows = [np.concatenate(p) for p in _reference_frames(arrays)]
    want = {(i, s + W - 1) for i, s in _reference_windows(arrays, x, all_rows, 1)}
    rows = arrays.rows
    got = {(i, t) for i, t in zip(*np.nonzero(days & rows))}
    assert got == want and len(want) > 1000


def test_scalers_and_class_weights_are_sklearn_on_the_fitting_rows(arrays):
    from sklearn.preprocessing import StandardScaler
    from sklearn.utils.class_weight import compute_class_weight

    data = pipeline.TrainingData.build(arrays, 0.2, protocol=REF, window=W)
    fit_rows = data.parts["fit"][0]
    site, day = np.nonzero(fit_rows)
    table = np.column_stack([arrays.lat[site], arrays.lon[site], arrays.x[site, day]])
    sk = StandardScaler().fit(table)
    np.testing.assert_allclose(data.scaler.s_mean, sk.mean_[:2], rtol=1e-9)
    np.testing.assert_allclose(data.scaler.s_std, sk.scale_[:2], rtol=1e-9)
    np.testing.assert_allclose(data.scaler.x_mean, sk.mean_[2:], rtol=1e-5)
    np.testing.assert_allclose(data.scaler.x_std, sk.scale_[2:], rtol=1e-5)
    sky = StandardScaler().fit(arrays.y[site, day])
    np.testing.assert_allclose(data.scaler.y_mean, sky.mean_, rtol=1e-5)
    np.testing.assert_allclose(data.scaler.y_std, sky.scale_, rtol=1e-5)
    igbp = schema.decode("igbp", arrays.igbp)[site]
    classes = np.unique(igbp)
    want = compute_class_weight("balanced", classes=classes, y=igbp)
    got = [data.weights.igbp[schema.encode("igbp", [c])[0]] for c in classes]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_loss_is_the_reference_custom_loss():
    from cbgrid.loss import CarbonLoss

    g = torch.Generator().manual_seed(0)
    pred, y = torch.randn(4, H, 3, generator=g), torch.randn(4, H, 3, generator=g)
    qc, wi, wk = torch.rand(4, H, generator=g), torch.rand(4, H, generator=g) + 0.5, torch.rand(4, H, generator=g) + 0.5
    w = qc * wi * wk
    mse = ((pred - y) ** 2).mean(axis=2) * qc * wi * wk  # the reference: mean over targets, times the weights
    balance = (pred[:, :, 2] - (-(pred[:, :, 0] - pred[:, :, 1]))) ** 2
    fixed = (mse + 0.1 * balance).mean()
    published = mse.mean()
    m, s = np.array([3.0, 2.0, -1.0]), np.array([2.0, 1.5, 1.0])
    torch.testing.assert_close(CarbonLoss(m, s, 0.1, "scaled")(pred, y, w), fixed)
    torch.testing.assert_close(CarbonLoss(m, s, 0.1, "none")(pred, y, w), published)


def _lstm_params(n_in, hidden, layers, bidirectional=False):
    per_dir = [4 * hidden * ((n_in if k == 0 else hidden * (2 if bidirectional else 1)) + hidden + 2)
               for k in range(layers)]
    return sum(per_dir) * (2 if bidirectional else 1)


def test_architectures_have_the_reference_sizes():
    f, st, oh = 18, 2, 51  # minimal set: 6 ERA-Land + 12 MODIS; lat/lon; 16 + 5 + 30 classes
    dyn = f + st
    hp = dict(window=W, horizon=H, dropout=0.3)

    def n(name, **kw):
        return models.n_parameters(models.build_network(name, f, st, oh, architectures="reference", **hp, **kw))

    h = 256
    ctlstm = dyn * (h // 2) + h // 2 + oh * (h // 2) + h // 2 + _lstm_params(h, h, 2) + h * 3 + 3
    assert n("ctlstm", hidden=h, layers=2) == ctlstm
    lstm = dyn * 128 + 128 + _lstm_params(128, 128, 1) + 128 * 3 + 3
    assert n("lstm", hidden=128, layers=1) == lstm
    enc_layer = lambda d: 4 * d * d + 4 * d + 2 * (4 * d * d) + 4 * d + d + 4 * d  # noqa: E731  (attention, FF, 2 norms)
    assert n("transformer", hidden=128, layers=2, nhead=4) == (dyn + oh) * 128 + 128 + 2 * enc_layer(128) + 128 * 3 + 3
    patches = (W - 4) // 4 + 1
    assert patches == 7
    patch = (dyn * 4 * 128 + 128) + patches * 128 + 2 * enc_layer(128) + (oh * 128 + 128) \
        + (2 * 2 * 128) + (2 * 128 * 512 + 512) + (512 * H * 3 + H * 3)
    assert n("patch_transformer", hidden=128, layers=2, nhead=4) == patch
    lat = 32
    task = ((dyn + oh) * lat + lat) + 2 * lat + _lstm_params(lat, lat, 1, bidirectional=True) + lat * lat + lat
    tam = task + (dyn * 128 + 128) + (lat * 128 + 128) + (lat * 256 + 256) + _lstm_params(128, 128, 1) + 128 * 3 + 3
    assert n("tamrl", hidden=128, layers=1, latent=lat) == tam


def test_reference_trees_table_weights_and_one_multioutput_booster(arrays, tmp_path):
    from cbgrid.members import TreeMember

    cfg = train.TrainConfig(model="xgboost", protocol="reference", seeds=1, hparams={"n_estimators": 30}).resolved()
    data = pipeline.TrainingData.build(arrays, 0.2, protocol=cfg.rules, window=W)
    m = TreeMember(models.spec("xgboost"), len(arrays.features), models.hyperparameters("xgboost"), cfg, "cpu", 0)
    fit_idx, _ = data.index("static", cfg.windows)
    table = m.matrix(data.prepared, fit_idx[:50], arrays.features)
    assert list(table.columns[:5]) == ["lat", "lon", "IGBP", "Koppen", "Koppen_short"]
    assert list(table["IGBP"].cat.categories) == list(schema.REFERENCE_IGBP)
    assert list(table.columns[5:17]) == catalog.modis_bands()
    curve = m.fit(data)
    assert set(curve["target"]) == {"all"} and len(m.model.boosters) == 1
    assert m.model.params["max_leaves"] == 31 and m.model.patience == 10
    m.save(tmp_path / "seed-27")
    assert (tmp_path / "seed-27-all.ubj").exists()
    block = pipeline.Prepared.for_prediction(arrays, data.scaler, cfg.rules, W)
    pred = m.predict(block, data.scaler)
    assert np.isnan(pred[~block.complete]).all() and np.isfinite(pred[block.complete]).all()


def test_xgboost_reads_each_table_by_its_own_codes_and_lightgbm_by_name(arrays, tmp_path):
    from cbgrid.errors import MissingError
    from cbgrid.members import TreeMember

    cfg = train.TrainConfig(model="xgboost", protocol="reference", seeds=1, hparams={"n_estimators": 20}).resolved()
    data = pipeline.TrainingData.build(arrays, 0.2, protocol=cfg.rules, window=W)
    m = TreeMember(models.spec("xgboost"), len(arrays.features), models.hyperparameters("xgboost"), cfg, "cpu", 0)
    assert m.frame_coded
    m.fit(data)
    igbp = schema.decode("igbp", data.prepared.codes[:, 0]).astype(str)
    fitted = np.unique(data.index("static", cfg.windows)[0][:, 0])  # sites with rows (records start late)
    trained = m.trained_classes["IGBP"]
    assert trained == sorted(set(igbp[fitted])) and len(trained) >= 2
    # a test table without the first training class: each of its sites reads as the class one code before
    block = pipeline.Prepared.for_prediction(arrays, data.scaler, cfg.rules, W)
    np.testing.assert_array_equal(np.flatnonzero(block.scored), fitted)
    block.scored &= igbp != trained[0]
    seen = []
    predict = m.model.predict
    m.model.predict = lambda table: seen.append(table) or predict(table)
    out = m.predict(block, data.scaler)
    table = seen[0]
    site = np.repeat(np.arange(len(igbp)), block.x.shape[1])
    shifted = table["IGBP"].to_numpy()[block.scored[site]]
    expected = np.array([trained[trained.index(c) - 1] for c in igbp[site][block.scored[site]]])
    assert (shifted == expected).all()
    assert table["IGBP"].isna().to_numpy()[~block.scored[site]].all()  # outside the test table: no class
    # the training classes travel with the boosters
    m.save(tmp_path / "seed-27")
    assert json.loads((tmp_path / "seed-27-classes.json").read_text())["IGBP"] == trained
    again = TreeMember(models.spec("xgboost"), len(arrays.features), models.hyperparameters("xgboost"), cfg, "cpu", 0)
    np.testing.assert_array_equal(again.load(tmp_path / "seed-27").predict(block, data.scaler), out)
    (tmp_path / "seed-27-classes.json").unlink()
    with pytest.raises(MissingError, match="seed-27-classes.json"):
        again.load(tmp_path / "seed-27")
    # LightGBM maps names back; the recoded variant reads XGBoost's tables by name too
    lgbm = train.TrainConfig(model="lightgbm", protocol="reference", seeds=1).resolved()
    assert not TreeMember(models.spec("lightgbm"), len(arrays.features), models.hyperparameters("lightgbm"),
                          lgbm, "cpu", 0).frame_coded
    recoded = train.TrainConfig(model="xgboost", protocol="reference-recoded", seeds=1).resolved()
    assert recoded.rules.trees == {**REF.trees, "categories": "names"}
    assert not TreeMember(models.spec("xgboost"), len(arrays.features), models.hyperparameters("xgboost"),
                          recoded, "cpu", 0).frame_coded


def test_lightgbm_maps_a_frames_class_names_back_so_only_xgboost_is_frame_coded():
    """A test frame holding classes B and C only (codes 0 and 1): LightGBM predicts them as B and
    C. XGBoost 3.0.5 predicts them as A and B (measured); read_by_code gives that table."""
    import lightgbm as lgb

    from cbgrid.members import read_by_code

    rng = np.random.default_rng(0)
    cls = rng.choice(["A", "B", "C"], 3000)
    y = np.select([cls == "A", cls == "B"], [0.0, 5.0], 10.0) + rng.normal(0, 0.1, cls.size)
    x = pd.DataFrame({"c": pd.Categorical(cls), "x": rng.normal(size=cls.size)})
    booster = lgb.train({"objective": "regression", "verbose": -1, "min_data_in_leaf": 5}, lgb.Dataset(x, y), 50)
    own = pd.DataFrame({"c": pd.Categorical(["B", "C"]), "x": [0.0, 0.0]})
    np.testing.assert_allclose(booster.predict(own), [5.0, 10.0], atol=0.3)
    assert not models.tree_class("lightgbm").reads_codes and models.tree_class("xgboost").reads_codes
    read = read_by_code(np.array(["B", "C"]), np.ones(2, bool), ["A", "B", "C"], ("A", "B", "C"))
    np.testing.assert_allclose(booster.predict(own.assign(c=pd.Categorical(read, categories=["A", "B", "C"]))),
                               [0.0, 5.0], atol=0.3)


def test_frame_codes_explain_the_published_xgboost_scores():
    """The published Köppen-split test table lacks SNO, which its training table holds: WAT, WET
    and WSA sites read as SNO, WAT and WET, and only there does XGBoost fall far behind LightGBM."""
    from cbgrid import members

    sites = catalog.carbonbench_sites().set_index("site_code")
    test = set(catalog.official_test_sites("koppen")["site"])
    sites = sites[sites["IGBP"] != ""]
    fit = ~sites.index.isin(list(test))
    shifted = set(sites.index[members.shifted(sites["IGBP"].to_numpy(), fit, ~fit, schema.REFERENCE_IGBP)])
    assert sorted(set(sites.loc[list(shifted), "IGBP"])) == ["WAT", "WET", "WSA"] and len(shifted) == 14
    pub = catalog.published_scores()
    pub = pub[(pub["split_type"] == "Koppen") & pub["model"].isin(["XGBoost", "LightGBM"])]
    r2 = pub.pivot_table(index=["target", "site"], columns="model", values="R2")
    gap = (r2["XGBoost"] - r2["LightGBM"]).rename("gap").reset_index()
    gap["shifted"] = gap["site"].isin(shifted)
    med = gap.groupby(["target", "shifted"])["gap"].median().unstack()
    assert (med[True] < med[False] - 0.25).all() and (med[False].abs() < 0.1).all()


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    from cbgrid import store

    path = tmp_path_factory.mktemp("ref") / "twin.zarr"
    store.write_store(twin.twin_store(n_sites=16, start="2014-01-01", end="2016-12-31", seed=1), path, progress=False)
    ds = store.open_store(path)
    return ds, splits.make_split(ds, by="koppen", seed=0)


def test_reference_runs_record_every_rule_and_tamrl_trains_in_two_phases(tiny_store, tmp_path):
    ds, split = tiny_store
    run = train.fit(ds, split, train.TrainConfig(model="tamrl", protocol="reference", seeds=1, max_epochs=2,
                                                 batch_size=256, hparams={"hidden": 16, "latent": 8}),
                    out=tmp_path / "tamrl")
    assert run.config["protocol"] == "reference" and run.config["protocol_rules"]["optimiser"] == "adamw"
    assert run.config["fitted_seeds"] == [27] and run.config["train"]["batch_size"] == 256
    assert list(dict.fromkeys(run.curves["phase"])) == ["pretrain lstm", "tamrl"]
    # reference validation schedule: the main phase at epochs 1 and 5k, TAM-RL's phase at 0, 5, ...
    first = run.curves[run.curves["phase"] == "pretrain lstm"]
    assert first["val_loss"].notna().tolist() == [True, False]
    assert run.predictions.attrs["protocol"] == "reference"
    from cbgrid.runs import load_run

    again = load_run(tmp_path / "tamrl").predict(ds.isel(site=[0, 1]))
    test = ds.isel(site=[0, 1])
    direct = run.predict(test)
    np.testing.assert_allclose(again["prediction"].values, direct["prediction"].values, rtol=1e-5, equal_nan=True)


def test_a_frame_coded_run_predicts_its_test_table_whole(tiny_store, tmp_path):
    ds, split = tiny_store
    run = train.fit(ds, split, train.TrainConfig(model="xgboost", protocol="reference", seeds=1,
                                                 hparams={"n_estimators": 10}), out=tmp_path / "xgb")
    assert (tmp_path / "xgb" / "members" / "seed-27-classes.json").exists()
    test = ds.sel(site=split.loc[split["split"] == "test", "site"].to_numpy())
    whole = run.predict(test, block_sites=None)
    np.testing.assert_array_equal(run.predict(test, block_sites=1)["prediction"].values, whole["prediction"].values)


def test_reports_label_and_rank_per_protocol(tiny_store, tmp_path):
    from cbgrid import report

    ds, split = tiny_store
    runs = []
    for proto in ("cbgrid", "reference"):
        path = tmp_path / f"xgb-{proto}"
        train.fit(ds, split, train.TrainConfig(model="xgboost", protocol=proto, seeds=1,
                                               hparams={"n_estimators": 20}), out=path)
        runs.append(path)
    rep = report.write_report(runs, tmp_path / "report", plots=False, progress=False)
    keys = [e.key for e in rep.experiments]
    assert [k[3] for k in keys] == ["cbgrid", "reference"]
    assert [int(e.scores.attrs["min_days"]) for e in rep.experiments] == [30, 1]
    rank = pd.read_csv(tmp_path / "report" / "ranking.csv")
    # each protocol ranked on its own: a rank 1 per (target, protocol)
    firsts = rank[rank["rank_R2"] == 1].groupby(["target", "protocol"]).size()
    assert set(firsts.index.get_level_values("protocol")) == {"cbgrid", "reference"}
    assert "protocol" in pd.read_csv(tmp_path / "report" / "scores.csv").columns


def test_unknown_protocol_and_untrainable_settings_are_refused(tiny_store):
    ds, split = tiny_store
    with pytest.raises(ValueError, match="unknown protocol 'papers'"):
        train.fit(ds, split, train.TrainConfig(model="xgboost", protocol="papers"))
    for bad in ({"max_epochs": 0}, {"seeds": 0}, {"batch_size": -4}, {"patience": 0}):
        with pytest.raises(ValueError, match=list(bad)[0]):
            train.fit(ds, split, train.TrainConfig(model="mlp", **bad))
