"""Grouped networks: the members of a seed ensemble as one module with a member dimension.

``group(nets)`` stacks K networks of one class and shape into one module whose parameters are
the members' parameters with a leading member dimension K, and whose forward pass computes all
K outputs from one shared batch: (K, B, ...) where a member gives (B, ...). Nothing is shared
between members but the batch: member k's output depends on member k's weights only, so the
gradient of the sum of the members' losses is, per member, the gradient of its own loss, and
an element-wise optimiser (Adam, AdamW) over the stacked parameters takes each member's step.

The recurrent networks are written out per time step (``torch.func.vmap`` has no batching rule
for ``aten::lstm``): the input projection of every step and member is one matrix product, then
each step is one batched matrix product (``torch.baddbmm``) over the member dimension, with
PyTorch's gate layouts (LSTM: input, forget, cell, output; GRU: reset, update, new). On a GPU
that is one kernel per step for the whole ensemble instead of one per step per member.

Covered: ``mlp``, ``lstm``, ``ctlstm``, ``gru``, ``ctgru`` (cbgrid's architectures);
``groupable(net)`` says whether a network is. ``member_state(k)`` is member k's state dict in
its own network's names (``net.load_state_dict`` takes it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cbgrid.errors import InputError
from cbgrid.models.mlp import MLP
from cbgrid.models.recurrent import CTGRU, CTLSTM, GRU, LSTM, per_step_inputs


class _Grouped(nn.Module):
    """Stacked parameters of K networks; ``names`` maps a stacked name to the member's key."""

    def _stack(self, nets: list[nn.Module], names: dict[str, str]) -> None:
        self.names = dict(names)
        self.n_members = len(nets)
        states = [n.state_dict() for n in nets]
        for mine, theirs in names.items():
            self.register_parameter(mine, nn.Parameter(torch.stack([s[theirs].detach() for s in states]).clone()))

    def member_state(self, k: int, params: dict | None = None) -> dict:
        """Member ``k``'s state dict in its network's names (from ``params``, a snapshot of this
        module's parameters by name, or from the live parameters)."""
        src = params if params is not None else dict(self.named_parameters())
        return {theirs: src[mine][k].detach().clone() for mine, theirs in self.names.items()}


class GroupedMLP(_Grouped):
    """K ``MLP``s: Linear → ReLU → Dropout blocks, each a batched matrix product."""

    def __init__(self, nets: list[MLP]):
        super().__init__()
        linears = [i for i, m in enumerate(nets[0].net) if isinstance(m, nn.Linear)]
        self.dropout = next((m.p for m in nets[0].net if isinstance(m, nn.Dropout)), 0.0)
        self.n_layers = len(linears)
        names = {}
        for j, i in enumerate(linears):
            names[f"w{j}"], names[f"b{j}"] = f"net.{i}.weight", f"net.{i}.bias"
        self._stack(nets, names)

    def forward(self, batch: dict) -> torch.Tensor:
        h = torch.cat([batch["x"], batch["s"], batch["onehot"]], dim=-1)  # (B, I) shared
        h = torch.einsum("bi,koi->kbo", h, self.w0) + self.b0[:, None]
        for j in range(1, self.n_layers):
            h = F.dropout(F.relu(h), self.dropout, self.training)
            h = torch.baddbmm(getattr(self, f"b{j}")[:, None], h, getattr(self, f"w{j}").transpose(1, 2))
        return h  # (K, B, n_targets)


class GroupedRecurrent(_Grouped):
    """K ``LSTM``/``CTLSTM``/``GRU``/``CTGRU`` forecasters of one shape."""

    def __init__(self, nets: list[nn.Module]):
        super().__init__()
        first = nets[0]
        enc = first.encoder
        self.cell = "lstm" if isinstance(enc, nn.LSTM) else "gru"
        self.layers, self.hidden = enc.num_layers, enc.hidden_size
        self.between = enc.dropout  # nn.LSTM/GRU: between stacked layers only
        self.out_dropout = first.dropout.p
        self.horizon = first.horizon
        self.onehot = first.onehot_at_each_step
        self.model = type(first).__name__
        names = {"head_w": "head.weight", "head_b": "head.bias"}
        for layer in range(self.layers):
            for part in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                names[f"{part}_l{layer}"] = f"encoder.{part}_l{layer}"
        self._stack(nets, names)

    def _layer(self, inputs: torch.Tensor, layer: int, shared: bool) -> torch.Tensor:
        """(B, T, I) shared or (K, B, T, I) per-member inputs → (K, B, T, H) hidden states."""
        w_ih, w_hh = getattr(self, f"weight_ih_l{layer}"), getattr(self, f"weight_hh_l{layer}")
        b_ih, b_hh = getattr(self, f"bias_ih_l{layer}"), getattr(self, f"bias_hh_l{layer}")
        k = w_ih.shape[0]
        if shared:
            gx = torch.einsum("bti,kgi->kbtg", inputs, w_ih)
        else:
            kk, b, t, i = inputs.shape
            gx = torch.bmm(inputs.reshape(kk, b * t, i), w_ih.transpose(1, 2)).view(kk, b, t, -1)
        gx = gx + b_ih[:, None, None]
        n_batch, steps = gx.shape[1], gx.shape[2]
        h = gx.new_zeros(k, n_batch, self.hidden)
        c = gx.new_zeros(k, n_batch, self.hidden) if self.cell == "lstm" else None
        w_hh_t, b_hh = w_hh.transpose(1, 2), b_hh[:, None]
        out = []
        for step in range(steps):
            gh = torch.baddbmm(b_hh, h, w_hh_t)  # (K, B, G)
            if self.cell == "lstm":
                i_g, f_g, g_g, o_g = (gx[:, :, step] + gh).chunk(4, dim=-1)
                c = torch.sigmoid(f_g) * c + torch.sigmoid(i_g) * torch.tanh(g_g)
                h = torch.sigmoid(o_g) * torch.tanh(c)
            else:
                xr, xz, xn = gx[:, :, step].chunk(3, dim=-1)
                hr, hz, hn = gh.chunk(3, dim=-1)
                r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
                n = torch.tanh(xn + r * hn)
                h = (1 - z) * n + z * h
            out.append(h)
        return torch.stack(out, dim=2)

    def forward(self, batch: dict) -> torch.Tensor:
        h = per_step_inputs(batch, self.onehot, self.model)  # (B, T, I), the same for every member
        for layer in range(self.layers):
            h = self._layer(h, layer, shared=layer == 0)
            if layer < self.layers - 1:
                h = F.dropout(h, self.between, self.training)
        last = F.dropout(h[:, :, -self.horizon:], self.out_dropout, self.training)  # (K, B, H, hidden)
        return torch.einsum("kbhi,kti->kbht", last, self.head_w) + self.head_b[:, None, None]


#: Network classes with a grouped form (exact classes: a subclass may change the forward pass).
GROUPED = {MLP: GroupedMLP, LSTM: GroupedRecurrent, CTLSTM: GroupedRecurrent, GRU: GroupedRecurrent,
           CTGRU: GroupedRecurrent}


def groupable(net: nn.Module) -> bool:
    """Whether ``net``'s class has a grouped form.

    >>> groupable(MLP(4, 2, 22)), groupable(nn.Linear(2, 2))
    (True, False)
    """
    return type(net) in GROUPED


def group(nets: list[nn.Module]) -> _Grouped:
    """One grouped module from networks of one groupable class and shape (their weights copied).

    >>> nets = [MLP(4, 2, 22, hidden=8) for _ in range(3)]
    >>> g = group(nets)
    >>> b = {"x": torch.zeros(5, 4), "s": torch.zeros(5, 2), "onehot": torch.zeros(5, 22)}
    >>> tuple(g(b).shape)
    (3, 5, 3)
    """
    if not nets:
        raise InputError("a grouped network needs at least one member")
    cls = type(nets[0])
    if cls not in GROUPED:
        raise InputError(f"{cls.__name__} has no grouped form; groupable: {', '.join(c.__name__ for c in GROUPED)}")
    shapes = [{k: tuple(v.shape) for k, v in n.state_dict().items()} for n in nets]
    if any(type(n) is not cls for n in nets) or any(s != shapes[0] for s in shapes):
        raise InputError("grouped members must be one network class with one shape")
    device = next(nets[0].parameters()).device
    return GROUPED[cls](nets).to(device)
