"""Gradient-boosted trees behind one interface: one booster per target, physical units.

A tree library is a :class:`TreeModel` subclass that says how to fit, predict with, save and
load *one* booster (``fit_one``, ``predict_one``, ``save_one``, ``load_one``); this base class
does the rest (targets, curves, files). Instance weights are the loss weights of the networks
(w_qc × w_igbp × w_koppen); boosting stops early on the validation part (the last 20 % of each
training site's record). Register a new library in ``cbgrid.models.TREES``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cbgrid import catalog
from cbgrid.errors import DataError, InputError, MissingError
from cbgrid.schema import TARGETS

log = logging.getLogger(__name__)


class TreeModel:
    """A boosted-tree regressor for GPP, RECO and NEE (one booster each).

    Subclasses set ``name`` (the registry and hyperparameter name), ``suffix`` (model file
    extension) and ``stochastic_params`` (parameters whose value < 1 makes the seed matter).
    """

    family, kind, needs_context = "tree", "static", False
    name: str = ""
    suffix: str = "model"
    stochastic_params: tuple[str, ...] = ()
    #: Whether one booster can fit the three targets at once (``multi_output=True``).
    supports_multi_output = False
    #: Whether the library, as the published scores were produced, read a pandas categorical
    #: by its codes rather than by its class names (XGBoost before 3.1; LightGBM maps a frame's
    #: names back to the training classes). Under the rule ``trees.categories: frame_codes``
    #: such a library sees each frame coded by its own classes (``members.frame_classes``).
    reads_codes = False

    def __init__(self, params: dict | None = None, *, patience: int = 20, device: str = "cpu",
                 threads: int | None = None, multi_output: bool = False, keep: str = "best"):
        if keep not in ("best", "library"):
            raise InputError(f"keep must be 'best' or 'library', not {keep!r}")
        self.params = {**catalog.hyperparameters(self.name), **(params or {})}
        self.patience = int(patience)
        self.device = device
        self.threads = threads
        self.multi_output = bool(multi_output) and self.supports_multi_output
        self.keep = keep
        self.boosters: list = []
        #: perf_counter() at the start of the last fit and at the end of each boosting round
        #: (every booster of that fit, in order): what ``round_seconds`` reads.
        self.clock: list[float] = []

    @property
    def stochastic(self) -> bool:
        """Whether the seed changes the fit (row or column subsampling is on)."""
        return any(float(self.params.get(k, 1.0)) < 1.0 for k in self.stochastic_params)

    # -- what a library provides --------------------------------------------------------------
    def fit_one(self, x, y, w, val, seed: int):
        """Fit one booster on one target (or, with ``multi_output``, on the (N, 3) targets);
        ``val`` is (x, y, w) or None; ``x`` a float array or a DataFrame with categorical columns.
        Returns (booster, validation RMSE per round)."""
        raise NotImplementedError

    def prepare(self, x: np.ndarray):
        """Prediction input for ``predict_one`` (built once for the three boosters)."""
        return x

    def predict_one(self, booster, data) -> np.ndarray:
        raise NotImplementedError

    def save_one(self, booster, path: Path) -> None:
        booster.save_model(str(path))

    def load_one(self, path: Path):
        raise NotImplementedError

    # -- the shared part ------------------------------------------------------------------------
    def fit(self, x, y, w, x_val=None, y_val=None, w_val=None, *, seed: int = 0) -> pd.DataFrame:
        """Fit one booster per target; returns the validation curve (target, iteration, val_rmse)."""
        if len(x) == 0:
            raise InputError("no training samples for the trees")
        has_val = x_val is not None and len(x_val) > 0
        curves, self.boosters = [], []
        self.clock = [time.perf_counter()]
        if self.multi_output:
            val = (x_val, np.ascontiguousarray(y_val), w_val) if has_val else None
            booster, curve = self.fit_one(x, np.ascontiguousarray(y), w, val, seed)
            self.boosters.append(booster)
            return pd.DataFrame({"target": "all", "iteration": np.arange(len(curve)), "val_rmse": curve})
        for k, target in enumerate(TARGETS):
            val = (x_val, np.ascontiguousarray(y_val[:, k]), w_val) if has_val else None
            booster, curve = self.fit_one(x, np.ascontiguousarray(y[:, k]), w, val, seed)
            self.boosters.append(booster)
            curves.append(pd.DataFrame({"target": target, "iteration": np.arange(len(curve)), "val_rmse": curve}))
        return pd.concat(curves, ignore_index=True)

    def round_seconds(self) -> np.ndarray:
        """Seconds of each boosting round of the last fit (all boosters, in order; the first
        round of each booster includes that booster's table setup).

        >>> m = TreeModel(); m.clock = [0.0, 1.0, 1.5, 2.25]; m.round_seconds().tolist()
        [1.0, 0.5, 0.75]
        """
        return np.diff(np.asarray(self.clock, float))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(N, 3) GPP, RECO, NEE in physical units."""
        if not self.boosters:
            raise InputError("the tree model is not fitted")
        data = self.prepare(x)
        if self.multi_output:
            return np.asarray(self.predict_one(self.boosters[0], data), np.float32).reshape(-1, len(TARGETS))
        return np.stack([self.predict_one(b, data) for b in self.boosters], axis=-1).astype(np.float32)

    def _path(self, stem: Path, target: str) -> Path:
        return Path(f"{stem}-{target}.{self.suffix}")

    def _targets(self) -> tuple[str, ...]:
        return ("all",) if self.multi_output else TARGETS

    def save(self, stem: Path) -> list[Path]:
        """Write one file per target, ``<stem>-<target>.<suffix>`` (``<stem>-all.<suffix>`` for one
        multi-output booster)."""
        out = []
        for target, b in zip(self._targets(), self.boosters):
            p = self._path(stem, target)
            self.save_one(b, p)
            out.append(p)
        return out

    @classmethod
    def load(cls, stem: Path, params: dict | None = None, **kw) -> TreeModel:
        m = cls(params, **kw)
        for target in m._targets():
            p = m._path(stem, target)
            if not p.exists():
                raise MissingError(f"the run lacks tree file {p}")
            try:
                m.boosters.append(m.load_one(p))
            except Exception as e:  # each library raises its own error type for an unreadable model file
                raise DataError(f"{p}: not a readable {cls.__name__} model ({' '.join(str(e).split())[:160]}); "
                                "the file is damaged or from another library version: retrain the run") from e
        return m
