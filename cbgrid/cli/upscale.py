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
