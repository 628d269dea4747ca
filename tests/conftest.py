"""Shared fixtures: the real reference data (skipped when absent) and tiny stores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ONEFLUX_DD = SHARED_DATA / "fluxnet" / "FLX_US-AR1_FLUXNET2015_SUBSET_DD_2009-2012_1-3.csv"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip("the shared reference data folder is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def oneflux_file() -> Path:
    if not ONEFLUX_DD.exists():
        pytest.skip("the real ONEFlux DD file is not present")
    return ONEFLUX_DD


@pytest.fixture(scope="module")
def torch_one_thread():
    """Tiny networks run fastest, and steadiest on a shared 2-core machine, on one thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _no_registry_leaks():
    """A test that registers a model must do so through ``models.registered``."""
    from cbgrid import models

    before = set(models.available())
    yield
    assert set(models.available()) == before, "a test left a model registered"


@pytest.fixture
def small_ds():
    from cbgrid.testing import site_store

    return site_store()
