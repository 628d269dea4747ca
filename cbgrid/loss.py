"""The CarbonBench training loss, with the carbon balance evaluated in physical units.

    L = mean(w · (ŷ − y)²) + α · mean((NEE − (RECO − GPP))²)

``ŷ`` and ``y`` are scaled targets (GPP, RECO, NEE on the last axis); ``w`` is the per-day weight
w_qc × w_igbp × w_koppen (0 on unobserved days, see ``cbgrid.pipeline.Weights``), broadcast over
the three targets; both means run over every entry of the batch. The balance term undoes the
target scaling first, so it penalises a violation of NEE = RECO − GPP in gC m-2 d-1: on scaled
targets (each with its own mean and std) NEE = RECO − GPP does not hold even for the truth.
"""

from __future__ import annotations

import torch
from torch import nn

from cbgrid.errors import InputError

ALPHA = 0.1


class CarbonLoss(nn.Module):
    """Weighted multi-task MSE + α · carbon-balance penalty.

    ``y_mean``/``y_std``: the target scaling (GPP, RECO, NEE order), kept as buffers so the
    loss moves with ``.to(device)``. ``balance``: ``physical`` (cbgrid: the penalty in
    gC m-2 d-1), ``scaled`` (the reference at b5d643a: NEE − (RECO − GPP) of the standardised
    predictions) or ``none`` (the reference's published runs).
    """

    def __init__(self, y_mean, y_std, alpha: float = ALPHA, balance: str = "physical"):
        super().__init__()
        if balance not in ("physical", "scaled", "none"):
            raise InputError(f"balance must be 'physical', 'scaled' or 'none', not {balance!r}")
        self.kind = balance
        self.register_buffer("y_mean", torch.as_tensor(y_mean, dtype=torch.float32).reshape(3))
        self.register_buffer("y_std", torch.as_tensor(y_std, dtype=torch.float32).reshape(3))
        self.alpha = float(alpha)
        # NEE − RECO + GPP in physical units = pred · c + d with c, d from the scaling.
        s, m = self.y_std, self.y_mean
        self.register_buffer("_c", torch.stack([s[0], -s[1], s[2]]))
        self.register_buffer("_d", m[0] - m[1] + m[2])

    def forward(self, pred: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        mse = (w.unsqueeze(-1) * (pred - y).square()).mean()
        if not self.alpha or self.kind == "none":
            return mse
        return mse + self.alpha * self.balance(pred)

    def per_member(self, pred: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """(K,) the loss of each member of a grouped prediction (K, B, ..., 3) against one
        batch's ``y`` (B, ..., 3) and ``w`` (B, ...): ``forward`` of each member's slice.

        >>> loss = CarbonLoss([0, 0, 0], [1, 1, 1], alpha=0.0)
        >>> pred, y, w = torch.ones(2, 4, 3), torch.zeros(4, 3), torch.ones(4)
        >>> loss.per_member(pred * torch.tensor([1.0, 2.0])[:, None, None], y, w).tolist()
        [1.0, 4.0]
        """
        mse = (w.unsqueeze(-1) * (pred - y).square()).flatten(1).mean(1)
        if not self.alpha or self.kind == "none":
            return mse
        if self.kind == "scaled":
            bal = (pred[..., 2] - (pred[..., 1] - pred[..., 0])).square()
        else:
            bal = (pred @ self._c + self._d).square()
        return mse + self.alpha * bal.flatten(1).mean(1)

    def balance(self, pred: torch.Tensor) -> torch.Tensor:
        """mean((NEE − (RECO − GPP))²) of scaled predictions: in (gC m-2 d-1)² (``physical``), or
        of the standardised values themselves (``scaled``)."""
        if self.kind == "scaled":
            return (pred[..., 2] - (pred[..., 1] - pred[..., 0])).square().mean()
        return (pred @ self._c + self._d).square().mean()

    def mse(self, pred, y, w) -> torch.Tensor:
        return (w.unsqueeze(-1) * (pred - y).square()).mean()
