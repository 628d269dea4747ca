"""Recurrent networks over a feature window: LSTM, GRU and their context-aware CT variants.

A sample is a window of ``window`` days at one site; the network reads the days in order and
a shared linear head turns each of the last ``horizon`` hidden states into that day's scaled
GPP, RECO and NEE. The site's static numbers (scaled lat/lon) are repeated at every step; the
CT ("context") variants also repeat the one-hot IGBP and Köppen classes at every step, which is
the only difference between LSTM and CT-LSTM (and GRU and CT-GRU).
"""

from __future__ import annotations

import torch
from torch import nn

from cbgrid.errors import InputError
from cbgrid.models.mlp import _expect


def check_horizon(window: int, horizon: int) -> None:
    """Refuse a horizon the window cannot hold (targets are the window's last days).

    >>> check_horizon(30, 40)
    Traceback (most recent call last):
    cbgrid.errors.InputError: horizon must be between 1 and window=30 days, got horizon=40
    """
    if not 1 <= horizon <= window:
        raise InputError(
            f"horizon must be between 1 and window={window} days, got horizon={horizon}"
        )


def per_step_inputs(batch: dict[str, torch.Tensor], with_onehot: bool, model: str) -> torch.Tensor:
    """x ⊕ s (⊕ onehot) at every step: (B, T, n_features + n_static [+ n_onehot]).

    >>> b = {"x": torch.zeros(2, 30, 4), "s": torch.zeros(2, 2), "onehot": torch.zeros(2, 22)}
    >>> per_step_inputs(b, True, "CTLSTM").shape
    torch.Size([2, 30, 28])
    """
    x = _expect(batch, "x", 3, model, "(B, window, n_features)")
    parts = [x, _expect(batch, "s", 2, model, "(B, n_static)")]
    if with_onehot:
        parts.append(_expect(batch, "onehot", 2, model, "(B, n_onehot)"))
    steps = x.shape[1]
    return torch.cat([parts[0]] + [p.unsqueeze(1).expand(-1, steps, -1) for p in parts[1:]], dim=-1)


class _RecurrentForecaster(nn.Module):
    """Stacked ``rnn`` over the window, dropout, a linear head on the last ``horizon`` states."""

    kind = "temporal"
    needs_context = False
    rnn: type[nn.RNNBase]
    onehot_at_each_step = False

    def __init__(
        self,
        n_features: int,
        n_static: int,
        n_onehot: int,
        n_targets: int = 3,
        window: int = 30,
        horizon: int = 15,
        hidden: int = 128,
        layers: int = 1,
        dropout: float = 0.2,
        **kw,
    ) -> None:
        super().__init__()
        check_horizon(window, horizon)
        self.horizon = horizon
        self.aux_loss: torch.Tensor | None = None
        n_in = n_features + n_static + (n_onehot if self.onehot_at_each_step else 0)
        # nn.LSTM/GRU only drop out between stacked layers; the output dropout below covers
        # the single-layer case the published tables use.
        between = dropout if layers > 1 else 0.0
        self.encoder = self.rnn(n_in, hidden, num_layers=layers, dropout=between, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, n_targets)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = per_step_inputs(batch, self.onehot_at_each_step, type(self).__name__)
        states, _ = self.encoder(inputs)
        return self.head(self.dropout(states[:, -self.horizon :]))


class LSTM(_RecurrentForecaster):
    """LSTM forecaster over x ⊕ s per day."""

    rnn = nn.LSTM


class CTLSTM(LSTM):
    """CT-LSTM: the LSTM with one-hot IGBP and Köppen concatenated at every step."""

    onehot_at_each_step = True


class GRU(_RecurrentForecaster):
    """GRU forecaster over x ⊕ s per day."""

    rnn = nn.GRU


class CTGRU(GRU):
    """CT-GRU: the GRU with one-hot IGBP and Köppen concatenated at every step."""

    onehot_at_each_step = True
