"""Shared fixtures: the real reference data (skipped when absent) and tiny stores."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
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


def random_site_dataset(n_sites: int = 6, start="2010-01-01", days: int = 60, seed: int = 0):
    """A small schema-conformant store Dataset with random targets on catalog sites."""
    from cbgrid import catalog, schema

    rng = np.random.default_rng(seed)
    sites = catalog.sites().iloc[:n_sites].reset_index(drop=True)
    time = pd.date_range(start, periods=days, freq="D")
    gpp = rng.gamma(2.0, 2.0, (n_sites, days))
    reco = rng.gamma(2.0, 1.5, (n_sites, days))
    data = {
        schema.GPP: gpp,
        schema.RECO: reco,
        schema.NEE: reco - gpp,
        schema.QC: rng.choice([0.5, 1.0], (n_sites, days)),
        "temperature_2m": 280 + 10 * rng.standard_normal((n_sites, days)),
    }
    return schema.site_dataset(data, sites, time)


@pytest.fixture
def small_ds():
    return random_site_dataset()
