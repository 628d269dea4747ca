"""Attention networks over a feature window: an encoder-only Transformer and a PatchTST-style
Patch-Transformer.

Both see the whole window at once (features only, so no target leaks from later days) and
predict scaled GPP, RECO and NEE for its last ``horizon`` days. Encoders are pre-norm
(``norm_first``), which trains stably at the small learning rates CarbonBench uses without a
warm-up schedule.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cbgrid.errors import InputError
from cbgrid.models.mlp import _expect
from cbgrid.models.recurrent import check_horizon, per_step_inputs


def _encoder(hidden: int, nhead: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    """``layers`` pre-norm encoder layers of width ``hidden`` with a final LayerNorm."""
    if hidden % nhead:
        raise InputError(f"hidden={hidden} must be divisible by nhead={nhead}")
    layer = nn.TransformerEncoderLayer(
        d_model=hidden,
        nhead=nhead,
        dim_feedforward=4 * hidden,
        dropout=dropout,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )
    return nn.TransformerEncoder(
        layer, layers, norm=nn.LayerNorm(hidden), enable_nested_tensor=False
    )


class Transformer(nn.Module):
    """Encoder-only Transformer: per-day linear embedding of x ⊕ s ⊕ onehot plus a learned
    positional embedding, ``layers`` encoder layers, a linear head on the last ``horizon`` days."""

    kind = "temporal"
    needs_context = False

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
        nhead: int = 4,
        **kw,
    ) -> None:
        super().__init__()
        check_horizon(window, horizon)
        self.window, self.horizon = window, horizon
        self.aux_loss: torch.Tensor | None = None
        self.embed = nn.Linear(n_features + n_static + n_onehot, hidden)
        self.position = nn.Parameter(torch.empty(window, hidden))
        nn.init.normal_(self.position, std=0.02)
        self.dropout = nn.Dropout(dropout)
        self.encoder = _encoder(hidden, nhead, layers, dropout)
        self.head = nn.Linear(hidden, n_targets)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = per_step_inputs(batch, True, "Transformer")
        if inputs.shape[1] != self.window:
            raise InputError(
                f"Transformer was built for window={self.window} days, got {inputs.shape[1]}"
            )
        tokens = self.dropout(self.embed(inputs) + self.position)
        return self.head(self.encoder(tokens)[:, -self.horizon :])


class PatchTransformer(nn.Module):
    """PatchTST-style Transformer: the window is cut into ``patch_len``-day patches every
    ``patch_stride`` days (the end padded by repeating the last day when the stride does not
    fit), each patch flattened over days and features (channel-mixing) and embedded; the site's
    s ⊕ onehot is embedded once and added to every patch token; after a learned positional
    embedding and the encoder, all tokens are flattened into one linear head that emits the
    last ``horizon`` days at once."""

    kind = "temporal"
    needs_context = False

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
        nhead: int = 4,
        patch_len: int = 5,
        patch_stride: int = 5,
        **kw,
    ) -> None:
        super().__init__()
        check_horizon(window, horizon)
        if not (1 <= patch_len <= window and patch_stride >= 1):
            raise InputError(
                f"need 1 <= patch_len <= window={window} and patch_stride >= 1, "
                f"got patch_len={patch_len}, patch_stride={patch_stride}"
            )
        self.window, self.horizon, self.n_targets = window, horizon, n_targets
        self.patch_len, self.patch_stride = patch_len, patch_stride
        self.n_patches = math.ceil((window - patch_len) / patch_stride) + 1
        self.pad = (self.n_patches - 1) * patch_stride + patch_len - window
        self.aux_loss: torch.Tensor | None = None
        self.embed = nn.Linear(n_features * patch_len, hidden)
        self.site_embed = nn.Linear(n_static + n_onehot, hidden)
        self.position = nn.Parameter(torch.empty(self.n_patches, hidden))
        nn.init.normal_(self.position, std=0.02)
        self.dropout = nn.Dropout(dropout)
        self.encoder = _encoder(hidden, nhead, layers, dropout)
        self.head = nn.Linear(self.n_patches * hidden, horizon * n_targets)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = _expect(batch, "x", 3, "PatchTransformer", "(B, window, n_features)")
        s = _expect(batch, "s", 2, "PatchTransformer", "(B, n_static)")
        onehot = _expect(batch, "onehot", 2, "PatchTransformer", "(B, n_onehot)")
        if x.shape[1] != self.window:
            raise InputError(
                f"PatchTransformer was built for window={self.window} days, got {x.shape[1]}"
            )
        if self.pad:
            x = torch.cat([x, x[:, -1:].expand(-1, self.pad, -1)], dim=1)
        # (B, P, F, patch_len) → (B, P, patch_len · F), days outer, features inner.
        patches = x.unfold(1, self.patch_len, self.patch_stride).transpose(2, 3).flatten(2)
        site = self.site_embed(torch.cat([s, onehot], dim=-1)).unsqueeze(1)
        tokens = self.dropout(self.embed(patches) + site + self.position)
        encoded = self.encoder(tokens)
        out = self.head(self.dropout(encoded.flatten(1)))
        return out.view(-1, self.horizon, self.n_targets)
