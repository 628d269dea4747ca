"""The CarbonBench loss: weighted MSE and the physical-unit carbon-balance term."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cbgrid.loss import CarbonLoss

MEAN = np.array([4.0, 3.0, -1.0])  # GPP, RECO, NEE
STD = np.array([2.0, 1.5, 1.0])


def test_weighted_mse_by_hand():
    loss = CarbonLoss(MEAN, STD, alpha=0.0)
    pred = torch.tensor([[[1.0, 0.0, 2.0]], [[0.5, -1.0, 0.0]]])  # (B=2, H=1, 3)
    y = torch.tensor([[[0.0, 0.0, 0.0]], [[0.5, 1.0, 1.0]]])
    w = torch.tensor([[2.0], [0.5]])
    # entries: w * (pred - y)^2 = 2*[1, 0, 4] and 0.5*[0, 4, 1] -> sum 10 + 2.5 = 12.5 over 6 entries
    assert float(loss(pred, y, w)) == pytest.approx(12.5 / 6)


def test_balance_in_physical_units_by_hand():
    loss = CarbonLoss(MEAN, STD, alpha=0.1)
    pred = torch.tensor([[0.5, -1.0, 1.0], [0.0, 0.0, 0.0]])  # static (B, 3)
    # physical: row 0 GPP = 4 + 1 = 5, RECO = 3 - 1.5 = 1.5, NEE = -1 + 1 = 0 -> NEE - (RECO - GPP) = 3.5
    #           row 1 GPP = 4, RECO = 3, NEE = -1 -> residual -1 - (3 - 4) = 0
    assert float(loss.balance(pred)) == pytest.approx((3.5**2 + 0.0) / 2)
    y = torch.zeros_like(pred)
    w = torch.zeros(2)
    assert float(loss(pred, y, w)) == pytest.approx(0.1 * 3.5**2 / 2)


def test_balance_zero_for_consistent_physical_fluxes_not_for_scaled():
    """Fluxes with NEE = RECO − GPP give no penalty, although scaled they violate the identity."""
    loss = CarbonLoss(MEAN, STD)
    gpp = torch.tensor([2.0, 7.0, 0.5])
    reco = torch.tensor([3.0, 4.0, 1.0])
    phys = torch.stack([gpp, reco, reco - gpp], -1)
    scaled = (phys - torch.tensor(MEAN, dtype=torch.float32)) / torch.tensor(STD, dtype=torch.float32)
    assert float(loss.balance(scaled)) == pytest.approx(0.0, abs=1e-10)
    naive = (scaled[:, 2] - (scaled[:, 1] - scaled[:, 0])).square().mean()
    assert float(naive) > 0.1


def test_temporal_shapes_weights_broadcast_and_gradients():
    loss = CarbonLoss(MEAN, STD)
    pred = torch.randn(4, 15, 3, requires_grad=True)
    y = torch.randn(4, 15, 3)
    w = torch.rand(4, 15)
    w[0] = 0
    value = loss(pred, y, w)
    expected = (w[..., None] * (pred - y) ** 2).mean() + 0.1 * loss.balance(pred)
    assert float(value.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    value.backward()
    assert torch.isfinite(pred.grad).all()
    # w = 0 entries contribute no MSE gradient
    pred.grad = None
    CarbonLoss(MEAN, STD, alpha=0)(pred, y, w).backward()
    assert torch.count_nonzero(pred.grad[0]) == 0
