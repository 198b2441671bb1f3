"""Masking: raw source rows -> the masked raw-lake batch, in one vectorized DuckDB query."""

from __future__ import annotations

import datetime as dt
import hashlib

import pyarrow as pa
import pyarrow.compute as pc

from tasks.common.memdb import cursor
from tasks.common.schemas import MASK, MASKED_COLUMNS, RAW_SCHEMA
from tasks.common.sqlfiles import read_sql

_BLOCK = 64  # SHA-256 block size in bytes (RFC 2104)
# The columns the query computes; the cast is free unless DuckDB's Arrow export types change.
_COMPUTED = pa.schema([RAW_SCHEMA.field(name) for name in ("person_key", "email", "age")])


def hmac_pads(key: bytes) -> tuple[bytes, bytes]:
    """The inner and outer HMAC-SHA-256 pads for `key`, of any length (RFC 2104)."""
    if len(key) > _BLOCK:
        # RFC 2104: a key longer than the block is hashed first (Python's hmac does the same).
        key = hashlib.sha256(key).digest()
    padded = key.ljust(_BLOCK, b"\0")
    return bytes(b ^ 0x36 for b in padded), bytes(b ^ 0x5C for b in padded)


def _identity(source: pa.Table) -> pa.ChunkedArray:
    """The HMAC message after the pad, built in Arrow; null where DuckDB must build it."""
    emails = source["email"]
    # DuckDB's trim removes Unicode space separators and its lower() is Unicode-aware: on ASCII
    # both equal Arrow's " "-trim and ascii_lower, which cost a fraction. Other emails (and
    # only those) are left to the query's own expression, so every identity stays the same.
    key = pc.ascii_lower(pc.utf8_trim(emails, " "))
    identity = pc.binary_join_element_wise(
        key,
        source["firstname"],
        source["lastname"],
        source["birthday"],
        "\x1f",
        null_handling="replace",
        null_replacement="",
    )
    ascii_only = pc.fill_null(pc.string_is_ascii(emails), True)
    if pc.all(ascii_only).as_py():
        return identity
    return pc.if_else(ascii_only, identity, pa.scalar(None, pa.string()))


def mask_pii(source: pa.Table, run_date: dt.date, key: bytes) -> pa.Table:
    """Mask a batch of source rows per the privacy rules; the result matches RAW_SCHEMA."""
    ipad, opad = hmac_pads(key)
    params = {
        "ipad": ipad,
        "opad": opad,
        "run_year": run_date.year,
        "run_month_day": run_date.month * 100 + run_date.day,
    }
    inputs = source.select(["email", "firstname", "lastname", "birthday"])
    inputs = inputs.append_column("identity", _identity(source))
    con = cursor()
    con.register("source", inputs)
    try:
        computed = con.sql(read_sql("mask_persons"), params=params).to_arrow_table()
        computed = computed.cast(_COMPUTED)
    finally:
        # Drop the view at once: it would otherwise keep the raw rows alive until the next call.
        con.unregister("source")
    rows = source.num_rows
    if computed.num_rows != rows:
        raise RuntimeError("masking returned a different number of rows than it was given")
    # One shared "****" array for every masked column, and the non-identifying columns taken as
    # they are: sending them through DuckDB and back to Arrow cost a tenth of the whole mask.
    mask = pa.repeat(pa.scalar(MASK, pa.string()), rows)
    columns = dict.fromkeys(MASKED_COLUMNS, mask)
    columns.update(
        person_key=computed["person_key"],
        run_date=pa.repeat(pa.scalar(run_date, pa.date32()), rows),
        email=computed["email"],
        age=computed["age"],
        **{name: source[name] for name in ("gender", "country", "country_code")},
    )
    return pa.Table.from_arrays([columns[f.name] for f in RAW_SCHEMA], schema=RAW_SCHEMA)
