"""XGBoost histogram trees (``xgboost-cpu``; the CUDA build trains on GPUs)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cbgrid.models.trees import TreeModel
from cbgrid.runtime import require

log = logging.getLogger(__name__)


def xgboost_device(requested: str) -> str:
    """'cuda' only when asked for and this xgboost build has CUDA; else 'cpu'.

    >>> xgboost_device("cpu")
    'cpu'
    """
    xgboost = require("xgboost", "XGBoost trees")

    if str(requested).startswith("cuda") and xgboost.build_info().get("USE_CUDA"):
        return "cuda"
    if str(requested).startswith("cuda"):
        log.info("this xgboost build has no CUDA; trees train on the CPU")
    return "cpu"


def _categorical(x) -> bool:
    return isinstance(x, pd.DataFrame) and any(isinstance(d, pd.CategoricalDtype) for d in x.dtypes)


def _clock(xgb, ticks: list):
    """An XGBoost callback appending ``time.perf_counter()`` after each boosting round."""

    class Clock(xgb.callback.TrainingCallback):
        def after_iteration(self, model, epoch, evals_log):
            ticks.append(time.perf_counter())
            return False

    return Clock()


class XGBoostTrees(TreeModel):
    """XGBoost; with ``multi_output`` one booster fits the three targets: one tree per target
    per round (``multi_strategy: one_output_per_tree``, XGBoost's default and what the
    reference's ``XGBRegressor`` on a three-column target does) or one tree with three leaf
    values per round (``multi_strategy: multi_output_tree``, a hyperparameter). ``keep='library'``
    predicts with every round built, as ``xgboost.train`` returns the model after early stopping
    (the best round plus the patience). The ``device`` is ``cuda`` when asked for (``--device
    auto`` on a GPU machine) and this xgboost build has CUDA (``xgboost_device``)."""

    name, suffix = "xgboost", "ubj"
    stochastic_params = ("subsample", "colsample_bytree", "colsample_bylevel", "colsample_bynode")
    supports_multi_output = True
    reads_codes = True

    def fit_one(self, x, y, w, val, seed):
        xgb = require("xgboost", "XGBoost trees")
        p = dict(self.params)
        rounds = int(p.pop("n_estimators"))
        p.update(seed=seed, device=xgboost_device(self.device), eval_metric="rmse")
        if self.threads:
            p["nthread"] = self.threads
        cat = _categorical(x)
        dtrain = xgb.QuantileDMatrix(x, y, weight=w, enable_categorical=cat)
        evals, res = [], {}
        if val is not None:
            evals = [(xgb.DMatrix(val[0], val[1], weight=val[2], enable_categorical=cat), "val")]
        if p.get("multi_strategy", "one_output_per_tree") != "one_output_per_tree" and np.ndim(y) == 1:
            p.pop("multi_strategy")  # one target per booster: the strategy has no meaning
        bst = xgb.train(p, dtrain, num_boost_round=rounds, evals=evals, evals_result=res,
                        early_stopping_rounds=self.patience if evals else None, verbose_eval=False,
                        callbacks=[_clock(xgb, self.clock)])
        if evals and self.keep == "best":
            bst = bst[: bst.best_iteration + 1]
        return bst, np.asarray(res.get("val", {}).get("rmse", []), float)

    def prepare(self, x):
        xgb = require("xgboost", "XGBoost trees")
        return xgb.DMatrix(x, enable_categorical=_categorical(x))

    def predict_one(self, booster, data):
        return booster.predict(data)

    def load_one(self, path: Path):
        xgb = require("xgboost", "XGBoost trees")
        b = xgb.Booster()
        b.load_model(str(path))
        return b
