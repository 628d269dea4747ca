"""Tree libraries' options: round clocks, XGBoost's multi-output strategies, LightGBM's layout."""

from __future__ import annotations

import numpy as np
import pytest

from cbgrid.models.lgbm import LightGBMTrees
from cbgrid.models.xgb import XGBoostTrees, xgboost_device

pytest.importorskip("xgboost")
pytest.importorskip("lightgbm")


@pytest.fixture(scope="module")
def table():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 6)).astype(np.float32)
    gpp = 2 * x[:, 0] + np.sin(x[:, 1])
    reco = x[:, 2] - 0.5 * x[:, 0]
    y = np.stack([gpp, reco, reco - gpp], 1).astype(np.float32) + rng.normal(0, 0.1, (3000, 3)).astype(np.float32)
    w = rng.uniform(0.5, 1.0, 3000).astype(np.float32)
    return x[:2400], y[:2400], w[:2400], x[2400:], y[2400:], w[2400:]


SMALL = {"n_estimators": 30, "learning_rate": 0.2, "max_depth": 4}


@pytest.mark.parametrize("cls, multi", [(XGBoostTrees, False), (XGBoostTrees, True), (LightGBMTrees, False)])
def test_every_round_is_clocked(table, cls, multi):
    x, y, w, xv, yv, wv = table
    m = cls(SMALL, patience=10**6, threads=1, multi_output=multi)
    m.fit(x, y, w, xv, yv, wv)
    per = m.round_seconds()
    assert len(per) == 30 * len(m.boosters)
    assert (per > 0).all()


@pytest.mark.parametrize("strategy", ["one_output_per_tree", "multi_output_tree"])
def test_xgboost_one_booster_for_three_targets(table, strategy):
    x, y, w, xv, yv, wv = table
    m = XGBoostTrees({**SMALL, "multi_strategy": strategy}, patience=5, threads=1, multi_output=True)
    m.fit(x, y, w, xv, yv, wv)
    assert len(m.boosters) == 1
    pred = m.predict(xv)
    assert pred.shape == (600, 3)
    skill = 1 - ((pred - yv) ** 2).mean(0) / yv.var(0)
    assert (skill > 0.8).all(), skill
    trees = len(m.boosters[0].get_dump())
    rounds = m.boosters[0].num_boosted_rounds()
    # one tree per target per round, or one three-leaf-valued tree per round
    assert trees == rounds * (3 if strategy == "one_output_per_tree" else 1)


def test_xgboost_strategy_is_ignored_for_one_target_per_booster(table):
    x, y, w, xv, yv, wv = table
    a = XGBoostTrees({**SMALL, "multi_strategy": "multi_output_tree"}, patience=5, threads=1).fit(x, y, w, xv, yv, wv)
    b = XGBoostTrees(SMALL, patience=5, threads=1).fit(x, y, w, xv, yv, wv)
    np.testing.assert_allclose(a["val_rmse"], b["val_rmse"])


def test_lightgbm_row_and_column_layouts_grow_the_same_trees(table):
    x, y, w, xv, yv, wv = table
    col = LightGBMTrees(SMALL, patience=5, threads=1)
    row = LightGBMTrees({**SMALL, "force_row_wise": True}, patience=5, threads=2)
    col.fit(x, y, w, xv, yv, wv)
    row.fit(x, y, w, xv, yv, wv)
    np.testing.assert_allclose(col.predict(xv), row.predict(xv), rtol=1e-5, atol=1e-5)
    coarse = LightGBMTrees({**SMALL, "max_bin": 15}, patience=5, threads=1)
    coarse.fit(x, y, w, xv, yv, wv)
    assert not np.allclose(coarse.predict(xv), col.predict(xv))


def test_xgboost_device_is_cpu_without_a_cuda_build_or_request():
    import xgboost

    assert xgboost_device("cpu") == "cpu"
    expected = "cuda" if xgboost.build_info().get("USE_CUDA") else "cpu"
    assert xgboost_device("cuda") == expected
