"""Members: one fitted model per seed, trees and networks behind the ``Member`` contract.

``NetworkMember`` trains a torch network with the CarbonBench loss and early stopping;
``TreeMember`` wraps a registered tree library (``cbgrid.models.TREES``). Both predict every
day of a prepared block of sites, in physical units. ``MEMBERS`` maps a model family to its
member class (``cbgrid.contracts.Member``).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cbgrid import models, pipeline
from cbgrid.models import ModelSpec
from cbgrid.pipeline import Prepared, Scaler, TrainingData
from cbgrid.progress import bar as progress_bar
from cbgrid.schema import TARGETS

if TYPE_CHECKING:  # pragma: no cover
    from cbgrid.train import TrainConfig

log = logging.getLogger(__name__)


class NetworkMember:
    """A torch network trained with Adam, the CarbonBench loss and early stopping."""

    family = "network"
    seed_independent = False

    def __init__(self, spec: ModelSpec, n_features: int, hp: dict, cfg: TrainConfig, device: str, seed: int):
        import torch

        self.spec, self.cfg, self.device, self.seed = spec, cfg, device, seed
        hp = dict(hp)
        self.lr = float(hp.pop("lr", 1e-3))
        self.ctor = {"n_features": n_features, "n_static": len(pipeline.STATIC), "n_onehot": pipeline.N_ONEHOT,
                     "n_targets": len(TARGETS), "window": cfg.window, "horizon": cfg.horizon, **hp}
        torch.manual_seed(seed)
        self.net = models.build_network(spec.name, **self.ctor).to(device)

    def _batches(self, t, index, shuffle: bool, batch_size: int | None = None):
        return pipeline.Batches(
            t, index, kind=self.spec.kind, window=self.cfg.window, horizon=self.cfg.horizon,
            batch_size=batch_size or self.cfg.batch_size, shuffle=shuffle, seed=self.seed,
            context=self.cfg.context_windows if self.spec.needs_context else 0,
        )

    def fit(self, data: TrainingData, progress: bool = False) -> pd.DataFrame:
        """Train until the validation loss stops improving; keeps the best epoch's weights."""
        import torch

        from cbgrid.loss import CarbonLoss

        cfg, net = self.cfg, self.net
        t = data.tensors(self.device)
        fit_idx, val_idx = data.index(self.spec.kind, cfg.windows)
        if len(fit_idx) == 0:
            raise ValueError(
                f"no training {'windows' if self.spec.kind == 'temporal' else 'days'}: the training sites have no "
                f"observed GPP/RECO/NEE {'in the last ' + str(cfg.horizon) + ' days of any ' + str(cfg.window) + '-day window' if self.spec.kind == 'temporal' else ''}"
            )
        if len(val_idx) == 0:
            log.warning("no validation samples; early stopping watches the training loss")
        crit = CarbonLoss(data.scaler.y_mean, data.scaler.y_std, cfg.alpha).to(self.device)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        train_b = self._batches(t, fit_idx, shuffle=True)
        val_b = self._batches(t, val_idx, shuffle=False, batch_size=max(4 * cfg.batch_size, 1024))
        best, best_state, best_epoch, wait, rows = math.inf, None, -1, 0, []
        bar = progress_bar(range(cfg.max_epochs), desc=f"{self.spec.name} seed {self.seed}", unit="epoch",
                           progress=progress, leave=False)
        for epoch in bar:
            net.train()
            total = torch.zeros((), device=self.device)
            t0 = time.perf_counter()
            for b in train_b:
                opt.zero_grad(set_to_none=True)
                loss = crit(net(b), b["y"], b["w"])
                aux = getattr(net, "aux_loss", None)
                if aux is not None:
                    loss = loss + aux
                loss.backward()
                opt.step()
                total += loss.detach()
            train_loss = float(total) / max(len(train_b), 1)
            val_loss = self._evaluate(val_b, crit) if len(val_idx) else train_loss
            rows.append({"seed": self.seed, "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                         "seconds": time.perf_counter() - t0})
            bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
            if val_loss < best:
                best, best_epoch, wait = val_loss, epoch, 0
                best_state = copy.deepcopy(net.state_dict())
            else:
                wait += 1
                if wait >= cfg.patience:
                    break
        bar.close()
        if best_state is not None:
            net.load_state_dict(best_state)
        log.info("%s seed %d: best validation loss %.4f at epoch %d of %d", self.spec.name, self.seed, best, best_epoch, len(rows))
        return pd.DataFrame(rows)

    def _evaluate(self, batches, crit) -> float:
        import torch

        self.net.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for b in batches:
                k = len(b["site"])
                total += float(crit(self.net(b), b["y"], b["w"])) * k
                n += k
        return total / max(n, 1)

    def predict(self, block: Prepared, scaler: Scaler) -> np.ndarray:
        """(S, T, 3) physical-unit predictions for every day of a prepared block."""
        import torch

        cfg = self.cfg
        n_sites, n_days, _ = block.x.shape
        if self.spec.kind == "temporal":
            left, right, n_win = pipeline.prediction_windows(n_days, cfg.window, cfg.horizon)
            x = np.pad(block.x, ((0, 0), (left, right), (0, 0)), mode="edge")
            starts = np.arange(n_win) * cfg.horizon
        else:
            x, starts = block.x, np.arange(n_days)
        prep = Prepared(x, block.s, block.onehot)
        index = np.stack(np.meshgrid(np.arange(n_sites), starts, indexing="ij"), axis=-1).reshape(-1, 2)
        batches = self._batches(prep.tensors(self.device), index, shuffle=False,
                                batch_size=4096 if self.spec.kind == "temporal" else 65536)
        self.net.eval()
        outs = []
        with torch.no_grad():
            codes = None
            if self.spec.needs_context and hasattr(self.net, "site_code"):
                # one code per site from its own evenly spaced feature windows
                batches.context = 0
                sites = torch.arange(n_sites, device=batches.data.device)
                ctx = pipeline.Batches(batches.data, index[:1], window=cfg.window, horizon=cfg.horizon,
                                       context=cfg.context_windows).context_windows(sites)
                codes = self.net.site_code(ctx)
            for b in batches:
                if codes is not None:
                    b["code"] = codes.index_select(0, b["site"])
                outs.append(self.net(b).float().cpu().numpy())
        out = np.concatenate(outs) if outs else np.zeros((0, len(TARGETS)), np.float32)
        out = out.reshape(n_sites, -1, len(TARGETS))[:, :n_days]
        return scaler.unscale_targets(out)

    def state(self) -> dict:
        return self.net.state_dict()

    def save(self, stem: Path) -> None:
        import torch

        torch.save({k: v.detach().cpu() for k, v in self.net.state_dict().items()}, f"{stem}.pt")

    def load(self, stem: Path) -> NetworkMember:
        import torch

        p = Path(f"{stem}.pt")
        if not p.exists():
            raise FileNotFoundError(f"the run lacks network weights {p}")
        self.net.load_state_dict(torch.load(p, map_location=self.device, weights_only=True))
        self.net.eval()
        return self


class TreeMember:
    """XGBoost / LightGBM behind the member interface (features + lat/lon per day)."""

    family = "tree"

    def __init__(self, spec: ModelSpec, n_features: int, hp: dict, cfg: TrainConfig, device: str, seed: int):
        self.spec, self.cfg, self.seed = spec, cfg, seed
        hp = dict(hp)
        if "lr" in hp:  # --lr means the learning rate for trees too
            hp["learning_rate"] = hp.pop("lr")
        hp = {k: v for k, v in hp.items() if k not in ("hidden", "dropout", "layers")}
        self.model = models.tree_class(spec.name)(hp, patience=cfg.patience, device=device, threads=cfg.threads)

    @property
    def seed_independent(self) -> bool:
        return not self.model.stochastic

    @staticmethod
    def matrix(x: np.ndarray, s: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Rows (site, day) -> [features, lat, lon]."""
        return np.concatenate([x[index[:, 0], index[:, 1]], s[index[:, 0]]], axis=1)

    def fit(self, data: TrainingData, progress: bool = False) -> pd.DataFrame:
        fit_idx, val_idx = data.index("static", self.cfg.windows)
        if len(fit_idx) == 0:
            raise ValueError("no training days: the training sites have no day with GPP, RECO and NEE observed")
        p, a = data.prepared, data.arrays

        def xyw(idx):
            return self.matrix(p.x, p.s, idx), a.y[idx[:, 0], idx[:, 1]], p.w[idx[:, 0], idx[:, 1]]

        curve = self.model.fit(*xyw(fit_idx), *(xyw(val_idx) if len(val_idx) else (None, None, None)), seed=self.seed)
        return curve.assign(seed=self.seed)

    def predict(self, block: Prepared, scaler: Scaler) -> np.ndarray:
        n_sites, n_days, _ = block.x.shape
        index = np.stack(np.meshgrid(np.arange(n_sites), np.arange(n_days), indexing="ij"), axis=-1).reshape(-1, 2)
        return self.model.predict(self.matrix(block.x, block.s, index)).reshape(n_sites, n_days, len(TARGETS))

    def save(self, stem: Path) -> None:
        self.model.save(stem)

    def load(self, stem: Path) -> TreeMember:
        m = self.model
        self.model = type(m).load(stem, m.params, patience=m.patience, device=m.device, threads=m.threads)
        return self


MEMBERS = {"network": NetworkMember, "tree": TreeMember}
