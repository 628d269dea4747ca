"""Training runs: fit a model on the store's training sites, seed ensembles, early stopping,
cross-validated grid search, run directories, and prediction.

A *run* is a directory holding everything needed to reproduce and reuse a fit::

    config.json        model, split, feature set and its variables, hyperparameters, protocol,
                       catalog and package versions, store, device, timings
    scaling.json       feature / lat-lon / target statistics and class weights (training sites)
    members/           one fitted model per seed (torch state dict, or one booster per target)
    curves.csv         validation curves (seed, epoch or iteration, losses)
    cv.csv             the grid-search table (only when a grid was searched)
    split.csv          train/test membership used
    predictions.nc     test-site predictions (site, time, target), physical units

``load_run(path).predict(ds)`` predicts on any (site, time) Dataset carrying the feature
variables and the site coordinates lat, lon, igbp, koppen, in bounded-memory blocks of sites.
Temporal models predict every day: stride-``horizon`` windows tile the time axis, each giving
its last ``horizon`` days; the axis is padded at the start with ``window - horizon`` copies of
the first day (and at the end up to a whole window), so the first days are covered too. Give
``predict`` each site's whole period: splitting time into pieces changes the first windows'
context.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from cbgrid import catalog, models, pipeline, schema
from cbgrid.atomic import replace_dir
from cbgrid.models import ModelSpec
from cbgrid.pipeline import Prepared, Scaler, SiteArrays, Weights
from cbgrid.schema import SITE, TARGETS, TIME

log = logging.getLogger(__name__)

PREDICT_BLOCK_SITES = 64


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """The training protocol (defaults: the published CarbonBench protocol)."""

    model: str
    split: str = "koppen"  # split name: picks the published hyperparameters
    feature_set: str = "minimal"
    seeds: int = 10
    first_seed: int = 0
    max_epochs: int = 100
    patience: int = 20  # epochs (networks) or boosting rounds (trees) without improvement
    batch_size: int = 256
    alpha: float = 0.1  # weight of the physical carbon-balance term
    window: int = pipeline.WINDOW
    horizon: int = pipeline.HORIZON
    stride: int = pipeline.STRIDE
    min_target_days: int = 1  # a window needs this many observed days among its last `horizon`
    val_fraction: float = 0.2  # last part of each training site's record used for early stopping
    context_windows: int = 8  # feature windows per sample for models that need site context
    device: str = "auto"
    hparams: dict = field(default_factory=dict)  # overrides of the published hyperparameters
    threads: int | None = None  # CPU threads for torch and the trees (None: library defaults)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; explicit names are checked."""
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but torch sees no CUDA GPU; use --device cpu or auto")
    return str(device)


def _hyperparameters(cfg: TrainConfig, override: dict | None = None) -> dict:
    hp = {**models.hyperparameters(cfg.model, cfg.split), **cfg.hparams, **(override or {})}
    return hp


# --------------------------------------------------------------------------------------------
# Members: one fitted model per seed, trees and networks behind one interface
# --------------------------------------------------------------------------------------------
class NetworkMember:
    """A torch network trained with Adam, the CarbonBench loss and early stopping."""

    family = "network"
    seed_independent = False

    def __init__(self, spec: ModelSpec, n_features: int, hp: dict, cfg: TrainConfig, device: str, seed: int):
        import torch

        self.spec, self.cfg, self.device, self.seed = spec, cfg, device, seed
        hp = dict(hp)
        self.lr = float(hp.pop("lr", 1e-3))
        self.ctor = {"n_features": n_features, "n_static": len(pipeline.STATIC), "n_onehot": pipeline.N_ONEHOT,
                     "n_targets": len(TARGETS), "window": cfg.window, "horizon": cfg.horizon, **hp}
        torch.manual_seed(seed)
        self.net = models.build_network(spec.name, **self.ctor).to(device)

    def _batches(self, t, index, shuffle: bool, batch_size: int | None = None):
        return pipeline.Batches(
            t, index, kind=self.spec.kind, window=self.cfg.window, horizon=self.cfg.horizon,
            batch_size=batch_size or self.cfg.batch_size, shuffle=shuffle, seed=self.seed,
            context=self.cfg.context_windows if self.spec.needs_context else 0,
        )

    def fit(self, data: TrainingData, progress: bool = False) -> pd.DataFrame:
        """Train until the validation loss stops improving; keeps the best epoch's weights."""
        import torch

        from cbgrid.loss import CarbonLoss

        cfg, net = self.cfg, self.net
        t = data.tensors(self.device)
        fit_idx, val_idx = data.index(self.spec.kind, cfg)
        if len(fit_idx) == 0:
            raise ValueError(
                f"no training {'windows' if self.spec.kind == 'temporal' else 'days'}: the training sites have no "
                f"observed GPP/RECO/NEE {'in the last ' + str(cfg.horizon) + ' days of any ' + str(cfg.window) + '-day window' if self.spec.kind == 'temporal' else ''}"
            )
        if len(val_idx) == 0:
            log.warning("no validation samples; early stopping watches the training loss")
        crit = CarbonLoss(data.scaler.y_mean, data.scaler.y_std, cfg.alpha).to(self.device)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        train_b = self._batches(t, fit_idx, shuffle=True)
        val_b = self._batches(t, val_idx, shuffle=False, batch_size=max(4 * cfg.batch_size, 1024))
        best, best_state, best_epoch, wait, rows = math.inf, None, -1, 0, []
        from tqdm.auto import tqdm

        bar = tqdm(range(cfg.max_epochs), desc=f"{self.spec.name} seed {self.seed}", unit="epoch", disable=not progress, leave=False)
        for epoch in bar:
            net.train()
            total = torch.zeros((), device=self.device)
            t0 = time.perf_counter()
            for b in train_b:
                opt.zero_grad(set_to_none=True)
                loss = crit(net(b), b["y"], b["w"])
                aux = getattr(net, "aux_loss", None)
                if aux is not None:
                    loss = loss + aux
                loss.backward()
                opt.step()
                total += loss.detach()
            train_loss = float(total) / max(len(train_b), 1)
            val_loss = self._evaluate(val_b, crit) if len(val_idx) else train_loss
            rows.append({"seed": self.seed, "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                         "seconds": time.perf_counter() - t0})
            bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
            if val_loss < best:
                best, best_epoch, wait = val_loss, epoch, 0
                best_state = copy.deepcopy(net.state_dict())
            else:
                wait += 1
                if wait >= cfg.patience:
                    break
        bar.close()
        if best_state is not None:
            net.load_state_dict(best_state)
        log.info("%s seed %d: best validation loss %.4f at epoch %d of %d", self.spec.name, self.seed, best, best_epoch, len(rows))
        return pd.DataFrame(rows)

    def _evaluate(self, batches, crit) -> float:
        import torch

        self.net.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for b in batches:
                k = len(b["site"])
                total += float(crit(self.net(b), b["y"], b["w"])) * k
                n += k
        return total / max(n, 1)

    def predict(self, block: Prepared, scaler: Scaler) -> np.ndarray:
        """(S, T, 3) physical-unit predictions for every day of a prepared block."""
        import torch

        cfg = self.cfg
        n_sites, n_days, _ = block.x.shape
        if self.spec.kind == "temporal":
            left, right, n_win = pipeline.prediction_windows(n_days, cfg.window, cfg.horizon)
            x = np.pad(block.x, ((0, 0), (left, right), (0, 0)), mode="edge")
            starts = np.arange(n_win) * cfg.horizon
        else:
            x, starts = block.x, np.arange(n_days)
        prep = Prepared(x, block.s, block.onehot)
        index = np.stack(np.meshgrid(np.arange(n_sites), starts, indexing="ij"), axis=-1).reshape(-1, 2)
        batches = self._batches(prep.tensors(self.device), index, shuffle=False,
                                batch_size=4096 if self.spec.kind == "temporal" else 65536)
        self.net.eval()
        outs = []
        with torch.no_grad():
            codes = None
            if self.spec.needs_context and hasattr(self.net, "site_code"):
                # one code per site from its own evenly spaced feature windows
                batches.context = 0
                sites = torch.arange(n_sites, device=batches.data.device)
                ctx = pipeline.Batches(batches.data, index[:1], window=cfg.window, horizon=cfg.horizon,
                                       context=cfg.context_windows).context_windows(sites)
                codes = self.net.site_code(ctx)
            for b in batches:
                if codes is not None:
                    b["code"] = codes.index_select(0, b["site"])
                outs.append(self.net(b).float().cpu().numpy())
        out = np.concatenate(outs) if outs else np.zeros((0, len(TARGETS)), np.float32)
        out = out.reshape(n_sites, -1, len(TARGETS))[:, :n_days]
        return scaler.unscale_targets(out)

    def state(self) -> dict:
        return self.net.state_dict()

    def save(self, stem: Path) -> None:
        import torch

        torch.save({k: v.detach().cpu() for k, v in self.net.state_dict().items()}, f"{stem}.pt")

    def load(self, stem: Path) -> NetworkMember:
        import torch

        p = Path(f"{stem}.pt")
        if not p.exists():
            raise FileNotFoundError(f"the run lacks network weights {p}")
        self.net.load_state_dict(torch.load(p, map_location=self.device, weights_only=True))
        self.net.eval()
        return self


class TreeMember:
    """XGBoost / LightGBM behind the member interface (features + lat/lon per day)."""

    family = "tree"

    def __init__(self, spec: ModelSpec, n_features: int, hp: dict, cfg: TrainConfig, device: str, seed: int):
        from cbgrid.models.trees import TreeModel

        self.spec, self.cfg, self.seed = spec, cfg, seed
        hp = dict(hp)
        if "lr" in hp:  # --lr means the learning rate for trees too
            hp["learning_rate"] = hp.pop("lr")
        hp = {k: v for k, v in hp.items() if k not in ("hidden", "dropout", "layers")}
        self.model = TreeModel(spec.name, hp, patience=cfg.patience, device=device, threads=cfg.threads)

    @property
    def seed_independent(self) -> bool:
        return not self.model.stochastic

    @staticmethod
    def matrix(x: np.ndarray, s: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Rows (site, day) -> [features, lat, lon]."""
        return np.concatenate([x[index[:, 0], index[:, 1]], s[index[:, 0]]], axis=1)

    def fit(self, data: TrainingData, progress: bool = False) -> pd.DataFrame:
        fit_idx, val_idx = data.index("static", self.cfg)
        if len(fit_idx) == 0:
            raise ValueError("no training days: the training sites have no day with GPP, RECO and NEE observed")
        p, a = data.prepared, data.arrays

        def xyw(idx):
            return self.matrix(p.x, p.s, idx), a.y[idx[:, 0], idx[:, 1]], p.w[idx[:, 0], idx[:, 1]]

        curve = self.model.fit(*xyw(fit_idx), *(xyw(val_idx) if len(val_idx) else (None, None, None)), seed=self.seed)
        return curve.assign(seed=self.seed)

    def predict(self, block: Prepared, scaler: Scaler) -> np.ndarray:
        n_sites, n_days, _ = block.x.shape
        index = np.stack(np.meshgrid(np.arange(n_sites), np.arange(n_days), indexing="ij"), axis=-1).reshape(-1, 2)
        return self.model.predict(self.matrix(block.x, block.s, index)).reshape(n_sites, n_days, len(TARGETS))

    def save(self, stem: Path) -> None:
        self.model.save(stem)

    def load(self, stem: Path) -> TreeMember:
        from cbgrid.models.trees import TreeModel

        m = self.model
        self.model = TreeModel.load(self.spec.name, stem, m.params, patience=m.patience, device=m.device, threads=m.threads)
        return self


MEMBERS = {"network": NetworkMember, "tree": TreeMember}


# --------------------------------------------------------------------------------------------
# Training data
# --------------------------------------------------------------------------------------------
@dataclass
class TrainingData:
    """The training sites' arrays with the statistics fitted on them, and the fit/validation cut."""

    arrays: SiteArrays
    scaler: Scaler
    weights: Weights
    prepared: Prepared
    cutoff: np.ndarray  # (S,) first validation day per site
    _tensors: dict = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, arrays: SiteArrays, val_fraction: float = 0.2) -> TrainingData:
        if len(arrays.sites) == 0:
            raise ValueError("the training set is empty: no training site is in the store")
        scaler = Scaler.fit(arrays)
        weights = Weights.fit(arrays)
        cutoff = pipeline.validation_cutoff(arrays.observed, val_fraction)
        return cls(arrays, scaler, weights, Prepared.build(arrays, scaler, weights), cutoff)

    def tensors(self, device: str):
        if device not in self._tensors:
            self._tensors[device] = self.prepared.tensors(device)
        return self._tensors[device]

    def index(self, kind: str, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
        """(fit, validation) sample indices: windows (temporal) or observed days (static).

        A window is for fitting when its target days end before the site's cutoff, for
        validation when they start at or after it; windows straddling the cutoff are unused.
        """
        obs = self.arrays.observed
        if kind == "temporal":
            args = dict(window=cfg.window, horizon=cfg.horizon, stride=cfg.stride, min_target_days=cfg.min_target_days)
            return (pipeline.window_index(obs, hi=self.cutoff, **args), pipeline.window_index(obs, lo=self.cutoff, **args))
        return pipeline.day_index(obs, hi=self.cutoff), pipeline.day_index(obs, lo=self.cutoff)


def fit_members(data: TrainingData, cfg: TrainConfig, hp: dict, *, device: str = "cpu", progress: bool = False):
    """Fit one member per seed; returns (members, seeds fitted, curves).

    Trees without row/column subsampling are deterministic: one fit stands for every seed.
    """
    spec = models.spec(cfg.model)
    n_features = data.prepared.x.shape[-1]
    seeds = list(range(cfg.first_seed, cfg.first_seed + cfg.seeds))
    if cfg.seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {cfg.seeds}")
    members, curves = [], []
    for seed in seeds:
        m = MEMBERS[spec.family](spec, n_features, hp, cfg, device, seed)
        if m.seed_independent and members:
            log.info("%s is deterministic (no subsampling): the seed-%d fit stands for seed %d", cfg.model, seeds[0], seed)
            break
        curves.append(m.fit(data, progress=progress))
        members.append(m)
    return members, seeds[: len(members)], pd.concat(curves, ignore_index=True)


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------
@dataclass
class Run:
    """A trained model: config, scaling, one member per seed, curves; predicts on Datasets."""

    config: dict
    scaler: Scaler
    weights: Weights
    members: list
    curves: pd.DataFrame
    cv: pd.DataFrame | None = None
    split: pd.DataFrame | None = None
    predictions: xr.Dataset | None = None
    path: Path | None = None

    @property
    def model_name(self) -> str:
        return self.config["model"]

    @property
    def kind(self) -> str:
        """'static' or 'temporal'."""
        return self.config["kind"]

    @property
    def features(self) -> list[str]:
        return list(self.config["features"])

    def predict(self, ds: xr.Dataset, *, block_sites: int = PREDICT_BLOCK_SITES, progress: bool = False) -> xr.Dataset:
        """Ensemble predictions (mean and spread across seeds) for every site and day of ``ds``.

        ``ds`` needs the run's feature variables and the site coordinates lat, lon, igbp,
        koppen; it may be lazy: sites are read and predicted ``block_sites`` at a time.
        """
        from tqdm.auto import tqdm

        missing = [f for f in self.features if f not in ds.data_vars]
        if missing:
            raise ValueError(f"the dataset lacks the run's feature variable(s) {missing}")
        pipeline.site_info(ds)
        n_sites, n_days = ds.sizes[SITE], ds.sizes[TIME]
        mean = np.empty((n_sites, n_days, len(TARGETS)), np.float32)
        std = np.empty_like(mean)
        for i0 in tqdm(range(0, n_sites, block_sites), desc=f"predicting {self.model_name}", unit="block", disable=not progress):
            sub = ds.isel({SITE: slice(i0, i0 + block_sites)})
            a = pipeline.read_arrays(sub, self.features, targets=False)
            block = Prepared.build(a, self.scaler)
            preds = np.stack([m.predict(block, self.scaler) for m in self.members])
            mean[i0:i0 + len(a.sites)] = preds.mean(0)
            std[i0:i0 + len(a.sites)] = preds.std(0)
        return predictions_dataset(ds, mean, std, self.config, self.path)

    def save(self, out, *, overwrite: bool = False) -> Path:
        """Write the run directory atomically (beside, then renamed into place)."""
        out = Path(out)
        with replace_dir(out, overwrite=overwrite, hint="choose another --out or pass --overwrite") as tmp:
            (tmp / "members").mkdir(parents=True)
            config = {**self.config, "run": out.name}
            (tmp / "config.json").write_text(json.dumps(config, indent=2, default=_json_default))
            (tmp / "scaling.json").write_text(json.dumps({"scaler": self.scaler.to_dict(), "class_weights": self.weights.to_dict()}, indent=2))
            for seed, m in zip(config["fitted_seeds"], self.members):
                m.save(tmp / "members" / f"seed-{seed:02d}")
            self.curves.to_csv(tmp / "curves.csv", index=False)
            if self.cv is not None:
                self.cv.to_csv(tmp / "cv.csv", index=False)
            if self.split is not None:
                self.split.to_csv(tmp / "split.csv", index=False)
            if self.predictions is not None:
                pred = self.predictions.assign_attrs(run=out.name)
                pred.to_netcdf(tmp / "predictions.nc", encoding=_nc_encoding(pred))
        self.path = out
        self.config["run"] = out.name
        if self.predictions is not None:
            self.predictions.attrs["run"] = out.name
        log.info("wrote run %s", out)
        return out


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _nc_encoding(pred: xr.Dataset) -> dict:
    enc = {v: {"zlib": True, "complevel": 4, "_FillValue": np.float32(np.nan)} for v in pred.data_vars}
    enc[TIME] = {"units": schema.TIME_UNITS, "calendar": "proleptic_gregorian", "dtype": "int32"}
    return enc


def predictions_dataset(ds: xr.Dataset, mean: np.ndarray, std: np.ndarray, config: dict, path=None) -> xr.Dataset:
    """The predictions contract (docs/architecture.md): (site, time, target), physical units."""
    coords = {SITE: np.asarray([str(s) for s in ds[SITE].values], dtype=object), TIME: ds[TIME].values,
              "target": np.asarray(TARGETS, dtype=object)}
    for c in ("lat", "lon", "igbp", "koppen"):
        coords[c] = (SITE, np.asarray(ds[c].values), dict(ds[c].attrs))
    units = {"units": schema.TARGET_UNITS}
    out = xr.Dataset(
        {
            "prediction": ((SITE, TIME, "target"), mean.astype(np.float32),
                           {**units, "long_name": f"{config['model']} prediction (mean of {len(config['fitted_seeds'])} seed(s))"}),
            "prediction_std": ((SITE, TIME, "target"), std.astype(np.float32),
                               {**units, "long_name": "standard deviation across the seed ensemble"}),
        },
        coords=coords,
    )
    out.attrs = {
        "model": config["model"],
        "split": config["split"],
        "feature_set": config["feature_set"],
        "seeds": " ".join(str(s) for s in config["seeds"]),
        "run": str(config.get("run") or (Path(path).name if path else "")),
        "Conventions": "CF-1.8",
    }
    return out


def load_run(path, device: str = "auto") -> Run:
    """Load a run directory written by ``fit`` / ``cbgrid train`` onto ``device`` (default:
    CUDA when available, else the CPU, whatever device the run was trained on)."""
    path = Path(path)
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{path} is not a cbgrid run: it has no config.json")
    config = json.loads(cfg_path.read_text())
    scaling = json.loads((path / "scaling.json").read_text())
    scaler = Scaler.from_dict(scaling["scaler"])
    weights = Weights.from_dict(scaling["class_weights"])
    cfg = TrainConfig.from_dict(config["train"])
    spec = models.spec(config["model"])
    device = resolve_device(device)
    members = []
    for seed in config["fitted_seeds"]:
        m = MEMBERS[spec.family](spec, len(config["features"]), config["hparams"], cfg, device, seed)
        members.append(m.load(path / "members" / f"seed-{seed:02d}"))
    read = lambda name: pd.read_csv(path / name) if (path / name).exists() else None  # noqa: E731
    preds = xr.load_dataset(path / "predictions.nc") if (path / "predictions.nc").exists() else None
    return Run(config, scaler, weights, members, read("curves.csv"), read("cv.csv"), read("split.csv"), preds, path)


# --------------------------------------------------------------------------------------------
# Fit (with optional CV grid search)
# --------------------------------------------------------------------------------------------
def _sites_of(split) -> tuple[list[str], list[str], pd.DataFrame | None]:
    from cbgrid import splits as splits_mod

    if isinstance(split, pd.DataFrame):
        splits_mod.check(split)
        return [str(s) for s in splits_mod.train_sites(split)], [str(s) for s in splits_mod.test_sites(split)], split
    train, test = split
    return [str(s) for s in train], [str(s) for s in test], None


def _select(ds: xr.Dataset, sites: list[str], what: str) -> xr.Dataset:
    ids = pd.Index([str(s) for s in ds[SITE].values])
    missing = [s for s in sites if s not in ids]
    if missing:
        raise ValueError(f"{len(missing)} {what} site(s) are not in the store: {', '.join(missing[:10])}"
                         f"{' ...' if len(missing) > 10 else ''}; use a split made from this store")
    return ds.isel({SITE: ids.get_indexer(sites)})


def site_r2(obs: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(S, 3) R² per site and target over the observed days (NaN where undefined)."""
    ok = np.isfinite(obs) & np.isfinite(pred)
    n = ok.sum(1)
    o = np.where(ok, obs, 0.0)
    mean = o.sum(1) / np.maximum(n, 1)
    sse = np.where(ok, (obs - pred) ** 2, 0).sum(1)
    sst = np.where(ok, (obs - mean[:, None]) ** 2, 0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n > 1) & (sst > 0), 1 - sse / sst, np.nan)


def cv_search(arrays: SiteArrays, split: pd.DataFrame, cfg: TrainConfig, grid: dict, *, device: str = "cpu",
              progress: bool = False) -> tuple[dict, pd.DataFrame]:
    """5-fold (Köppen-stratified) CV over every combination of ``grid`` (name -> list of values).

    Each combination is fit on four folds (one seed, scaling from those sites) and scored on the
    fifth: the median across validation sites of the per-site R² (observed days), averaged over
    GPP, RECO and NEE, then over folds. Returns the best combination and the full table.
    """
    from tqdm.auto import tqdm

    if not grid:
        raise ValueError("the hyperparameter grid is empty")
    bad = [k for k, v in grid.items() if not isinstance(v, (list, tuple)) or not v]
    if bad:
        raise ValueError(f"grid entries must be non-empty lists; not so for {bad}")
    train = split[split["set"] == "train"]
    folds = sorted(int(f) for f in train["fold"].dropna().unique())
    if len(folds) < 2:
        raise ValueError("the split has fewer than 2 CV folds; make it with cbgrid.splits.make_split")
    pos = pd.Index(arrays.sites)
    keys = list(grid)
    combos = [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))]
    one = dataclasses.replace(cfg, seeds=1)
    rows = []
    bar = tqdm(total=len(combos) * len(folds), desc=f"CV {cfg.model}", unit="fit", disable=not progress)
    for ci, combo in enumerate(combos):
        hp = _hyperparameters(cfg, combo)
        for k in folds:
            val_sites = train.loc[train["fold"] == k, "site"].astype(str)
            is_val = pos.isin(val_sites)
            data = TrainingData.build(arrays.subset(np.flatnonzero(~is_val)), cfg.val_fraction)
            members, _, _ = fit_members(data, one, hp, device=device)
            va = arrays.subset(np.flatnonzero(is_val))
            pred = members[0].predict(Prepared.build(va, data.scaler), data.scaler)
            obs = np.where(va.observed[..., None], va.y, np.nan)
            r2 = site_r2(obs, pred)
            rows.append({"combo": ci, **combo, "fold": k, "score": float(np.nanmean(np.nanmedian(r2, axis=0))),
                         **{f"R2_{t}": float(np.nanmedian(r2[:, j])) for j, t in enumerate(TARGETS)}})
            bar.update(1)
    bar.close()
    table = pd.DataFrame(rows)
    mean = table.groupby("combo")["score"].mean()
    best = combos[int(mean.idxmax())]
    log.info("CV %s: best %s (mean fold score %.3f of %d combinations)", cfg.model, best, mean.max(), len(combos))
    return best, table


def fit(ds: xr.Dataset, split, cfg: TrainConfig, *, grid: dict | None = None, out=None, overwrite: bool = False,
        progress: bool = False) -> Run:
    """Train ``cfg.model`` on the training sites of ``split`` and predict the test sites.

    ``split``: a split table (``cbgrid.splits``) or a (train_sites, test_sites) pair. With a
    ``grid``, hyperparameters are picked by ``cv_search`` first (needs a split table with
    folds); without one the published hyperparameters for ``cfg.split`` are used. With ``out``
    the run directory is written there (atomically).
    """
    t_start = time.perf_counter()
    spec = models.spec(cfg.model)
    features = pipeline.feature_variables(ds, cfg.feature_set)
    train_sites, test_sites, split_df = _sites_of(split)
    if not train_sites:
        raise ValueError("the split has no training sites")
    train_ds = _select(ds, train_sites, "training")
    test_ds = _select(ds, test_sites, "test") if test_sites else None
    if out is not None and Path(out).exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another --out or pass --overwrite")
    device = resolve_device(cfg.device)
    log.info("training %s (%s) on %d sites, %d test sites, device %s", cfg.model, spec.kind, len(train_sites), len(test_sites), device)

    t0 = time.perf_counter()
    arrays = pipeline.read_arrays(train_ds, features, progress=progress)
    t_read = time.perf_counter() - t0
    cv_table, chosen = None, {}
    if grid:
        if split_df is None:
            raise ValueError("a grid search needs a split table with CV folds (cbgrid.splits.make_split)")
        chosen, cv_table = cv_search(arrays, split_df, cfg, grid, device=device, progress=progress)
    hp = _hyperparameters(cfg, chosen)
    t0 = time.perf_counter()
    data = TrainingData.build(arrays, cfg.val_fraction)
    t_prep = time.perf_counter() - t0
    t0 = time.perf_counter()
    with _torch_threads(cfg.threads):
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
        "n_train_sites": len(train_sites), "n_test_sites": len(test_sites),
        "catalog_version": catalog.catalog_version(), "schema": ds.attrs.get("cbgrid_schema", ""),
        "store": str(ds.encoding.get("source", "")), "store_source": str(ds.attrs.get("source", "")),
        "cbgrid_version": _version(), "torch_version": torch.__version__,
        "created": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
    }
    run = Run(config, data.scaler, data.weights, members, curves, cv_table, None, None, None)
    if split_df is not None:
        run.split = split_df
    else:
        run.split = pd.DataFrame({"site": train_sites + test_sites, "set": ["train"] * len(train_sites) + ["test"] * len(test_sites)})
    t0 = time.perf_counter()
    if test_ds is not None:
        with _torch_threads(cfg.threads):
            run.predictions = run.predict(test_ds, progress=progress)
    t_pred = time.perf_counter() - t0
    config["timings_s"] = {"read": round(t_read, 3), "prepare": round(t_prep, 3), "fit": round(t_fit, 3),
                           "predict": round(t_pred, 3), "total": round(time.perf_counter() - t_start, 3)}
    if out is not None:
        run.save(out, overwrite=overwrite)
    return run


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """Run with ``n`` torch CPU threads (on a busy machine one thread per process beats two
    oversubscribed ones by a wide margin), then restore the previous setting."""
    import torch

    if not n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def predict(run, ds: xr.Dataset, **kw) -> xr.Dataset:
    """Predictions of a run (a ``Run`` or a run directory) for every site and day of ``ds``."""
    if not isinstance(run, Run):
        run = load_run(run)
    return run.predict(ds, **kw)


def _version() -> str:
    from cbgrid import __version__

    return __version__
