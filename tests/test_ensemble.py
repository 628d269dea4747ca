"""Seed ensembles trained together: grouped networks give each member the sequential result."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cbgrid import models, pipeline, splits, store, train
from cbgrid.errors import InputError
from cbgrid.members import NetworkMember, ensemble_mode, fit_grouped, groupable
from cbgrid.models.grouped import GROUPED, group
from cbgrid.protocol import TrainConfig

pytestmark = pytest.mark.usefixtures("torch_one_thread")

COVERED = ["mlp", "lstm", "ctlstm", "gru", "ctgru"]


def _batch(kind: str, n: int = 7, window: int = 30, n_features: int = 5, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, window, n_features, generator=g) if kind == "temporal" else torch.randn(n, n_features, generator=g)
    return {"x": x, "s": torch.randn(n, 2, generator=g), "onehot": torch.rand(n, 22, generator=g).round()}


@pytest.mark.parametrize("name", COVERED)
@pytest.mark.parametrize("layers", [1, 2])
def test_grouped_forward_is_each_members_forward(name, layers):
    nets = []
    for seed in range(3):
        torch.manual_seed(seed)
        nets.append(models.build_network(name, 5, 2, 22, hidden=12, layers=layers, dropout=0.3).eval())
    g = group(nets).eval()
    b = _batch(models.spec(name).kind)
    out = g(b)
    for k, net in enumerate(nets):
        with torch.no_grad():
            torch.testing.assert_close(out[k], net(b), rtol=1e-5, atol=1e-6)
        state = g.member_state(k)
        assert state.keys() <= net.state_dict().keys()
        for key, v in state.items():
            torch.testing.assert_close(v, net.state_dict()[key])


def test_grouped_gradients_are_each_members_gradients():
    nets = []
    for seed in range(2):
        torch.manual_seed(seed)
        nets.append(models.build_network("ctlstm", 5, 2, 22, hidden=8, layers=2, dropout=0.0))
    g = group(nets)
    b = _batch("temporal")
    target = torch.randn(7, 15, 3)
    (g(b) - target).square().mean(dim=(1, 2, 3)).sum().backward()
    for k, net in enumerate(nets):
        (net(b) - target).square().mean().backward()
        for mine, theirs in g.names.items():
            torch.testing.assert_close(getattr(g, mine).grad[k], dict(net.named_parameters())[theirs].grad,
                                       rtol=1e-4, atol=1e-6)


def test_only_the_covered_networks_group():
    assert {c.__name__ for c in GROUPED} == {"MLP", "LSTM", "CTLSTM", "GRU", "CTGRU"}
    with pytest.raises(InputError, match="no grouped form"):
        group([models.build_network("transformer", 5, 2, 22, hidden=8, nhead=2)])
    with pytest.raises(InputError, match="one shape"):
        group([models.build_network("lstm", 5, 2, 22, hidden=8), models.build_network("lstm", 5, 2, 22, hidden=4)])
    assert ensemble_mode(TrainConfig(model="ctlstm"), "cpu") == "sequential"
    assert ensemble_mode(TrainConfig(model="ctlstm"), "cuda") == "grouped"
    assert ensemble_mode(TrainConfig(model="ctlstm", ensemble="grouped"), "cpu") == "grouped"
    assert ensemble_mode(TrainConfig(model="ctlstm", seeds=1), "cuda") == "sequential"
    assert ensemble_mode(TrainConfig(model="tamrl"), "cuda") == "sequential"
    assert ensemble_mode(TrainConfig(model="ctlstm", protocol="reference"), "cuda") == "sequential"
    with pytest.raises(InputError, match="no grouped form"):
        ensemble_mode(TrainConfig(model="transformer", ensemble="grouped"), "cpu")


@pytest.fixture(scope="module")
def twin_ds(tmp_path_factory):
    from cbgrid.sources import twin

    path = tmp_path_factory.mktemp("twin") / "tiny.zarr"
    store.write_store(twin.twin_store(n_sites=8, start="2009-01-01", end="2010-12-31", seed=3), path, progress=False)
    return store.open_store(path)


@pytest.fixture(scope="module")
def data(twin_ds):
    arrays = pipeline.read_arrays(twin_ds, pipeline.feature_variables(twin_ds, "minimal"))
    return pipeline.TrainingData.build(arrays, 0.2)


def _members(data, model, cfg, seeds, batch_seed=None, lr=3e-3):
    hp = {"hidden": 16, "layers": 2, "dropout": 0.0, "lr": lr}
    if model == "mlp":
        hp.pop("layers")
    return [NetworkMember(models.spec(model), data.prepared.x.shape[-1], hp, cfg, "cpu", s, batch_seed=batch_seed)
            for s in seeds]


@pytest.mark.parametrize("model, patience, lr", [("ctlstm", 20, 3e-3), ("gru", 1, 5e-2), ("mlp", 1, 2e-1)])
def test_grouped_training_gives_each_member_the_sequential_result(data, model, patience, lr):
    """Same init, same batches: the same losses every epoch, the same early stop and best epoch,
    the same weights and predictions per member."""
    cfg = TrainConfig(model=model, seeds=3, max_epochs=6, patience=patience, batch_size=64 if model != "mlp" else 512,
                      device="cpu").resolved()
    seeds = [0, 1, 2]
    seq = _members(data, model, cfg, seeds, batch_seed=0, lr=lr)
    curves_seq = [m.fit(data) for m in seq]
    grp = _members(data, model, cfg, seeds, lr=lr)
    assert groupable(grp)
    curves_grp = fit_grouped(grp, data)
    block = data.prepared
    for k, seed in enumerate(seeds):
        a, b = curves_seq[k], curves_grp[curves_grp["seed"] == seed].reset_index(drop=True)
        assert len(a) == len(b)  # the same early stop
        np.testing.assert_allclose(b["train_loss"], a["train_loss"], rtol=2e-4)
        np.testing.assert_allclose(b["val_loss"], a["val_loss"], rtol=2e-4)
        for key, v in seq[k].net.state_dict().items():
            torch.testing.assert_close(grp[k].net.state_dict()[key], v, rtol=1e-3, atol=5e-4)
        np.testing.assert_allclose(grp[k].predict(block, data.scaler), seq[k].predict(block, data.scaler),
                                   rtol=1e-3, atol=1e-3)
    if patience == 1:
        assert curves_grp.groupby("seed").size().lt(cfg.max_epochs).any(), "no member stopped early"
    # members differ from one another: their own init and optimiser state
    assert not np.allclose(grp[0].predict(block, data.scaler), grp[1].predict(block, data.scaler))


def test_a_grouped_run_records_it_and_predicts(twin_ds):
    split = splits.make_split(twin_ds, by="koppen", seed=0)
    cfg = TrainConfig(model="ctlstm", seeds=2, max_epochs=2, batch_size=64, device="cpu", ensemble="grouped",
                      hparams={"hidden": 8, "layers": 1, "dropout": 0.0})
    run = train.fit(twin_ds, split, cfg)
    assert run.config["ensemble"] == "grouped" and run.config["fitted_seeds"] == [0, 1]
    assert np.isfinite(run.predictions["prediction"].values).any()
    seq = train.fit(twin_ds, split, dataclasses.replace(cfg, ensemble="sequential"))
    assert seq.config["ensemble"] == "sequential"
    with pytest.raises(InputError, match="ensemble is 'together'"):
        train.fit(twin_ds, split, dataclasses.replace(cfg, ensemble="together"))
