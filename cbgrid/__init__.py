"""cbgrid: zero-shot spatial upscaling of terrestrial carbon fluxes (CarbonBench).

Build a site × time × variable flux benchmark store, train and score models on unseen sites,
and write CF-1.8 global NEE/GPP/RECO maps.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cbgrid")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

from cbgrid import accessor  # noqa: E402,F401  (registers ``ds.cbgrid``)
from cbgrid.evaluation import evaluate  # noqa: E402
from cbgrid.store import open_store  # noqa: E402

__all__ = ["evaluate", "open_store", "__version__"]
