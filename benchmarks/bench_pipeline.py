"""The training data pipeline at the published scale, beside a per-sample pandas pipeline.

Measures, on a store of >= 474 sites (the synthetic twin by default), in one process:

1. reading the minimal feature set + targets through dask into contiguous arrays;
2. building the window index (W = 30, stride 15, targets on the last 15 days; target <= 2 s);
3. batch gathering throughput, windows per second at batch 256 (target >= 700k/s on CPU);
4. the loss call at batch (256, 15, 3) (target <= 0.2 ms), with the weight lookup;
5. one CT-LSTM epoch on the Köppen split's training sites, split into data and model time
   (target: data <= 5 % of the epoch);

each beside a straightforward pandas implementation of the same step (per-site DataFrames,
per-sample ``iloc`` slicing, per-sample weight lookup). The pandas steps are slow, so they run
on a subset of sites or batches and are scaled linearly to the full size; the printout says so.

    python benchmarks/bench_pipeline.py --store twin474.zarr
    python benchmarks/bench_pipeline.py --sites 474            # builds the twin in a temp dir
    python benchmarks/bench_pipeline.py --store twin474.zarr --device cuda
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

W, H, STRIDE, BATCH = 30, 15, 15, 256


def _timeit(fn, repeat: int = 5) -> float:
    """Best wall time of ``repeat`` calls (seconds)."""
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _line(name: str, ours: float, unit: str, pandas_value: float | None = None, note: str = "", target: str = "",
          higher_is_better: bool = False) -> None:
    """One row: our figure, the pandas figure, and how many times better ours is."""
    ratio = " " * 10
    if pandas_value is not None and ours > 0 and pandas_value > 0:
        ratio = f"{(ours / pandas_value if higher_is_better else pandas_value / ours):9.1f}x"
    pv = f"{pandas_value:12.4g}" if pandas_value is not None else " " * 12
    print(f"{name:<38} {ours:12.4g} {pv} {unit:<12} {ratio}  {target:<16} {note}")


# --------------------------------------------------------------------------------------------
# The straightforward pandas pipeline (per site DataFrames, per sample Python)
# --------------------------------------------------------------------------------------------
def pandas_frames(a, sites) -> dict[str, pd.DataFrame]:
    from cbgrid.schema import QC, TARGETS

    frames = {}
    for i in sites:
        df = pd.DataFrame(a.x[i], index=a.time, columns=a.features)
        for k, t in enumerate(TARGETS):
            df[t] = a.y[i, :, k]
        df[QC] = a.qc[i]
        frames[str(a.sites[i])] = df
    return frames


def pandas_window_index(frames: dict[str, pd.DataFrame]) -> list[tuple[str, int]]:
    """Per site: the observed-day mask once, then a Python loop over the windows."""
    from cbgrid.schema import TARGETS

    out = []
    for site, df in frames.items():
        observed = df[list(TARGETS)].notna().all(axis=1)
        for start in range(0, len(df) - W + 1, STRIDE):
            if observed.iloc[start + W - H:start + W].any():
                out.append((site, start))
    return out


class PandasWindows:
    """A per-sample map-style dataset as research code writes it: frames scaled and filled once,
    then per sample an ``iloc`` window, column selections and a per-site lookup."""

    def __init__(self, a, prepared, sites, features):
        from cbgrid.schema import TARGETS

        self.features, self.targets = list(features), list(TARGETS)
        self.frames, self.info = {}, {}
        for i, site in enumerate(sites):
            df = pd.DataFrame(prepared.x[i], index=a.time, columns=self.features)
            df[self.targets] = prepared.y[i]
            df["w"] = prepared.w[i]
            self.frames[site] = df
            self.info[site] = (prepared.s[i], prepared.onehot[i])

    def item(self, site, start):
        import torch

        win = self.frames[site].iloc[start:start + W]
        tgt = win.iloc[W - H:]
        s, onehot = self.info[site]
        return {
            "x": torch.tensor(win[self.features].to_numpy(np.float32)),
            "y": torch.tensor(tgt[self.targets].to_numpy(np.float32)),
            "w": torch.tensor(tgt["w"].to_numpy(np.float32)),
            "s": torch.tensor(s),
            "onehot": torch.tensor(onehot),
        }


def pandas_batches(ds: PandasWindows, index, order):
    import torch

    for i0 in range(0, len(order), BATCH):
        items = [ds.item(*index[int(i)]) for i in order[i0:i0 + BATCH]]
        yield {k: torch.stack([it[k] for it in items]) for k in items[0]}


def pandas_loss(pred, y, site_names, site_table, w_igbp, w_koppen, qc, y_mean, y_std, alpha=0.1):
    """Weights looked up per sample from the site table, then the loss."""
    import torch

    t = site_table.set_index("site")
    w_site = torch.tensor([w_igbp[t.loc[s, "igbp"]] * w_koppen[t.loc[s, "koppen"]] for s in site_names], dtype=torch.float32)
    w = qc * w_site[:, None]
    mse = (w.unsqueeze(-1) * (pred - y) ** 2).mean()
    phys = pred * torch.as_tensor(y_std, dtype=torch.float32) + torch.as_tensor(y_mean, dtype=torch.float32)
    flux = ((phys[..., 2] - (phys[..., 1] - phys[..., 0])) ** 2).mean()
    return mse + alpha * flux


# --------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, default=None, help="an existing store (default: build the twin)")
    ap.add_argument("--sites", type=int, default=474, help="twin sites when building (default 474)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto (gather and epoch run there)")
    ap.add_argument("--pandas-sites", type=int, default=24, help="sites for the pandas window index (scaled up)")
    ap.add_argument("--pandas-batches", type=int, default=6, help="batches for the pandas gather (scaled up)")
    ap.add_argument("--epoch-batches", type=int, default=0, help="cap the CT-LSTM epoch (0: the whole epoch)")
    ap.add_argument("--model-split", default="igbp", help="published CT-LSTM size to use (igbp: 128x1, koppen: 256x2)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")

    import torch

    from cbgrid import models, pipeline, runtime, splits, store, train
    from cbgrid.loss import CarbonLoss
    from cbgrid.schema import KOPPEN_CLASSES

    device = runtime.resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.store
        if path is None:
            from cbgrid.sources import twin

            path = Path(tmp) / "twin.zarr"
            t0 = time.perf_counter()
            store.write_store(twin.twin_store(n_sites=args.sites, start="2000-01-01", end="2024-12-31", seed=0), path, progress=False)
            print(f"built the twin ({args.sites} sites) in {time.perf_counter() - t0:.0f} s")
        ds = store.open_store(path)
        features = pipeline.feature_variables(ds, "minimal")
        n_sites, n_days = ds.sizes["site"], ds.sizes["time"]
        print(f"store {Path(path).name}: {n_sites} sites x {n_days} days, {len(features)} features; device {device}; "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.1f}")

        t0 = time.perf_counter()
        a = pipeline.read_arrays(ds, features)
        t_read = time.perf_counter() - t0
        obs = a.observed
        print(f"{int(obs.sum()):,} observed site-days\n")
        print(f"{'step':<38} {'cbgrid':>12} {'pandas':>12} {'unit':<12} {'gain':>10}  {'target':<16} note")
        _line("read store -> contiguous arrays", t_read, "s", note="dask, all sites, features+targets+QC")

        # 1. window index
        t_idx = _timeit(lambda: pipeline.window_index(obs, W, H, STRIDE), 5)
        idx = pipeline.window_index(obs, W, H, STRIDE)
        sub = np.arange(min(args.pandas_sites, n_sites))
        frames = pandas_frames(a, sub)
        t0 = time.perf_counter()
        p_idx = pandas_window_index(frames)
        t_pidx = (time.perf_counter() - t0) * n_sites / len(sub)
        ours_sub = [(str(a.sites[s]), int(t)) for s, t in idx if s < len(sub)]
        same = ours_sub == p_idx
        _line("window index build", t_idx, "s", t_pidx, f"{len(idx):,} windows; pandas on {len(sub)} sites x{n_sites / len(sub):.1f}; same windows: {same}", "<= 2 s")

        # 2. batch gather
        split = splits.make_split(ds, by="koppen", seed=0)
        tr = np.flatnonzero(pd.Index(a.sites).isin(splits.train_sites(split)))
        data = pipeline.TrainingData.build(a.subset(tr))
        t = data.tensors(device)
        fit_idx, _ = data.index("temporal", train.TrainConfig(model="ctlstm"))
        batches = pipeline.Batches(t, fit_idx, kind="temporal", batch_size=BATCH, shuffle=True, seed=0)

        def epoch_gather():
            n = 0
            for b in batches:
                n += len(b["x"])
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            return n

        epoch_gather()
        t_gather = _timeit(epoch_gather, 3)
        rate = len(fit_idx) / t_gather
        sites_tab = pd.DataFrame({"site": [str(s) for s in data.arrays.sites], "igbp": data.arrays.igbp, "koppen": data.arrays.koppen})
        pidx = [(str(data.arrays.sites[s]), int(st)) for s, st in fit_idx]
        pds = PandasWindows(data.arrays, data.prepared, [str(s) for s in data.arrays.sites], features)
        order = np.random.default_rng(0).permutation(len(pidx))[: args.pandas_batches * BATCH]
        t0 = time.perf_counter()
        for _ in pandas_batches(pds, pidx, order):
            pass
        t_pb = (time.perf_counter() - t0) / args.pandas_batches
        p_rate = BATCH / t_pb
        _line("batch gather (windows/s, batch 256)", rate, "samples/s", p_rate,
              f"{len(fit_idx):,} training windows; pandas over {args.pandas_batches} batches", ">= 700k/s CPU",
              higher_is_better=True)

        # 3. loss
        crit = CarbonLoss(data.scaler.y_mean, data.scaler.y_std).to(device)
        b = next(iter(batches))
        g = torch.Generator().manual_seed(0)
        pred = torch.randn(BATCH, H, 3, generator=g).to(device)

        def loss_call():
            for _ in range(200):
                crit(pred, b["y"], b["w"])
            if device.startswith("cuda"):
                torch.cuda.synchronize()

        t_loss = _timeit(loss_call, 5) / 200
        rows = np.arange(BATCH)

        def gather_w_and_loss():
            for _ in range(50):
                bb = batches.gather(rows)
                crit(pred, bb["y"], bb["w"])

        t_wl = _timeit(gather_w_and_loss, 3) / 50
        names = [str(data.arrays.sites[s]) for s in b["site"].cpu().numpy()]
        qc = b["w"].cpu()
        pcpu = pred.cpu()

        def pandas_call():
            for _ in range(5):
                pandas_loss(pcpu, b["y"].cpu(), names, sites_tab, dict(enumerate(data.weights.igbp)),
                            dict(enumerate(data.weights.koppen)), qc, data.scaler.y_mean, data.scaler.y_std)

        t_ploss = _timeit(pandas_call, 3) / 5
        _line("loss call (256, 15, 3)", t_loss * 1e3, "ms", t_ploss * 1e3, "pandas: per-sample weight lookup (site table) + loss", "<= 0.2 ms")
        _line("batch gather incl. weights + loss", t_wl * 1e3, "ms", None, "one batch: x, y, w, s, onehot, loss")

        # 4. CT-LSTM epoch: data vs model time
        hp = models.hyperparameters("ctlstm", args.model_split)
        lr = hp.pop("lr")
        torch.manual_seed(0)
        net = models.build_network("ctlstm", len(features), 2, pipeline.N_ONEHOT, window=W, horizon=H, **hp).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        net.train()
        cap = args.epoch_batches or len(batches)
        t_data = t_model = 0.0
        n_b = 0
        it = iter(batches)
        while n_b < cap:
            t0 = time.perf_counter()
            try:
                bb = next(it)
            except StopIteration:
                break
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t1 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = crit(net(bb), bb["y"], bb["w"])
            loss.backward()
            opt.step()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            t_data += t1 - t0
            t_model += t2 - t1
            n_b += 1
        scale = len(batches) / n_b
        t_data, t_model = t_data * scale, t_model * scale
        share = t_data / (t_data + t_model)
        p_data = t_pb * len(batches)
        p_share = p_data / (p_data + t_model)
        note = f"{len(batches)} batches, CT-LSTM {hp}" + ("" if n_b == len(batches) else f", timed {n_b} batches x{scale:.1f}")
        _line("CT-LSTM epoch: data time", t_data, "s", p_data, note)
        _line("CT-LSTM epoch: model time", t_model, "s", None)
        _line("CT-LSTM epoch: data share", 100 * share, "% of epoch", 100 * p_share, "pandas share uses the same model time", "<= 5 %")
        print(f"\nKöppen classes in training: {[KOPPEN_CLASSES[k - 1] for k in sorted(set(data.arrays.koppen.tolist()))]}; "
              f"training sites {len(tr)}, load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
