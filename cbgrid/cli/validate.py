"""``cbgrid validate MODEL_FILES... --store STORE --out DIR``: a gridded model scored at the
towers, in the ``cbgrid evaluate`` report layout (``cbgrid.validate.validate_sites``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cbgrid import compare, esm
from cbgrid import validate as val
from cbgrid.errors import InputError
from cbgrid.evaluation import markdown_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate",
        help="score gridded model output (CMIP6, TRENDY, FLUXCOM-X, products) at the flux towers",
        description=(
            "Sample a model's GPP, RECO and NEE at every site (nearest unmasked cell centre, or bilinear) "
            "and score it on the model's time scale: monthly models against observed monthly means over "
            "QC = 1 days, daily models day by day. Variables by CMOR name (gpp; reco or ra+rh; nee or -nep) "
            "or --map; units converted with UDUNITS; any cftime calendar; 0..360 or -180..180 longitudes. "
            "Writes the same scores.nc / summary / breakdown files as cbgrid evaluate."
        ),
    )
    p.add_argument("models", nargs="+", type=Path, metavar="MODEL_FILE",
                   help="NetCDF/Zarr files of one model (variables or periods in separate files)")
    p.add_argument("--store", type=Path, default=None, help="benchmark store (observations): score at the towers")
    p.add_argument("--product", nargs="+", type=Path, default=None, metavar="PRODUCT_FILE",
                   help="compare with cbgrid products on the grid instead (conservative regridding, bias/RMSE/"
                        "correlation maps, zonal means, seasonal cycles, totals)")
    p.add_argument("--out", required=True, type=Path, help="report directory (created; replaced when complete)")
    p.add_argument("--split", type=Path, default=None,
                   help="split CSV: score its test sites only (default: all sites, none of which a process model saw)")
    p.add_argument("--variables", nargs="+", default=None, metavar="TARGET", help="GPP, RECO, NEE (default: all the files give)")
    p.add_argument("--map", nargs="+", default=None, metavar="TARGET=EXPR", dest="mapping",
                   help="file variables for a target, e.g. GPP=GPP_mean RECO=ra+rh NEE=-nep")
    p.add_argument("--method", choices=val.METHODS, default="nearest", help="how a site reads the grid (default nearest)")
    p.add_argument("--min-days", type=int, default=val.MIN_DAYS_PER_MONTH,
                   help=f"monthly models: fewest QC = 1 days for a month to be scored (default {val.MIN_DAYS_PER_MONTH})")
    p.add_argument("--min-scored", type=int, default=None,
                   help=f"fewest scored months (monthly, default {val.MIN_MONTHS}) or days (daily, default 30) per site")
    p.add_argument("--separate", action="store_true", help="each file is a model of its own")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.set_defaults(func=cmd_validate)


def cmd_validate(args) -> int:
    if (args.store is None) == (args.product is None):
        raise InputError("give --store STORE (score at the towers) or --product FILES (compare on the grid)")
    if args.product is not None:
        c = compare.compare_with_product(args.models, args.product, args.out, targets=args.variables,
                                         mapping=esm.mapping_from_args(args.mapping), plots_=not args.no_plots)
        print(f"regridded: {c.regridded}\n")
        print(markdown_table(c.totals))
        print(f"\nmaps, zonal means, seasonal cycles, totals: {c.path}")
        return 0
    v = val.validate_sites(args.models, args.store, args.out, split=args.split, targets=args.variables,
                           method=args.method, min_days=args.min_days, min_scored=args.min_scored,
                           mapping=esm.mapping_from_args(args.mapping), separate=args.separate,
                           plots=not args.no_plots)
    for e in v.experiments:
        a = e.scores.attrs
        print(f"{e.key[0]}: {a['time_scale']} output ({a['derivation']}), scored on the {a['sites_scored']}")
    print()
    print(v.report.summary_markdown)
    print(f"\nreport: {v.report.index}")
    return 0
