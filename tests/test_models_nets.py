"""The torch networks: shapes, gradients, use of the site context, TAM-RL's task encoder,
fitting a known function, published sizes and determinism."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from cbgrid import models
from cbgrid.models import n_parameters

NETWORKS = {name: models.network_class(name) for name in models.NETWORKS}
PUBLISHED_HPARAMS = {(m, s): models.hyperparameters(m, s) for m in models.NETWORKS for s in ("igbp", "koppen")}

N_FEATURES, N_STATIC, N_ONEHOT, WINDOW, HORIZON, K = 4, 2, 5, 30, 15, 3
SMALL = dict(hidden=16, layers=2, dropout=0.1, nhead=2, latent=8)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def build(name: str, seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    kw = {"window": WINDOW, "horizon": HORIZON, **SMALL, **kw}
    return NETWORKS[name](N_FEATURES, N_STATIC, N_ONEHOT, **kw)


def make_batch(net: torch.nn.Module, n: int = 8, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    onehot = torch.zeros(n, N_ONEHOT)
    onehot[torch.arange(n), torch.randint(0, 3, (n,), generator=g)] = 1.0
    onehot[torch.arange(n), torch.randint(3, N_ONEHOT, (n,), generator=g)] = 1.0
    batch = {"s": torch.randn(n, N_STATIC, generator=g), "onehot": onehot}
    if net.kind == "static":
        batch["x"] = torch.randn(n, N_FEATURES, generator=g)
    else:
        batch["x"] = torch.randn(n, WINDOW, N_FEATURES, generator=g)
    if net.needs_context:
        batch["ctx"] = torch.randn(n, K, WINDOW, N_FEATURES, generator=g)
    return batch


def expected_shape(net: torch.nn.Module, n: int) -> tuple[int, ...]:
    return (n, 3) if net.kind == "static" else (n, HORIZON, 3)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_output_shape_and_contract(name, device):
    net = build(name).to(device)
    assert net.kind in ("static", "temporal")
    assert isinstance(net.needs_context, bool)
    out = net({k: v.to(device) for k, v in make_batch(net, n=5).items()})
    assert out.shape == expected_shape(net, 5) and out.device.type == device
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    if net.needs_context:
        assert net.aux_loss.dim() == 0 and torch.isfinite(net.aux_loss)
    else:
        assert net.aux_loss is None


@pytest.mark.parametrize("patch_len,patch_stride", [(5, 5), (7, 4), (8, 8), (30, 1)])
def test_patch_transformer_covers_any_patching(patch_len, patch_stride):
    net = build("patch_transformer", patch_len=patch_len, patch_stride=patch_stride)
    batch = make_batch(net, n=3)
    assert net(batch).shape == (3, HORIZON, 3)
    # The last day of the window must reach the output, whatever the stride.
    batch2 = {**batch, "x": batch["x"].clone()}
    batch2["x"][:, -1] += 1.0
    net.eval()
    assert not torch.allclose(net(batch), net(batch2))


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_gradients_reach_every_parameter(name):
    net = build(name)
    out = net(make_batch(net, n=16))
    loss = out.pow(2).mean() + (net.aux_loss if net.aux_loss is not None else 0.0)
    loss.backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient for {pname}"


@pytest.mark.parametrize(
    "name,uses_onehot",
    [("lstm", False), ("gru", False), ("ctlstm", True), ("ctgru", True),
     ("mlp", True), ("transformer", True), ("patch_transformer", True), ("tamrl", True)],
)
def test_site_classes_reach_the_output_only_where_they_should(name, uses_onehot):
    net = build(name).eval()
    batch = make_batch(net)
    other = {**batch, "onehot": batch["onehot"].roll(1, dims=0)}
    assert not torch.equal(batch["onehot"], other["onehot"])
    with torch.no_grad():
        changed = not torch.allclose(net(batch), net(other))
    assert changed == uses_onehot


def test_tamrl_reconstruction_loss_decreases_on_fixed_context():
    net = build("tamrl", dropout=0.0)
    batch = make_batch(net, n=8)
    # Smooth site-specific cycles, as real drivers are, rather than incompressible noise.
    g = torch.Generator().manual_seed(5)
    days = torch.arange(WINDOW, dtype=torch.float32).view(1, 1, WINDOW, 1)
    phase = torch.rand(8, K, 1, N_FEATURES, generator=g) * 6.28
    noise = torch.randn(8, K, WINDOW, N_FEATURES, generator=g)
    batch["ctx"] = torch.sin(days / 5.0 + phase) + 0.05 * noise
    opt = torch.optim.Adam(net.task.parameters(), lr=3e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        net(batch)
        losses.append(net.aux_loss.item())
        net.aux_loss.backward()
        opt.step()
    assert all(map(lambda v: v == v and v < float("inf"), losses))
    assert losses[-1] < 0.8 * losses[0]


def test_tamrl_code_from_site_windows_matches_inline_context():
    net = build("tamrl").eval()
    batch = make_batch(net, n=4)
    with torch.no_grad():
        code = net.site_code(batch["ctx"])
        inline = net(batch)
        cached = net({k: v for k, v in batch.items() if k != "ctx"} | {"code": code})
    assert code.shape == (4, SMALL["latent"])
    with torch.no_grad():
        assert torch.allclose(net.site_code(batch["ctx"], chunk=5), code, atol=1e-6)
    assert torch.allclose(inline, cached, atol=1e-6)
    assert net.aux_loss.item() == 0.0
    # The code depends on the site's windows, and the forecast on the code.
    with torch.no_grad():
        other = net({**batch, "ctx": batch["ctx"].flip(0)})
    assert not torch.allclose(inline, other)


def test_tamrl_requires_context():
    net = build("tamrl")
    batch = make_batch(net)
    del batch["ctx"]
    with pytest.raises(KeyError, match="ctx"):
        net(batch)


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_fits_a_known_function_of_the_last_days(name):
    """Targets are a fixed nonlinear function of each day's features and the site's numbers."""
    net = build(name, dropout=0.0, hidden=32, layers=1)
    batch = make_batch(net, n=32, seed=3)
    g = torch.Generator().manual_seed(4)
    w = torch.randn(N_FEATURES, 3, generator=g)
    v = torch.randn(N_STATIC, 3, generator=g)
    x = batch["x"] if net.kind == "static" else batch["x"][:, -HORIZON:]
    site = batch["s"] @ v
    target = torch.tanh(x @ w + (site if net.kind == "static" else site.unsqueeze(1)))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = F.mse_loss(net(batch), target)
        losses.append(loss.item())
        (loss + (net.aux_loss if net.aux_loss is not None else 0.0)).backward()
        opt.step()
    assert min(losses[-5:]) < 0.3 * losses[0], f"{name}: {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_published_hparams_cover_every_table_row_and_build():
    models = {"mlp", "lstm", "ctlstm", "gru", "ctgru", "transformer", "patch_transformer", "tamrl"}
    assert set(PUBLISHED_HPARAMS) == {(m, s) for m in models for s in ("igbp", "koppen")}
    assert set(NETWORKS) == models
    for (name, split), hp in PUBLISHED_HPARAMS.items():
        assert {"hidden", "dropout", "lr"} <= set(hp), (name, split)
        assert 0 < hp["lr"] <= 1e-3 and 0 <= hp["dropout"] < 1
        net = NETWORKS[name](48, 2, 22, **{k: v for k, v in hp.items() if k != "lr"})
        assert n_parameters(net) > 0
    assert PUBLISHED_HPARAMS[("tamrl", "koppen")]["latent"] == 32
    ctlstm = dict(hidden=256, dropout=0.3, lr=5e-4, layers=2)
    assert PUBLISHED_HPARAMS[("ctlstm", "koppen")] == ctlstm


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_deterministic_on_cpu_for_a_seed(name):
    outs = []
    for _ in range(2):
        net = build(name, seed=7)
        batch = make_batch(net)
        torch.manual_seed(11)  # dropout masks in train mode
        outs.append((net.eval()(batch), net.train()(batch)))
    assert torch.equal(outs[0][0], outs[1][0])
    assert torch.equal(outs[0][1], outs[1][1])
    assert not torch.equal(build(name, seed=8).eval()(batch), outs[0][0])


@pytest.mark.parametrize(
    "name,kw,match",
    [
        ("lstm", dict(horizon=31), "horizon"),
        ("transformer", dict(hidden=10, nhead=4), "divisible"),
        ("patch_transformer", dict(patch_len=40), "patch_len"),
        ("tamrl", dict(encoder_cell="rnn"), "cell"),
    ],
)
def test_bad_configuration_is_refused(name, kw, match):
    with pytest.raises(ValueError, match=match):
        build(name, **kw)


def test_wrong_input_rank_names_the_expected_layout():
    net = build("lstm")
    batch = make_batch(net)
    with pytest.raises(ValueError, match=r"\(B, window, n_features\)"):
        net({**batch, "x": batch["x"][:, 0]})
