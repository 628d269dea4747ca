"""XGBoost histogram trees (``xgboost-cpu``; the CUDA build trains on GPUs)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cbgrid.models.trees import TreeModel

log = logging.getLogger(__name__)


def xgboost_device(requested: str) -> str:
    """'cuda' only when asked for and this xgboost build has CUDA; else 'cpu'."""
    import xgboost

    if str(requested).startswith("cuda") and xgboost.build_info().get("USE_CUDA"):
        return "cuda"
    if str(requested).startswith("cuda"):
        log.info("this xgboost build has no CUDA; trees train on the CPU")
    return "cpu"


class XGBoostTrees(TreeModel):
    name, suffix = "xgboost", "ubj"
    stochastic_params = ("subsample", "colsample_bytree", "colsample_bylevel", "colsample_bynode")

    def fit_one(self, x, y, w, val, seed):
        import xgboost as xgb

        p = dict(self.params)
        rounds = int(p.pop("n_estimators"))
        p.update(seed=seed, device=xgboost_device(self.device), eval_metric="rmse")
        if self.threads:
            p["nthread"] = self.threads
        dtrain = xgb.QuantileDMatrix(x, y, weight=w)
        evals, res = [], {}
        if val is not None:
            evals = [(xgb.DMatrix(val[0], val[1], weight=val[2]), "val")]
        bst = xgb.train(p, dtrain, num_boost_round=rounds, evals=evals, evals_result=res,
                        early_stopping_rounds=self.patience if evals else None, verbose_eval=False)
        if evals:
            bst = bst[: bst.best_iteration + 1]
        return bst, np.asarray(res.get("val", {}).get("rmse", []), float)

    def prepare(self, x):
        import xgboost as xgb

        return xgb.DMatrix(x)

    def predict_one(self, booster, data):
        return booster.predict(data)

    def load_one(self, path: Path):
        import xgboost as xgb

        b = xgb.Booster()
        b.load_model(str(path))
        return b
