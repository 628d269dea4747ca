"""cbgrid: zero-shot spatial upscaling of terrestrial carbon fluxes (CarbonBench).

Build a site × time × variable flux benchmark store, train and score models on unseen sites,
and write CF-1.8 global NEE/GPP/RECO maps.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cbgrid")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

from cbgrid.store import open_store  # noqa: E402

__all__ = ["open_store", "__version__"]


def __getattr__(name):
    # Heavier stages are imported on first use so `import cbgrid` stays light.
    if name == "evaluate":
        from cbgrid.evaluate import evaluate

        return evaluate
    raise AttributeError(f"module 'cbgrid' has no attribute {name!r}")
