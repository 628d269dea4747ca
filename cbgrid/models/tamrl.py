"""TAM-RL: a task-aware LSTM forecaster modulated by a site code learned from the site's own
feature windows.

A task encoder, a sequence autoencoder, embeds each of K other feature windows of the same site
and reconstructs them from that embedding; the mean embedding over the K windows is the site
code. The code gives per-layer FiLM parameters (γ, β) that scale and shift every hidden state
of a stacked LSTM over x ⊕ s ⊕ onehot, and a linear head turns the last ``horizon`` states into
scaled GPP, RECO and NEE. The encoder only ever sees features, never fluxes, so an unseen site's
code comes from its own drivers alone. The reconstruction loss is exposed as ``aux_loss`` for
the training loop to add to the forecast loss.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from cbgrid.errors import InputError, UnknownError
from cbgrid.models.mlp import _expect
from cbgrid.models.recurrent import check_horizon, per_step_inputs

_CELLS: dict[str, type[nn.RNNBase]] = {"gru": nn.GRU, "lstm": nn.LSTM}


class TaskEncoder(nn.Module):
    """Sequence autoencoder: an RNN embeds a feature window into ``latent`` numbers; a second
    RNN, started from and fed that embedding at every step, reconstructs the window's features."""

    def __init__(self, n_features: int, hidden: int, latent: int, cell: str = "gru") -> None:
        super().__init__()
        if cell not in _CELLS:
            raise InputError(f"task encoder cell must be one of {sorted(_CELLS)}, got {cell!r}")
        rnn = _CELLS[cell]
        self.encoder = rnn(n_features, hidden, batch_first=True)
        self.to_latent = nn.Linear(hidden, latent)
        self.decoder = rnn(latent, hidden, batch_first=True)
        self.decoder_start = nn.Linear(latent, hidden)
        self.reconstruct = nn.Linear(hidden, n_features)

    def embed(self, windows: torch.Tensor) -> torch.Tensor:
        """(N, W, F) feature windows → (N, latent) embeddings in (-1, 1)."""
        states, _ = self.encoder(windows)
        return torch.tanh(self.to_latent(states[:, -1]))

    def decode(self, z: torch.Tensor, steps: int) -> torch.Tensor:
        """(N, latent) embeddings → (N, steps, F) reconstructed feature windows."""
        h0 = torch.tanh(self.decoder_start(z)).unsqueeze(0)
        start = (h0, torch.zeros_like(h0)) if isinstance(self.decoder, nn.LSTM) else h0
        states, _ = self.decoder(z.unsqueeze(1).expand(-1, steps, -1), start)
        return self.reconstruct(states)


class TAMRL(nn.Module):
    """TAM-RL forecaster; see the module docstring.

    The batch carries either ``"ctx"`` (B, K, window, n_features), K feature windows of each
    sample's site, from which the code is computed and ``aux_loss`` (reconstruction MSE, times
    ``recon_weight``) is set; or ``"code"`` (B, latent), a site code computed beforehand with
    :meth:`site_code`, in which case ``aux_loss`` is zero. ``encoder_cell`` picks "gru" or
    "lstm" for the task encoder.
    """

    kind = "temporal"
    needs_context = True

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
        latent: int = 64,
        encoder_cell: str = "gru",
        recon_weight: float = 1.0,
        **kw,
    ) -> None:
        super().__init__()
        check_horizon(window, horizon)
        if layers < 1:
            raise InputError(f"TAMRL needs at least one LSTM layer, got layers={layers}")
        self.horizon, self.hidden, self.latent = horizon, hidden, latent
        self.recon_weight = recon_weight
        self.aux_loss: torch.Tensor | None = None
        self.task = TaskEncoder(n_features, hidden, latent, encoder_cell)
        self.film = nn.Linear(latent, 2 * hidden * layers)
        width = n_features + n_static + n_onehot
        self.forecaster = nn.ModuleList(
            nn.LSTM(width if i == 0 else hidden, hidden, batch_first=True) for i in range(layers)
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, n_targets)

    def site_code(self, ctx: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
        """(B, K, window, n_features) feature windows → (B, latent) site codes (mean over K).

        Windows go through the encoder ``chunk`` at a time, which bounds the encoder's memory
        when codes are computed without gradients for many sites or grid cells at once.
        """
        if ctx.dim() != 4:
            raise InputError(
                "TAMRL.site_code needs ctx of shape (B, K, window, n_features), "
                f"got {tuple(ctx.shape)}"
            )
        b, k = ctx.shape[:2]
        z = torch.cat([self.task.embed(part) for part in ctx.flatten(0, 1).split(chunk)])
        return z.view(b, k, -1).mean(1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = per_step_inputs(batch, True, "TAMRL")
        if "code" in batch:
            code = _expect(batch, "code", 2, "TAMRL", "(B, latent)")
            self.aux_loss = inputs.new_zeros(())
        elif "ctx" not in batch:
            raise UnknownError(
                "TAMRL needs the site's feature windows batch['ctx'] (B, K, window, n_features) "
                f"or a precomputed batch['code'] (B, latent); the batch has {sorted(batch)}"
            )
        else:
            ctx = _expect(batch, "ctx", 4, "TAMRL", "(B, K, window, n_features)")
            b, k, steps = ctx.shape[:3]
            windows = ctx.flatten(0, 1)
            z = self.task.embed(windows)
            self.aux_loss = self.recon_weight * F.mse_loss(self.task.decode(z, steps), windows)
            code = z.view(b, k, -1).mean(1)
        film = self.film(code).view(code.shape[0], len(self.forecaster), 2, 1, self.hidden)
        gamma, beta = film.unbind(2)  # (B, layers, 1, hidden) each
        states = inputs
        for i, lstm in enumerate(self.forecaster):
            states, _ = lstm(states)
            states = self.dropout(states * (1 + gamma[:, i]) + beta[:, i])
        return self.head(states[:, -self.horizon :])
