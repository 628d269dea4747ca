"""Training commands: ``train`` (fit a model, write a run directory) and ``predict``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cbgrid import catalog, models, protocol, runs, splits, store, train
from cbgrid.atomic import replace_file
from cbgrid.errors import ExistsError, InputError, MissingError
from cbgrid.schema import SITE

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on a store's training sites and predict its test sites")
    p.add_argument("--store", required=True, type=Path, help="benchmark store (Zarr)")
    p.add_argument("--split", default="koppen",
                   help=f"split kind ({', '.join(splits.KINDS)}) or a split CSV (cbgrid split)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the split when --split is a kind")
    p.add_argument("--model", required=True, help=f"one of {', '.join(models.available())}")
    p.add_argument("--feature-set", default="minimal", choices=catalog.FEATURE_SETS)
    p.add_argument("--protocol", default="cbgrid", choices=protocol.names(),
                   help="the training and test rules (catalogs/protocols.yaml): cbgrid (default) or the reference "
                        "implementation's")
    p.add_argument("--seeds", type=int, default=10, help="seed ensemble size (default 10, as published)")
    p.add_argument("--first-seed", type=int, default=None, help="first seed (default: the protocol's, 0 or 27)")
    p.add_argument("--max-epochs", type=int, default=None, help="default: the protocol's (100)")
    p.add_argument("--patience", type=int, default=None,
                   help="early-stopping patience in epochs (boosting rounds for trees); default: the protocol's")
    p.add_argument("--batch-size", type=int, default=None, help="default: the protocol's (256 cbgrid, 2048 reference)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--ensemble", choices=["auto", "grouped", "sequential"], default="auto",
                   help="train the seed ensemble's networks together, sharing every batch (grouped), or one "
                        "after another; auto: grouped on CUDA where the network has a grouped form")
    p.add_argument("--grid", type=Path, default=None,
                   help="YAML/JSON mapping hyperparameter -> list of values for a 5-fold CV search "
                        "(without it: the published hyperparameters of the split, no search)")
    for name, typ in (("hidden", int), ("layers", int), ("dropout", float), ("lr", float)):
        p.add_argument(f"--{name}", type=typ, default=None, help=f"override the published {name}")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and the trees (default: the libraries' own)")
    p.add_argument("--out", required=True, type=Path, help="run directory to create (e.g. runs/ctlstm-koppen)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run (only once the new one is complete)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="predict with a trained run on a store's sites")
    p.add_argument("run", type=Path, help="run directory written by cbgrid train")
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("--sites", choices=["test", "all"], default="test",
                   help="the run's test sites that are in the store (default), or every site of the store")
    p.add_argument("--out", type=Path, default=None, help="NetCDF path (default: RUN/predictions-<store name>.nc)")
    p.add_argument("--block-sites", type=int, default=64, help="sites predicted per block (bounds memory)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, ...")
    p.set_defaults(func=cmd_predict)


def _read_grid(path: Path) -> dict:
    import json

    import yaml

    if not path.exists():
        raise MissingError(f"no grid file at {path}")
    text = path.read_text()
    grid = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(grid, dict):
        raise InputError(f"{path}: a grid is a mapping of hyperparameter -> list of values, e.g. 'hidden: [128, 256]'")
    return grid


def _split(args, ds):
    if args.split in splits.KINDS:
        return splits.make_split(ds, by=args.split, seed=args.split_seed)
    path = Path(args.split)
    if not path.exists():
        raise MissingError(f"--split {args.split!r} is neither a split kind ({', '.join(splits.KINDS)}) nor a file")
    return splits.read_split(path)


def cmd_train(args) -> int:

    models.spec(args.model)  # unknown names fail before the store is opened
    if args.out.exists() and not args.overwrite:
        raise ExistsError(f"{args.out} exists; choose another --out or pass --overwrite")
    grid = _read_grid(args.grid) if args.grid else None
    ds = store.open_store(args.store)
    split = _split(args, ds)
    overrides = {k: getattr(args, k) for k in ("hidden", "layers", "dropout", "lr") if getattr(args, k) is not None}
    cfg = train.TrainConfig(
        model=args.model, split=str(split["split"].iloc[0]), feature_set=args.feature_set, seeds=args.seeds,
        first_seed=args.first_seed, max_epochs=args.max_epochs, patience=args.patience, batch_size=args.batch_size,
        device=args.device, hparams=overrides, threads=args.threads, protocol=args.protocol,
        ensemble=args.ensemble,
    )
    run = train.fit(ds, split, cfg, grid=grid, out=args.out, overwrite=args.overwrite, progress=not args.quiet)
    t = run.config["timings_s"]
    print(f"{args.out}: {args.model} on {run.config['n_train_sites']} training sites, "
          f"{len(run.config['fitted_seeds'])} seed(s), {t['fit']:.1f} s fit; "
          f"predictions for {run.config['n_test_sites']} test sites in {args.out / 'predictions.nc'}")
    return 0


def cmd_predict(args) -> int:
    import pandas as pd

    run = runs.load_run(args.run, device=args.device)
    ds = store.open_store(args.store)
    if args.sites == "test":
        if run.split is None or "set" not in run.split:
            raise InputError(f"{args.run} has no split.csv; use --sites all")
        wanted = run.split.loc[run.split["set"] == "test", "site"].astype(str)
        ids = pd.Index([str(s) for s in ds[SITE].values])
        have = [s for s in wanted if s in ids]
        if not have:
            raise InputError(f"none of the run's {len(wanted)} test sites is in {args.store}; use --sites all")
        if len(have) < len(wanted):
            log.warning("%d of the run's test sites are not in the store", len(wanted) - len(have))
        ds = ds.isel({SITE: ids.get_indexer(have)})
    pred = run.predict(ds, block_sites=args.block_sites, progress=not args.quiet)
    out = args.out or args.run / f"predictions-{Path(args.store).name.split('.')[0]}.nc"
    with replace_file(out) as tmp:
        pred.to_netcdf(tmp, encoding=runs.nc_encoding(pred))
    print(f"{out}: {run.model_name} predictions for {pred.sizes[SITE]} sites x {pred.sizes['time']} days")
    return 0
