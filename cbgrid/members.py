"""Members: one fitted model per seed, trees and networks behind the ``Member`` contract.

``NetworkMember`` trains a torch network with the CarbonBench loss under the run's protocol
(optimiser, learning-rate schedule, validation schedule, selection, early stopping — see
``cbgrid.protocol``), including the reference's two-phase TAM-RL; ``TreeMember`` wraps a
registered tree library (``cbgrid.models.TREES``). Both predict every day of a prepared block of
sites in physical units: by tiling the axis with stride-``horizon`` windows (cbgrid) or, under
the reference protocol, from the stride-1 window ending on each day (its last step), NaN where
that window lacks features. ``MEMBERS`` maps a model family to its member class.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cbgrid import catalog, models, pipeline, schema
from cbgrid.errors import DataError, InputError, MissingError
from cbgrid.models import ModelSpec
from cbgrid.pipeline import Prepared, Scaler, TrainingData
from cbgrid.progress import bar as progress_bar
from cbgrid.schema import TARGETS, SchemaError
from cbgrid.windows import last_step_days

if TYPE_CHECKING:  # pragma: no cover
    from cbgrid.protocol import Protocol, TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Schedule:
    """How one training phase runs: optimiser, learning-rate steps, when to validate, when to stop."""

    optimiser: str
    lr: float
    weight_decay: float
    lr_step: int | None
    lr_gamma: float
    max_epochs: int
    patience: int | None  # epochs without improvement (counted in validated epochs' strides)
    validate_first: bool
    validate_every: int
    validate_start: int
    selection: str
    keep: str = "best"  # 'best' validated state, or 'last' state

    @classmethod
    def main(cls, rules: Protocol, cfg: TrainConfig, lr: float) -> Schedule:
        return cls(rules.optimiser, lr, rules.weight_decay, rules.lr_step, rules.lr_gamma, cfg.max_epochs,
                   cfg.patience, rules.validate_first, rules.validate_every, rules.validate_every, rules.selection)

    @classmethod
    def tamrl(cls, rules: Protocol, cfg: TrainConfig) -> Schedule:
        t = rules.tamrl
        return cls(t["optimiser"], float(t["lr"]), float(t.get("weight_decay", 0.0)), t.get("lr_step"),
                   float(t.get("lr_gamma", 1.0)), cfg.max_epochs, t.get("patience"), bool(t.get("validate_first", False)),
                   int(t["validate_every"]), int(t.get("validate_start", t["validate_every"])), rules.selection,
                   t.get("keep", "best"))

    def validate_at(self, epoch: int) -> bool:
        """Whether to compute the validation loss after ``epoch`` (1-based)."""
        if self.validate_first and epoch == 1:
            return True
        return epoch >= self.validate_start and (epoch - self.validate_start) % self.validate_every == 0

    def optimizer(self, params):
        import torch

        if self.optimiser == "adamw":
            return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)


class NetworkMember:
    """A torch network trained with the CarbonBench loss under the run's protocol."""

    family = "network"
    seed_independent = False

    def __init__(self, spec: ModelSpec, n_features: int, hp: dict, cfg: TrainConfig, device: str, seed: int,
                 batch_seed: int | None = None):
        import torch

        self.spec, self.cfg, self.device, self.seed = spec, cfg, device, seed
        #: the seed of the batch order (the member's own seed; a grouped ensemble's first seed)
        self.batch_seed = seed if batch_seed is None else int(batch_seed)
        self.rules = cfg.rules
        hp = dict(hp)
        self.lr = float(hp.pop("lr", 1e-3))
        self.ctor = {"n_features": n_features, "n_static": len(pipeline.STATIC),
                     "n_onehot": pipeline.n_onehot(self.rules.onehot), "n_targets": len(TARGETS),
                     "window": cfg.window, "horizon": cfg.horizon, **hp}
        torch.manual_seed(seed)
        self.net = models.build_network(spec.name, architectures=self.rules.architectures, **self.ctor).to(device)

    def _batches(self, t, index, shuffle: bool, batch_size: int | None = None):
        return pipeline.Batches(
            t, index, kind=self.spec.kind, window=self.cfg.window, horizon=self.cfg.horizon,
            batch_size=batch_size or self.cfg.batch_size, shuffle=shuffle, seed=self.batch_seed,
            context=self.cfg.context_windows if self.spec.needs_context else 0,
        )

    def fit(self, data: TrainingData, progress: bool = False) -> pd.DataFrame:
        """Train under the protocol's schedule and keep the selected epoch's weights."""
        import torch

        from cbgrid.loss import CarbonLoss

        cfg = self.cfg
        t = data.tensors(self.device)
        fit_idx, val_idx = self.samples(data)
        crit = CarbonLoss(data.scaler.y_mean, data.scaler.y_std, cfg.alpha, self.rules.balance).to(self.device)
        train_b = self._batches(t, fit_idx, shuffle=True)
        val_b = self._batches(t, val_idx, shuffle=False, batch_size=max(4 * cfg.batch_size, 1024))
        pretrain = getattr(self.net, "pretrain", None)
        curves = []
        if pretrain:
            torch.manual_seed(self.seed)
            first = models.build_network(pretrain, architectures=self.rules.architectures, **self.ctor).to(self.device)
            curves.append(self._train(first, Schedule.main(self.rules, cfg, self.lr), crit, train_b, val_b,
                                      progress, phase=f"pretrain {pretrain}"))
            self.net.load_pretrained(first)
            curves.append(self._train(self.net, Schedule.tamrl(self.rules, cfg), crit, train_b, val_b, progress,
                                      phase=self.spec.name, support=True))
        else:
            curves.append(self._train(self.net, Schedule.main(self.rules, cfg, self.lr), crit, train_b, val_b,
                                      progress, phase=self.spec.name))
        return pd.concat(curves, ignore_index=True)

    def samples(self, data: TrainingData) -> tuple[np.ndarray, np.ndarray]:
        """(fit, validation) sample indices; InputError when there is nothing to fit."""
        cfg = self.cfg
        fit_idx, val_idx = data.index(self.spec.kind, cfg.windows)
        if len(fit_idx) == 0:
            what = (f"{cfg.window}-day windows with observed targets in their last {cfg.horizon} days"
                    if self.spec.kind == "temporal" else "days with GPP, RECO and NEE observed")
            rule = " and complete features (reference protocol)" if self.rules.reference else ""
            raise InputError(f"no training samples: the training sites have no {what}{rule}")
        if len(val_idx) == 0:
            log.warning("no validation samples; model selection watches the training loss")
        return fit_idx, val_idx

    def _train(self, net, sched: Schedule, crit, train_b, val_b, progress: bool, phase: str,
               support: bool = False) -> pd.DataFrame:
        import torch

        opt = sched.optimizer(net.parameters())
        step = torch.optim.lr_scheduler.StepLR(opt, sched.lr_step, sched.lr_gamma) if sched.lr_step else None
        rng = np.random.default_rng([int(self.seed), 1])
        best, best_state, best_epoch, since, rows = math.inf, None, -1, 0, []
        bar = progress_bar(range(1, sched.max_epochs + 1), desc=f"{phase} seed {self.seed}", unit="epoch",
                           progress=progress, leave=False)
        for epoch in bar:
            net.train()
            total, n_batches = torch.zeros((), device=self.device), 0
            t0 = time.perf_counter()
            for idx in train_b.iter_rows():
                b = self._with_support(train_b, idx, rng) if support else train_b.gather(idx)
                opt.zero_grad(set_to_none=True)
                loss = crit(net(b), b["y"], b["w"])
                aux = getattr(net, "aux_loss", None)
                if aux is not None:
                    loss = loss + aux
                loss.backward()
                opt.step()
                total += loss.detach()
                n_batches += 1
            if step is not None:
                step.step()
            train_loss = float(total) / max(n_batches, 1)
            validated = sched.validate_at(epoch)
            val_loss = float("nan")
            if validated:
                val_loss = (self._evaluate(net, val_b, crit, sched.selection, rng if support else None)
                            if len(val_b.index) else train_loss)
            # curves count epochs from 0 (the schedule's rules count them from 1)
            rows.append({"seed": self.seed, "phase": phase, "epoch": epoch - 1, "train_loss": train_loss,
                         "val_loss": val_loss, "seconds": time.perf_counter() - t0})
            bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
            if not validated:
                continue
            if val_loss < best:
                best, best_epoch, since = val_loss, epoch - 1, 0
                if sched.keep == "best":
                    best_state = copy.deepcopy(net.state_dict())
            else:
                since += sched.validate_every
                if sched.patience is not None and since >= sched.patience:
                    break
        bar.close()
        if best_state is not None:
            net.load_state_dict(best_state)
        log.info("%s seed %d: best validation loss %.4f at epoch %d of %d (%s state kept)", phase, self.seed, best,
                 best_epoch, len(rows), sched.keep)
        return pd.DataFrame(rows)

    @staticmethod
    def _with_support(batches, idx, rng) -> dict:
        b = batches.gather(idx)
        sup = batches.gather(batches.same_site_rows(idx, rng))
        b.update(support_x=sup["x"], support_s=sup["s"], support_onehot=sup["onehot"])
        return b

    def _evaluate(self, net, batches, crit, selection: str, rng=None) -> float:
        import torch

        net.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for idx in batches.iter_rows():
                b = self._with_support(batches, idx, rng) if rng is not None else batches.gather(idx)
                w = b["w"] if selection == "weighted" else (b["w"] > 0).to(b["w"].dtype)
                k = len(b["site"])
                total += float(crit(net(b), b["y"], w)) * k
                n += k
        return total / max(n, 1)

    def predict(self, block: Prepared, scaler: Scaler) -> np.ndarray:
        """(S, T, 3) physical-unit predictions for every day of a prepared block."""
        import torch

        cfg = self.cfg
        n_sites, n_days, _ = block.x.shape
        last_step = self.rules.test_days == "last_step"
        keep = None
        if self.spec.kind == "temporal" and last_step:
            starts = np.arange(0, max(n_days - cfg.window + 1, 0))
            x = block.x
            keep = last_step_days(block.complete if block.complete is not None else np.ones((n_sites, n_days), bool),
                                  cfg.window)
        elif self.spec.kind == "temporal":
            left, right, n_win = pipeline.prediction_windows(n_days, cfg.window, cfg.horizon)
            x = np.pad(block.x, ((0, 0), (left, right), (0, 0)), mode="edge")
            starts = np.arange(n_win) * cfg.horizon
        else:
            x, starts = block.x, np.arange(n_days)
            keep = block.complete
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
                out = self.net(b)
                outs.append((out[:, -1] if last_step and self.spec.kind == "temporal" else out).float().cpu().numpy())
        out = np.concatenate(outs) if outs else np.zeros((0, len(TARGETS)), np.float32)
        if last_step and self.spec.kind == "temporal":
            full = np.full((n_sites, n_days, len(TARGETS)), np.nan, np.float32)
            if starts.size:
                full[:, cfg.window - 1:] = out.reshape(n_sites, starts.size, len(TARGETS))
            out = full
        else:
            out = out.reshape(n_sites, -1, len(TARGETS))[:, :n_days]
        out = scaler.unscale_targets(out)
        if keep is not None:
            out[~keep] = np.nan
        return out

    def state(self) -> dict:
        """The network's parameters and buffers."""
        return self.net.state_dict()

    def save(self, stem: Path) -> None:
        """Write ``<stem>.pt`` (CPU tensors)."""
        import torch

        torch.save({k: v.detach().cpu() for k, v in self.net.state_dict().items()}, f"{stem}.pt")

    def load(self, stem: Path) -> NetworkMember:
        """Read ``<stem>.pt``; returns self."""
        import torch

        p = Path(f"{stem}.pt")
        if not p.exists():
            raise MissingError(f"the run lacks network weights {p}")
        try:
            state = torch.load(p, map_location=self.device, weights_only=True)
        except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as e:  # a damaged file
            raise DataError(f"{p}: not readable network weights ({' '.join(str(e).split())[:160]}); retrain the run") from e
        try:
            self.net.load_state_dict(state)
        except RuntimeError as e:  # missing/unexpected keys or shape mismatch
            first = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
            raise SchemaError(
                f"{p}: the weights do not match the network its run's config.json describes ({first[:200]}); "
                "restore the run's config.json or retrain the run"
            ) from e
        self.net.eval()
        return self


def ensemble_mode(cfg: TrainConfig, device: str) -> str:
    """How the seed ensemble of ``cfg`` trains on ``device``: 'grouped' or 'sequential'
    (``TrainConfig.ensemble``; 'auto' groups on CUDA, where one grouped network per batch beats
    K small ones, and stays sequential on the CPU, where it does not).

    >>> from cbgrid.protocol import TrainConfig
    >>> ensemble_mode(TrainConfig(model="ctlstm"), "cuda"), ensemble_mode(TrainConfig(model="ctlstm"), "cpu")
    ('grouped', 'sequential')
    >>> ensemble_mode(TrainConfig(model="xgboost", ensemble="grouped"), "cuda")
    Traceback (most recent call last):
    cbgrid.errors.InputError: ensemble 'grouped': xgboost has no grouped form (mlp, lstm, ctlstm, gru, ctgru have); use --ensemble sequential or auto
    """
    from cbgrid.models.grouped import GROUPED

    if cfg.ensemble not in ("auto", "grouped", "sequential"):
        raise InputError(f"ensemble is {cfg.ensemble!r}; use auto, grouped or sequential (--ensemble)")
    if cfg.ensemble == "sequential" or (cfg.ensemble == "auto" and not str(device).startswith("cuda")):
        return "sequential"
    ok = not models.is_tree(cfg.model) and models.network_class(cfg.model, cfg.rules.architectures) in GROUPED
    if cfg.ensemble == "grouped" and not ok:
        names = [n for n in models.available() if not models.is_tree(n) and models.network_class(n) in GROUPED]
        raise InputError(f"ensemble 'grouped': {cfg.model} has no grouped form ({', '.join(names)} have); "
                         "use --ensemble sequential or auto")
    return "grouped" if ok and cfg.seeds > 1 else "sequential"


def groupable(members: list) -> bool:
    """Whether ``members`` can train as one grouped network (``cbgrid.models.grouped``): networks
    of a class with a grouped form, trained in one phase (not TAM-RL's two)."""
    from cbgrid.models.grouped import groupable as net_groupable

    return bool(members) and all(isinstance(m, NetworkMember) and net_groupable(m.net)
                                 and not getattr(m.net, "pretrain", None) for m in members)


def fit_grouped(members: list[NetworkMember], data: TrainingData, progress: bool = False) -> pd.DataFrame:
    """Train the members of one model and split together: one grouped network
    (``cbgrid.models.grouped``) sees every batch once for all of them.

    Each member keeps its own initial weights (its seed), its own optimiser state (Adam/AdamW are
    element-wise over the stacked parameters), its own validation losses, best epoch and early
    stop; a member that stops is out of the curves and keeps the weights it stopped with (its
    best epoch's), while the others go on. What the members share is the batch order: the
    first member's seed shuffles every epoch for all (``batch_seed``), so each member ends as
    ``NetworkMember.fit`` with that ``batch_seed`` ends, up to floating-point rounding (and to
    the dropout masks, which are drawn for the whole group). The trained weights are written
    back into each member's own network; returns the curves of every member.
    """
    import torch

    from cbgrid.loss import CarbonLoss
    from cbgrid.models.grouped import group

    if not groupable(members):
        raise InputError("these members cannot train as one grouped network; see cbgrid.models.grouped")
    first = members[0]
    cfg, device, rules = first.cfg, first.device, first.rules
    for m in members:
        m.batch_seed = first.seed
    fit_idx, val_idx = first.samples(data)
    t = data.tensors(device)
    crit = CarbonLoss(data.scaler.y_mean, data.scaler.y_std, cfg.alpha, rules.balance).to(device)
    train_b = first._batches(t, fit_idx, shuffle=True)
    val_b = first._batches(t, val_idx, shuffle=False, batch_size=max(4 * cfg.batch_size, 1024))
    net = group([m.net for m in members])
    sched = Schedule.main(rules, cfg, first.lr)
    opt = sched.optimizer(net.parameters())
    step = torch.optim.lr_scheduler.StepLR(opt, sched.lr_step, sched.lr_gamma) if sched.lr_step else None
    k = len(members)
    seeds = [m.seed for m in members]
    best = np.full(k, np.inf)
    best_epoch, since = np.full(k, -1), np.zeros(k, int)
    active, has_best = np.ones(k, bool), np.zeros(k, bool)
    best_params = {n: p.detach().clone() for n, p in net.named_parameters()}
    stopped_params = {n: p.detach().clone() for n, p in net.named_parameters()}
    rows = []
    bar = progress_bar(range(1, sched.max_epochs + 1), desc=f"{first.spec.name} seeds {seeds[0]}-{seeds[-1]} grouped",
                       unit="epoch", progress=progress, leave=False)
    for epoch in bar:
        net.train()
        total, n_batches = torch.zeros(k, device=device), 0
        t0 = time.perf_counter()
        for idx in train_b.iter_rows():
            b = train_b.gather(idx)
            opt.zero_grad(set_to_none=True)
            losses = crit.per_member(net(b), b["y"], b["w"])
            losses.sum().backward()
            opt.step()
            total += losses.detach()
            n_batches += 1
        if step is not None:
            step.step()
        train_loss = total.cpu().numpy().astype(float) / max(n_batches, 1)
        validated = sched.validate_at(epoch)
        val_loss = np.full(k, np.nan)
        if validated:
            val_loss = _evaluate_grouped(net, val_b, crit, sched.selection) if len(val_b.index) else train_loss
        seconds = time.perf_counter() - t0
        rows += [{"seed": seeds[j], "phase": first.spec.name, "epoch": epoch - 1, "train_loss": train_loss[j],
                  "val_loss": val_loss[j], "seconds": seconds} for j in np.flatnonzero(active)]
        bar.set_postfix(active=int(active.sum()), val=f"{np.nanmin(np.where(active, val_loss, np.nan), initial=np.inf):.4f}")
        if not validated:
            continue
        improved = active & (val_loss < best)
        best[improved], best_epoch[improved], since[improved] = val_loss[improved], epoch - 1, 0
        has_best |= improved
        worse = active & ~improved
        since[worse] += sched.validate_every
        stop = worse & (since >= sched.patience) if sched.patience is not None else np.zeros(k, bool)
        for mask, snapshot in ((improved, best_params), (stop, stopped_params)):
            if mask.any():
                sel = torch.as_tensor(np.flatnonzero(mask), device=device)
                for n, p in net.named_parameters():
                    snapshot[n].index_copy_(0, sel, p.detach().index_select(0, sel))
        active &= ~stop
        if not active.any():
            break
    bar.close()
    live = {n: p.detach() for n, p in net.named_parameters()}
    for j, m in enumerate(members):
        src = best_params if has_best[j] else (stopped_params if not active[j] else live)
        m.net.load_state_dict(m.net.state_dict() | net.member_state(j, src))
        log.info("%s seed %d (grouped): best validation loss %.4f at epoch %d", first.spec.name, m.seed, best[j],
                 best_epoch[j])
    return pd.DataFrame(rows)


def _evaluate_grouped(net, batches, crit, selection: str) -> np.ndarray:
    """(K,) each member's validation loss: ``NetworkMember._evaluate`` for a grouped network."""
    import torch

    net.eval()
    total, n = None, 0
    with torch.no_grad():
        for idx in batches.iter_rows():
            b = batches.gather(idx)
            w = b["w"] if selection == "weighted" else (b["w"] > 0).to(b["w"].dtype)
            rows = len(b["site"])
            part = crit.per_member(net(b), b["y"], w).double() * rows
            total = part if total is None else total + part
            n += rows
    return total.cpu().numpy() / max(n, 1)


#: The reference's categorical columns: (store coordinate, column name, the classes it knows).
REFERENCE_CATEGORICALS = (("igbp", "IGBP", schema.REFERENCE_IGBP), ("koppen", "Koppen", schema.REFERENCE_KOPPEN),
                          ("koppen_detailed", "Koppen_short", schema.REFERENCE_KOPPEN_DETAILED))


def frame_classes(names: np.ndarray, frame: np.ndarray, vocab) -> list[str]:
    """The sorted classes that the sites ``frame`` (bool per site) hold: the categories pandas
    ``astype('category')`` gives a table of those sites (names outside ``vocab`` are missing).

    >>> frame_classes(np.array(["WET", "CRO", "GRA"]), np.array([True, False, True]), ("CRO", "GRA", "WET"))
    ['GRA', 'WET']
    """
    return sorted({str(n) for n in np.asarray(names, object)[np.asarray(frame, bool)] if n in vocab})


def read_by_code(names: np.ndarray, frame: np.ndarray, trained: list[str], vocab) -> np.ndarray:
    """Each site's class as a library that reads a categorical's codes sees it in a table of the
    sites ``frame``: the training class whose code is the site's code in that table (codes past
    the training classes are classes the trees never saw); None outside the frame.

    A test table without 'SNO' shifts every later class by one code:

    >>> read_by_code(np.array(["WAT", "WET", "CRO"]), np.ones(3, bool), ["CRO", "SNO", "WAT", "WET"],
    ...              ("CRO", "SNO", "WAT", "WET")).tolist()
    ['SNO', 'WAT', 'CRO']
    """
    names = np.asarray(names, object)
    own = frame_classes(names, frame, vocab)
    unseen = [c for c in vocab if c not in trained]
    seen = {c: trained[i] if i < len(trained) else unseen[i - len(trained)] for i, c in enumerate(own)}
    frame = np.asarray(frame, bool)
    return np.array([seen.get(n) if f else None for n, f in zip(names, frame)], object)


def shifted(names: np.ndarray, fitted: np.ndarray, frame: np.ndarray, vocab) -> np.ndarray:
    """Per site: whether trees fitted on the sites ``fitted`` (bool per site) see it as another
    class in a table of the sites ``frame`` coded by its own classes.

    >>> shifted(np.array(["SNO", "WAT", "CRO"]), np.array([True, False, True]), np.array([False, True, True]),
    ...         ("CRO", "SNO", "WAT")).tolist()
    [False, True, False]
    """
    names = np.asarray(names, object)
    read = read_by_code(names, frame, frame_classes(names, fitted, vocab), vocab)
    return np.asarray(frame, bool) & (read != names)


class TreeMember:
    """A registered tree library behind the member interface.

    cbgrid's inputs are the features and lat/lon of a day, its targets physical, its instance
    weights the networks' loss weights. The reference's (``trees.inputs: categorical``) are lat,
    lon, IGBP, Köppen and the detailed Köppen class (pandas categoricals, which XGBoost and
    LightGBM take natively), then the MODIS and ERA5-Land features; its targets standardised; its
    weights QC.clip(0.01, 1) × class weights normalised to mean 1, the validation unweighted.

    The reference builds its fitting, validation and test tables separately and each codes its
    categoricals by the classes it holds. LightGBM maps a table's class names back to the
    training classes; XGBoost before 3.1 read the codes, so a test site whose code belongs to
    another training class was predicted as that class (``trees.categories: frame_codes``, the
    published XGBoost scores; ``names``: every table by class name). The training classes are
    kept beside the boosters (``<stem>-classes.json``) to code later test tables.
    """

    family = "tree"

    def __init__(self, spec: ModelSpec, n_features: int, hp: dict, cfg: TrainConfig, device: str, seed: int):
        self.spec, self.cfg, self.seed = spec, cfg, seed
        self.rules = cfg.rules
        self.trees = dict(self.rules.trees)
        hp = dict(hp)
        if "lr" in hp:  # --lr means the learning rate for trees too
            hp["learning_rate"] = hp.pop("lr")
        hp = {k: v for k, v in hp.items() if k not in ("hidden", "dropout", "layers")}
        if self.trees.get("max_leaves"):
            hp.setdefault("max_leaves", int(self.trees["max_leaves"]))
        self.model = models.tree_class(spec.name)(hp, patience=cfg.patience, device=device, threads=cfg.threads,
                                                  multi_output=bool(self.trees.get("multi_output")),
                                                  keep=self.trees.get("keep", "best"))
        #: column -> the training table's classes, when tables are coded by their own classes
        self.trained_classes: dict[str, list[str]] | None = None

    @property
    def frame_coded(self) -> bool:
        """Whether each table reaches the trees coded by its own classes (``frame_codes``)."""
        return (self.trees.get("inputs") == "categorical" and self.trees.get("categories") == "frame_codes"
                and self.model.reads_codes)

    @property
    def seed_independent(self) -> bool:
        return not self.model.stochastic

    def matrix(self, p: Prepared, index: np.ndarray, features: list[str], frame: np.ndarray | None = None):
        """Rows (site, day) -> the model's inputs: [features, lat, lon] or the reference's table.
        ``frame`` (bool per site of ``p``): the sites of the table these rows belong to, when it
        is coded by its own classes (``frame_coded``); None: by class name."""
        if self.trees.get("inputs") != "categorical":
            return np.concatenate([p.x[index[:, 0], index[:, 1]], p.s[index[:, 0]]], axis=1)
        site = index[:, 0]
        table = {"lat": p.s[site, 0], "lon": p.s[site, 1]}
        for col, (name, label, vocab) in enumerate(REFERENCE_CATEGORICALS):
            names = schema.decode(name, p.codes[:, col])
            if frame is not None and self.trained_classes is not None:
                names = read_by_code(names, frame, self.trained_classes[label], vocab)
            table[label] = pd.Categorical(names[site], categories=list(vocab))
        modis = set(catalog.modis_bands())
        order = [i for i, f in enumerate(features) if f in modis] + [i for i, f in enumerate(features) if f not in modis]
        x = p.x[index[:, 0], index[:, 1]]
        for i in order:
            table[features[i]] = x[:, i]
        return pd.DataFrame(table)

    def fit(self, data: TrainingData, progress: bool = False) -> pd.DataFrame:
        """Fit on the training days; the validation part stops the boosting."""
        fit_idx, val_idx = data.index("static", self.cfg.windows)
        if len(fit_idx) == 0:
            raise InputError("no training days: the training sites have no day with GPP, RECO and NEE observed")
        p, a = data.prepared, data.arrays
        scaled = self.trees.get("targets") == "scaled"
        qc_clip = self.trees.get("weights") == "qc_clip"
        site_w = data.weights.site(a.igbp, a.koppen)

        def xyw(idx, validation: bool, frame=None):
            s, d = idx[:, 0], idx[:, 1]
            y = p.y[s, d] if scaled else a.y[s, d]
            if not qc_clip:
                w = p.w[s, d]
            elif validation:
                w = None
            else:
                w = np.clip(a.qc[s, d], 0.01, 1.0) * site_w[s]
                w = (w / w.mean()).astype(np.float32)
            return self.matrix(p, idx, a.features, frame), y, w

        n_sites = len(p.x)
        val_frame = None
        if self.frame_coded:  # the fitting table's classes code the other tables
            fit_sites = np.isin(np.arange(n_sites), fit_idx[:, 0])
            self.trained_classes = {label: frame_classes(schema.decode(name, p.codes[:, col]), fit_sites, vocab)
                                    for col, (name, label, vocab) in enumerate(REFERENCE_CATEGORICALS)}
            val_frame = np.isin(np.arange(n_sites), val_idx[:, 0])
        val = xyw(val_idx, True, val_frame) if len(val_idx) else (None, None, None)
        curve = self.model.fit(*xyw(fit_idx, False), *val, seed=self.seed)
        return curve.assign(seed=self.seed)

    def predict(self, block: Prepared, scaler: Scaler) -> np.ndarray:
        """(S, T, 3) physical-unit predictions for every day of a prepared block (NaN where the
        protocol's features are incomplete)."""
        n_sites, n_days, _ = block.x.shape
        index = np.stack(np.meshgrid(np.arange(n_sites), np.arange(n_days), indexing="ij"), axis=-1).reshape(-1, 2)
        # a block with test targets is the reference's test table; grid cells are read by name
        frame = block.scored if self.frame_coded else None
        out = self.model.predict(self.matrix(block, index, list(scaler.features), frame))
        out = out.reshape(n_sites, n_days, len(TARGETS))
        if self.trees.get("targets") == "scaled":
            out = scaler.unscale_targets(out)
        if block.complete is not None:
            out[~block.complete] = np.nan
        return out

    def save(self, stem: Path) -> None:
        """Write the boosters beside ``stem`` (and the training classes, when tables are coded by
        their own classes)."""
        self.model.save(stem)
        if self.trained_classes is not None:
            Path(f"{stem}-classes.json").write_text(json.dumps(self.trained_classes, indent=1))

    def load(self, stem: Path) -> TreeMember:
        """Read the boosters written by ``save``; returns self."""
        m = self.model
        self.model = type(m).load(stem, m.params, patience=m.patience, device=m.device, threads=m.threads,
                                  multi_output=m.multi_output, keep=m.keep)
        classes = Path(f"{stem}-classes.json")
        if self.frame_coded:
            if not classes.exists():
                raise MissingError(f"the run lacks {classes}, the training classes its trees read test tables by; "
                                   "copy the whole run directory or retrain the run")
            self.trained_classes = json.loads(classes.read_text())
        return self


MEMBERS = {"network": NetworkMember, "tree": TreeMember}
