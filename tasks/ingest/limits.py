"""What one response may cost: its size after decompression and how deep its JSON nests.

A hostile or broken source decides how big and how deep its answer is. Without limits, a small
gzip body that expands to a GiB is inflated whole into the flow's memory, and JSON nested 900
deep is parsed. Both limits sit far above any valid page and far below what hurts.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterable, Iterator

import httpx
import numpy as np

# Sized from the largest valid page, 1000 records (`_quantity` is clamped to 1000), measured on
# the local API: 40 seeds in each of its 6 locales, largest 474,254 bytes (es_ES; en_US 463,568).
# A page with every field at its longest pool value is 611,980 bytes; the same with PHP's
# json_encode escaping (`\u00fc`, `\/`, as fakerapi.it's Laravel sends) 642,980; pretty-printed
# 987,022. 2 MiB is 4.4x the largest page seen, 2.1x even the pretty-printed worst case, and
# bounds a read at 1/512 of the 1 GiB bomb that was accepted.
MAX_BODY_BYTES = 2 * 1024 * 1024
# A valid body nests 4 deep (envelope {, data [, record {, address {). 16 leaves room for a
# source that adds nested fields, and is far below orjson's own limit (1024) that 900 passed.
MAX_JSON_DEPTH = 16
# What one zlib call may produce before the running total is checked again; without this, one
# 64 KiB network read of a bomb inflates to ~64 MiB in a single call.
INFLATE_STEP = 64 * 1024
IDENTITY = frozenset({"", "identity"})
GZIP = frozenset({"gzip", "x-gzip"})

# The depth scan keeps only quotes and brackets; opening brackets weigh +1, closing ones -1.
_QUOTE = ord('"')
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
_WEIGHTS = np.zeros(256, dtype=np.int8)
_WEIGHTS[list(b"[{")] = 1
_WEIGHTS[list(b"]}")] = -1
# An escaped backslash or quote: neither opens nor closes a string.
_ESCAPED = re.compile(rb'\\[\\"]')


class LimitExceededError(Exception):
    """A response went over a limit; the message names the limit, never the content."""


class EncodingError(Exception):
    """The response is compressed in a way we did not ask for."""


def _inflate(chunks: Iterable[bytes], room: Callable[[], int]) -> Iterator[bytes]:
    """Gunzip `chunks` in steps of at most `room()` bytes, so output never runs ahead of the
    caller's check; a cut or corrupt stream raises zlib.error."""
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
    for chunk in chunks:
        pending = chunk
        while pending and not inflater.eof:
            yield inflater.decompress(pending, room())
            pending = inflater.unconsumed_tail
    # Whatever zlib still holds once all input is in is at most one match (258 bytes).
    yield inflater.flush()
    if not inflater.eof:
        raise zlib.error("gzip stream ends early")


def read_body(response: httpx.Response, limit: int = MAX_BODY_BYTES) -> bytes:
    """The streamed response's body, decompressed; stops reading once it passes `limit` bytes."""
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in IDENTITY | GZIP:
        raise EncodingError("a Content-Encoding other than gzip")
    body = bytearray()

    def room() -> int:
        # One past the limit is enough to know it was passed: never ask zlib for more (and
        # never 0, which zlib reads as "no limit": the check below stops the loop first).
        return min(INFLATE_STEP, limit + 1 - len(body))

    # iter_raw, not iter_bytes: httpx would inflate each network read whole, unbounded.
    chunks = response.iter_raw()
    for chunk in _inflate(chunks, room) if encoding in GZIP else chunks:
        body += chunk
        if len(body) > limit:
            raise LimitExceededError(f"the {limit:,}-byte body limit (after decompression)")
    return bytes(body)


def nesting_depth(body: bytes) -> int:
    """How deep arrays and objects nest in the JSON text `body` (brackets in strings skipped).

    Linear and vectorized, so a 900-deep body is refused before any parser sees it, at less
    cost than parsing the page with orjson.
    """
    # Drop escaped backslashes and quotes, so every quote left opens or closes a string; other
    # escapes (`\/`, `\u00fc`) change nothing here. (A one-byte `in` is a memchr: ~free.)
    if b"\\" in body:
        body = _ESCAPED.sub(b"", body)
    structure = body.translate(None, _NOT_STRUCTURE)
    # Dropping two adjacent quotes keeps the parity of the quotes before every bracket, which is
    # all that says whether a bracket is in a string; as most strings hold no bracket, what is
    # left is mostly brackets (4,004 bytes of a 1000-record page's 74,022).
    codes = np.frombuffer(structure.replace(b'""', b""), dtype=np.uint8)
    weights = _WEIGHTS[codes]
    weights[np.cumsum(codes == _QUOTE, dtype=np.int64) % 2 == 1] = 0
    return int(np.cumsum(weights, dtype=np.int64).max(initial=0))
