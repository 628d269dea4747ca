"""Report figures: each function draws a non-trivial PNG from score tables; matplotlib stays an
optional import with an install hint."""

from __future__ import annotations

import builtins

import numpy as np
import pandas as pd
import pytest
import xarray as xr

pytest.importorskip("matplotlib")

from cbgrid import catalog, plots, schema  # noqa: E402
from cbgrid import evaluation as ev  # noqa: E402
from cbgrid.schema import GPP, QC, TARGETS  # noqa: E402


@pytest.fixture(scope="module")
def scored():
    rng = np.random.default_rng(0)
    sites = catalog.sites().sample(24, random_state=1).reset_index(drop=True)
    time = pd.date_range("2012-01-01", periods=365)
    season = 4 + 3 * np.sin(2 * np.pi * np.arange(365) / 365)
    data = {t: season + rng.normal(0, 1, (24, 365)) for t in TARGETS}
    data[QC] = np.where(rng.random((24, 365)) < 0.6, 1.0, 0.4)
    store = schema.site_dataset(data, sites, time)
    obs = store[list(TARGETS)].to_dataarray("target").transpose("site", "time", "target")
    frames, preds = [], {}
    for model, noise in (("good", 0.7), ("poor", 2.0)):
        p = (obs + rng.normal(0, noise, obs.shape)).drop_vars([c for c in obs.coords if c not in ("site", "time", "target")])
        pred = xr.Dataset({"prediction": p.astype(np.float32), "prediction_std": xr.full_like(p, noise / 2).astype(np.float32)},
                          attrs=dict(model=model, split="igbp", feature_set="minimal", seeds="0", run=model))
        s = ev.evaluate(pred, store, list(store.site.values))
        frames.append(ev.to_frame(s))
        preds[model] = (pred, s)
    return store, pd.concat(frames, ignore_index=True), preds


def _png_ok(path, min_bytes=15_000):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > min_bytes


def test_metric_distributions(scored, tmp_path):
    _, frame, _ = scored
    frame = frame.copy()
    frame.loc[0, "R2"] = -50.0  # far outside the axis: drawn at the edge and counted
    fig = plots.metric_distributions(frame, GPP)
    assert "1 beyond axis" in fig.axes[0].get_title()
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["good (minimal)", "poor (minimal)"]
    _png_ok(plots.save(fig, tmp_path / "d.png"))


def test_class_heatmap(scored, tmp_path):
    _, frame, _ = scored
    table = ev.breakdown(frame, "koppen")
    fig = plots.class_heatmap(table, "koppen", GPP)
    texts = [t.get_text() for t in fig.axes[0].texts]
    n_classes = frame["koppen"].nunique()
    assert len(texts) == 2 * n_classes and all("n=" in t for t in texts)
    _png_ok(plots.save(fig, tmp_path / "h.png"))


def test_site_map(scored, tmp_path):
    _, frame, _ = scored
    fig = plots.site_map(frame, GPP)
    assert sum(ax.get_visible() for ax in fig.axes if ax.get_label() != "<colorbar>") == 2
    _png_ok(plots.save(fig, tmp_path / "m.png"))


def test_timeseries_shades_low_qc_days(scored, tmp_path):
    store, _, preds = scored
    pred, scores = preds["good"]
    site = str(store.site.values[3])
    fig = plots.timeseries(store, pred, site, scores)
    ax = fig.axes[0]
    assert ax.get_title(loc="left").startswith("GPP   R² =")
    assert any(c.get_label() == "QC < 1 (not scored)" for c in ax.collections)
    _png_ok(plots.save(fig, tmp_path / "t.png"), min_bytes=40_000)


def test_missing_matplotlib_says_how_to_install(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    plots._plt.cache_clear()
    monkeypatch.setattr(builtins, "__import__", fake_import)
    try:
        with pytest.raises(ImportError, match=r"pip install 'cbgrid\[plots\]'"):
            plots._plt()
    finally:
        monkeypatch.undo()
        plots._plt.cache_clear()
