"""The run directory: what ``cbgrid train`` writes and everything downstream reads.

A *run* is a directory holding everything needed to reproduce and reuse a fit::

    config.json        model, split, feature set and its variables, hyperparameters, protocol,
                       window spec, catalog and package versions, store, device, timings
    scaling.json       feature / lat-lon / target statistics and class weights (training sites)
    members/           one fitted model per seed (torch state dict, or one booster per target)
    curves.csv         validation curves (seed, epoch or iteration, losses)
    cv.csv             the grid-search table (only when a grid was searched)
    split.csv          train/test membership used
    predictions.nc     test-site predictions (site, time, target), physical units

``load_run(path)`` gives a :class:`Run` (a ``cbgrid.contracts.Predictor``): ``run.predict(ds)``
predicts on any (site, time) Dataset carrying the feature variables and the site coordinates
lat, lon, igbp, koppen, in bounded-memory blocks of sites. Temporal models predict every day:
stride-``horizon`` windows tile the time axis, each giving its last ``horizon`` days; the axis
is padded at the start with ``window - horizon`` copies of the first day (and at the end up to a
whole window), so the first days are covered too. Give ``predict`` each site's whole period:
splitting time into pieces changes the first windows' context.

``load_predictions(path)`` reads only a run's test-site predictions and where its store and
split are — what scoring needs, without torch or the tree libraries.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from cbgrid import models, pipeline, schema, splits
from cbgrid.atomic import replace_dir
from cbgrid.errors import DataError, InputError, MissingError
from cbgrid.members import MEMBERS
from cbgrid.pipeline import Prepared, Scaler, Weights, WindowSpec
from cbgrid.progress import bar as progress_bar
from cbgrid.protocol import Protocol, TrainConfig
from cbgrid.protocol import get as protocol_rules
from cbgrid.runtime import resolve_device
from cbgrid.schema import SITE, TARGETS, TIME, SchemaError

log = logging.getLogger(__name__)

PREDICT_BLOCK_SITES = 64
CONFIG = "config.json"
PREDICTIONS = "predictions.nc"
SPLIT = "split.csv"


def window_spec(config: dict) -> WindowSpec:
    """The window rules of a run's config (its ``windows`` entry, or its train settings).

    >>> window_spec({"windows": {"window": 20, "horizon": 10, "stride": 10}}).window
    20
    """
    if config.get("windows"):
        return WindowSpec.from_dict(config["windows"])
    return WindowSpec.from_dict(config.get("train") or {})


def resolve_path(value, base: Path | None) -> Path | None:
    """A path recorded in a run: relative to the run folder first, then to the working directory;
    None when it is not recorded or does not exist.

    >>> resolve_path(None, None) is None
    True
    """
    if not value:
        return None
    p = Path(value).expanduser()
    if not p.is_absolute() and base is not None and (Path(base) / p).exists():
        p = Path(base) / p
    return p.resolve() if p.exists() else None


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
        """The driver variables the run reads (store names)."""
        return list(self.config["features"])

    @property
    def protocol(self) -> str:
        """The name of the protocol the run was trained under."""
        return str(self.config.get("protocol") or (self.config.get("train") or {}).get("protocol") or "cbgrid")

    @property
    def rules(self) -> Protocol:
        """The protocol's rules as recorded in the run (or, for older runs, from the catalog)."""
        recorded = self.config.get("protocol_rules")
        if recorded:
            return Protocol(**recorded)
        return protocol_rules(self.protocol)

    @property
    def windows(self) -> WindowSpec:
        """The run's window rules (recorded in ``config.json``)."""
        return window_spec(self.config)

    @property
    def history_days(self) -> int:
        """Days of drivers a temporal run needs before its first predicted day (0 if static)."""
        return self.windows.window if self.kind == "temporal" else 0

    @property
    def store_path(self) -> Path | None:
        """The store the run was trained on (relative to the run folder first), if it exists."""
        return resolve_path(self.config.get("store"), self.path)

    def predict(self, ds: xr.Dataset, *, block_sites: int | None = PREDICT_BLOCK_SITES,
                progress: bool = False) -> xr.Dataset:
        """Ensemble predictions (mean and spread across seeds) for every site and day of ``ds``.

        ``ds`` needs the run's feature variables and the site coordinates lat, lon, igbp,
        koppen; it may be lazy: sites are read and predicted ``block_sites`` at a time (None:
        all at once, when the caller's chunk already bounds memory).

        >>> run = load_run("runs/ctlstm")                      # doctest: +SKIP
        >>> run.predict(cbgrid.open_store("twin.zarr").isel(site=[0]))["prediction"].dims  # doctest: +SKIP
        ('site', 'time', 'target')

        >>> predict("runs/xgboost", cbgrid.open_store("twin.zarr"))  # doctest: +SKIP
        """
        missing = [f for f in self.features if f not in ds.data_vars]
        if missing:
            raise InputError(f"the dataset lacks the run's feature variable(s) {missing}")
        pipeline.site_info(ds)
        rules = self.rules
        # the reference's test days depend on the sites' target rows, when the dataset has them
        with_targets = rules.reference and all(v in ds.data_vars for v in (*TARGETS, schema.QC))
        n_sites, n_days = ds.sizes[SITE], ds.sizes[TIME]
        if with_targets and rules.trees.get("categories") == "frame_codes":
            block_sites = None  # the reference codes its test table's categoricals over all its sites
        block_sites = max(1, n_sites) if block_sites is None else int(block_sites)
        if block_sites < 1:
            raise InputError(f"block_sites must be at least 1, got {block_sites}")
        mean = np.empty((n_sites, n_days, len(TARGETS)), np.float32)
        std = np.empty_like(mean)
        for i0 in progress_bar(range(0, n_sites, block_sites), desc=f"predicting {self.model_name}", unit="block",
                               progress=progress):
            sub = ds.isel({SITE: slice(i0, i0 + block_sites)})
            a = pipeline.read_arrays(sub, self.features, targets=with_targets)
            block = Prepared.for_prediction(a, self.scaler, rules, self.windows.window)
            preds = np.stack([m.predict(block, self.scaler) for m in self.members])
            mean[i0:i0 + len(a.sites)] = preds.mean(0)
            std[i0:i0 + len(a.sites)] = preds.std(0)
        return predictions_dataset(ds, mean, std, self.config, self.path)

    def as_predictions(self) -> RunPredictions:
        """The run's test-site predictions with its store and split, for scoring."""
        if self.predictions is None:
            raise InputError(f"run {self.path or self.model_name} carries no test-site predictions")
        return RunPredictions(self.path, self.predictions, self.store_path, self.split)

    def save(self, out, *, overwrite: bool = False) -> Path:
        """Write the run directory atomically (beside, then renamed into place)."""
        out = Path(out)
        with replace_dir(out, overwrite=overwrite, hint="choose another --out or pass --overwrite") as tmp:
            (tmp / "members").mkdir(parents=True)
            config = {**self.config, "run": out.name, "windows": self.windows.to_dict()}
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
                pred.to_netcdf(tmp / "predictions.nc", encoding=nc_encoding(pred))
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


def nc_encoding(pred: xr.Dataset) -> dict:
    enc = {v: {"zlib": True, "complevel": 4, "_FillValue": np.float32(np.nan)} for v in pred.data_vars}
    enc[TIME] = {"units": schema.TIME_UNITS, "calendar": "proleptic_gregorian", "dtype": "int32"}
    return enc


def predictions_dataset(ds: xr.Dataset, mean: np.ndarray, std: np.ndarray, config: dict, path=None) -> xr.Dataset:
    """The predictions contract (docs/architecture.md): (site, time, target), physical units.

    >>> from cbgrid import testing
    >>> ds = testing.site_store(n_sites=1, days=3)
    >>> p = predictions_dataset(ds, np.zeros((1, 3, 3)), np.zeros((1, 3, 3)),
    ...                         {"model": "m", "split": "koppen", "feature_set": "minimal", "seeds": [0], "fitted_seeds": [0]})
    >>> p["prediction"].dims, p.attrs["protocol"]
    (('site', 'time', 'target'), 'cbgrid')
    """
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
        "protocol": str(config.get("protocol") or (config.get("train") or {}).get("protocol") or "cbgrid"),
        "Conventions": "CF-1.8",
    }
    return out


def read_json(path: Path) -> dict:
    """A run's JSON file, or SchemaError naming it when it is cut off or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SchemaError(f"{path}: not readable JSON ({e}); the run is damaged: retrain it") from e


def open_netcdf(path: Path) -> xr.Dataset:
    """A NetCDF file loaded into memory, or DataError naming it when it is cut off or damaged."""
    try:
        with xr.open_dataset(path) as ds:
            return ds.load()
    except (OSError, ValueError, RuntimeError, KeyError) as e:  # netCDF4/HDF5 report damage as any of these
        raise DataError(f"{path}: not a readable NetCDF file ({' '.join(str(e).split())[:160]}); it is cut off or "
                        "damaged: write it again (`cbgrid predict` for predictions)") from e


def load_run(path, device: str = "auto") -> Run:
    """Load a run directory written by ``fit`` / ``cbgrid train`` onto ``device`` (default:
    CUDA when available, else the CPU, whatever device the run was trained on).

    >>> run = load_run("runs/ctlstm", device="cpu")   # doctest: +SKIP
    >>> run.features, run.history_days                    # doctest: +SKIP
    (['temperature_2m', ...], 30)
    """
    path = Path(path)
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise MissingError(f"{path} is not a cbgrid run: it has no config.json")
    config = read_json(cfg_path)
    if not (path / "scaling.json").exists():
        raise MissingError(f"{path} is not a complete cbgrid run: it has no scaling.json; retrain it")
    scaling = read_json(path / "scaling.json")
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
    preds = open_netcdf(path / "predictions.nc") if (path / "predictions.nc").exists() else None
    return Run(config, scaler, weights, members, read("curves.csv"), read("cv.csv"), read("split.csv"), preds, path)


def predict(run, ds: xr.Dataset, **kw) -> xr.Dataset:
    """Predictions of a run (a ``Run`` or a run directory) for every site and day of ``ds``.

    >>> predict("runs/xgboost", cbgrid.open_store("twin.zarr"))  # doctest: +SKIP
    """
    if not isinstance(run, Run):
        run = load_run(run)
    return run.predict(ds, **kw)


# --------------------------------------------------------------------------------------------
# Predictions only: what scoring needs of a run folder
# --------------------------------------------------------------------------------------------
@dataclass
class RunPredictions:
    """A run's test-site predictions (in memory) and where its store and split membership are."""

    path: Path | None
    predictions: xr.Dataset
    store: Path | None
    split: Path | pd.DataFrame | None

    @property
    def key(self) -> tuple[str, str, str, str]:
        """(model, split, feature set, protocol): runs sharing a key form one seed ensemble."""
        a = self.predictions.attrs
        return (str(a.get("model", "unknown")), str(a.get("split", "unknown")), str(a.get("feature_set", "unknown")),
                str(a.get("protocol", "cbgrid")))

    @property
    def min_days(self) -> int:
        """The fewest scored days a site needs under the run's protocol."""
        try:
            return protocol_rules(self.key[3]).min_days
        except ValueError:  # a protocol this version does not know
            return protocol_rules("cbgrid").min_days

    def split_table(self) -> pd.DataFrame:
        """The train/test membership the run was tested on."""
        if isinstance(self.split, pd.DataFrame):
            return self.split
        if self.split is None:
            raise InputError(f"{'/'.join(self.key)}: cannot tell which split the run used from its files; pass --split")
        return read_membership(self.split)


def read_membership(path: Path) -> pd.DataFrame:
    """A split CSV: the full ``cbgrid.splits`` layout, or at least site and set columns.

    >>> read_membership("runs/xgboost/split.csv")["set"].unique()  # doctest: +SKIP
    array(['train', 'test'], dtype=object)
    """
    try:
        return splits.read_split(path)
    except schema.SchemaError:
        df = pd.read_csv(path, dtype={"site": str}, keep_default_na=False)
        if not {"site", "set"} <= set(df.columns):
            raise
        return df


def load_predictions(run_dir, store=None, split=None) -> RunPredictions:
    """A run's predictions and the store and split it was trained on (``store``/``split`` override).

    >>> rp = load_predictions("runs/xgboost")                  # doctest: +SKIP
    >>> rp.key                                                 # doctest: +SKIP
    ('xgboost', 'koppen', 'minimal')
    """
    run_dir = Path(run_dir)
    pred_path = run_dir / PREDICTIONS if run_dir.is_dir() else run_dir
    if not pred_path.exists():
        raise MissingError(f"{run_dir}: no {PREDICTIONS}; pass run directories written by `cbgrid train`")
    predictions = open_netcdf(pred_path)
    if "prediction" not in predictions:
        raise InputError(f"{pred_path} has no 'prediction' variable (it has {list(predictions.data_vars)})")
    folder = pred_path.parent
    config = read_json(folder / CONFIG) if (folder / CONFIG).exists() else {}
    store = Path(store).resolve() if store else resolve_path(predictions.attrs.get("store") or config.get("store"), folder)
    if split is None and (folder / SPLIT).exists():
        split = (folder / SPLIT).resolve()
    return RunPredictions(folder, predictions, store, Path(split).resolve() if split else None)
