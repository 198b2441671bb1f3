"""The validator process: the summaries validation here would give, no key, no values, gone with
the process that started it, and validation here whenever it cannot answer."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from tasks.quality import validator
from tasks.quality.gx_validation import ValidationSummary, validate_here
from tasks.quality.validate import validate_masked
from tests.tasks.quality.test_validate import PLANTED, ROWS, make_analytical, make_raw, plant

ROOT = Path(__file__).resolve().parents[3]
KEY = "a-key-the-validator-must-never-hold-0123"
# GX's import and warm-up in the child, on a busy 2-core machine: generous, it is a deadline.
GONE_SECONDS = 120.0


def _gone(pid: int) -> bool:
    """Whether `pid` has exited (a zombie nobody reaped yet counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def _wait_gone(pid: int) -> bool:
    deadline = time.monotonic() + GONE_SECONDS
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.1)
    return _gone(pid)


@pytest.fixture
def running(monkeypatch: pytest.MonkeyPatch) -> Iterator[validator.Validator]:
    """A validator process of this test's own, as the process's validator."""
    monkeypatch.setenv("PII_HASH_KEY", KEY)
    monkeypatch.setenv("VALIDATOR_TEST_MARKER", "inherited")
    started = validator.Validator()
    monkeypatch.setattr(validator, "_current", started)
    yield started
    started.stop()


CASES = {
    "valid masked": ("masked", make_raw(), ROWS),
    "a name left unmasked": ("masked", plant(make_raw(), "firstname", 3, "Zelda"), ROWS),
    "an e-mail in country": ("masked", plant(make_raw(), "country", 5, PLANTED), ROWS),
    "wrong row count": ("masked", make_raw(), ROWS + 1),
    "valid analytical": ("analytical", make_analytical(), ROWS),
    "a missing column": ("analytical", make_analytical().drop_columns(["gender"]), ROWS),
}


@pytest.mark.slow
def test_it_gives_the_summaries_validation_here_gives(running: validator.Validator) -> None:
    for name, (layer, table, rows) in CASES.items():
        there = validator.validate(layer, table, rows)
        assert there is not None, name
        assert there == validate_here(table, layer, rows), name
    assert running.alive()  # failing batches are answers, not failures of the process


@pytest.mark.slow
def test_it_holds_no_key(running: validator.Validator) -> None:
    assert validator.validate("masked", make_raw(), ROWS) is not None
    assert running.pid is not None
    theirs = Path(f"/proc/{running.pid}/environ").read_bytes()
    assert b"VALIDATOR_TEST_MARKER=inherited" in theirs  # the reading works: the rest is there
    assert b"PII_HASH_KEY" not in theirs


def test_replies_carry_counts_never_values() -> None:
    # serve() itself, on in-memory pipes: what the process would write back, byte for byte.
    table = plant(plant(make_raw(), "country", 5, PLANTED), "firstname", 3, "Zelda")
    requests = io.BytesIO()
    requests.write(json.dumps({"layer": "masked", "expected_rows": ROWS}).encode() + b"\n")
    with pa.ipc.new_stream(requests, table.schema) as writer:
        writer.write_table(table)
    requests.seek(0)
    replies = io.BytesIO()
    validator.serve(requests, replies)
    line = replies.getvalue()
    assert line.count(b"\n") == 1
    summary = ValidationSummary.from_dict(json.loads(line)["summary"])
    assert not summary.success
    for secret in (PLANTED, "Zelda", PLANTED.split("@")[0]):
        assert secret.encode() not in line


@pytest.mark.slow
def test_it_renders_data_docs_into_the_folder_it_is_given(
    running: validator.Validator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A relative folder means this process's cwd, not the validator's (the checkout).
    monkeypatch.chdir(tmp_path)
    table = plant(make_raw(), "firstname", 3, "Zelda.Planted")
    summary = validator.validate("masked", table, ROWS, Path("gx"))
    assert summary is not None and not summary.success
    index = tmp_path.resolve() / "gx" / "data_docs" / "index.html"
    assert summary.data_docs == str(index) and index.is_file()
    pages = list((tmp_path / "gx" / "data_docs" / "validations").rglob("*.html"))
    assert len(pages) == 1
    assert "Zelda" not in pages[0].read_text(encoding="utf-8")
    assert running.alive()


@pytest.mark.slow
def test_when_it_has_died_the_batch_is_validated_here(running: validator.Validator) -> None:
    assert running.pid is not None
    os.kill(running.pid, signal.SIGKILL)
    assert _wait_gone(running.pid)
    table = plant(make_raw(), "firstname", 3, "Zelda")
    assert validator.validate("masked", table, ROWS) is None
    summary = validate_masked(table, ROWS)  # what the flow calls
    assert summary == validate_here(table, "masked", ROWS)
    assert not summary.success


@pytest.mark.slow
def test_a_failure_it_answers_stops_it_and_leaves_validation_here(
    running: validator.Validator,
) -> None:
    # An unknown layer fails inside the process, which answers with the error's type only.
    assert validator.validate("no-such-layer", make_raw(), ROWS) is None
    assert not running.alive()
    assert validator.validate("masked", make_raw(), ROWS) is None


@pytest.mark.slow
@pytest.mark.parametrize("ending", ["exits", "is killed"])
def test_it_ends_with_the_process_that_started_it(ending: str) -> None:
    # Started, then the starting process exits (atexit stops it) or is SIGKILLed (its pipes
    # close, and the validator ends when it next reads, after its GX import at the latest).
    end = "os.kill(os.getpid(), 9)" if ending == "is killed" else "pass"
    code = (
        "import os\n"
        "from tasks.quality import validator\n"
        "print(validator.start().pid, flush=True)\n"
        f"{end}\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    pid = int(done.stdout.split()[0])
    assert _wait_gone(pid), f"the validator {pid} outlived its parent ({ending})"
