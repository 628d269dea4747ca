"""The data pipeline: arrays from the store, scaling and gap filling, window index, batches."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cbgrid import catalog, pipeline, schema
from cbgrid.pipeline import Batches, Prepared, Scaler, SiteArrays, Weights


def _windows_by_loop(observed, window, horizon, stride, min_days=1, lo=None, hi=None):
    """The window rule written out day by day, to check the vectorized index against."""
    out = []
    n_sites, n_days = observed.shape
    for s in range(n_sites):
        for start in range(0, n_days - window + 1, stride):
            first, end = start + window - horizon, start + window
            if observed[s, first:end].sum() < min_days:
                continue
            if lo is not None and first < lo[s]:
                continue
            if hi is not None and end > hi[s]:
                continue
            out.append((s, start))
    return np.asarray(out, dtype=np.int64).reshape(-1, 2)


def test_window_index_hand_cases():
    obs = np.zeros((3, 75), bool)
    obs[0] = True  # fully observed: windows at 0, 15, 30, 45 (45 + 30 = 75)
    obs[1, 40] = True  # one observed day: only the window whose last 15 days hold day 40
    obs[2, 10:15] = True  # observed days only in the first 15 days: no window's targets
    idx = pipeline.window_index(obs, 30, 15, 15)
    assert idx.tolist() == [[0, 0], [0, 15], [0, 30], [0, 45], [1, 15]]
    # window start 15 spans days 15..44, targets 30..44 -> holds day 40
    assert pipeline.window_index(obs, 30, 15, 15, min_target_days=2).tolist() == [[0, 0], [0, 15], [0, 30], [0, 45]]


@pytest.mark.parametrize("window,horizon,stride,min_days", [(30, 15, 15, 1), (30, 15, 7, 3), (10, 10, 5, 1), (5, 1, 1, 1)])
def test_window_index_matches_loop(window, horizon, stride, min_days):
    rng = np.random.default_rng(1)
    obs = rng.random((7, 200)) < 0.3
    obs[3] = False
    lo = rng.integers(0, 150, 7)
    hi = lo + rng.integers(0, 100, 7)
    for kw in ({}, {"lo": lo}, {"hi": hi}, {"lo": lo, "hi": hi}):
        got = pipeline.window_index(obs, window, horizon, stride, min_target_days=min_days, **kw)
        np.testing.assert_array_equal(got, _windows_by_loop(obs, window, horizon, stride, min_days, **kw))


def test_window_index_bad_arguments():
    with pytest.raises(ValueError, match="horizon"):
        pipeline.window_index(np.ones((1, 40), bool), 30, 31, 15)
    assert pipeline.window_index(np.ones((2, 10), bool), 30, 15, 15).shape == (0, 2)


def test_validation_cutoff_is_last_fifth_of_observed_days():
    obs = np.zeros((3, 100), bool)
    obs[0, 10:60] = True  # 50 observed days: 40 fit, cutoff after day 49
    obs[1, ::2] = True  # 50 observed days at 0, 2, ..., 98: 40th is day 78
    cut = pipeline.validation_cutoff(obs, 0.2)
    assert cut.tolist() == [50, 79, 100]
    assert obs[0, :50].sum() == 40 and obs[1, :79].sum() == 40


def test_day_index_split():
    obs = np.zeros((2, 10), bool)
    obs[0, [1, 4, 8]] = True
    obs[1, [0, 9]] = True
    cut = np.array([5, 9])
    assert pipeline.day_index(obs, hi=cut).tolist() == [[0, 1], [0, 4], [1, 0]]
    assert pipeline.day_index(obs, lo=cut).tolist() == [[0, 8], [1, 9]]


def _arrays(n_sites=4, n_days=90, n_feat=3, seed=0) -> SiteArrays:
    rng = np.random.default_rng(seed)
    x = rng.normal(10, 3, (n_sites, n_days, n_feat)).astype(np.float32)
    y = rng.normal(0, 2, (n_sites, n_days, 3)).astype(np.float32)
    y[:, :20] = np.nan
    qc = rng.random((n_sites, n_days)).astype(np.float32)
    return SiteArrays(
        sites=np.array([f"S{i}" for i in range(n_sites)], dtype=object),
        time=pd.date_range("2010-01-01", periods=n_days), features=[f"f{i}" for i in range(n_feat)],
        x=x, lat=np.linspace(-40, 60, n_sites), lon=np.linspace(-100, 100, n_sites),
        igbp=np.array([1, 1, 4, 10][:n_sites]), koppen=np.array([3, 3, 3, 4][:n_sites]), y=y, qc=qc,
    )


def test_forward_fill_then_training_mean():
    a = _arrays()
    a.x[0, :5, 0] = np.nan  # leading gap -> training mean (0 after scaling)
    a.x[1, 30:40, 1] = np.nan  # inner gap -> last value before it
    sc = Scaler.fit(a)
    out, complete = pipeline.model_features(a.x, sc)
    assert complete.all()  # cbgrid's rule fills every gap
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[0, :5, 0], 0)
    expected = (a.x[1, 29, 1] - sc.x_mean[1]) / sc.x_std[1]
    np.testing.assert_allclose(out[1, 30:40, 1], expected, rtol=1e-6)
    np.testing.assert_allclose(out[2], (a.x[2] - sc.x_mean) / sc.x_std, rtol=1e-5, atol=1e-6)


def test_scaler_uses_only_given_sites():
    a = _arrays()
    train = a.subset([0, 1, 2])
    sc = Scaler.fit(train)
    np.testing.assert_allclose(sc.x_mean, train.x.reshape(-1, 3).mean(0), rtol=1e-5)
    obs = train.observed
    np.testing.assert_allclose(sc.y_mean, train.y[obs].mean(0), rtol=1e-5, atol=1e-6)
    a.x[3] += 1000  # a test site changes nothing
    assert np.allclose(Scaler.fit(a.subset([0, 1, 2])).x_mean, sc.x_mean)
    rt = Scaler.from_dict(sc.to_dict())
    np.testing.assert_array_equal(rt.x_std, sc.x_std)


def test_class_weights_inverse_frequency():
    # IGBP codes 1, 1, 4, 10 with 10, 30, 20, 40 observed days: n = {1: 40, 4: 20, 10: 40}, N = 100, K = 3
    w = pipeline.class_weights(np.array([1, 1, 4, 10]), np.array([10, 30, 20, 40]), 17)
    assert w[1] == pytest.approx(100 / (3 * 40))
    assert w[4] == pytest.approx(100 / (3 * 20))
    assert w[10] == pytest.approx(100 / (3 * 40))
    assert w[0] == 0 and w[5] == 0
    days = np.array([10, 30, 20, 40])
    assert (w[[1, 1, 4, 10]] * days).sum() / days.sum() == pytest.approx(1.0)
    # Köppen codes start at 1
    wk = pipeline.class_weights(np.array([3, 3, 4]), np.array([5, 5, 30]), 5, first=1)
    assert wk[3] == pytest.approx(40 / (2 * 10)) and wk[4] == pytest.approx(40 / (2 * 30))
    assert wk.size == 6


def test_day_weights_qc_times_classes():
    a = _arrays()
    a.qc[0, 50] = np.nan  # observed without QC -> 1
    w = Weights.fit(a)
    day = w.day(a)
    obs = a.observed
    assert (day[~obs] == 0).all()
    s = 2
    assert day[s, 60] == pytest.approx(a.qc[s, 60] * w.igbp[a.igbp[s]] * w.koppen[a.koppen[s]])
    assert day[0, 50] == pytest.approx(w.igbp[1] * w.koppen[3])


def test_onehot():
    oh = pipeline.onehot(np.array([0, 16]), np.array([1, 5]))
    assert oh.shape == (2, pipeline.N_ONEHOT)
    assert oh[0, 0] == 1 and oh[0, 17] == 1 and oh[1, 16] == 1 and oh[1, 21] == 1 and oh.sum() == 4


def test_batches_gather_exact_windows_and_last_days():
    a = _arrays()
    sc = Scaler.fit(a)
    p = Prepared.build(a, sc, Weights.fit(a))
    t = p.tensors("cpu")
    idx = pipeline.window_index(a.observed, 30, 15, 15)
    b = Batches(t, idx, kind="temporal", batch_size=5)
    seen = 0
    for batch in b:
        sites = batch["site"].numpy()
        assert batch["x"].shape == (len(sites), 30, 3) and batch["y"].shape == (len(sites), 15, 3)
        for k, (s, start) in enumerate(idx[seen:seen + len(sites)]):
            np.testing.assert_array_equal(batch["x"][k].numpy(), p.x[s, start:start + 30])
            np.testing.assert_array_equal(batch["y"][k].numpy(), p.y[s, start + 15:start + 30])
            np.testing.assert_array_equal(batch["w"][k].numpy(), p.w[s, start + 15:start + 30])
            np.testing.assert_array_equal(batch["s"][k].numpy(), p.s[s])
            np.testing.assert_array_equal(batch["onehot"][k].numpy(), p.onehot[s])
        seen += len(sites)
    assert seen == len(idx) and len(b) == -(-len(idx) // 5)


def test_batches_static_and_context():
    a = _arrays()
    sc = Scaler.fit(a)
    p = Prepared.build(a, sc, Weights.fit(a))
    t = p.tensors("cpu")
    idx = pipeline.day_index(a.observed)
    batch = next(iter(Batches(t, idx, kind="static", batch_size=64, shuffle=True, seed=3, context=4)))
    k = batch["site"].numpy()
    assert batch["x"].shape == (64, 3) and batch["y"].shape == (64, 3) and batch["w"].shape == (64,)
    assert batch["ctx"].shape == (64, 4, 30, 3)
    # every context window is a window of the sample's own site
    xs = torch.from_numpy(p.x)
    for i in range(0, 64, 16):
        for j in range(4):
            w = batch["ctx"][i, j]
            found = any(torch.equal(w, xs[k[i], s:s + 30]) for s in range(90 - 29))
            assert found
    # a shuffled epoch visits every sample once, and is the same for the same seed
    b1 = Batches(t, idx, kind="static", batch_size=50, shuffle=True, seed=7)
    rows1 = torch.cat([torch.stack([x["site"], x["x"][:, 0]], 1) for x in b1])
    b2 = Batches(t, idx, kind="static", batch_size=50, shuffle=True, seed=7)
    rows2 = torch.cat([torch.stack([x["site"], x["x"][:, 0]], 1) for x in b2])
    assert torch.equal(rows1, rows2) and len(rows1) == len(idx)


def test_prediction_windows_cover_every_day():
    for n_days in (1, 14, 15, 16, 100, 365):
        left, right, n = pipeline.prediction_windows(n_days, 30, 15)
        assert left == 15 and (n_days + left + right - 30) // 15 + 1 == n and n * 15 >= n_days > (n - 1) * 15


def test_read_arrays_and_feature_check(small_ds):
    with pytest.raises(ValueError, match="surface_net_solar_radiation_sum"):
        pipeline.feature_variables(small_ds, "minimal")
    a = pipeline.read_arrays(small_ds.chunk({"site": 2, "time": 25}), ["temperature_2m"])
    assert a.x.flags.c_contiguous and a.x.shape == (6, 60, 1)
    np.testing.assert_array_equal(a.x[..., 0], small_ds["temperature_2m"].values)
    np.testing.assert_array_equal(a.y[..., 2], small_ds[schema.NEE].values)
    np.testing.assert_array_equal(a.igbp, small_ds["igbp"].values)
    assert list(a.sites) == [str(s) for s in small_ds.site.values]
    assert catalog.features("minimal")[:6] == catalog.era5_bands("minimal")


@pytest.mark.parametrize("kind", ["temporal", "static"])
def test_tensor_gather_equals_window_view_gather(kind):
    """The GPU code path (index_select on tensors), run on the CPU, gives the same batches."""
    a = _arrays()
    p = Prepared.build(a, Scaler.fit(a), Weights.fit(a))
    t = p.tensors("cpu")
    idx = pipeline.window_index(a.observed) if kind == "temporal" else pipeline.day_index(a.observed)
    view = Batches(t, idx, kind=kind, batch_size=7, method="view", context=3)
    tens = Batches(t, idx, kind=kind, batch_size=7, method="tensor", context=3)
    n = 0
    for bv, bt in zip(view, tens):
        assert bv.keys() == bt.keys()
        for k in bv:
            assert torch.equal(bv[k], bt[k]), k
        n += 1
    assert n == len(view) > 1
