"""Gradient-boosted trees (XGBoost, LightGBM): one booster per target, physical units.

Instance weights are the loss weights of the networks (w_qc × w_igbp × w_koppen); boosting
stops early on the validation part (the last 20 % of each training site's record).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cbgrid.schema import TARGETS

log = logging.getLogger(__name__)

#: The CarbonBench settings (PAPER_FACTS.md).
PUBLISHED = {
    "xgboost": {"learning_rate": 0.05, "max_depth": 10, "min_child_weight": 5, "tree_method": "hist",
                "objective": "reg:squarederror", "n_estimators": 1000},
    "lightgbm": {"learning_rate": 0.05, "max_depth": 10, "min_child_weight": 5, "n_estimators": 1000,
                 "objective": "regression"},
}
_STOCHASTIC = {
    "xgboost": ("subsample", "colsample_bytree", "colsample_bylevel", "colsample_bynode"),
    "lightgbm": ("bagging_fraction", "subsample", "feature_fraction", "colsample_bytree"),
}
_SUFFIX = {"xgboost": "ubj", "lightgbm": "txt"}


def xgboost_device(requested: str) -> str:
    """'cuda' only when asked for and this xgboost build has CUDA; else 'cpu'."""
    import xgboost

    if str(requested).startswith("cuda") and xgboost.build_info().get("USE_CUDA"):
        return "cuda"
    if str(requested).startswith("cuda"):
        log.info("this xgboost build has no CUDA; trees train on the CPU")
    return "cpu"


class TreeModel:
    """A boosted-tree regressor for GPP, RECO and NEE (one booster each)."""

    family, kind, needs_context = "tree", "static", False

    def __init__(self, name: str, params: dict | None = None, *, patience: int = 20, device: str = "cpu",
                 threads: int | None = None):
        if name not in PUBLISHED:
            raise ValueError(f"unknown tree model {name!r}; choose one of {', '.join(PUBLISHED)}")
        self.name = name
        self.params = {**PUBLISHED[name], **(params or {})}
        self.patience = int(patience)
        self.device = device
        self.threads = threads
        self.boosters: list = []

    @property
    def stochastic(self) -> bool:
        """Whether the seed changes the fit (row or column subsampling is on)."""
        return any(float(self.params.get(k, 1.0)) < 1.0 for k in _STOCHASTIC[self.name])

    def fit(self, x, y, w, x_val=None, y_val=None, w_val=None, *, seed: int = 0) -> pd.DataFrame:
        """Fit one booster per target; returns the validation curve (target, iteration, val_rmse)."""
        if len(x) == 0:
            raise ValueError("no training samples for the trees")
        fit = self._fit_xgboost if self.name == "xgboost" else self._fit_lightgbm
        has_val = x_val is not None and len(x_val) > 0
        curves, self.boosters = [], []
        for k, target in enumerate(TARGETS):
            val = (x_val, np.ascontiguousarray(y_val[:, k]), w_val) if has_val else None
            booster, curve = fit(x, np.ascontiguousarray(y[:, k]), w, val, seed)
            self.boosters.append(booster)
            curves.append(pd.DataFrame({"target": target, "iteration": np.arange(len(curve)), "val_rmse": curve}))
        return pd.concat(curves, ignore_index=True)

    def _fit_xgboost(self, x, y, w, val, seed):
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

    def _fit_lightgbm(self, x, y, w, val, seed):
        import lightgbm as lgb

        p = dict(self.params)
        rounds = int(p.pop("n_estimators"))
        p.update(seed=seed, deterministic=True, verbosity=-1, metric="rmse")
        if self.threads:
            p["num_threads"] = self.threads
        dtrain = lgb.Dataset(x, y, weight=w, free_raw_data=True)
        res, callbacks, valid = {}, [], []
        if val is not None:
            valid = [lgb.Dataset(val[0], val[1], weight=val[2], reference=dtrain)]
            callbacks = [lgb.early_stopping(self.patience, verbose=False), lgb.record_evaluation(res)]
        bst = lgb.train(p, dtrain, num_boost_round=rounds, valid_sets=valid, valid_names=["val"][: len(valid)],
                        callbacks=callbacks)
        if valid:
            bst = lgb.Booster(model_str=bst.model_to_string(num_iteration=bst.best_iteration))
        return bst, np.asarray(res.get("val", {}).get("rmse", []), float)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(N, 3) GPP, RECO, NEE in physical units."""
        if not self.boosters:
            raise ValueError("the tree model is not fitted")
        if self.name == "xgboost":
            import xgboost as xgb

            d = xgb.DMatrix(x)
            cols = [b.predict(d) for b in self.boosters]
        else:
            cols = [b.predict(x, num_threads=self.threads or 0) for b in self.boosters]
        return np.stack(cols, axis=-1).astype(np.float32)

    def save(self, stem: Path) -> list[Path]:
        """Write one file per target: ``<stem>-<target>.<ubj|txt>``."""
        out = []
        for target, b in zip(TARGETS, self.boosters):
            p = Path(f"{stem}-{target}.{_SUFFIX[self.name]}")
            b.save_model(str(p))
            out.append(p)
        return out

    @classmethod
    def load(cls, name: str, stem: Path, params: dict | None = None, **kw) -> TreeModel:
        m = cls(name, params, **kw)
        for target in TARGETS:
            p = Path(f"{stem}-{target}.{_SUFFIX[name]}")
            if not p.exists():
                raise FileNotFoundError(f"the run lacks tree file {p}")
            if name == "xgboost":
                import xgboost as xgb

                b = xgb.Booster()
                b.load_model(str(p))
            else:
                import lightgbm as lgb

                b = lgb.Booster(model_file=str(p))
            m.boosters.append(b)
        return m
