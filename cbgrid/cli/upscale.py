"""Product commands: ``upscale`` (run a product recipe) and ``demo`` (the whole chain on the twin)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cbgrid import catalog, evaluation, plots, upscale
from cbgrid.cli.store import print_summary
from cbgrid.demo import run_demo
from cbgrid.errors import InputError
from cbgrid.recipe import load_recipe
from cbgrid.sources.twin import truth_for_product
from cbgrid.store import open_store


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("upscale", help="run trained models over a driver grid: CF-1.8 NEE/GPP/RECO maps + scores + quicklooks")
    p.add_argument("recipe", type=Path, help="product recipe YAML (see products/*.yaml)")
    p.add_argument("--runs", nargs="+", type=Path, default=None, help="run folders to use instead of the recipe's runs")
    p.add_argument("--output", type=Path, default=None, help="output folder instead of the recipe's")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="dask.distributed scheduler address (e.g. tcp://10.0.0.5:8786), or local:N for a local "
                        "cluster of N worker processes; default: local threads")
    p.add_argument("--institution", default="unspecified", help="the product's `institution` attribute")
    p.add_argument("--no-quicklook", action="store_true", help="skip the quicklook PNGs")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the products of another ensemble in the output folder (refused otherwise)")
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
    demo = catalog.demo_config()
    p.add_argument("--sites", type=int, default=None,
                   help=f"twin sites (default {demo['full']['store']['sites']}; --quick {demo['quick']['store']['sites']})")
    p.add_argument("--quick", action="store_true", help="a smoke run: fewer sites and days, tiny models, a 5° grid")
    p.add_argument("--overwrite", action="store_true", help="rebuild every step instead of reusing what --out holds")
    p.set_defaults(func=cmd_demo)


def cmd_upscale(args) -> int:

    recipe = load_recipe(args.recipe)
    if args.output is not None:
        recipe = recipe.replace(output=args.output)
    if args.truth and recipe.drivers.name != "twin":
        raise InputError(f"--truth needs twin drivers; recipe {recipe.name!r} uses {recipe.drivers.name!r}")
    res = upscale.upscale(recipe, runs=args.runs, scheduler=args.scheduler, institution=args.institution,
                          progress=not args.quiet, overwrite=args.overwrite)
    looks = [] if args.no_quicklook else [png for p in res["products"] for png in plots.quicklooks(p)]
    print_result(res, looks)
    if args.truth:
        print_truth(recipe, res["products"])
    return 0


def print_result(res: dict, looks: list) -> None:
    """The human summary of an upscaling run."""
    print("products:")
    for p in res["products"]:
        print(f"  {p}")
    print(f"zero-shot scores: {res['scores'] or 'none (the runs carry no test-site evaluation)'}")
    if looks:
        print(f"quicklooks: {len(looks)} PNGs beside the products, e.g. {looks[0]}")
    for label, d in res["diagnostics"].items():
        print(f"  {label}: {d['cell_days']} land cell-days; models' own NEE vs RECO - GPP: "
              f"mean |diff| {d['nee_model_minus_balance_mean_abs']:.3f} g m-2 d-1 (the files hold NEE = RECO - GPP)")
    t = res.get("timings")
    if t:
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in t["seconds"].items())
        print(f"{t['cell_days']} land cell-days in {t['wall_s']:.1f} s ({t['cell_days_per_s']:.0f} cell-days/s); "
              f"task seconds {stages}")


def print_truth(recipe, products) -> None:
    """Map-level skill against the twin's true fluxes, per product file."""

    for path in products:
        table = evaluation.compare_with_truth(path, truth_for_product(recipe, path))
        print(f"{Path(path).name} against the twin's true fluxes:")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def cmd_demo(args) -> int:
    """Run the chain (``cbgrid.demo.run_demo``) and print where everything is."""

    r = run_demo(args.out, quick=args.quick, sites=args.sites, overwrite=args.overwrite, progress=not args.quiet)
    looks = [png for p in r.upscaled["products"] for png in plots.quicklooks(p)]
    t = r.timings
    print_summary(open_store(r.store), r.store)
    print()
    print(r.report.summary_markdown)
    print(f"\ncbgrid demo finished in {t['total']:.0f} s (store {t['store']:.0f} s, training {t['train']:.0f} s, "
          f"evaluation {t['evaluate']:.0f} s, upscaling {t['upscale']:.0f} s)\n")
    print(f"store        {r.store}  ({r.n_sites} sites, {r.period[0]}..{r.period[1]})")
    print(f"split        {r.split}")
    for run in r.runs:
        print(f"run          {run}")
    print(f"report       {r.report.index}")
    print_result(r.upscaled, looks)
    table = r.truth
    print(f"\n{Path(r.upscaled['products'][0]).name} against the twin's true fluxes "
          f"(all {table['cell_days'].iloc[0]} land cell-days; also in {r.recipe.output / 'truth_comparison.csv'}):")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if not args.quick:
        print(f"\nthe same product from its recipe: cbgrid upscale products/{catalog.demo_config()['full']['recipe']} "
              f"--runs {' '.join(map(str, r.runs))} --output {r.recipe.output} --truth")
    return 0
