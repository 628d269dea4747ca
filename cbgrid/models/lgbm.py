"""LightGBM histogram trees."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from cbgrid.models.trees import TreeModel
from cbgrid.runtime import require


class LightGBMTrees(TreeModel):
    """LightGBM, one booster per target, cut at its best validation round; pandas categorical
    columns are native categoricals.

    Histogram settings: ``max_bin`` (255, LightGBM's default), ``force_col_wise`` (on unless
    ``force_row_wise`` is given: the site-day tables are tall and narrow, about 20 columns, where
    LightGBM's own test picks column-wise anyway, and the test itself costs a pass over the
    data per booster) and ``num_threads`` (``--threads``) — hyperparameters, so
    ``catalogs/hyperparameters.yaml`` or ``--hparam`` can change them. Neither the layout nor
    the thread count changes the trees (``deterministic``).
    """

    name, suffix = "lightgbm", "txt"
    stochastic_params = ("bagging_fraction", "subsample", "feature_fraction", "colsample_bytree")

    def fit_one(self, x, y, w, val, seed):
        lgb = require("lightgbm", "LightGBM trees")
        p = dict(self.params)
        rounds = int(p.pop("n_estimators"))
        p.update(seed=seed, deterministic=True, verbosity=-1, metric="rmse")
        if not p.get("force_row_wise"):
            p.setdefault("force_col_wise", True)
        if self.threads:
            p["num_threads"] = self.threads
        dtrain = lgb.Dataset(x, y, weight=w, free_raw_data=True)
        res, valid = {}, []
        callbacks = [lambda env: self.clock.append(time.perf_counter())]
        if val is not None:
            valid = [lgb.Dataset(val[0], val[1], weight=val[2], reference=dtrain)]
            callbacks += [lgb.early_stopping(self.patience, verbose=False), lgb.record_evaluation(res)]
        bst = lgb.train(p, dtrain, num_boost_round=rounds, valid_sets=valid, valid_names=["val"][: len(valid)],
                        callbacks=callbacks)
        if valid:
            bst = lgb.Booster(model_str=bst.model_to_string(num_iteration=bst.best_iteration))
        return bst, np.asarray(res.get("val", {}).get("rmse", []), float)

    def predict_one(self, booster, data):
        return booster.predict(data, num_threads=self.threads or 0)

    def load_one(self, path: Path):
        lgb = require("lightgbm", "LightGBM trees")
        return lgb.Booster(model_file=str(path))
