"""Import the published CarbonBench layout at a fraction of its real size: time and peak memory.

The real tables: 474 sites x 25 years (2000-2024) daily, ERA5.parquet with 150 feature columns
(~5 GB), MOD09GA.parquet with 12, the target table with 9 columns. This script writes
synthetic tables of that shape for ``fraction`` of the sites (row groups of 12 sites' records,
~110,000 rows, float64 values, prefixed site ids, rows out of order), then imports each
size with ``cbgrid.sources.carbonbench.write_folder`` in its own process (so the peak resident
memory is that import's alone), and prints wall time, peak RSS, the ratio of the two sizes
(peak RSS should stay flat: ERA5 is streamed by row group within a fixed memory budget) and
a linear projection of time and peak RSS to the full table.

    python benchmarks/bench_import.py                       # 1/10 and 2/10 of 474 sites
    python benchmarks/bench_import.py --fractions 0.1 0.3 --budget-mb 64
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FULL_SITES = 474
START, END = "2000-01-01", "2024-12-31"


def write_tables(folder: Path, n_sites: int, seed: int = 0, sites_per_group: int = 12) -> dict:
    """Synthetic published-layout tables for ``n_sites`` sites, written site by site."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cbgrid import catalog, schema

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    era5 = catalog.era5_bands("full")
    modis = catalog.modis_bands()
    days = pd.date_range(START, END, freq="D")
    sites = [f"S{i // 26:02d}-{chr(65 + i % 26)}{i:03d}"[:10] for i in range(n_sites)]
    koppen = {s: "ABCDE"[i % 5] for i, s in enumerate(sites)}
    short = {s: ["Af", "BSk", "Cfb", "Dfb", "ET"][i % 5] for i, s in enumerate(sites)}
    order = rng.permutation(n_sites)  # feature rows not in site order
    writers = {}
    rows = {"targets": 0, "era5": 0}
    pending: dict[str, list] = {}

    def flush():
        for name, frames in pending.items():
            table = pa.Table.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False)
            if name not in writers:
                writers[name] = pq.ParquetWriter(folder / name, table.schema)
            writers[name].write_table(table)  # one row group per flush, ~sites_per_group site-records
        pending.clear()

    try:
        for n_done, k in enumerate(order, 1):
            s = sites[k]
            n = days.size
            t = pd.DataFrame({"TIMESTAMP": days.strftime("%Y%m%d").astype(np.int64), "site": s,
                              "lat": rng.uniform(-40, 60), "lon": rng.uniform(-150, 150),
                              "IGBP": schema.REFERENCE_IGBP[k % 16], "network": "FLX"})
            for v in (*schema.TARGETS, schema.QC):
                t[v] = rng.normal(3, 2, n)
            t.loc[rng.random(n) < 0.3, schema.GPP] = -9999.0
            date = days.strftime("%Y-%m-%d")
            e = pd.DataFrame({"date": date, "site": f"FLX_{s}", **{c: rng.normal(0, 1, n) for c in era5}})
            m = pd.DataFrame({"date": date, "site": f"FLX_{s}", **{c: rng.random(n) for c in modis}})
            for name, df in (("target_fluxes_v2.parquet", t), ("ERA5.parquet", e), ("MOD09GA.parquet", m)):
                pending.setdefault(name, []).append(df)
            rows["targets"] += n
            rows["era5"] += n
            if n_done % sites_per_group == 0:
                flush()
        flush()
    finally:
        for w in writers.values():
            w.close()
    (folder / "koppen_sites.json").write_text(json.dumps(koppen))
    (folder / "koppen_sites_short.json").write_text(json.dumps(short))
    (folder / "feature_sets.json").write_text(json.dumps({n: catalog.era5_bands(n) for n in catalog.FEATURE_SETS}))
    return {"sites": n_sites, **rows, "era5_bytes": (folder / "ERA5.parquet").stat().st_size}


def _child(folder: str, out: str, budget_mb: float) -> None:
    import resource

    from cbgrid.sources import carbonbench

    t0 = time.perf_counter()
    report = carbonbench.write_folder(folder, out, progress=False, budget_mb=budget_mb)
    wall = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"sites": report["sites_kept"], "rows": report["target_rows"], "wall_s": wall,
                      "peak_bytes": peak, "store_bytes": size}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.2], help="fractions of the 474 sites")
    ap.add_argument("--budget-mb", type=float, default=128, help="memory budget of one pass of ERA5 columns")
    ap.add_argument("--child", nargs=3, metavar=("FOLDER", "OUT", "BUDGET"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], float(args.child[2]))
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="cbgrid-bench-import-") as tmp:
        for frac in args.fractions:
            n = max(5, round(FULL_SITES * frac))
            folder = Path(tmp) / f"data-{n}"
            t0 = time.perf_counter()
            made = write_tables(folder, n)
            gen = time.perf_counter() - t0
            out = Path(tmp) / f"store-{n}.zarr"
            proc = subprocess.run([sys.executable, __file__, "--child", str(folder), str(out), str(args.budget_mb)],
                                  capture_output=True, text=True, check=False)
            if proc.returncode:
                sys.exit(proc.stderr)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r.update(fraction=n / FULL_SITES, era5_rows=made["era5"], era5_gb=made["era5_bytes"] / 1e9, gen_s=gen)
            results.append(r)
            print(f"{n:4d} sites ({r['fraction']:.3f} of 474): ERA5 {r['era5_rows']:,} rows x 150 columns "
                  f"({r['era5_gb']:.2f} GB parquet, written in {gen:.0f} s); import {r['wall_s']:.1f} s, "
                  f"peak RSS {r['peak_bytes'] / 2**20:.0f} MiB, store {r['store_bytes'] / 1e9:.2f} GB", flush=True)
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
    a, b = results[0], results[-1]
    if len(results) > 1:
        print(f"size ratio {b['era5_rows'] / a['era5_rows']:.2f}: time ratio {b['wall_s'] / a['wall_s']:.2f}, "
              f"peak RSS ratio {b['peak_bytes'] / a['peak_bytes']:.2f}")
    if len(results) > 1:
        slope = (b["peak_bytes"] - a["peak_bytes"]) / (b["fraction"] - a["fraction"])
        full_peak = b["peak_bytes"] + (1 - b["fraction"]) * slope
        full_time = a["wall_s"] + (1 - a["fraction"]) * (b["wall_s"] - a["wall_s"]) / (b["fraction"] - a["fraction"])
        print(f"projection to the full table (474 sites, ~{b['era5_gb'] / b['fraction']:.1f} GB ERA5 parquet of this "
              f"kind), linear in the site count from the two sizes: import ~{full_time / 60:.1f} min, peak RSS "
              f"~{full_peak / 2**30:.2f} GiB (+{slope / 2**20 / 474 * 47:.0f} MiB per 47 sites)")


if __name__ == "__main__":
    main()
