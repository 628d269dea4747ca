"""Build the synthetic-twin store at the catalog scale and at the paper's scale.

Prints, per size: wall time, peak resident memory (each build runs in its own process, so the
peak is that build's alone), store size on disk, and site-days per second; then the ratio of
the two sizes (memory should stay flat: the store is written chunk by chunk).

    python benchmarks/bench_store.py                 # 212 and 567 sites, 2000-02-24..2024-12-31
    python benchmarks/bench_store.py --sites 100 --end 2005-12-31
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child(n_sites: int, start: str, end: str, out: str) -> None:
    import resource

    from cbgrid import store
    from cbgrid.sources import twin

    t0 = time.perf_counter()
    ds = twin.twin_store(n_sites=n_sites, start=start, end=end, seed=0)
    store.write_store(ds, out, progress=False)
    wall = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"sites": ds.sizes["site"], "days": ds.sizes["time"], "variables": len(ds.data_vars),
                      "wall_s": wall, "peak_bytes": peak, "store_bytes": size}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sites", type=int, nargs="+", default=[212, 567])
    ap.add_argument("--start", default="2000-02-24")
    ap.add_argument("--end", default="2024-12-31")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        n, start, end, out = args.child
        _child(int(n), start, end, out)
        return
    rows = []
    env = {**os.environ, "TQDM_DISABLE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sites:
            out = str(Path(tmp) / f"twin{n}.zarr")
            res = subprocess.run([sys.executable, __file__, "--child", str(n), args.start, args.end, out],
                                 check=True, capture_output=True, text=True, env=env)
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    print(f"{'sites':>6} {'days':>6} {'vars':>5} {'wall s':>8} {'peak MiB':>9} {'store MiB':>10} {'site-days/s':>12}")
    for r in rows:
        print(f"{r['sites']:>6} {r['days']:>6} {r['variables']:>5} {r['wall_s']:>8.1f} {r['peak_bytes'] / 2**20:>9.0f} "
              f"{r['store_bytes'] / 2**20:>10.1f} {r['sites'] * r['days'] / r['wall_s']:>12.0f}")
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        print(f"ratio {b['sites']}/{a['sites']} sites: time x{b['wall_s'] / a['wall_s']:.2f}, "
              f"peak memory x{b['peak_bytes'] / a['peak_bytes']:.2f}, store size x{b['store_bytes'] / a['store_bytes']:.2f}")


if __name__ == "__main__":
    main()
