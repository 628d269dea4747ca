"""Training: fit a model on a store's training sites (seed ensembles, early stopping), with an
optional cross-validated grid search, and predict its test sites.

``fit(ds, split, TrainConfig(model=...), out=...)`` writes a run directory (``cbgrid.runs``);
members (``cbgrid.members``) do the per-seed fitting, the pipeline (``cbgrid.pipeline``) the
arrays, windows and batches.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from cbgrid import __version__, catalog, models, pipeline, splits
from cbgrid.errors import ExistsError, InputError
from cbgrid.evaluation import r2
from cbgrid.members import MEMBERS, ensemble_mode, fit_grouped
from cbgrid.pipeline import Prepared, SiteArrays, TrainingData
from cbgrid.progress import bar as progress_bar
from cbgrid.protocol import TrainConfig
from cbgrid.runs import Run, load_run, predict
from cbgrid.runtime import resolve_device, torch_threads
from cbgrid.schema import SITE, TARGETS

__all__ = ["TrainConfig", "Run", "cv_search", "fit", "fit_members", "load_run", "predict"]

log = logging.getLogger(__name__)


def _hyperparameters(cfg: TrainConfig, override: dict | None = None) -> dict:
    hp = {**models.hyperparameters(cfg.model, cfg.split), **cfg.hparams, **(override or {})}
    return hp


def fit_members(data: TrainingData, cfg: TrainConfig, hp: dict, *, device: str = "cpu", progress: bool = False):
    """Fit one member per seed; returns (members, seeds fitted, curves).

    Trees without row/column subsampling are deterministic: one fit stands for every seed.
    Networks train one after another, or together as one grouped network
    (``members.ensemble_mode``: on CUDA by default).

    >>> members, seeds, curves = fit_members(data, TrainConfig(model="xgboost"), {})  # doctest: +SKIP
    """
    cfg = check_config(cfg.resolved())
    spec = models.spec(cfg.model)
    n_features = data.prepared.x.shape[-1]
    seeds = list(range(cfg.first_seed, cfg.first_seed + cfg.seeds))
    members, curves = [], []
    if spec.family == "network" and ensemble_mode(cfg, device) == "grouped":
        members = [MEMBERS["network"](spec, n_features, hp, cfg, device, seed) for seed in seeds]
        return members, seeds, fit_grouped(members, data, progress=progress)
    for seed in seeds:
        m = MEMBERS[spec.family](spec, n_features, hp, cfg, device, seed)
        if m.seed_independent and members:
            log.info("%s is deterministic (no subsampling): the seed-%d fit stands for seed %d", cfg.model, seeds[0], seed)
            break
        curves.append(m.fit(data, progress=progress))
        members.append(m)
    return members, seeds[: len(members)], pd.concat(curves, ignore_index=True)


# --------------------------------------------------------------------------------------------
# Fit (with optional CV grid search)
# --------------------------------------------------------------------------------------------
def _sites_of(split) -> tuple[list[str], list[str], pd.DataFrame | None]:
    if isinstance(split, pd.DataFrame):
        splits.check(split)
        return [str(s) for s in splits.train_sites(split)], [str(s) for s in splits.test_sites(split)], split
    train, test = split
    return [str(s) for s in train], [str(s) for s in test], None


def _select(ds: xr.Dataset, sites: list[str], what: str) -> xr.Dataset:
    ids = pd.Index([str(s) for s in ds[SITE].values])
    missing = [s for s in sites if s not in ids]
    if missing:
        raise InputError(f"{len(missing)} {what} site(s) are not in the store: {', '.join(missing[:10])}"
                         f"{' ...' if len(missing) > 10 else ''}; use a split made from this store")
    return ds.isel({SITE: ids.get_indexer(sites)})


def cv_search(arrays: SiteArrays, split: pd.DataFrame, cfg: TrainConfig, grid: dict, *, device: str = "cpu",
              progress: bool = False) -> tuple[dict, pd.DataFrame]:
    """5-fold (Köppen-stratified) CV over every combination of ``grid`` (name -> list of values).

    Each combination is fit on four folds (one seed, scaling from those sites) and scored on the
    fifth: the median across validation sites of the per-site R² (observed days), averaged over
    GPP, RECO and NEE, then over folds. Returns the best combination and the full table.

    >>> best, table = cv_search(arrays, split, TrainConfig(model="ctlstm"), {"hidden": [64, 128]})  # doctest: +SKIP
    """
    if not grid:
        raise InputError("the hyperparameter grid is empty")
    bad = [k for k, v in grid.items() if not isinstance(v, (list, tuple)) or not v]
    if bad:
        raise InputError(f"grid entries must be non-empty lists; not so for {bad}")
    train = split[split["set"] == "train"]
    folds = sorted(int(f) for f in train["fold"].dropna().unique())
    if len(folds) < 2:
        raise InputError("the split has fewer than 2 CV folds; make it with cbgrid.splits.make_split")
    pos = pd.Index(arrays.sites)
    keys = list(grid)
    combos = [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))]
    cfg = check_config(cfg.resolved())
    rules = cfg.rules
    one = dataclasses.replace(cfg, seeds=1)
    rows = []
    bar = progress_bar(total=len(combos) * len(folds), desc=f"CV {cfg.model}", unit="fit", progress=progress)
    for ci, combo in enumerate(combos):
        hp = _hyperparameters(cfg, combo)
        for k in folds:
            val_sites = train.loc[train["fold"] == k, "site"].astype(str)
            is_val = pos.isin(val_sites)
            data = TrainingData.build(arrays.subset(np.flatnonzero(~is_val)), cfg.val_fraction, protocol=rules,
                                      window=cfg.window)
            members, _, _ = fit_members(data, one, hp, device=device)
            va = arrays.subset(np.flatnonzero(is_val))
            pred = members[0].predict(Prepared.for_prediction(va, data.scaler, rules, cfg.window), data.scaler)
            obs = np.where(va.observed[..., None], va.y, np.nan)
            site_r2 = r2(obs, pred, axis=1)
            rows.append({"combo": ci, **combo, "fold": k, "score": float(np.nanmean(np.nanmedian(site_r2, axis=0))),
                         **{f"R2_{t}": float(np.nanmedian(site_r2[:, j])) for j, t in enumerate(TARGETS)}})
            bar.update(1)
    bar.close()
    table = pd.DataFrame(rows)
    mean = table.groupby("combo")["score"].mean()
    best = combos[int(mean.idxmax())]
    log.info("CV %s: best %s (mean fold score %.3f of %d combinations)", cfg.model, best, mean.max(), len(combos))
    return best, table


def check_config(cfg: TrainConfig) -> TrainConfig:
    """A resolved TrainConfig, or ValueError naming the first value that cannot train a model.

    >>> check_config(TrainConfig(model="mlp").resolved()).batch_size
    256
    >>> check_config(TrainConfig(model="mlp", max_epochs=0).resolved())
    Traceback (most recent call last):
    cbgrid.errors.InputError: max_epochs is 0; it must be a whole number >= 1 (--max-epochs)
    """
    positive = {"seeds": cfg.seeds, "max_epochs": cfg.max_epochs, "batch_size": cfg.batch_size,
                "window": cfg.window, "horizon": cfg.horizon, "stride": cfg.stride}
    for name, value in positive.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"{name} is {value!r}; it must be a whole number >= 1 (--{name.replace('_', '-')})")
    if cfg.patience is not None and cfg.patience < 1:
        raise InputError(f"patience is {cfg.patience}; it must be >= 1 (--patience)")
    if cfg.alpha is not None and cfg.alpha < 0:
        raise InputError(f"alpha is {cfg.alpha}; the carbon-balance weight must be >= 0")
    if not 0 <= cfg.val_fraction < 1:
        raise InputError(f"val_fraction is {cfg.val_fraction}; it must be in [0, 1)")
    if cfg.horizon > cfg.window:
        raise InputError(f"horizon {cfg.horizon} exceeds the window of {cfg.window} days")
    hp = dict(cfg.hparams or {})
    for name in ("hidden", "layers", "heads", "patch"):
        if name in hp and (not isinstance(hp[name], int) or isinstance(hp[name], bool) or hp[name] < 1):
            raise InputError(f"{name} is {hp[name]!r}; it must be a whole number >= 1 (--{name})")
    if "dropout" in hp and not 0 <= hp["dropout"] < 1:
        raise InputError(f"dropout is {hp['dropout']}; it must be in [0, 1) (--dropout)")
    if cfg.ensemble not in ("auto", "grouped", "sequential"):
        raise InputError(f"ensemble is {cfg.ensemble!r}; use auto, grouped or sequential (--ensemble)")
    if "lr" in hp and not hp["lr"] >= 0:
        raise InputError(f"lr is {hp['lr']}; the learning rate must be >= 0 (--lr)")
    return cfg


def fit(ds: xr.Dataset, split, cfg: TrainConfig, *, grid: dict | None = None, out=None, overwrite: bool = False,
        progress: bool = False) -> Run:
    """Train ``cfg.model`` on the training sites of ``split`` and predict the test sites.

    ``split``: a split table (``cbgrid.splits``) or a (train_sites, test_sites) pair. With a
    ``grid``, hyperparameters are picked by ``cv_search`` first (needs a split table with
    folds); without one the published hyperparameters for ``cfg.split`` are used. With ``out``
    the run directory is written there (atomically).

    >>> ds = cbgrid.open_store("twin.zarr")                                   # doctest: +SKIP
    >>> split = splits.make_split(ds, by="koppen")                           # doctest: +SKIP
    >>> run = fit(ds, split, TrainConfig(model="xgboost"), out="runs/xgb")   # doctest: +SKIP
    """
    t_start = time.perf_counter()
    cfg = check_config(cfg.resolved())
    spec = models.spec(cfg.model)
    features = pipeline.feature_variables(ds, cfg.feature_set)
    train_sites, test_sites, split_df = _sites_of(split)
    if not train_sites:
        raise InputError("the split has no training sites")
    train_ds = _select(ds, train_sites, "training")
    test_ds = _select(ds, test_sites, "test") if test_sites else None
    if out is not None and Path(out).exists() and not overwrite:
        raise ExistsError(f"{out} exists; choose another --out or pass --overwrite")
    device = resolve_device(cfg.device)
    log.info("training %s (%s) on %d sites, %d test sites, device %s", cfg.model, spec.kind, len(train_sites), len(test_sites), device)

    t0 = time.perf_counter()
    arrays = pipeline.read_arrays(train_ds, features, progress=progress)
    t_read = time.perf_counter() - t0
    cv_table, chosen = None, {}
    if grid:
        if split_df is None:
            raise InputError("a grid search needs a split table with CV folds (cbgrid.splits.make_split)")
        chosen, cv_table = cv_search(arrays, split_df, cfg, grid, device=device, progress=progress)
    hp = _hyperparameters(cfg, chosen)
    t0 = time.perf_counter()
    data = TrainingData.build(arrays, cfg.val_fraction, protocol=cfg.rules, window=cfg.window)
    t_prep = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch_threads(cfg.threads):
        members, fitted, curves = fit_members(data, cfg, hp, device=device, progress=progress)
    t_fit = time.perf_counter() - t0

    import torch

    config = {
        "model": cfg.model, "family": spec.family, "kind": spec.kind, "needs_context": spec.needs_context,
        "split": cfg.split, "split_seed": int(split_df["seed"].iloc[0]) if split_df is not None and "seed" in split_df else None,
        "feature_set": cfg.feature_set, "features": features, "static": list(pipeline.STATIC),
        "hparams": hp, "cv_best": chosen or None, "grid": grid or None,
        "seeds": list(range(cfg.first_seed, cfg.first_seed + cfg.seeds)), "fitted_seeds": fitted,
        "train": {**cfg.to_dict(), "device": cfg.device}, "device": device,
        "ensemble": ensemble_mode(cfg, device) if spec.family == "network" else "sequential",
        "protocol": cfg.protocol, "protocol_rules": cfg.rules.to_dict(), "windows": cfg.windows.to_dict(),
        "n_train_sites": len(train_sites), "n_test_sites": len(test_sites),
        "catalog_version": catalog.catalog_version(), "schema": ds.attrs.get("cbgrid_schema", ""),
        "store": str(ds.encoding.get("source", "")), "store_source": str(ds.attrs.get("source", "")),
        "cbgrid_version": __version__, "torch_version": torch.__version__,
        "created": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
    }
    run = Run(config, data.scaler, data.weights, members, curves, cv_table, None, None, None)
    if split_df is not None:
        run.split = split_df
    else:
        run.split = pd.DataFrame({"site": train_sites + test_sites, "set": ["train"] * len(train_sites) + ["test"] * len(test_sites)})
    t0 = time.perf_counter()
    if test_ds is not None:
        with torch_threads(cfg.threads):
            run.predictions = run.predict(test_ds, progress=progress)
    t_pred = time.perf_counter() - t0
    config["timings_s"] = {"read": round(t_read, 3), "prepare": round(t_prep, 3), "fit": round(t_fit, 3),
                           "predict": round(t_pred, 3), "total": round(time.perf_counter() - t_start, 3)}
    if out is not None:
        run.save(out, overwrite=overwrite)
    return run
