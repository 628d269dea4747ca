"""The whole published protocol as one benchmark: every registered model, every device present.

At the published scale (>= 474 sites, the twin by default, the Köppen split), for each device
(cpu, and cuda when torch sees one) and each protocol (cbgrid, reference), the script measures:

* networks: the time of ``--batches`` training batches (after two warm-up batches) at the
  published hyperparameters and the protocol's batch size, and of validation/prediction
  forward passes; projected to one epoch from the number of fitting windows (or days); the data
  share of a step (its batch gather alone over the whole step) with the device's gather and with
  the device-resident gather (``resid. %``: index arithmetic on tensors, what a GPU runs); and,
  for the networks with a grouped form, ``--members`` seeds trained as one grouped network
  (``--group-batches`` batches) and the ratio of its time to that many sequential members;
  where a run on the device would group (``members.ensemble_mode``: CUDA) the projection uses it;
* trees: one fit of ``--rounds`` boosting rounds on the full training table, each round timed
  inside the library (the median round; the rest of the fit is its setup), projected to the
  1000-round cap (trees without subsampling fit once per split: one fit stands for every seed).

It then prints the projected cost of the published protocol — 10 models × 10 seeds × 2 splits —
with every epoch the protocol allows (100 max; cbgrid stops early, so its figure is an upper
bound; the reference trains all 100, TAM-RL twice) and trees at their 1000-round cap (an upper
bound: early stopping usually ends sooner). The projection is a sum of measured rates, stated as
such; nothing is assumed about a device that is not present.

    python benchmarks/bench_protocol.py --sites 474
    python benchmarks/bench_protocol.py --store twin474.zarr --batches 10 --rounds 40 --group-batches 3
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


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def network_rates(name: str, data, cfg, device: str, n_batches: int, members: int = 0, group_batches: int = 3) -> dict:
    """Seconds per training window and per forward window for one network under ``cfg``; the
    data share of a training step (gathering its batch alone, over the step with the gather),
    with the protocol's gather on ``device`` and with the device-resident gather
    (``Batches(method="tensor")``: index arithmetic on tensors, what a GPU runs); with
    ``members`` > 1 and a network with a grouped form, the same for ``members`` seeds trained as
    one grouped network (``cbgrid.models.grouped``), timed over ``group_batches`` batches."""
    import torch

    from cbgrid import models, pipeline
    from cbgrid.loss import CarbonLoss
    from cbgrid.members import NetworkMember, Schedule, groupable
    from cbgrid.models.grouped import group

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
    _sync(device)
    rows = [next(it) for _ in range(min(n_batches, len(batches) - 2))]
    t_train = _time(lambda: [step(r) for r in rows] and _sync(device))
    n_train = sum(len(r) for r in rows)
    t_data = _time(lambda: [batches.gather(r) for r in rows] and _sync(device))
    resident = pipeline.Batches(t, fit_idx, kind=spec.kind, window=cfg.window, horizon=cfg.horizon,
                                batch_size=cfg.batch_size, shuffle=True, seed=0, method="tensor",
                                context=cfg.context_windows if spec.needs_context else 0)
    t_resident = _time(lambda: [resident.gather(r) for r in rows] and _sync(device))
    member.net.eval()
    fwd_b = member._batches(t, val_idx if len(val_idx) else fit_idx, shuffle=False, batch_size=4096)
    fwd_rows = [r for _, r in zip(range(3), fwd_b.iter_rows())]
    with torch.no_grad():
        t_fwd = _time(lambda: [member.net(fwd_b.gather(r)) for r in fwd_rows] and _sync(device))
    out = {"train_s_per_sample": t_train / max(n_train, 1), "forward_s_per_sample": t_fwd / max(sum(map(len, fwd_rows)), 1),
           "fit_samples": len(fit_idx), "val_samples": len(val_idx), "data_share": t_data / t_train,
           "resident_data_share": t_resident / (t_train - t_data + t_resident)}
    ms = [NetworkMember(spec, data.prepared.x.shape[-1], hp, cfg, device, seed=cfg.first_seed + k) for k in range(members)]
    if members < 2 or not groupable(ms):
        return out
    net = group([m.net for m in ms])
    gopt = Schedule.main(cfg.rules, cfg, float(hp.get("lr", 1e-3))).optimizer(net.parameters())

    def gstep(r):
        b = batches.gather(r)
        gopt.zero_grad(set_to_none=True)
        crit.per_member(net(b), b["y"], b["w"]).sum().backward()
        gopt.step()

    net.train()
    gstep(rows[0])
    _sync(device)
    grows = rows[1:1 + group_batches] or rows[:1]
    t_group = _time(lambda: [gstep(r) for r in grows] and _sync(device))
    net.eval()
    with torch.no_grad():
        t_gfwd = _time(lambda: [net(fwd_b.gather(r)) for r in fwd_rows[:1]] and _sync(device))
    out.update(group_members=members, group_train_s_per_sample=t_group / sum(map(len, grows)),
               group_forward_s_per_sample=t_gfwd / len(fwd_rows[0]))
    out["group_ratio"] = out["group_train_s_per_sample"] / (members * out["train_s_per_sample"])
    return out


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
    p.add_argument("--cache", type=Path, default=None, help="keep the built twin here and reuse it")
    p.add_argument("--sites", type=int, default=474)
    p.add_argument("--batches", type=int, default=10, help="training batches timed per network")
    p.add_argument("--rounds", type=int, default=40, help="boosting rounds timed per tree library")
    p.add_argument("--members", type=int, default=10, help="seeds of a grouped ensemble (the published 10)")
    p.add_argument("--group-batches", type=int, default=3, help="training batches timed per grouped ensemble")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--protocols", nargs="+", default=["cbgrid", "reference"])
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    from cbgrid import models, pipeline, protocol, splits, store
    from cbgrid.members import ensemble_mode
    from cbgrid.sources import twin

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = None
    if args.store is None and args.cache is not None and (args.cache / f"twin{args.sites}.zarr").exists():
        args.store = args.cache / f"twin{args.sites}.zarr"
    if args.store is None:
        if args.cache is None:
            tmp = tempfile.TemporaryDirectory()
        args.cache = args.cache or Path(tmp.name)
        args.cache.mkdir(parents=True, exist_ok=True)
        args.store = args.cache / f"twin{args.sites}.zarr"
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
            print(f"\nprotocol {name}, device {device}: batch {cfg0.batch_size}, {cfg0.max_epochs} epochs max; "
                  f"load average {os.getloadavg()[0]:.1f}")
            print(f"{'model':<18} {'fit samples':>11} {'ms/sample':>10} {'epoch s':>9} {'data %':>7} {'resid. %':>8} "
                  f"{'per seed h':>10} {'protocol h':>10}  grouped ({args.members} seeds): ms/sample, ratio to sequential")
            total = 0.0
            for model in models.available():
                cfg = protocol.TrainConfig(model=model, split="koppen", protocol=name, threads=args.threads,
                                           seeds=args.members).resolved()
                if models.is_tree(model):
                    if device != "cpu":
                        continue
                    r = tree_rate(model, data, cfg, args.rounds)
                    per_fit = r["setup_s"] + r["s_per_round"] * 1000
                    runs = 2  # one fit per split stands for the ten seeds (no subsampling)
                    total += per_fit * runs / 3600
                    print(f"{model:<18} {r['rows']:>11} {1e3 * r['s_per_round']:>10.1f} {'':>9} {'':>7} {'':>8} "
                          f"{per_fit / 3600:>10.2f} {per_fit * runs / 3600:>10.2f}   (ms per round of {r['boosters']} "
                          f"booster(s), median of {args.rounds}; setup {r['setup_s']:.0f} s; 1000 rounds max)", flush=True)
                    continue
                r = network_rates(model, data, cfg, device, args.batches, args.members, args.group_batches)
                rules = cfg.rules
                n_val = sum(rules.validate_at(e) for e in range(1, cfg.max_epochs + 1))
                phases = 2 if model == "tamrl" and rules.tamrl else 1
                epoch = r["fit_samples"] * r["train_s_per_sample"]
                per_seed = phases * (cfg.max_epochs * epoch + n_val * r["val_samples"] * r["forward_s_per_sample"])
                runs = 10 * 2
                grouped = ""
                if "group_ratio" in r:
                    grouped = f"{1e3 * r['group_train_s_per_sample']:.3f}, {r['group_ratio']:.2f}"
                    if ensemble_mode(cfg, device) == "grouped":  # what a run on this device does
                        g_epoch = r["fit_samples"] * r["group_train_s_per_sample"]
                        g_val = r["val_samples"] * r["group_forward_s_per_sample"]
                        per_seed = (cfg.max_epochs * g_epoch + n_val * g_val) / r["group_members"]
                        grouped += " (used)"
                total += per_seed * runs / 3600
                print(f"{model:<18} {r['fit_samples']:>11} {1e3 * r['train_s_per_sample']:>10.3f} {epoch:>9.0f} "
                      f"{100 * r['data_share']:>7.2f} {100 * r['resident_data_share']:>8.2f} "
                      f"{per_seed / 3600:>10.2f} {per_seed * runs / 3600:>10.1f}  {grouped}", flush=True)
            print(f"projected published protocol on {device} (10 models x 10 seeds x 2 splits, every epoch and "
                  f"round allowed): {total:.1f} h")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
