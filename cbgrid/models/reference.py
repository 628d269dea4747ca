"""The reference implementation's network architectures (CarbonFluxBench at commit b5d643a,
``carbonfluxbench/models``), used by the ``reference`` protocol.

Same contract as cbgrid's networks (``cbgrid.models``): built as ``cls(n_features, n_static,
n_onehot, n_targets=3, window=30, horizon=15, hidden=..., layers=..., dropout=..., **extra)``,
called on a batch dict, returning the last ``horizon`` days ``(B, horizon, n_targets)``. Inputs
are laid out as the reference lays them out: the *dynamic* channels are the scaled lat/lon
followed by the features at every step (``n_static + n_features``); the *static* channels are the
one-hot classes repeated at every step (``n_onehot``, 51 under the reference protocol).

* ``LSTM``: Linear(dynamic → H) → LSTM(H, H, layers) → dropout → Linear; no one-hot input;
  Xavier-uniform Linear weights.
* ``CTLSTM``: Linear(dynamic → H/2) ⊕ Linear(one-hot → H/2) → LSTM(H, H, layers) → dropout →
  Linear; Xavier-uniform Linear weights.
* ``GRU``: GRU(dynamic, H, layers, dropout) → dropout → Linear (no one-hot, default init).
* ``CTGRU``: Linear(dynamic → H/2) ⊕ Linear(one-hot → H/2) → GRU(H, H, layers, dropout) →
  dropout → Linear (default init).
* ``Transformer``: Linear(dynamic ⊕ one-hot → H) + fixed sinusoidal positions, a post-norm ReLU
  encoder (feed-forward 4H), Linear per step.
* ``PatchTransformer``: patches of 4 days every 4 days (7 patches; the window's last 2 days fall
  outside every patch, as in the reference), each flattened channel-major and embedded, learned
  positions, post-norm encoder, mean over patches, ⊕ an MLP of the first step's one-hot, a
  LayerNorm → Linear(2H, 4H) → ReLU → dropout → Linear head emitting all ``horizon`` days.
* ``TAMRL``: the reference's two-model TAM-RL. A task encoder (``ae_tamrl``: per-step
  Linear → BatchNorm → LeakyReLU(0.2), a bidirectional LSTM whose final states summed over both
  directions give, through a Linear, the window's code) reads the sample's *own* window
  (dynamic ⊕ one-hot); the forecaster (``tamlstm``) modulates an LSTM with the code
  (``s = ReLU(Linear(code)) + 1``, input ``s·Linear(dynamic) + s``, FiLM ``(1 + γ)·h + β`` from
  the code). It is trained in two phases: ``pretrain = "lstm"`` names the network trained first
  under the same protocol, whose LSTM weights ``load_pretrained`` copies into the forecaster.
  In training, a *support* window of the same site joins the batch of the task encoder (it only
  moves the BatchNorm statistics, as in the reference); the reference's decoder branch never
  enters its loss and is not built.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cbgrid.errors import InputError
from cbgrid.models.mlp import _expect
from cbgrid.models.recurrent import check_horizon


def _xavier(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)


def dynamic_inputs(batch: dict[str, torch.Tensor], model: str) -> torch.Tensor:
    """lat/lon ⊕ features at every step: (B, T, n_static + n_features), the reference's x_dynamic.

    >>> dynamic_inputs({"x": torch.zeros(2, 30, 18), "s": torch.zeros(2, 2)}, "LSTM").shape
    torch.Size([2, 30, 20])
    """
    x = _expect(batch, "x", 3, model, "(B, window, n_features)")
    s = _expect(batch, "s", 2, model, "(B, n_static)")
    return torch.cat([s.unsqueeze(1).expand(-1, x.shape[1], -1), x], dim=-1)


def static_inputs(batch: dict[str, torch.Tensor], steps: int, model: str) -> torch.Tensor:
    """The one-hot classes at every step: (B, T, n_onehot), the reference's x_static.

    >>> static_inputs({"onehot": torch.zeros(2, 51)}, 30, "CTLSTM").shape
    torch.Size([2, 30, 51])
    """
    onehot = _expect(batch, "onehot", 2, model, "(B, n_onehot)")
    return onehot.unsqueeze(1).expand(-1, steps, -1)


class _Reference(nn.Module):
    kind = "temporal"
    needs_context = False
    pretrain: str | None = None

    def __init__(self, window: int, horizon: int) -> None:
        super().__init__()
        check_horizon(window, horizon)
        self.window, self.horizon = window, horizon
        self.aux_loss: torch.Tensor | None = None


class LSTM(_Reference):
    def __init__(self, n_features, n_static, n_onehot, n_targets=3, window=30, horizon=15, hidden=128, layers=1,
                 dropout=0.2, **kw):
        super().__init__(window, horizon)
        self.dynamic_encoder = nn.Linear(n_features + n_static, hidden)
        self.encoder = nn.LSTM(hidden, hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden, n_targets)
        self.dropout = nn.Dropout(dropout)
        _xavier(self)

    def forward(self, batch):
        x = self.dynamic_encoder(dynamic_inputs(batch, "LSTM"))
        h, _ = self.encoder(x)
        return self.out(self.dropout(h))[:, -self.horizon:]


class CTLSTM(_Reference):
    rnn = nn.LSTM
    init = True

    def __init__(self, n_features, n_static, n_onehot, n_targets=3, window=30, horizon=15, hidden=128, layers=1,
                 dropout=0.2, **kw):
        super().__init__(window, horizon)
        self.dynamic_encoder = nn.Linear(n_features + n_static, hidden // 2)
        self.static_encoder = nn.Linear(n_onehot, hidden // 2)
        extra = {} if self.rnn is nn.LSTM else {"dropout": dropout if layers > 1 else 0.0}
        self.encoder = self.rnn(2 * (hidden // 2), hidden, num_layers=layers, batch_first=True, **extra)
        self.out = nn.Linear(hidden, n_targets)
        self.dropout = nn.Dropout(dropout)
        if self.init:
            _xavier(self)

    def forward(self, batch):
        dyn = dynamic_inputs(batch, type(self).__name__)
        x = torch.cat([self.dynamic_encoder(dyn),
                       self.static_encoder(static_inputs(batch, dyn.shape[1], type(self).__name__))], dim=-1)
        h, _ = self.encoder(x)
        return self.out(self.dropout(h))[:, -self.horizon:]


class CTGRU(CTLSTM):
    rnn = nn.GRU
    init = False


class GRU(_Reference):
    def __init__(self, n_features, n_static, n_onehot, n_targets=3, window=30, horizon=15, hidden=128, layers=1,
                 dropout=0.2, **kw):
        super().__init__(window, horizon)
        self.gru = nn.GRU(n_features + n_static, hidden, layers, batch_first=True,
                          dropout=dropout if layers > 1 else 0.0)
        self.fc = nn.Linear(hidden, n_targets)
        self.dropout = nn.Dropout(dropout)

    def forward(self, batch):
        h, _ = self.gru(dynamic_inputs(batch, "GRU"))
        return self.fc(self.dropout(h))[:, -self.horizon:]


def _sinusoidal(steps: int, width: int) -> torch.Tensor:
    pe = torch.zeros(steps, width)
    position = torch.arange(0, steps).unsqueeze(1).float()
    div = torch.exp(torch.arange(0, width, 2).float() * (-math.log(10000.0) / width))
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div)
    return pe


def _post_norm_encoder(hidden: int, nhead: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    if hidden % nhead:
        raise InputError(f"hidden={hidden} must be divisible by nhead={nhead}")
    layer = nn.TransformerEncoderLayer(d_model=hidden, nhead=nhead, dim_feedforward=4 * hidden, dropout=dropout,
                                       batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class Transformer(_Reference):
    def __init__(self, n_features, n_static, n_onehot, n_targets=3, window=30, horizon=15, hidden=128, layers=2,
                 dropout=0.2, nhead=4, **kw):
        super().__init__(window, horizon)
        self.embedding = nn.Linear(n_features + n_static + n_onehot, hidden)
        self.register_buffer("pe", _sinusoidal(window, hidden))
        self.transformer = _post_norm_encoder(hidden, nhead, layers, dropout)
        self.fc = nn.Linear(hidden, n_targets)

    def forward(self, batch):
        dyn = dynamic_inputs(batch, "Transformer")
        if dyn.shape[1] != self.window:
            raise InputError(f"Transformer was built for window={self.window} days, got {dyn.shape[1]}")
        x = self.embedding(torch.cat([dyn, static_inputs(batch, dyn.shape[1], "Transformer")], dim=-1)) + self.pe
        return self.fc(self.transformer(x))[:, -self.horizon:]


class PatchTransformer(_Reference):
    def __init__(self, n_features, n_static, n_onehot, n_targets=3, window=30, horizon=15, hidden=128, layers=2,
                 dropout=0.2, nhead=4, patch_len=4, patch_stride=4, **kw):
        super().__init__(window, horizon)
        if window < patch_len:
            raise InputError(f"window={window} must be >= patch_len={patch_len}")
        self.patch_len, self.patch_stride, self.n_targets = patch_len, patch_stride, n_targets
        self.n_patches = (window - patch_len) // patch_stride + 1
        channels = n_features + n_static
        self.patch_embedding = nn.Linear(channels * patch_len, hidden)
        self.pos_embed = nn.Parameter(torch.randn(1, self.n_patches, hidden) * 0.02)
        self.encoder = _post_norm_encoder(hidden, nhead, layers, dropout)
        self.static_encoder = nn.Sequential(nn.Linear(n_onehot, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Sequential(nn.LayerNorm(2 * hidden), nn.Linear(2 * hidden, 4 * hidden), nn.ReLU(),
                                  nn.Dropout(dropout), nn.Linear(4 * hidden, horizon * n_targets))

    def forward(self, batch):
        dyn = dynamic_inputs(batch, "PatchTransformer")
        b, steps, _ = dyn.shape
        if steps != self.window:
            raise InputError(f"PatchTransformer was built for window={self.window} days, got {steps}")
        # (B, T, C) -> (B, C, P, patch_len) -> (B, P, C * patch_len): channel-major within a patch
        patches = dyn.permute(0, 2, 1).unfold(-1, self.patch_len, self.patch_stride).permute(0, 2, 1, 3)
        tokens = self.patch_embedding(patches.reshape(b, self.n_patches, -1)) + self.pos_embed
        pooled = self.encoder(tokens).mean(dim=1)
        site = self.static_encoder(_expect(batch, "onehot", 2, "PatchTransformer", "(B, n_onehot)"))
        return self.head(torch.cat([pooled, site], dim=1)).view(b, self.horizon, self.n_targets)


class TaskEncoder(nn.Module):
    """``ae_tamrl``'s encoder: per-step Linear → BatchNorm → LeakyReLU(0.2), a bidirectional LSTM,
    the final hidden states summed over directions, a Linear to the code."""

    def __init__(self, n_in: int, latent: int):
        super().__init__()
        self.n_in = n_in
        self.instance_encoder = nn.Sequential(nn.Linear(n_in, latent), nn.BatchNorm1d(latent), nn.LeakyReLU(0.2))
        self.temporal_encoder = nn.LSTM(latent, latent, bidirectional=True, batch_first=True)
        self.code_linear = nn.Linear(latent, latent)
        _xavier(self)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        b, steps, _ = windows.shape
        h = self.instance_encoder(windows.reshape(-1, self.n_in)).view(b, steps, -1)
        _, (h_n, _) = self.temporal_encoder(h)
        return self.code_linear(h_n.sum(dim=0))


class TAMRL(_Reference):
    pretrain = "lstm"

    def __init__(self, n_features, n_static, n_onehot, n_targets=3, window=30, horizon=15, hidden=128, layers=1,
                 dropout=0.2, latent=32, **kw):
        super().__init__(window, horizon)
        n_dyn = n_features + n_static
        self.task = TaskEncoder(n_dyn + n_onehot, latent)
        self.dynamic_encoder = nn.Linear(n_dyn, hidden)
        self.static_encoder = nn.Linear(latent, hidden)
        self.film_layer_head = nn.Linear(latent, 2 * hidden)
        self.encoder = nn.LSTM(hidden, hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden, n_targets)
        self.dropout = nn.Dropout(dropout)
        for m in (self.dynamic_encoder, self.static_encoder, self.film_layer_head, self.out):
            nn.init.xavier_uniform_(m.weight)

    def load_pretrained(self, lstm: nn.Module) -> None:
        """Copy the pre-trained reference LSTM's recurrent weights into the forecaster."""
        self.encoder.load_state_dict(lstm.encoder.state_dict())

    def code(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, latent) task code of each sample's own window (support windows only join the
        task encoder's batch, for its BatchNorm statistics)."""
        dyn = dynamic_inputs(batch, "TAMRL")
        windows = torch.cat([dyn, static_inputs(batch, dyn.shape[1], "TAMRL")], dim=-1)
        if "support_x" in batch:
            sup = {"x": batch["support_x"], "s": batch["support_s"], "onehot": batch["support_onehot"]}
            sdyn = dynamic_inputs(sup, "TAMRL")
            windows = torch.cat([windows, torch.cat([sdyn, static_inputs(sup, sdyn.shape[1], "TAMRL")], dim=-1)])
        return self.task(windows)[: dyn.shape[0]]

    def forward(self, batch):
        dyn = dynamic_inputs(batch, "TAMRL")
        z = self.code(batch).unsqueeze(1).expand(-1, dyn.shape[1], -1)
        xd = self.dynamic_encoder(dyn)
        xs = torch.relu(self.static_encoder(z)) + 1.0
        h, _ = self.encoder(xs * xd + xs)
        gamma, beta = torch.split(self.film_layer_head(z), h.shape[-1], dim=-1)
        h = self.dropout(h * (gamma + 1.0) + beta)
        return self.out(h)[:, -self.horizon:]
