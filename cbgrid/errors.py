"""The errors cbgrid raises for problems a user can fix.

Every error a user can act on derives from :class:`CbgridError`; ``cbgrid.cli.main`` catches
that base once and prints its message as one line (``--debug`` shows the traceback). Each
subclass also derives from the built-in exception it refines, so ``except ValueError`` or
``except FileNotFoundError`` in callers keeps working.

Messages name the file, field or value at fault and say what to change.

>>> try:
...     raise InputError("sites.csv: column 'lat' is missing; add it")
... except ValueError as e:
...     print(type(e).__name__, isinstance(e, CbgridError))
InputError True
"""

from __future__ import annotations


class CbgridError(Exception):
    """Base class of every error a user can fix; the CLI prints it as one line."""


class InputError(CbgridError, ValueError):
    """A file, field, argument or value is wrong; the message says which and what to write."""


class MissingError(CbgridError, FileNotFoundError):
    """A file, folder, store, variable or site that a step needs is not there."""


class ExistsError(CbgridError, FileExistsError):
    """An output already exists and would be replaced; the message names the flag that allows it."""


class LockedError(CbgridError, TimeoutError):
    """Another cbgrid process holds the writer lock of a store or folder for too long."""


class DataError(InputError):
    """Values in a data file are implausible or inconsistent (truncated, out of bounds, all missing)."""


class ServiceError(CbgridError, RuntimeError):
    """A remote service or an external tool failed in a way retrying did not mend."""


class UnknownError(InputError, KeyError):
    """A name (variable, metric, coordinate, model, class) is not known; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for quoting
    a library's error inside one of cbgrid's one-line messages.

    >>> first_line(ValueError("bad date\\nat row 3")), first_line(OSError())
    ('bad date', 'OSError')
    """
    return (str(err).strip().splitlines() or [""])[0] or type(err).__name__
