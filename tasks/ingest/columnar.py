"""A page's response bytes to typed columns in one pass, with no Python object per record.

pyarrow's JSON reader parses the body straight into Arrow columns of the source schema: about
half the time of orjson and `pa.Table.from_pylist` (bench/transform.py). It is only the fast
path of a page that keeps the contract. Whatever is unusual makes `typed_page` return None, and
the page then takes the general path (orjson, `source_schema.to_source_table`), which alone
decides what is wrong with it and says so by field: an unexpected or missing field, a null, a
value of another type, a short page, a body orjson would refuse (invalid UTF-8, a byte-order
mark, NaN, trailing data), a number a double cannot hold exactly. So both paths accept exactly
the same pages, with the same columns and signature (tests/tasks/ingest/test_columnar.py).

pyarrow's messages quote the body (field names a hostile source chose among them): none leaves
this module.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from tasks.ingest.limits import MAX_BODY_BYTES
from tasks.ingest.source_schema import (
    ARROW_TYPES,
    IGNORED_FIELDS,
    SOURCE_FIELDS,
    SOURCE_SCHEMA,
    signature_of,
    type_class,
)

# The record as the contract has it: our fields with their types, `address` nested. Fields the
# contract does not list are inferred, so that their presence can be seen (and sent the general
# way); IGNORED_FIELDS are among them.
_ADDRESS = "address."


def _record_type() -> pa.StructType:
    top: list[pa.Field] = []
    address: list[pa.Field] = []
    for path, (_name, kind, _required) in SOURCE_FIELDS.items():
        if path.startswith(_ADDRESS):
            address.append(pa.field(path.removeprefix(_ADDRESS), ARROW_TYPES[kind]))
        else:
            top.append(pa.field(path, ARROW_TYPES[kind]))
    return pa.struct([*top, pa.field("address", pa.struct(address))])


_PARSE = pj.ParseOptions(
    explicit_schema=pa.schema([pa.field("data", pa.list_(_record_type()))]),
    unexpected_field_behavior="infer",
)
# One block holds the whole body (bounded by MAX_BODY_BYTES before it gets here); one thread: the
# fetch tasks already run side by side.
_READ = pj.ReadOptions(use_threads=False, block_size=MAX_BODY_BYTES + 1)
# A JSON integer beyond 2**53 is rounded on its way into a double; orjson keeps it exact, and
# `to_source_table` refuses what does not convert exactly. Such a page goes that way.
_EXACT = float(2**53)
_BOM = b"\xef\xbb\xbf"


def typed_page(body: bytes, quantity: int) -> tuple[pa.Table, str] | None:
    """The page's columns in SOURCE_SCHEMA and its signature, or None for the general path."""
    if body.startswith(_BOM):  # pyarrow skips one; orjson refuses the body
        return None
    try:
        parsed = pj.read_json(pa.BufferReader(body), read_options=_READ, parse_options=_PARSE)
        if parsed.num_rows != 1 or parsed.column("data").null_count:
            return None
        records = parsed.column("data").chunk(0).values
        # A string column of invalid UTF-8 (orjson refuses such a body) fails this check.
        records.validate(full=True)
        flat = pa.Table.from_struct_array(records).flatten()
    except (pa.ArrowException, ValueError, TypeError):
        return None
    if flat.num_rows != quantity:
        return None
    present = {field.name: type_class(field.type) for field in flat.schema}
    if any(path not in SOURCE_FIELDS and path not in IGNORED_FIELDS for path in present):
        return None
    columns = []
    for path, (_name, kind, _required) in SOURCE_FIELDS.items():
        column = flat.column(path)
        if column.null_count:
            return None
        if kind == "number" and len(column) and not _exact_and_finite(column):
            return None
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=SOURCE_SCHEMA), signature_of(present)


def _exact_and_finite(column: pa.ChunkedArray) -> bool:
    """No NaN or infinity (orjson refuses those) and no magnitude where doubles skip integers."""
    magnitude = pc.max(pc.abs(column)).as_py()
    return (
        magnitude is not None and magnitude < _EXACT and bool(pc.all(pc.is_finite(column)).as_py())
    )
