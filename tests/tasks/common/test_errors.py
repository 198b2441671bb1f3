"""tasks.common.errors: failure texts hold no source values, whatever raised them."""

from __future__ import annotations

import datetime as dt
import traceback

import pyarrow as pa
import pytest

from tasks.common.errors import (
    LibraryError,
    PipelineError,
    display_url,
    failure_text,
    raises_value_free,
    redact,
    value_free,
)
from tasks.ingest.fetch import FetchError
from tasks.privacy.leak_scan import LeakScanner

SECRET = "-72201712000000000"


def arrow_error() -> Exception:
    """The error Arrow raised for a person's latitude sent as an integer (it quotes the value)."""
    try:
        pa.array([int(SECRET)]).cast(pa.float64())
    except pa.ArrowInvalid as exc:
        assert SECRET in str(exc)
        return exc
    raise AssertionError("Arrow accepted the value")


def test_a_library_error_is_reduced_to_its_type_and_place() -> None:
    text = failure_text(arrow_error())
    assert text.startswith("ArrowInvalid: raised at ") and "message withheld" in text
    assert SECRET not in text


def test_our_errors_keep_their_words_minus_anything_shaped_like_pii() -> None:
    exc = FetchError("page 3 failed; the API said jane.doe@example.org, +14155550123")
    assert failure_text(exc) == (
        "FetchError: page 3 failed; the API said <e-mail withheld>, <phone number withheld>"
    )
    assert failure_text(PipelineError("first line\nsecond line")) == "PipelineError: first line"


def test_the_batch_hashes_catch_what_no_pattern_can() -> None:
    source = pa.table({"lastname": ["Schroeder"], "email": ["emilie24@fahey.com"]})
    scanner = LeakScanner(source, dt.date(2026, 1, 1))
    text = failure_text(PipelineError("row of Schroeder is odd"), scanner)
    assert text == "PipelineError: message withheld: it held 1 raw value(s) (lastname)"


def test_value_free_keeps_our_type_and_drops_the_cause() -> None:
    try:
        try:
            raise arrow_error()
        except pa.ArrowInvalid as inner:
            raise FetchError("page 0: mail a@b.example.com") from inner
    except FetchError as exc:
        original, raised = exc, value_free(exc)
    assert raised is original and str(raised) == "page 0: mail <e-mail withheld>"
    printed = traceback.format_exception(raised)
    # No chained cause is printed, and the exception's own line is the redacted one (the other
    # lines are source code of this test).
    assert printed[-1] == "tasks.ingest.fetch.FetchError: page 0: mail <e-mail withheld>\n"
    assert not any("direct cause" in line or "During handling" in line for line in printed)


def test_value_free_wraps_a_library_error() -> None:
    raised = value_free(arrow_error())
    assert isinstance(raised, LibraryError) and SECRET not in str(raised)
    assert value_free(KeyboardInterrupt()).__class__ is KeyboardInterrupt


def test_a_task_body_raises_value_free() -> None:
    @raises_value_free
    def body() -> None:
        raise arrow_error()

    with pytest.raises(LibraryError) as info:
        body()
    printed = "".join(traceback.format_exception(info.value))
    assert SECRET not in printed


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:secret@fakerapi.it/api/v2?token=x", "https://fakerapi.it/api/v2"),
        ("http://127.0.0.1:8000/api/v2", "http://127.0.0.1:8000/api/v2"),
        ("user:secret@host/path", "host/path"),
    ],
)
def test_urls_are_shown_without_credentials(url: str, shown: str) -> None:
    assert display_url(url) == shown


def test_redact_leaves_masks_and_counts_alone() -> None:
    text = "****@gmail.com, 30,000 records, page 12, 2026-11-05"
    assert redact(text) == text


def test_only_failures_that_can_clear_by_themselves_are_transient() -> None:
    from tasks.ingest.source_schema import SchemaDriftError
    from tasks.storage.database import DatabaseBusyError

    assert DatabaseBusyError("db is busy").transient
    assert FetchError("page 1 failed after 6 attempts", transient=True).transient
    assert not FetchError("page 0: HTTP 404 (not retryable)").transient
    assert not SchemaDriftError("page 0: field 'email' is missing").transient
    assert not PipelineError("anything else").transient
