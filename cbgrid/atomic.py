"""Writes that never lose or half-write anything: write beside, then rename; one writer at a time.

* :func:`replace_dir` / :func:`replace_file` yield a hidden sibling (``.NAME.tmp-<id>``) to fill;
  it takes the final name only once complete. An existing directory is first renamed to
  ``.NAME.old-<id>``, the new one renamed into place, then the old one removed.
* :func:`writer_lock` is the one lock of a path (``.NAME.lock`` beside it, through ``filelock``):
  every cbgrid writer holds it, so two processes writing one store or folder run one after the
  other instead of losing each other's work. A second writer waits (with a log line) up to
  ``$CBGRID_LOCK_TIMEOUT`` seconds (default 3600), then fails with an error naming the lock.
* :func:`recover` undoes what a kill left: a directory found only as ``.NAME.old-<id>`` (killed
  between the two renames) is renamed back; leftover ``.NAME.tmp-*`` siblings are removed. It
  runs under the lock at the start of every directory write, and from readers that find no
  ``NAME``.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock

from cbgrid.errors import ExistsError, LockedError

log = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT = 3600.0


def _lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


@contextmanager
def writer_lock(path, timeout: float | None = None) -> Iterator[None]:
    """Hold the writer lock of ``path`` (re-entrant within a process).

    >>> import tempfile
    >>> with writer_lock(Path(tempfile.mkdtemp()) / "store.zarr"):
    ...     pass
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    timeout = float(os.environ.get("CBGRID_LOCK_TIMEOUT", DEFAULT_LOCK_TIMEOUT)) if timeout is None else timeout
    lock = filelock.FileLock(str(_lock_path(path)), is_singleton=True)
    try:
        lock.acquire(timeout=0.05)
    except filelock.Timeout:
        log.warning("%s is being written by another cbgrid process; waiting up to %.0f s for its lock %s",
                    path, timeout, _lock_path(path))
        try:
            lock.acquire(timeout=timeout)
        except filelock.Timeout:
            raise LockedError(f"{path} is still being written by another cbgrid process after {timeout:.0f} s "
                               f"(lock {_lock_path(path)}); wait for it to finish, or remove the lock file if no "
                               "cbgrid process is running") from None
    try:
        yield
    finally:
        lock.release()


def _siblings(path: Path, kind: str) -> list[Path]:
    if not path.parent.exists():
        return []
    return sorted(path.parent.glob(f".{path.name}.{kind}-*"), key=lambda p: p.stat().st_mtime)


def recover(path) -> list[str]:
    """Repair what an interrupted write of ``path`` left; returns what was done (also logged).

    Call it only while holding ``writer_lock(path)`` (every cbgrid writer does).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); (d / ".s.zarr.old-1").mkdir()
    >>> recover(d / "s.zarr")        # a swap killed between its two renames
    ['restored ... from .s.zarr.old-1, left by a write interrupted between its two renames']
    >>> (d / "s.zarr").exists()
    True
    """
    path = Path(path)
    done = []
    olds = _siblings(path, "old")
    if not path.exists() and olds:
        keep = olds[-1]
        os.replace(keep, path)
        done.append(f"restored {path} from {keep.name}, left by a write interrupted between its two renames")
        olds = olds[:-1]
    for leftover in olds + _siblings(path, "tmp"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        done.append(f"removed {leftover.name}, left by an interrupted write")
    for line in done:
        log.warning("%s", line)
    return done


def recover_if_missing(path) -> None:
    """For readers: when ``path`` is absent but an interrupted swap left its previous version,
    restore it (under the writer lock) instead of reporting that nothing is there; remove the
    half-written siblings a killed writer left when no writer holds the lock.

    >>> import tempfile
    >>> recover_if_missing(Path(tempfile.mkdtemp()) / "nothing.zarr")   # nothing to restore
    """
    path = Path(path)
    if not path.exists() and _siblings(path, "old"):
        with writer_lock(path):
            recover(path)
    elif _siblings(path, "tmp"):
        # what a killed writer left; removed now unless a writer (this process included: a fresh,
        # non-singleton lock conflicts with the held one) is at work on it this moment
        lock = filelock.FileLock(str(_lock_path(path)), is_singleton=False)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            return
        try:
            recover(path)
        finally:
            lock.release()


def _about_target(e: OSError, tmp: Path, path: Path) -> OSError:
    """``e`` as the user sees it: an error on the hidden temporary sibling names ``path``."""
    name = str(e.filename or "")
    if not name.startswith(str(tmp)):
        return e
    return type(e)(e.errno, e.strerror, str(path) + name[len(str(tmp)):])


@contextmanager
def replace_dir(path, *, overwrite: bool, hint: str = "pass overwrite=True") -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to fill; on success it becomes ``path``.

    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "report"
    >>> with replace_dir(target, overwrite=True) as tmp:
    ...     tmp.mkdir(); _ = (tmp / "a.txt").write_text("done")
    >>> (target / "a.txt").read_text()
    'done'
    """
    path = Path(path)
    with writer_lock(path):
        recover(path)
        if path.exists() and not overwrite:
            raise ExistsError(f"{path} exists; {hint}")
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            yield tmp
            if path.exists():
                old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise _about_target(e, tmp, path) from e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


@contextmanager
def replace_file(path) -> Iterator[Path]:
    """Yield a temporary sibling of file ``path`` to write; on success it becomes ``path``.

    One rename publishes the file, so readers see the old or the new file, never a part; two
    writers of one file leave the last one's (no lock: a single file is never merged).

    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "scores.csv"
    >>> with replace_file(target) as tmp:
    ...     _ = tmp.write_text("site,R2")
    >>> target.read_text()
    'site,R2'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _about_target(e, tmp, path) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
