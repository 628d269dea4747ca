"""The one progress helper: a tqdm bar over loops and over dask computations.

Every long computation in cbgrid goes through :func:`compute` (dask graphs, one bar tick per
finished task, via ``tqdm.dask.TqdmCallback``) or :func:`bar` (Python loops). Bars are off with
``progress=False`` and everywhere when ``TQDM_DISABLE=1`` (``cbgrid -q`` sets it).
"""

from __future__ import annotations

import dask
from tqdm.auto import tqdm
from tqdm.dask import TqdmCallback


def bar(iterable=None, *, desc: str, unit: str = "it", total: int | None = None, progress: bool = True,
        leave: bool = True):
    """A tqdm bar over ``iterable`` (or a manual one with ``total``); silent unless ``progress``.

    >>> for _ in bar(range(3), desc="blocks", progress=False):
    ...     pass
    """
    # disable=None lets tqdm switch itself off when there is no terminal
    return tqdm(iterable, desc=desc, unit=unit, total=total, leave=leave, disable=None if progress else True)


def compute(*objs, desc: str, progress: bool = True, **kwargs):
    """``dask.compute(*objs)`` with a bar counting finished tasks; returns what dask returns.

    >>> import dask.array as da
    >>> compute(da.ones(4, chunks=2).sum(), desc="sum", progress=False)
    (np.float64(4.0),)
    """
    if not progress:
        return dask.compute(*objs, **kwargs)
    with TqdmCallback(desc=desc, unit="task", disable=None):
        return dask.compute(*objs, **kwargs)
