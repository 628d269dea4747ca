"""The whole published protocol as one benchmark: every registered model, every device present.

At the published scale (>= 474 sites, the twin by default, the Köppen split), for each device
(cpu, and cuda when torch sees one) and each protocol (cbgrid, reference), the script measures:

* networks: the time of ``--batches`` training batches (after two warm-up batches) at the
  published hyperparameters and the protocol's batch size, and of validation/prediction
  forward passes; projected to one epoch from the number of fitting windows (or days);
* trees: one fit of ``--rounds`` boosting rounds on the full training table, each round timed
  inside the library (the median round; the rest of the fit is its setup), projected to the
  1000-round cap (trees without subsampling fit once per split: one fit stands for every seed).

It then prints the projected cost of the published protocol — 10 models × 10 seeds × 2 splits —
with every epoch the protocol allows (100 max; cbgrid stops early, so its figure is an upper
bound; the reference trains all 100, TAM-RL twice) and trees at their 1000-round cap (an upper
bound: early stopping usually ends sooner). The projection is a sum of measured rates, stated as
such; nothing is assumed about a device that is not present.

    python benchmarks/bench_protocol.py --sites 474
    python benchmarks/bench_protocol.py --store twin474.zarr --batches 10 --rounds 40
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def network_rates(name: str, data, cfg, device: str, n_batches: int) -> dict:
    """Seconds per training window and per forward window for one network under ``cfg``."""
    import torch

    from cbgrid import models
    from cbgrid.loss import CarbonLoss
    from cbgrid.members import NetworkMember, Schedule

    spec = models.spec(name)
    hp = models.hyperparameters(name, cfg.split)
    member = NetworkMember(spec, data.prepared.x.shape[-1], hp, cfg, device, seed=cfg.first_seed)
    fit_idx, val_idx = data.index(spec.kind, cfg.windows)
    t = data.tensors(device)
    batches = member._batches(t, fit_idx, shuffle=True)
    crit = CarbonLoss(data.scaler.y_mean, data.scaler.y_std, cfg.alpha, cfg.rules.balance).to(device)
    opt = Schedule.main(cfg.rules, cfg, float(hp.get("lr", 1e-3))).optimizer(member.net.parameters())
    rng = np.random.default_rng(0)
    support = bool(getattr(member.net, "pretrain", None))

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def step(rows):
        b = member._with_support(batches, rows, rng) if support else batches.gather(rows)
        opt.zero_grad(set_to_none=True)
        loss = crit(member.net(b), b["y"], b["w"])
        if getattr(member.net, "aux_loss", None) is not None:
            loss = loss + member.net.aux_loss
        loss.backward()
        opt.step()

    it = batches.iter_rows()
    member.net.train()
    for _ in range(2):
        step(next(it))
    sync()
    rows = [next(it) for _ in range(min(n_batches, len(batches) - 2))]
    t_train = _time(lambda: [step(r) for r in rows] and sync())
    n_train = sum(len(r) for r in rows)
    member.net.eval()
    fwd_b = member._batches(t, val_idx if len(val_idx) else fit_idx, shuffle=False, batch_size=4096)
    fwd_rows = [r for _, r in zip(range(3), fwd_b.iter_rows())]
    with torch.no_grad():
        t_fwd = _time(lambda: [member.net(fwd_b.gather(r)) for r in fwd_rows] and sync())
    return {"train_s_per_sample": t_train / max(n_train, 1), "forward_s_per_sample": t_fwd / max(sum(map(len, fwd_rows)), 1),
            "fit_samples": len(fit_idx), "val_samples": len(val_idx)}


def tree_rate(name: str, data, cfg, rounds: int, hp: dict | None = None) -> dict:
    """Seconds per boosting round (all targets) on the full training table, timed round by
    round inside the library (``TreeModel.round_seconds``): the median round of a ``rounds``-
    round fit without early stopping, and the setup (tables, the first round) as the rest."""
    import dataclasses

    from cbgrid import models
    from cbgrid.members import TreeMember

    cfg = dataclasses.replace(cfg, patience=10**6)
    hp = {**models.hyperparameters(name, cfg.split), **(hp or {}), "n_estimators": rounds}
    member = TreeMember(models.spec(name), data.prepared.x.shape[-1], hp, cfg, "cpu", cfg.first_seed)
    total = _time(lambda: member.fit(data))
    per = member.model.round_seconds()
    boosters = len(member.model.boosters)
    fit_idx, _ = data.index("static", cfg.windows)
    # each booster's first round carries its table setup: the rate is the median of the rest
    s_per_round = boosters * float(np.median(per))
    return {"s_per_round": s_per_round, "setup_s": max(total - s_per_round * rounds, 0.0), "rows": len(fit_idx),
            "boosters": boosters, "fit_s": total}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, default=None, help="a store (default: build a twin of --sites sites)")
    p.add_argument("--sites", type=int, default=474)
    p.add_argument("--batches", type=int, default=10, help="training batches timed per network")
    p.add_argument("--rounds", type=int, default=40, help="boosting rounds timed per tree library")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--protocols", nargs="+", default=["cbgrid", "reference"])
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    from cbgrid import models, pipeline, protocol, splits, store
    from cbgrid.sources import twin

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = None
    if args.store is None:
        tmp = tempfile.TemporaryDirectory()
        args.store = Path(tmp.name) / "twin.zarr"
        t = _time(lambda: store.write_store(twin.twin_store(n_sites=args.sites), args.store, progress=False))
        print(f"built a {args.sites}-site twin store in {t:.0f} s")
    ds = store.open_store(args.store)
    split = splits.make_split(ds, by="koppen", seed=0)
    train_ds = ds.isel(site=np.flatnonzero(np.isin(ds.site.values, splits.train_sites(split))))
    t0 = time.perf_counter()
    arrays = pipeline.read_arrays(train_ds, pipeline.feature_variables(ds, "minimal"))
    print(f"{ds.sizes['site']} sites x {ds.sizes['time']} days; {len(arrays.sites)} training sites read in "
          f"{time.perf_counter() - t0:.1f} s; torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for name in args.protocols:
        cfg0 = protocol.TrainConfig(model="ctlstm", split="koppen", protocol=name).resolved()
        data = pipeline.TrainingData.build(arrays, cfg0.val_fraction, protocol=cfg0.rules, window=cfg0.window)
        for device in devices:
            print(f"\nprotocol {name}, device {device}: batch {cfg0.batch_size}, {cfg0.max_epochs} epochs max")
            print(f"{'model':<18} {'fit samples':>11} {'ms/sample':>10} {'epoch s':>9} {'per seed h':>10} "
                  f"{'protocol h':>10}")
            total = 0.0
            for model in models.available():
                cfg = protocol.TrainConfig(model=model, split="koppen", protocol=name, threads=args.threads).resolved()
                if models.is_tree(model):
                    if device != "cpu":
                        continue
                    r = tree_rate(model, data, cfg, args.rounds)
                    per_fit = r["setup_s"] + r["s_per_round"] * 1000
                    runs = 2  # one fit per split stands for the ten seeds (no subsampling)
                    total += per_fit * runs / 3600
                    print(f"{model:<18} {r['rows']:>11} {1e3 * r['s_per_round']:>10.1f} {'':>9} "
                          f"{per_fit / 3600:>10.2f} {per_fit * runs / 3600:>10.2f}   (ms per round; 1000 rounds max)")
                    continue
                r = network_rates(model, data, cfg, device, args.batches)
                epoch = r["fit_samples"] * r["train_s_per_sample"]
                val = r["val_samples"] * r["forward_s_per_sample"]
                rules = cfg.rules
                n_val = sum(rules.validate_at(e) for e in range(1, cfg.max_epochs + 1))
                phases = 2 if model == "tamrl" and rules.tamrl else 1
                per_seed = phases * (cfg.max_epochs * epoch + n_val * val)
                runs = 10 * 2
                total += per_seed * runs / 3600
                print(f"{model:<18} {r['fit_samples']:>11} {1e3 * r['train_s_per_sample']:>10.3f} {epoch:>9.0f} "
                      f"{per_seed / 3600:>10.2f} {per_seed * runs / 3600:>10.1f}")
            print(f"projected published protocol on {device} (10 models x 10 seeds x 2 splits, every epoch and "
                  f"round allowed): {total:.1f} h")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
