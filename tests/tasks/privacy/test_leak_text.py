"""The value-free patterns: the RE2 forms (table cells) match what the Python ones (text) do."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tasks.privacy.leak_text import PATTERNS

SAMPLES = [
    "mail john.doe@example.org now",
    "a.b@c.io",
    "****@gmail.com",
    "****",
    "user@localhost",
    "call +4915112345678",
    "+15550001234",
    "+1234567",  # too short for E.164
    "+1234567890123456",  # too long
    "x+12345678901",  # inside a token
    "data:image/png;base64,iVBORw0KGgo+12345678901AAAA==",
    "ref 12345678901",
    "tel:+15550001234.",  # bordered by punctuation on both sides
    "=+15550001234",  # base64 padding before it
]


@pytest.mark.parametrize("kind", [kind for kind, _ in PATTERNS])
def test_re2_patterns_match_the_python_ones(kind: str) -> None:
    pattern = dict(PATTERNS)[kind]
    matched = pc.match_substring_regex(pa.array(SAMPLES), pattern.re2).to_pylist()
    assert matched == [pattern.python.search(sample) is not None for sample in SAMPLES]
    assert any(matched) and not all(matched)
