"""Tree variants at the published scale: fit time, per-round rate and peak memory of each.

Each variant fits in its own process (so the peak resident memory, ``ru_maxrss``, is that fit's
and not the previous one's) on the training sites of a store (a twin of ``--sites`` sites by
default, cached under ``--cache``), at the published hyperparameters, for ``--rounds`` boosting
rounds without early stopping (``--rounds 0``: the published 1000-round cap with the protocol's
early stopping). Variants:

* ``xgboost``: one booster per target (cbgrid's protocol);
* ``xgboost-multi``: one booster for the three targets, one tree per target per round
  (``multi_strategy: one_output_per_tree``, the reference protocol's booster);
* ``xgboost-multitree``: one booster, one tree with three leaf values per round
  (``multi_strategy: multi_output_tree``);
* ``lightgbm``: column-wise histograms, 255 bins (cbgrid's default);
* ``lightgbm-rowwise``: row-wise histograms; ``lightgbm-bin63``: 63 bins.

    python benchmarks/bench_trees.py --sites 474 --rounds 200
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

VARIANTS = {
    "xgboost": ("xgboost", {}, False),
    "xgboost-multi": ("xgboost", {"multi_strategy": "one_output_per_tree"}, True),
    "xgboost-multitree": ("xgboost", {"multi_strategy": "multi_output_tree"}, True),
    "lightgbm": ("lightgbm", {}, False),
    "lightgbm-rowwise": ("lightgbm", {"force_row_wise": True}, False),
    "lightgbm-bin63": ("lightgbm", {"max_bin": 63}, False),
}


def _store(path: Path, sites: int) -> Path:
    from cbgrid import store
    from cbgrid.sources import twin

    if not path.exists():
        store.write_store(twin.twin_store(n_sites=sites), path, progress=False)
    return path


def _rss_gb() -> float:
    """This process's resident memory now (Linux ``/proc/self/statm``), GB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


class _PeakRSS:
    """The highest resident memory seen (every 20 ms) while the ``with`` block runs."""

    def __enter__(self):
        self.gb, self._stop = _rss_gb(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.02):
            self.gb = max(self.gb, _rss_gb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.gb = max(self.gb, _rss_gb())


def one(store_path: Path, variant: str, rounds: int, threads: int | None) -> dict:
    """Fit one variant in this process; its figures as a dict."""
    import dataclasses

    import numpy as np

    from cbgrid import models, pipeline, protocol, splits, store
    from cbgrid.members import TreeMember
    from cbgrid.runtime import release_memory

    name, extra, multi = VARIANTS[variant]
    ds = store.open_store(store_path)
    split = splits.make_split(ds, by="koppen", seed=0)
    train_ds = ds.isel(site=np.flatnonzero(np.isin(ds.site.values, splits.train_sites(split))))
    arrays = pipeline.read_arrays(train_ds, pipeline.feature_variables(ds, "minimal"))
    cfg = protocol.TrainConfig(model=name, split="koppen", threads=threads).resolved()
    data = pipeline.TrainingData.build(arrays, cfg.val_fraction, protocol=cfg.rules, window=cfg.window)
    hp = {**models.hyperparameters(name, "koppen"), **extra}
    if rounds:
        cfg = dataclasses.replace(cfg, patience=10**6)
        hp["n_estimators"] = rounds
    member = TreeMember(models.spec(name), data.prepared.x.shape[-1], hp, cfg, "cpu", cfg.first_seed)
    member.model.multi_output = multi
    release_memory()
    before = _rss_gb()
    with _PeakRSS() as peak:
        t0 = time.perf_counter()
        member.fit(data)
        fit_s = time.perf_counter() - t0
    per = member.model.round_seconds()
    fit_idx, _ = data.index("static", cfg.windows)
    n_boosters = len(member.model.boosters)
    built = sum(b.num_boosted_rounds() if name == "xgboost" else b.num_trees() for b in member.model.boosters)
    return {"variant": variant, "rows": len(fit_idx), "boosters": n_boosters, "rounds_built": built,
            "fit_s": fit_s, "s_per_round": n_boosters * float(np.median(per)),
            "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "before_fit_gb": before,
            "fit_peak_gb": peak.gb}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, default=None)
    p.add_argument("--sites", type=int, default=474)
    p.add_argument("--cache", type=Path, default=Path("/tmp/cbgrid-bench"))
    p.add_argument("--rounds", type=int, default=200, help="rounds per fit, no early stopping (0: published)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.one:
        print(json.dumps(one(args.store, args.one, args.rounds, args.threads)))
        return
    if args.store is None:
        args.cache.mkdir(parents=True, exist_ok=True)
        args.store = _store(args.cache / f"twin{args.sites}.zarr", args.sites)
    what = f"{args.rounds} rounds, no early stopping" if args.rounds else "published fits"
    print(f"store {args.store}; {what}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print("GB: resident memory before the fit (the training arrays and table), the highest during the fit, and "
          "the process's peak (ru_maxrss, reading included)")
    print(f"{'variant':<18} {'rows':>9} {'boosters':>8} {'rounds':>7} {'fit s':>8} {'s/round':>8} {'before':>7} "
          f"{'fit peak':>8} {'process':>8}")
    for v in args.variants:
        cmd = [sys.executable, __file__, "--one", v, "--store", str(args.store), "--rounds", str(args.rounds)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        print(f"{v:<18} {r['rows']:>9} {r['boosters']:>8} {r['rounds_built']:>7} {r['fit_s']:>8.1f} "
              f"{r['s_per_round']:>8.3f} {r['before_fit_gb']:>7.2f} {r['fit_peak_gb']:>8.2f} {r['peak_gb']:>8.2f}   "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
