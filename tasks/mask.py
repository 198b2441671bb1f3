"""Masking: raw source rows -> the masked raw-lake batch, in one vectorized DuckDB query."""

from __future__ import annotations

import datetime as dt

import duckdb
import pyarrow as pa

from tasks.schemas import RAW_SCHEMA
from tasks.sqlfiles import read_sql

_BLOCK = 64  # SHA-256 block size in bytes (RFC 2104)


def hmac_pads(key: bytes) -> tuple[bytes, bytes]:
    """The inner and outer HMAC-SHA-256 pads for `key`."""
    if len(key) > _BLOCK:
        raise ValueError("HMAC keys longer than 64 bytes are not supported; use 16-64 bytes")
    padded = key.ljust(_BLOCK, b"\0")
    return bytes(b ^ 0x36 for b in padded), bytes(b ^ 0x5C for b in padded)


def mask_pii(source: pa.Table, run_date: dt.date, key: bytes) -> pa.Table:
    """Mask a batch of source rows per the privacy rules; the result matches RAW_SCHEMA."""
    ipad, opad = hmac_pads(key)
    with duckdb.connect() as con:
        con.register("source", source)
        result = con.sql(
            read_sql("mask_persons"), params={"ipad": ipad, "opad": opad, "run_date": run_date}
        ).to_arrow_table()
    return result.cast(RAW_SCHEMA)
