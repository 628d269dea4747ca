"""Training runs on a tiny twin store: every model, run directories, predict, CV, CLI, errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from torch import nn

from cbgrid import models, runs, schema, splits, store, train
from cbgrid.cli import main
from cbgrid.schema import TARGETS

#: Small, quick settings per model: enough to learn the twin's seasonal cycle in a few epochs.
QUICK_NET = {"hidden": 32, "layers": 1, "dropout": 0.0, "lr": 3e-3}
QUICK = {
    "xgboost": {"n_estimators": 150, "learning_rate": 0.1, "max_depth": 6},
    "lightgbm": {"n_estimators": 150, "learning_rate": 0.1, "max_depth": 6},
    "tamrl": {**QUICK_NET, "latent": 8},
    "transformer": {**QUICK_NET, "nhead": 4},
    "patch_transformer": {**QUICK_NET, "nhead": 4},
}


class TinyTemporal(nn.Module):
    """A linear per-day map: the smallest network honouring the temporal contract."""

    kind = "temporal"
    needs_context = False

    def __init__(self, n_features, n_static, n_onehot, n_targets=3, window=30, horizon=15, hidden=8, **kw):
        super().__init__()
        self.horizon = horizon
        self.aux_loss = None
        self.net = nn.Sequential(nn.Linear(n_features + n_static + n_onehot, hidden), nn.Tanh(), nn.Linear(hidden, n_targets))

    def forward(self, batch):
        x = batch["x"][:, -self.horizon:]
        steps = x.shape[1]
        ctx = torch.cat([batch["s"], batch["onehot"]], -1)[:, None].expand(-1, steps, -1)
        return self.net(torch.cat([x, ctx], -1))


@pytest.fixture(autouse=True, scope="module")
def _tiny_temporal_registered():
    """The test network is registered for this module only."""
    with models.registered("tiny_temporal", TinyTemporal):
        yield


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def twin_path(tmp_path_factory):
    from cbgrid.sources import twin

    path = tmp_path_factory.mktemp("twin") / "tiny.zarr"
    ds = twin.twin_store(n_sites=14, start="2009-01-01", end="2010-12-31", seed=1)
    store.write_store(ds, path, progress=False)
    return path


@pytest.fixture(scope="module")
def twin_ds(twin_path):
    return store.open_store(twin_path)


@pytest.fixture(scope="module")
def split(twin_ds):
    return splits.make_split(twin_ds, by="koppen", seed=0)


def quick(model, **kw) -> train.TrainConfig:
    base = dict(model=model, seeds=1, max_epochs=6, patience=6, batch_size=256 if model == "mlp" else 32,
                context_windows=2, hparams=QUICK.get(model, QUICK_NET), device="cpu")
    return train.TrainConfig(**{**base, **kw})


def _mse(obs, pred):
    ok = np.isfinite(obs)
    return float(np.mean((obs[ok] - pred[ok]) ** 2))


def _site_mean_mse(ds) -> float:
    obs = np.stack([ds[t].values for t in TARGETS], -1)
    ok = np.isfinite(obs).all(-1, keepdims=True)
    obs = np.where(ok, obs, np.nan)
    n = ok.sum(1, keepdims=True)
    site_mean = np.where(ok, obs, 0).sum(1, keepdims=True) / np.maximum(n, 1)
    return _mse(obs, np.broadcast_to(site_mean, obs.shape)), obs


@pytest.mark.parametrize("model", ["xgboost", "lightgbm", "mlp", "lstm", "ctlstm", "gru", "ctgru", "transformer",
                                   "patch_transformer", "tamrl"])
def test_every_model_beats_the_site_mean_on_training_sites(model, twin_ds, split):
    run = train.fit(twin_ds, split, quick(model))
    tr = twin_ds.sel(site=splits.train_sites(split)).load()
    pred = run.predict(tr)
    baseline, obs = _site_mean_mse(tr)
    got = _mse(obs, pred["prediction"].transpose("site", "time", "target").values)
    assert got < baseline, f"{model}: MSE {got:.3f} vs per-site mean {baseline:.3f}"
    p = run.predictions
    assert p["prediction"].dims == ("site", "time", "target") and p["prediction"].dtype == np.float32
    assert list(p.site.values) == splits.test_sites(split)
    assert np.isfinite(p["prediction"].values).all()
    assert p["prediction"].attrs["units"] == schema.TARGET_UNITS
    assert p.attrs["model"] == model and set(p.coords) >= {"lat", "lon", "igbp", "koppen"}


def test_saved_run_reproduces_predictions(tmp_path, twin_ds, split):
    out = tmp_path / "run"
    run = train.fit(twin_ds, split, quick("tamrl", seeds=2, max_epochs=2), out=out)
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "scaling.json", "members", "curves.csv", "split.csv", "predictions.nc"} <= files
    assert sorted(p.name for p in (out / "members").iterdir()) == ["seed-00.pt", "seed-01.pt"]
    loaded = runs.load_run(out, device="cpu")
    assert loaded.model_name == "tamrl" and loaded.kind == "temporal" and loaded.config["seeds"] == [0, 1]
    again = loaded.predict(twin_ds.sel(site=splits.test_sites(split)))
    np.testing.assert_allclose(again["prediction"].values, run.predictions["prediction"].values, rtol=1e-5, atol=1e-5)
    assert (again["prediction_std"].values > 0).any()
    saved = xr.load_dataset(out / "predictions.nc")
    np.testing.assert_allclose(saved["prediction"].values, run.predictions["prediction"].values, rtol=1e-6)
    assert saved.attrs["run"] == "run" and saved.attrs["seeds"] == "0 1"
    curves = pd.read_csv(out / "curves.csv")
    assert set(curves["seed"]) == {0, 1} and {"train_loss", "val_loss"} <= set(curves.columns)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["catalog_version"] and cfg["features"][:1] == ["temperature_2m"] and cfg["train"]["patience"] == 6


def test_tree_run_roundtrip_and_block_independence(tmp_path, twin_ds, split):
    out = tmp_path / "xgb"
    run = train.fit(twin_ds, split, quick("xgboost", seeds=3), out=out)
    assert run.config["fitted_seeds"] == [0]  # deterministic trees: one fit serves all seeds
    loaded = runs.load_run(out)
    test = twin_ds.sel(site=splits.test_sites(split))
    np.testing.assert_array_equal(loaded.predict(test)["prediction"].values, run.predictions["prediction"].values)
    # prediction is per site: blocks of one site give the same numbers
    np.testing.assert_array_equal(loaded.predict(test, block_sites=1)["prediction"].values, run.predictions["prediction"].values)


def test_temporal_prediction_covers_every_day_and_is_blockwise(twin_ds, split):
    models.spec("tiny_temporal")
    run = train.fit(twin_ds, split, quick("tiny_temporal", max_epochs=2))
    test = twin_ds.sel(site=splits.test_sites(split))
    p = run.predictions["prediction"].values
    assert p.shape == (test.sizes["site"], test.sizes["time"], 3) and np.isfinite(p).all()
    np.testing.assert_allclose(run.predict(test, block_sites=1)["prediction"].values, p, rtol=1e-6, atol=1e-6)


def test_cpu_training_is_deterministic(twin_ds, split):
    a = train.fit(twin_ds, split, quick("ctlstm", max_epochs=2))
    b = train.fit(twin_ds, split, quick("ctlstm", max_epochs=2))
    np.testing.assert_array_equal(a.predictions["prediction"].values, b.predictions["prediction"].values)
    c = train.fit(twin_ds, split, quick("ctlstm", max_epochs=2, first_seed=5))
    assert not np.array_equal(a.predictions["prediction"].values, c.predictions["prediction"].values)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("model", ["ctlstm", "tamrl", "mlp"])
def test_cuda_run_matches_its_cpu_prediction(tmp_path, twin_ds, split, model):
    """Trained on the GPU (batches gathered on the device), the saved run predicts the same on the CPU."""
    run = train.fit(twin_ds, split, quick(model, device="cuda", max_epochs=2), out=tmp_path / "r")
    assert run.config["device"] == "cuda"
    test = twin_ds.sel(site=splits.test_sites(split))
    on_cpu = runs.load_run(tmp_path / "r", device="cpu").predict(test)["prediction"].values
    np.testing.assert_allclose(on_cpu, run.predictions["prediction"].values, rtol=1e-3, atol=1e-3)


def test_early_stopping_and_epoch_limit(twin_ds, split):
    run = train.fit(twin_ds, split, quick("tiny_temporal", max_epochs=3, patience=1, hparams={"lr": 0.0}))
    # lr 0: the validation loss never improves after epoch 0, so training stops after patience epochs
    assert run.curves["epoch"].tolist() == [0, 1]
    run = train.fit(twin_ds, split, quick("tiny_temporal", max_epochs=3, patience=50))
    assert run.curves["epoch"].tolist() == [0, 1, 2]


def test_cv_grid_search_picks_from_the_grid(twin_ds, split):
    grid = {"hidden": [4, 16], "lr": [0.0, 3e-3]}
    run = train.fit(twin_ds, split, quick("tiny_temporal", max_epochs=2), grid=grid)
    cv = run.cv
    n_folds = split.loc[split.set == "train", "fold"].nunique()
    assert len(cv) == 4 * n_folds and set(cv["fold"]) == set(range(n_folds))
    best = cv.groupby("combo")["score"].mean().idxmax()
    chosen = cv.loc[cv.combo == best, ["hidden", "lr"]].iloc[0].to_dict()
    assert run.config["hparams"]["hidden"] == chosen["hidden"] and run.config["hparams"]["lr"] == chosen["lr"]
    assert chosen["lr"] > 0  # untrained networks never win


def test_bad_inputs_are_clear_errors(twin_ds, split):
    with pytest.raises(ValueError, match="unknown model 'nope'.*xgboost"):
        train.fit(twin_ds, split, quick("nope"))
    with pytest.raises(ValueError, match="surface_pressure"):
        train.fit(twin_ds, split, quick("xgboost", feature_set="standard"))
    bad = pd.concat([split, split.iloc[:1].assign(site="XX-Nope")], ignore_index=True)
    with pytest.raises(ValueError, match="XX-Nope"):
        train.fit(twin_ds, bad, quick("xgboost"))
    with pytest.raises(ValueError, match="no training sites"):
        train.fit(twin_ds, ([], ["US-Ha1"]), quick("xgboost"))
    # training sites without a single observed day
    obs = np.isfinite(twin_ds[schema.NEE].values).any(1)
    empty = [str(s) for s, o in zip(twin_ds.site.values, obs) if not o]
    assert empty, "the tiny twin should hold a site without flux records in 2009-2010"
    with pytest.raises(ValueError, match="no day with GPP, RECO and NEE"):
        train.fit(twin_ds, (empty, []), quick("xgboost"))


def test_failed_run_leaves_nothing(tmp_path, twin_ds, split, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(runs.Run, "predict", boom)
    with pytest.raises(RuntimeError):
        train.fit(twin_ds, split, quick("tiny_temporal", max_epochs=1), out=tmp_path / "r")
    assert list(tmp_path.iterdir()) == []


def test_cli_train_and_predict(tmp_path, twin_path, split, capsys):
    split_csv = splits.write_split(split, tmp_path / "split.csv")
    out = tmp_path / "runs" / "lstm"
    rc = main(["-q", "train", "--store", str(twin_path), "--split", str(split_csv), "--model", "lstm", "--seeds", "2",
               "--max-epochs", "2", "--batch-size", "64", "--hidden", "16", "--device", "cpu", "--out", str(out)])
    assert rc == 0 and (out / "predictions.nc").exists()
    assert str(out) in capsys.readouterr().out
    rc = main(["-q", "predict", str(out), "--store", str(twin_path), "--device", "cpu", "--out", str(tmp_path / "p.nc")])
    assert rc == 0
    a = xr.load_dataset(out / "predictions.nc")
    b = xr.load_dataset(tmp_path / "p.nc")
    np.testing.assert_allclose(b["prediction"].values, a["prediction"].values, rtol=1e-5, atol=1e-5)
    # an existing run is never overwritten by accident, and errors are one clear line
    rc = main(["-q", "train", "--store", str(twin_path), "--split", "koppen", "--model", "lstm", "--out", str(out)])
    assert rc == 2 and "exists" in capsys.readouterr().err
    rc = main(["-q", "train", "--store", str(twin_path), "--split", "koppen", "--model", "resnet", "--out", str(tmp_path / "x")])
    assert rc == 2 and "unknown model 'resnet'" in capsys.readouterr().err


def test_cli_grid_search(tmp_path, twin_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("hidden: [4, 8]\nlr: [0.003]\n")
    out = tmp_path / "run"
    rc = main(["-q", "train", "--store", str(twin_path), "--model", "tiny_temporal", "--seeds", "1", "--max-epochs", "1",
               "--grid", str(grid), "--out", str(out)])
    assert rc == 0
    cv = pd.read_csv(out / "cv.csv")
    assert sorted(cv["hidden"].unique()) == [4, 8] and cv["fold"].nunique() == 5
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["grid"] == {"hidden": [4, 8], "lr": [0.003]} and cfg["hparams"]["hidden"] in (4, 8)
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    assert main(["-q", "train", "--store", str(twin_path), "--model", "tiny_temporal", "--grid", str(bad), "--out", str(tmp_path / "b")]) == 2
