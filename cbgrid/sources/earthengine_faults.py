"""What to do when an Earth Engine request fails: retry it, or stop and say what to change.

The real client stack raises many kinds of errors, and the kind decides the answer:

* ``ee.data`` turns an HTTP error into ``ee.ee_exception.EEException(reason)`` raised inside
  ``except googleapiclient.errors.HttpError``, so the status code survives only on the
  exception's ``__context__`` (the text says "The service is currently unavailable.", not 503);
* its transport (``ee._cloud_api_utils._Http``) turns ``requests`` connection failures into the
  built-in ``ConnectionError`` and read/connect timeouts into ``TimeoutError``;
* token refreshes raise ``google.auth.exceptions.TransportError`` / ``RefreshError`` (the latter
  says itself whether it is ``retryable``);
* xee retries only ``EEException``, so everything else reaches the caller directly.

:func:`classify` reads all of them (the whole ``__cause__`` / ``__context__`` chain, status codes
included) into one :class:`Verdict`; :func:`call_with_retries` retries transient failures with
exponential backoff and full jitter up to a bounded number of attempts and fails at once, with
a message that says what to change, on deterministic ones (bad band, used-up compute quota,
memory limit, credentials). cbgrid switches the client's own HTTP retries off
(``ee.data.setMaxRetries(0)``) and asks xee for none, so :class:`RetryPolicy` ``max_tries`` is
the total number of attempts a request can make.
"""

from __future__ import annotations

import functools
import importlib
import logging
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from cbgrid.errors import InputError, ServiceError, first_line

log = logging.getLogger(__name__)

#: Verdicts.
TRANSIENT = "transient"      # retry with backoff
SLOW = "slow"                # the computation ran past the 5-minute interactive limit: retry once
QUOTA = "quota"              # the project's compute quota is used up: stop
TOO_LARGE = "too-large"      # memory / pixel / size limit of one request: stop, make requests smaller
CREDENTIALS = "credentials"  # not authorised: stop
FATAL = "fatal"              # anything else (bad band, unknown asset, a bug): stop

#: HTTP statuses a retry may cure (googleapiclient retries the same set: 5xx and 429).
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})

_QUOTA = re.compile(
    r"EECU|compute (time )?quota|quota (has been |was )?(exhausted|used up)|"
    r"(daily|monthly) (compute |EECU )?(usage |quota|limit)|per day|per month",
    re.IGNORECASE,
)
_TOO_LARGE = re.compile(
    r"memory limit|out of memory|too many pixels|maxPixels|payload size exceeds|"
    r"request size|response size|too large|exceeds? the (byte )?limit|Total request size|accumulating over",
    re.IGNORECASE,
)
_SLOW = re.compile(r"computation timed out", re.IGNORECASE)
_CREDENTIALS = re.compile(
    r"authorize access|earthengine authenticate|invalid_grant|invalid_scope|unauthorized_client|"
    r"not (signed up|registered) for earth engine|permission denied|PERMISSION_DENIED|"
    r"does not have required permission|has not been used in project|is disabled",
    re.IGNORECASE,
)
_TRANSIENT = re.compile(
    r"too many (concurrent|requests)|rate limit|quota exceeded|capacity exceeded|"
    r"service (is )?(currently )?unavailable|temporarily|internal (server )?error|backend error|"
    r"deadline exceeded|connection (reset|aborted|refused|closed)|try again|"
    r"\b(408|429|500|502|503|504)\b",
    re.IGNORECASE,
)

_sleep = time.sleep  # replaced in tests to keep retry tests instant


class EarthEngineError(ServiceError):
    """An Earth Engine request failed; the message names what and where, and what to change."""


class CredentialsError(EarthEngineError):
    """Earth Engine credentials or project are missing or not authorised."""


class QuotaError(EarthEngineError):
    """The project's Earth Engine compute quota is used up."""


class RequestTooLargeError(EarthEngineError):
    """One request exceeds Earth Engine's memory, pixel, size or time limits."""


@dataclass(frozen=True)
class Verdict:
    """What a failure is (``kind``, one of the constants above) and why, in a few words."""

    kind: str
    why: str

    @property
    def retry(self) -> bool:
        return self.kind in (TRANSIENT, SLOW)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries: ``max_tries`` attempts in all (the first included), waits of
    ``base_delay * 2**k`` seconds (capped at ``max_delay``) times a uniform 0.5-1 jitter, and
    at most ``slow_tries`` attempts of a request that timed out on the server."""

    max_tries: int = 6
    base_delay: float = 2.0
    max_delay: float = 120.0
    slow_tries: int = 2

    def __post_init__(self):
        if int(self.max_tries) < 1:
            raise InputError(f"max_tries is {self.max_tries}; it must be at least 1")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return min(self.max_delay, self.base_delay * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)

    def worst_case_wait(self) -> float:
        """Longest total wait between the attempts of one request, in seconds."""
        return sum(min(self.max_delay, self.base_delay * 2 ** k) for k in range(self.max_tries - 1))


@functools.lru_cache(maxsize=1)
def _types() -> dict[str, tuple[type, ...]]:
    """Exception classes of the client stack, where those libraries are installed."""

    def classes(*names):
        out = []
        for name in names:
            module, _, attr = name.rpartition(".")
            try:
                out.append(getattr(importlib.import_module(module), attr))
            except (ImportError, AttributeError):
                pass
        return tuple(out)

    return {
        "http": classes("googleapiclient.errors.HttpError"),
        "transient": classes(
            "google.auth.exceptions.TransportError", "requests.exceptions.ConnectionError",
            "requests.exceptions.Timeout", "requests.exceptions.ChunkedEncodingError",
            "urllib3.exceptions.ProtocolError", "urllib3.exceptions.TimeoutError",
            "http.client.IncompleteRead", "httplib2.ServerNotFoundError", "ssl.SSLError",
        ),
        "refresh": classes("google.auth.exceptions.RefreshError"),
        "credentials": classes("google.auth.exceptions.DefaultCredentialsError"),
    }


def chain(err: BaseException) -> Iterator[BaseException]:
    """``err`` and the exceptions it was raised from or while handling, outermost first."""
    seen = set()
    todo = [err]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]
        todo += [a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]


def http_status(err: BaseException) -> int | None:
    """The HTTP status behind an error (an ``HttpError`` anywhere in its chain), if any."""
    http = _types()["http"]
    for e in chain(err):
        if http and isinstance(e, http):
            status = getattr(e, "status_code", None) or getattr(getattr(e, "resp", None), "status", None)
            try:
                return int(status)
            except (TypeError, ValueError):
                return None
    return None


def _text(err: BaseException) -> str:
    return " | ".join(f"{type(e).__name__}: {e}" for e in chain(err))


def classify(err: BaseException) -> Verdict:
    """Read a failure of the Earth Engine client stack into a :class:`Verdict`.

    >>> classify(TimeoutError("read timed out")).kind
    'transient'
    >>> classify(RuntimeError("Image.select: Pattern 'x' did not match any bands.")).kind
    'fatal'
    """
    t = _types()
    text = _text(err)
    status = http_status(err)
    why = f"HTTP {status}" if status else type(err).__name__
    if _QUOTA.search(text):
        return Verdict(QUOTA, why)
    if _TOO_LARGE.search(text):
        return Verdict(TOO_LARGE, why)
    if _SLOW.search(text):
        return Verdict(SLOW, why)
    for e in chain(err):
        if t["refresh"] and isinstance(e, t["refresh"]):
            return Verdict(TRANSIENT if getattr(e, "retryable", False) else CREDENTIALS, type(e).__name__)
        if t["credentials"] and isinstance(e, t["credentials"]):
            return Verdict(CREDENTIALS, type(e).__name__)
    if status in (401, 403) and not _TRANSIENT.search(text):
        return Verdict(CREDENTIALS, why)
    if _CREDENTIALS.search(text):
        return Verdict(CREDENTIALS, why)
    if status in RETRY_STATUS:
        return Verdict(TRANSIENT, why)
    for e in chain(err):
        if isinstance(e, (TimeoutError, ConnectionError)) or (t["transient"] and isinstance(e, t["transient"])):
            return Verdict(TRANSIENT, type(e).__name__)
    if _TRANSIENT.search(text):
        return Verdict(TRANSIENT, why)
    return Verdict(FATAL, why)


def is_transient(err: BaseException) -> bool:
    """Whether a retry may cure ``err`` (rate limits, 5xx, connection and timeout failures)."""
    return classify(err).retry


def failure(what: str, err: BaseException, verdict: Verdict, tries: int) -> EarthEngineError:
    """The error to raise for a request that will not be retried (again): says what to change."""
    msg = first_line(err)
    if verdict.kind == QUOTA:
        return QuotaError(
            f"{what}: the project's Earth Engine compute quota is used up ({msg}); wait for it to reset, raise "
            "the project's EECU limit in the Cloud console or move the project to a higher noncommercial tier, "
            "then re-run the same command to resume"
        )
    if verdict.kind in (TOO_LARGE, SLOW):
        after = f" after {tries} tries" if tries > 1 else ""
        return RequestTooLargeError(
            f"{what}: the request is too heavy for Earth Engine's interactive limits{after} ({msg}); "
            "ask for less per request (fewer days per request, a smaller tile or --pixels-per-request), "
            "then re-run the same command to resume"
        )
    if verdict.kind == CREDENTIALS:
        return CredentialsError(
            f"{what}: Earth Engine refused the credentials ({verdict.why}: {msg}); check the service-account key "
            "or run `earthengine authenticate`, and that the project has the Earth Engine API enabled and is registered"
        )
    if verdict.kind == TRANSIENT:
        return EarthEngineError(f"{what}: still failing after {tries} tries ({verdict.why}: {msg}); "
                                "re-run the same command later to resume")
    return EarthEngineError(f"{what}: {type(err).__name__}: {msg}")


def call_with_retries(fn: Callable, *, what: str, policy: RetryPolicy | None = None, max_tries: int | None = None):
    """Call ``fn()``; retry transient failures with backoff, raise :class:`EarthEngineError` otherwise.

    ``policy`` (or just ``max_tries``) bounds the attempts. The error raised names ``what``,
    the cause, and what to change.

    >>> call_with_retries(lambda: 42, what="a request")
    42
    """
    policy = policy or RetryPolicy(**({"max_tries": max_tries} if max_tries else {}))
    for attempt in range(1, policy.max_tries + 1):
        try:
            return fn()
        except EarthEngineError:
            raise
        except Exception as e:  # noqa: BLE001 - classified below
            verdict = classify(e)
            limit = policy.slow_tries if verdict.kind == SLOW else policy.max_tries
            if not verdict.retry or attempt >= min(limit, policy.max_tries):
                raise failure(what, e, verdict, attempt) from e
            delay = policy.delay(attempt)
            log.warning("%s: %s (%s); retry %d/%d in %.1f s", what, first_line(e), verdict.why, attempt,
                        min(limit, policy.max_tries) - 1, delay)
            _sleep(delay)
    raise AssertionError("unreachable")
