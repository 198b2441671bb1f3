"""Failure texts that hold no source values: our own errors, and a safety net for all others.

Every failure text a run writes (the CLI's error line, Prefect's state message and logs,
`run-failure`, `pipeline_runs.error`) comes from `failure_text`. Our own errors are written to
name fields, pages, kinds and counts, never values; a library's message can quote the value it
choked on (Arrow's "Integer value -72201712000000000 not in range" was a person's latitude), so
those are reduced to their type. Whatever passes is still run through the leak scanner's
patterns (e-mail addresses, E.164 phone numbers) and, where the run has them, the hashes of the
batch's raw values: the caller passes its scanner in (`ValueScanner`), so this module, at the
bottom of the layers, needs nothing from the privacy package.
"""

from __future__ import annotations

import functools
import re
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, Protocol, TypeVar
from urllib.parse import urlsplit

MAX_TEXT = 500
WITHHELD = "message withheld: a library's message may quote source values"

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class ValuePattern:
    """A value shape in both regex dialects the pipeline matches with, written once."""

    python: re.Pattern[str]  # for `re`: redaction here, the leak scan of text
    re2: str  # for RE2 (Arrow's match over table cells): found or not, never replaced


def value_pattern(core: str, not_preceded_by: str = "", not_followed_by: str = "") -> ValuePattern:
    """`core` (in syntax `re` and RE2 share) with no character of the given classes beside it."""
    # RE2 has no look-around: its borders are alternatives that take the character along, which
    # says as well whether a cell holds the shape.
    before, after = not_preceded_by, not_followed_by
    python = (f"(?<![{before}])" if before else "") + core + (f"(?![{after}])" if after else "")
    re2 = (f"(^|[^{before}])" if before else "") + core + (f"($|[^{after}])" if after else "")
    return ValuePattern(re.compile(python), re2)


# The leak scanner's two value-free patterns (tasks/privacy/leak_text.py): an e-mail address with a
# real local part (its class has no `*`, so the masked `****@domain` never matches) and an E.164
# phone number that is not part of a longer token (base64 in particular).
EMAIL_PATTERN = value_pattern(
    r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"
)
PHONE_PATTERN = value_pattern(
    r"\+[0-9]{8,15}", not_preceded_by="A-Za-z0-9+/=", not_followed_by="0-9"
)


class ScanHit(Protocol):
    """Raw values of one kind found by a scan: the kind and how many, never the value."""

    @property
    def kind(self) -> str: ...

    @property
    def count(self) -> int: ...


class ValueScanner(Protocol):
    """What a failure text is checked with: a scan of text for a batch's raw values."""

    def scan_text(self, name: str, text: str) -> Sequence[ScanHit]:
        """The raw values found in `text`, by kind, with counts."""
        ...


class PipelineError(RuntimeError):
    """An error whose message we wrote: it names fields, pages, kinds and counts, never values.

    `transient` says whether the same run could succeed later unchanged (an API that was down,
    a database another run held); a deployment run retries only those.
    """

    transient: bool = False

    def __init__(self, message: str = "", *, transient: bool | None = None) -> None:
        super().__init__(message)
        if transient is not None:
            self.transient = transient


class BatchError(PipelineError, ValueError):
    """A batch breaks a contract between steps; the message names columns and counts."""


class LibraryError(PipelineError):
    """A library error inside a step, by type only (its own message may quote a value)."""


def display_url(url: object) -> str:
    """scheme://host:port/path of a URL: never its user info, query string or fragment."""
    text = str(url).strip()
    head, at, tail = text.rpartition("@")
    scheme, sep, _ = head.partition("://")
    if at and any(mark in head for mark in "?#"):
        # A "?" or "#" before the last "@": a password may hold the "?", or a token the "@";
        # neither side is safe to show.
        return f"{scheme}{sep}<withheld>" if sep else "<withheld>"
    if at:  # drop what a "user:password@" may hold, even when it is not well-formed
        text = f"{scheme}{sep}{tail}" if sep else tail
    text = re.split(r"[?#]", text, maxsplit=1)[0]
    try:
        parts = urlsplit(text)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # a bad port or bracket: nothing to take apart
        return text[:100]
    if not parts.scheme or not parts.hostname:
        return text[:100]
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}{port}{parts.path}"


def redact(text: str) -> str:
    """The text with anything shaped like an e-mail address or a phone number withheld."""
    text = EMAIL_PATTERN.python.sub("<e-mail withheld>", text)
    return PHONE_PATTERN.python.sub("<phone number withheld>", text)


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else ""


def _own_text(exc: BaseException) -> str:
    """What an exception may say about itself without quoting data."""
    if isinstance(exc, PipelineError):
        return _first_line(str(exc))
    if isinstance(exc, OSError) and exc.strerror:
        # errno and the system's wording; file names are ours (lake, database, key file).
        return f"[Errno {exc.errno}] {exc.strerror}"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    request = getattr(exc, "request", None)
    if isinstance(status, int) and request is not None:  # httpx.HTTPStatusError (Prefect's API)
        return f"HTTP {status} from {display_url(request.url)}"
    # Where it was raised helps whoever debugs it, and holds no value.
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    where = f"raised at {Path(frames[-1].filename).name}:{frames[-1].lineno}; " if frames else ""
    return f"{where}{WITHHELD}" if str(exc).strip() else where.removesuffix("; ")


def failure_text(exc: BaseException, scanner: ValueScanner | None = None) -> str:
    """`Type: first line` of a failure, free of source values, short enough for a table cell."""
    own = _own_text(exc)
    text = redact(f"{type(exc).__name__}: {own}" if own else type(exc).__name__)[:MAX_TEXT]
    if scanner is not None:
        hits = scanner.scan_text("failure text", text)
        if hits:
            kinds = ", ".join(sorted({hit.kind for hit in hits}))
            count = sum(hit.count for hit in hits)
            return f"{type(exc).__name__}: message withheld: it held {count} raw value(s) ({kinds})"
    return text


def value_free(exc: BaseException, text: str | None = None) -> BaseException:
    """The exception to raise in place of `exc`: ours with a redacted message, else a LibraryError.

    Our own errors keep their type (callers and tests tell failures apart by it); a library's
    error becomes a LibraryError naming only its type. Either way the result has no chained
    cause, so no traceback prints the original message. `text` is the failure text already
    worked out for it (by `failure_text`, with the run's scanner), if any.
    """
    if not isinstance(exc, Exception):
        return exc  # KeyboardInterrupt, SystemExit, Prefect's cancellation signals
    text = text or failure_text(exc)
    if isinstance(exc, PipelineError):
        message = text.partition(": ")[2]
        if str(exc) != message:
            exc.args = (message,)
        if str(exc) == message:
            exc.__cause__, exc.__context__, exc.__suppress_context__ = None, None, True
            return exc
    error = LibraryError(text)
    error.__suppress_context__ = True
    return error


def raises_value_free(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorator: any exception leaving `fn` is `value_free` (for the bodies of Prefect tasks)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise value_free(exc) from None

    return wrapper
