"""``cbgrid export ilamb PRODUCT_FILES --out DIR`` and ``cbgrid export ilamb-sites STORE --out DIR``:
files ILAMB and ilamb3 read as they are (``cbgrid.export``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cbgrid import export


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="products and site observations in the forms evaluation tools read (ILAMB)")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    g = kinds.add_parser("ilamb", help="monthly gpp/reco/nee/nep reference files with ILAMB and ilamb3 blocks",
                         description="Monthly means of daily cbgrid products as ILAMB references: lower-case gpp, "
                                     "reco, nee and nep (= -NEE), time_bnds, standard calendar, and ready "
                                     "ILAMB (.cfg) and ilamb3 (.yaml) blocks.")
    g.add_argument("products", nargs="+", type=Path, metavar="PRODUCT_FILE")
    g.add_argument("--out", required=True, type=Path, help="folder (created; replaced when complete)")
    g.add_argument("--name", default="cbgrid", help="the reference's name in the configure blocks")
    g.set_defaults(func=cmd_ilamb)
    s = kinds.add_parser("ilamb-sites", help="site observations as ILAMB site references (time x data, monthly)")
    s.add_argument("store", type=Path, metavar="STORE")
    s.add_argument("--out", required=True, type=Path, help="folder (created; replaced when complete)")
    s.add_argument("--split", type=Path, default=None, help="export only the test sites of this split CSV")
    s.add_argument("--min-days", type=int, default=10, help="fewest QC = 1 days for a month (default 10)")
    s.set_defaults(func=cmd_ilamb_sites)


def cmd_ilamb(args) -> int:
    files = export.ilamb(args.products, args.out, name=args.name)
    for k, v in files.items():
        print(f"{k}: {v}")
    return 0


def cmd_ilamb_sites(args) -> int:
    files = export.ilamb_sites(args.store, args.out, split=args.split, min_days=args.min_days)
    for k, v in files.items():
        print(f"{k}: {v}")
    return 0
