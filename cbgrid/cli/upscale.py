"""Product commands: ``upscale`` (run a product recipe) and ``demo`` (the whole chain on the twin)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("upscale", help="run trained models over a driver grid: CF-1.8 NEE/GPP/RECO maps + scores + quicklooks")
    p.add_argument("recipe", type=Path, help="product recipe YAML (see products/*.yaml)")
    p.add_argument("--runs", nargs="+", type=Path, default=None, help="run folders to use instead of the recipe's runs")
    p.add_argument("--output", type=Path, default=None, help="output folder instead of the recipe's")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="dask.distributed scheduler address (e.g. tcp://10.0.0.5:8786); default: local threads")
    p.add_argument("--institution", default="unspecified", help="the product's `institution` attribute")
    p.add_argument("--no-quicklook", action="store_true", help="skip the quicklook PNGs")
    p.add_argument("--truth", action="store_true",
                   help="twin drivers only: compare the maps with the twin's true fluxes and print R2/bias")
    p.set_defaults(func=cmd_upscale)

    p = sub.add_parser(
        "demo", help="the whole chain on the synthetic twin: store, split, train, evaluate, a global 1° month product",
        description="Twin store -> Köppen split -> an xgboost and a ctlstm run (few seeds/epochs) -> zero-shot "
        "report -> one month (2020-07) of global 1° GPP/RECO/NEE maps -> comparison with the twin's true fluxes. "
        "Steps whose output already exists in --out are reused.",
    )
    p.add_argument("--out", type=Path, default=Path("cbgrid-demo"), help="folder for everything (default ./cbgrid-demo)")
    p.add_argument("--sites", type=int, default=None, help=f"twin sites (default {DEMO['sites']}; --quick {QUICK['sites']})")
    p.add_argument("--quick", action="store_true", help="a smoke run: fewer sites and days, tiny models, a 5° grid")
    p.add_argument("--overwrite", action="store_true", help="rebuild every step instead of reusing what --out holds")
    p.set_defaults(func=cmd_demo)


#: The demo's sizes: a store, models and a product that fit ~5 minutes on 2 cores.
DEMO = {
    "sites": 60, "start": "2016-01-01", "end": "2020-12-31", "resolution": 1.0,
    "models": {
        "xgboost": {"seeds": 1, "hparams": {"n_estimators": 300, "max_depth": 8, "learning_rate": 0.1}},
        # a smaller network than published (hidden 256, 2 layers) so that it trains in a minute on CPU
        "ctlstm": {"seeds": 2, "max_epochs": 4, "patience": 2, "hparams": {"hidden": 64, "layers": 1, "lr": 0.002}},
    },
}
QUICK = {
    "sites": 24, "start": "2019-06-01", "end": "2020-08-31", "resolution": 5.0,
    "models": {
        "xgboost": {"seeds": 1, "hparams": {"n_estimators": 20, "max_depth": 4}},
        "ctlstm": {"seeds": 2, "max_epochs": 1, "hparams": {"hidden": 16}},
    },
}
#: The recipe of products/twin-1deg-month.yaml, with the demo's runs and output.
DEMO_MONTH = ("2020-07-01", "2020-07-31")


def cmd_upscale(args) -> int:
    from cbgrid import upscale
    from cbgrid.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    if args.output is not None:
        recipe = recipe.replace(output=args.output)
    if args.truth and recipe.drivers.source != "twin":
        raise ValueError(f"--truth needs twin drivers; recipe {recipe.name!r} uses {recipe.drivers.source!r}")
    res = upscale.upscale(recipe, runs=args.runs, scheduler=args.scheduler, quicklook=not args.no_quicklook,
                          institution=args.institution, progress=not args.quiet)
    print_result(res)
    if args.truth:
        print_truth(recipe, res["products"])
    return 0


def print_result(res: dict) -> None:
    """The human summary of an upscaling run."""
    print("products:")
    for p in res["products"]:
        print(f"  {p}")
    print(f"zero-shot scores: {res['scores'] or 'none (the runs carry no test-site evaluation)'}")
    if res["quicklooks"]:
        print(f"quicklooks: {len(res['quicklooks'])} PNGs beside the products, e.g. {res['quicklooks'][0]}")
    for label, d in res["diagnostics"].items():
        print(f"  {label}: {d['cell_days']} land cell-days; models' own NEE vs RECO - GPP: "
              f"mean |diff| {d['nee_model_minus_balance_mean_abs']:.3f} g m-2 d-1 (the files hold NEE = RECO - GPP)")


def print_truth(recipe, products) -> None:
    """Map-level skill against the twin's true fluxes, per product file."""
    import pandas as pd

    from cbgrid import upscale
    from cbgrid.product import open_product
    from cbgrid.sources.twin import twin_grid

    ctx = upscale.grid_context(recipe.grid.lat, recipe.grid.lon)
    for path in products:
        with open_product(path) as ds:
            days = pd.DatetimeIndex(ds.indexes["time"]).normalize()
        truth = twin_grid(recipe.grid.lat, recipe.grid.lon, days, recipe.drivers.seed, igbp=ctx["igbp"].values,
                          koppen=ctx["koppen"].values, with_truth=True, chunks=dict(recipe.chunks))
        truth = truth[["GPP_true", "RECO_true", "NEE_true"]].compute()
        table = upscale.compare_with_truth(path, truth)
        print(f"{Path(path).name} against the twin's true fluxes:")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def cmd_demo(args) -> int:
    """Run the chain step by step, reusing finished steps, and print where everything is."""
    import time

    import pandas as pd
    from tqdm.dask import TqdmCallback

    from cbgrid import splits, store, train, upscale
    from cbgrid.cli import main
    from cbgrid.recipe import parse_recipe
    from cbgrid.sources import twin

    cfg = QUICK if args.quick else DEMO
    n_sites = args.sites or cfg["sites"]
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    fresh = args.overwrite
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    def step(name):
        timings[name] = time.perf_counter()

    def done(name):
        timings[name] = time.perf_counter() - timings[name]

    # 1. store -------------------------------------------------------------------------------
    st = (out / "twin.zarr").resolve()
    step("store")
    if fresh or not st.exists():
        log.info("demo: building the twin store (%d sites, %s..%s)", n_sites, cfg["start"], cfg["end"])
        store.write_store(twin.twin_store(n_sites=n_sites, start=cfg["start"], end=cfg["end"], seed=0), st,
                          overwrite=True, progress=not args.quiet)
    ds = store.open_store(st)
    from cbgrid.cli.store import print_summary

    print_summary(ds, st)
    print()
    done("store")

    # 2. split --------------------------------------------------------------------------------
    split_path = out / "splits" / "koppen-seed0.csv"
    if fresh or not split_path.exists():
        splits.write_split(splits.make_split(ds, by="koppen", seed=0), split_path)
    split = splits.read_split(split_path)

    # 3. train --------------------------------------------------------------------------------
    step("train")
    runs = []
    for model, kw in cfg["models"].items():
        path = out / "runs" / f"demo-{model}"
        if fresh or not (path / "config.json").exists():
            log.info("demo: training %s", model)
            train.fit(ds, split, train.TrainConfig(model=model, split="koppen", **kw), out=path, overwrite=True,
                      progress=not args.quiet)
        runs.append(path)
    done("train")

    # 4. evaluate -----------------------------------------------------------------------------
    step("evaluate")
    report = out / "report"
    eval_args = ["evaluate", *map(str, runs), "--out", str(report), "--store", str(st), "--split", str(split_path)]
    if args.quiet:
        eval_args.insert(0, "-q")
    if main(eval_args) != 0:
        raise ValueError("the evaluation step failed; see the messages above")
    done("evaluate")

    # 5. upscale one month globally, with the twin's truth alongside -------------------------
    step("upscale")
    recipe = parse_recipe({
        "name": f"twin-{cfg['resolution']:g}deg-2020-07", "drivers": {"source": "twin", "seed": 0},
        "grid": {"resolution": cfg["resolution"]}, "period": {"start": DEMO_MONTH[0], "end": DEMO_MONTH[1], "per": "month"},
        "runs": [str(r) for r in runs], "output": str(out / "products"), "chunks": {"lat": 45, "lon": 90},
    })
    ctx = upscale.grid_context(recipe.grid.lat, recipe.grid.lon)
    spin = max(upscale.history_days(r) for r in runs)
    days = pd.date_range(pd.Timestamp(DEMO_MONTH[0]) - pd.Timedelta(days=spin), DEMO_MONTH[1], freq="D")
    # One twin simulation gives the drivers and the true fluxes the product is checked against.
    grid = twin.twin_grid(recipe.grid.lat, recipe.grid.lon, days, recipe.drivers.seed, igbp=ctx["igbp"].values,
                          koppen=ctx["koppen"].values, with_truth=True, chunks=dict(recipe.chunks))
    with TqdmCallback(desc="twin drivers", disable=args.quiet or None):
        grid = grid.persist()
    res = upscale.upscale(recipe, runs=runs, context=ctx, drivers=grid, progress=not args.quiet)
    truth = grid[["GPP_true", "RECO_true", "NEE_true"]]
    table = upscale.compare_with_truth(res["products"][0], truth)
    table.to_csv(out / "products" / "truth_comparison.csv", index=False)
    done("upscale")
    total = time.perf_counter() - t_all

    print(f"\ncbgrid demo finished in {total:.0f} s (store {timings['store']:.0f} s, training {timings['train']:.0f} s, "
          f"evaluation {timings['evaluate']:.0f} s, upscaling {timings['upscale']:.0f} s)\n")
    print(f"store        {st}  ({ds.sizes['site']} sites, {cfg['start']}..{cfg['end']})")
    print(f"split        {split_path}  ({len(splits.train_sites(split))} train / {len(splits.test_sites(split))} test sites)")
    for r in runs:
        print(f"run          {r}")
    print(f"report       {report / 'report.md'}")
    print_result(res)
    print(f"\n{Path(res['products'][0]).name} against the twin's true fluxes "
          f"(all {table['cell_days'].iloc[0]} land cell-days; also in {out / 'products' / 'truth_comparison.csv'}):")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if not args.quick:
        print(f"\nthe same product from its recipe: cbgrid upscale products/twin-1deg-month.yaml --runs "
              f"{' '.join(map(str, runs))} --output {out / 'products'} --truth")
    return 0
