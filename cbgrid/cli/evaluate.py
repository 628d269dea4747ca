"""``cbgrid evaluate RUN_DIR [RUN_DIR ...] --out REPORT_DIR``: the zero-shot score report
(``cbgrid.report.write_report``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cbgrid import report
from cbgrid.evaluation import MIN_QC_DAYS, QC_RULE_TEXT
from cbgrid.runs import PREDICTIONS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score runs zero-shot on their test sites and write a report (tables, plots)",
        description=(
            "Score the predictions of one or more training runs on the test sites of their split, "
            "on NEE_VUT_USTAR50_QC == 1 days only. Runs of the same model, split and feature set "
            "(different seeds) are averaged into an ensemble and scored once; the spread across "
            "seeds is reported too."
        ),
    )
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help=f"run directories holding {PREDICTIONS}")
    p.add_argument("--out", required=True, type=Path, help="report directory (created)")
    p.add_argument("--store", type=Path, default=None, help="benchmark store (default: the one in each run's config)")
    p.add_argument("--split", type=Path, default=None, help="split CSV (default: the one in each run's config)")
    p.add_argument("--min-days", type=int, default=None,
                   help=f"fewest QC = 1 days for a site to be scored (default: the runs' protocol's: "
                        f"{MIN_QC_DAYS} cbgrid, 1 reference)")
    p.add_argument("--sites", nargs="*", default=None,
                   help="sites for the time-series plots (default: the best, median and worst GPP R2)")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:

    rep = report.write_report(args.runs, args.out, store=args.store, split=args.split, min_days=args.min_days,
                              sites=args.sites, plots=not args.no_plots, progress=not args.quiet)
    fewest = sorted({int(e.scores.attrs["min_days"]) for e in rep.experiments})
    print(f"Zero-shot scores ({QC_RULE_TEXT}; sites with < {' or '.join(map(str, fewest))} such days not scored)\n")
    print(rep.summary_markdown)
    print(f"\nreport: {rep.index}")
    return 0
