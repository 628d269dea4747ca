"""Store commands: ``twin``, ``ingest``, ``info``, ``split``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cbgrid import catalog, schema, sources, splits, store
from cbgrid.sources import twin

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("twin", help="build the synthetic-twin benchmark store (the embedded default)")
    p.add_argument("--out", required=True, type=Path, help="store path (e.g. twin.zarr)")
    p.add_argument("--sites", type=int, default=None, help="number of sites (default: the 212 catalog sites; more draws extra land locations)")
    p.add_argument("--start", default="2000-02-24", help="first day (default 2000-02-24, the start of MODIS)")
    p.add_argument("--end", default="2024-12-31", help="last day (default 2024-12-31)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--difficulty", choices=twin.DIFFICULTIES, default="real",
                   help="real (default): calibrated to score like the published benchmark; easy: strong signal "
                        "for tests, not representative of real towers (docs/twin.md)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store (only once the new one is complete)")
    p.set_defaults(func=cmd_twin)

    p = sub.add_parser("ingest", help="build or extend a store from ONEFlux daily (DD) CSV files or the published "
                                      "CarbonBench folder")
    p.add_argument("files", nargs="+", type=Path,
                   help="ONEFlux DD files (FLUXNET2015, AmeriFlux-FLUXNET, ICOS, JapanFlux), or one folder of the "
                        "published CarbonBench data (target_fluxes_v2.parquet, MOD09GA.parquet, ERA5.parquet, ...)")
    p.add_argument("--out", required=True, type=Path, help="store to create, or to add the sites to")
    p.add_argument("--sites", type=Path, default=None, help="site table CSV (site, lat, lon, igbp, koppen) for sites not in the catalog")
    p.add_argument("--start", default="2000-02-24", help="first day of a new store's time axis")
    p.add_argument("--end", default="2024-12-31", help="last day of a new store's time axis")
    p.add_argument("--overwrite", action="store_true",
                   help="replace values the store already has for these sites (a CarbonBench folder: rebuild the "
                        "store, swapped in only once complete)")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("info", help="summarise a store: sites, period, variables, classes, observations, QC")
    p.add_argument("store", type=Path)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("split", help="write the train/test site membership (and 5 CV folds) as CSV")
    p.add_argument("store", type=Path)
    p.add_argument("--by", required=True, choices=splits.KINDS)
    p.add_argument("--method", default="cbgrid", choices=splits.METHODS,
                   help="cbgrid's stratified draw (default) or the reference implementation's exactly (scikit-learn "
                        "train_test_split, random_state 56; --seed is then ignored)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="CSV path (default: splits/<by>-seed<seed>.csv beside the store)")
    p.set_defaults(func=cmd_split)


def cmd_twin(args) -> int:
    schema.days(args.start, args.end)
    ds = twin.twin_store(n_sites=args.sites, start=args.start, end=args.end, seed=args.seed, difficulty=args.difficulty)
    store.write_store(ds, args.out, overwrite=args.overwrite)
    print_summary(store.open_store(args.out), args.out)
    return 0


def cmd_ingest(args) -> int:
    sites = catalog.read_site_table(args.sites) if args.sites else None
    source = sources.site_source_for(args.files)
    result = source().write(args.files, args.out, sites=sites, period=(args.start, args.end),
                            overwrite=args.overwrite, progress=not args.quiet)
    log.info("%s %s from %s: %d site(s) added", "created" if result["created"] else "updated", args.out,
             source.name, result["sites_added"])
    print_summary(store.open_store(args.out), args.out)
    return 0


def cmd_info(args) -> int:

    print_summary(store.open_store(args.store), args.store)
    return 0


def cmd_split(args) -> int:

    df = splits.make_split(store.open_store(args.store), by=args.by, seed=args.seed, method=args.method)
    name = f"{args.by}-reference" if args.method == "reference" and not args.by.startswith("official-") else \
        f"{args.by}-seed{args.seed}"
    out = args.out or args.store.parent / "splits" / f"{name}.csv"
    splits.write_split(df, out)
    print(splits.summary(df).to_string())
    excluded = int((df["set"] == "excluded").sum())
    if excluded:
        print(f"{excluded} held-out site(s) without a published score excluded (neither trained on nor scored)")
    print(f"split written to {out}")
    return 0


def print_summary(ds, path) -> None:

    s = store.summary(ds)
    lines = [
        f"store      {path}",
        f"sites      {s['sites']}",
        f"period     {s['period'][0]} .. {s['period'][1]} ({s['days']} days)" if s["period"] else "period     (empty)",
        f"variables  {len(s['variables'])}: {', '.join(s['variables'])}",
        "IGBP       " + "  ".join(f"{k} {v}" for k, v in s["igbp"].items()),
        "Koppen     " + "  ".join(f"{k} {v}" for k, v in s["koppen"].items()),
    ]
    if "site_days_observed" in s:
        lines.append(f"observed   {s['site_days_observed']} site-days with GPP")
    if "qc" in s:
        lines.append("QC         " + "  ".join(f"{k}: {v}" for k, v in s["qc"].items()))
    print("\n".join(lines))
