"""Static network: a multilayer perceptron on one site-day.

Each day is a sample: the day's dynamic features, the site's static numbers (scaled lat/lon)
and its one-hot IGBP and Köppen classes go through ``layers`` hidden layers to the scaled
GPP, RECO and NEE of that day.
"""

from __future__ import annotations

import torch
from torch import nn

from cbgrid.errors import InputError, UnknownError


def _expect(
    batch: dict[str, torch.Tensor], key: str, ndim: int, model: str, shape: str
) -> torch.Tensor:
    """Fetch ``batch[key]`` and check its rank, naming the expected layout when it is wrong."""
    if key not in batch:
        raise UnknownError(
            f"{model} needs batch[{key!r}] of shape {shape}; the batch has {sorted(batch)}"
        )
    t = batch[key]
    if t.dim() != ndim:
        raise InputError(f"{model}: batch[{key!r}] must be {shape}, got shape {tuple(t.shape)}")
    return t


class MLP(nn.Module):
    """Feed-forward network over x ⊕ s ⊕ onehot of one day → (B, n_targets).

    ``layers`` is the number of hidden layers (Linear → ReLU → Dropout), two by default as in
    CarbonBench, where the MLP's depth is not a tuned hyperparameter.
    """

    kind = "static"
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
        layers: int = 2,
        dropout: float = 0.2,
        **kw,
    ) -> None:
        super().__init__()
        if layers < 1:
            raise InputError(f"MLP needs at least one hidden layer, got layers={layers}")
        self.aux_loss: torch.Tensor | None = None
        blocks: list[nn.Module] = []
        width = n_features + n_static + n_onehot
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        blocks.append(nn.Linear(width, n_targets))
        self.net = nn.Sequential(*blocks)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = _expect(batch, "x", 2, "MLP", "(B, n_features)")
        s = _expect(batch, "s", 2, "MLP", "(B, n_static)")
        onehot = _expect(batch, "onehot", 2, "MLP", "(B, n_onehot)")
        return self.net(torch.cat([x, s, onehot], dim=-1))
