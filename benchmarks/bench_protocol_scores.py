"""Median per-site R² of XGBoost and CT-LSTM on a twin store under both protocols, side by side.

Builds a twin store, one Köppen split (cbgrid's draw, the same sites for every run), trains
XGBoost and CT-LSTM under the ``cbgrid`` and the ``reference`` protocol through the command line
(``cbgrid train``), scores all four runs with ``cbgrid evaluate`` and prints the median R² of
GPP, RECO and NEE per model and protocol. Sizes are small by default so that it runs on a laptop
CPU; the figures are those of that reduced setting (seeds, epochs), stated with them.

    python benchmarks/bench_protocol_scores.py                       # 120 sites, 2000-2005, 1 seed, 10 epochs
    python benchmarks/bench_protocol_scores.py --sites 212 --end 2010-12-31 --seeds 3 --epochs 30
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sites", type=int, default=120)
    ap.add_argument("--end", default="2005-12-31")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--keep", type=Path, default=None, help="folder to keep the store, runs and report in")
    args = ap.parse_args()

    import pandas as pd

    from cbgrid import splits, store
    from cbgrid.cli import main as cli
    from cbgrid.sources import twin

    with tempfile.TemporaryDirectory(prefix="cbgrid-protocol-scores-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        st = root / "twin.zarr"
        if not st.exists():
            store.write_store(twin.twin_store(n_sites=args.sites, start="2000-02-24", end=args.end, seed=0), st,
                              progress=False)
        split = splits.write_split(splits.make_split(store.open_store(st), by="koppen", seed=0), root / "split.csv")
        runs, timings = [], {}
        for model in ("xgboost", "ctlstm"):
            for proto in ("cbgrid", "reference"):
                out = root / f"{model}-{proto}"
                t0 = time.perf_counter()
                extra = ["--max-epochs", str(args.epochs)] if model != "xgboost" else []
                if not out.exists():
                    rc = cli(["-q", "train", "--store", str(st), "--split", str(split), "--model", model, "--protocol",
                              proto, "--seeds", str(args.seeds), "--device", "cpu", *extra, "--out", str(out)])
                    if rc:
                        raise SystemExit(f"training {model} under {proto} failed ({rc})")
                timings[(model, proto)] = time.perf_counter() - t0
                runs.append(out)
        rep = root / "report"
        if cli(["-q", "evaluate", *map(str, runs), "--out", str(rep), "--no-plots"]):
            raise SystemExit("evaluate failed")
        summary = pd.read_csv(rep / "summary.csv")
        r2 = summary[summary["metric"] == "R2"]
        table = r2.pivot_table(index=["model", "protocol"], columns="target", values="p50").rename(
            columns=lambda t: t.split("_")[0])[["GPP", "RECO", "NEE"]]
        sites = r2.pivot_table(index=["model", "protocol"], columns="target", values="n_sites").max(axis=1)
        table["n_sites"] = sites.astype(int)
        print(f"twin store: {args.sites} sites, 2000-02-24..{args.end}; Köppen split (cbgrid, seed 0); "
              f"{args.seeds} seed(s); networks {args.epochs} epochs max")
        print("median per-site R² (test sites, QC = 1 days the protocol scores):")
        print(table.round(3).to_string())
        for (model, proto), s in timings.items():
            print(f"{model:8s} {proto:9s} trained in {s:.0f} s")


if __name__ == "__main__":
    main()
