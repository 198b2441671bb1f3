"""Response bodies a hostile source can send: a gzip bomb and JSON nested far too deep.

Both wrap a real page, so each still parses to exactly the records asked for: a client that does
not bound what it reads accepts them, which is what the faults are there to show.
"""

from __future__ import annotations

import functools
import struct
import zlib

MIB = 1 << 20
# Deflate cannot do better than about 1:1032, so a MiB of padding compresses to about 1 KB.
_PAD = b" " * MIB
# gzip header: magic, deflate, no flags, no mtime, max compression, unknown OS (RFC 1952).
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"


@functools.cache
def _pad_block() -> bytes:
    """One MiB of padding as raw deflate ending in a full flush: it refers to nothing before it,
    so repeating it n times is a valid deflate stream of n MiB (compressing a GiB would be slow)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(_PAD) + compressor.flush(zlib.Z_FULL_FLUSH)


@functools.lru_cache(maxsize=4)
def _padding(mebibytes: int) -> tuple[bytes, int]:
    """`mebibytes` MiB of padding as deflate blocks (~1 KB a MiB), and its CRC-32 (slow for a
    GiB, so once per size)."""
    crc = 0
    for _ in range(mebibytes):
        crc = zlib.crc32(_PAD, crc)
    return _pad_block() * mebibytes, crc


def warm_gzip_bomb(expanded_bytes: int) -> None:
    """Compute the padding once up front, so no request waits for it (or times out on it)."""
    _padding(max(1, expanded_bytes // MIB))


def gzip_bomb(body: bytes, expanded_bytes: int) -> bytes:
    """A gzip member that expands to `body` plus `expanded_bytes` (in whole MiB) of whitespace
    before it (valid before any JSON text), with a correct CRC and size: a reader that keeps
    going accepts it."""
    mebibytes = max(1, expanded_bytes // MIB)
    padding, padding_crc = _padding(mebibytes)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    tail = compressor.compress(body) + compressor.flush()
    size = (mebibytes * MIB + len(body)) & 0xFFFFFFFF  # ISIZE is the length modulo 2**32
    trailer = struct.pack("<II", zlib.crc32(body, padding_crc), size)
    return b"".join((_GZIP_HEADER, padding, tail, trailer))


def deepen(body: bytes, levels: int) -> bytes:
    """The page with an extra envelope field `meta` holding arrays nested `levels` deep; the
    records are untouched, so only a depth limit tells this body from a valid one."""
    return b"".join((body[:-1], b',"meta":', b"[" * levels, b"]" * levels, b"}"))
