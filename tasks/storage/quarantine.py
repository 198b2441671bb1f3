"""The quarantine: a batch that failed validation, masked once more and leak-scanned, written to
the date's quarantine file in the lake for whoever investigates the failure.

Quality judges the batch; keeping a failed one is storage's, like every other lake file.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from tasks.common.schemas import MASK
from tasks.common.vocabulary import OTHER_DOMAIN, host_names, in_vocabulary
from tasks.privacy.domains import email_domain
from tasks.storage.lake import quarantine_path, write_table

if TYPE_CHECKING:
    from tasks.privacy.leak_scan import LeakScanner

# Quarantine keeps only what validation needs to show. Values that are ours (the pseudonym, the
# run date, the age in years) stay; a source field stays only where its value is in its
# vocabulary (tasks.common.vocabulary), and everything else becomes MASK: a batch may be
# quarantined precisely because the source put a value where it does not belong.
_SAFE_COLUMNS = frozenset({"run_date", "age"})
_PERSON_KEY = r"^[0-9a-f]{64}$"
_VOCABULARY_COLUMNS = ("country_code", "country", "gender")


def _masked(column: pa.ChunkedArray, keep: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray:
    """The column's value where `keep` is true, MASK elsewhere (nulls stay null)."""
    text = pc.cast(column, pa.string())
    return pc.if_else(pc.fill_null(keep, False), text, pa.scalar(MASK, pa.string()))


def _quarantine_email(email: pa.ChunkedArray) -> pa.ChunkedArray:
    # The batch has been through the domain rule: a domain left is shared or public, or `other`.
    domain = email_domain(email)
    kept = pc.binary_join_element_wise(f"{MASK}@", domain, "")
    good = pc.or_(host_names(domain), pc.equal(domain, OTHER_DOMAIN))
    return pc.if_else(pc.fill_null(good, False), kept, pa.scalar(MASK, pa.string()))


def quarantine_table(table: pa.Table) -> pa.Table:
    """The batch as quarantine stores it: every column that is not known-safe is masked."""
    columns = []
    for name in table.column_names:
        column = table[name]
        if name in _SAFE_COLUMNS and not pa.types.is_string(column.type):
            columns.append(column)
        elif name == "email":
            columns.append(_quarantine_email(pc.cast(column, pa.string())))
        elif name == "person_key":
            keep = pc.match_substring_regex(pc.cast(column, pa.string()), _PERSON_KEY)
            columns.append(_masked(column, keep))
        elif name in _VOCABULARY_COLUMNS and {"country", "country_code"} <= set(table.column_names):
            columns.append(_masked(column, in_vocabulary(table, name)))
        else:
            columns.append(_masked(column, pa.repeat(pa.scalar(False), len(column))))
    # The batch's own fields (nullability included) wherever the type stayed the same.
    fields = [
        field if field.type == column.type else pa.field(field.name, column.type)
        for field, column in zip(table.schema, columns, strict=True)
    ]
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def quarantine(
    table: pa.Table, lake_dir: Path, run_date: date, scanner: LeakScanner | None = None
) -> Path | None:
    """Write a failing batch, masked as `quarantine_table` says, to the date's quarantine file.

    With a scanner, the masked batch is leak-scanned first: a batch that still holds a raw
    value is not written at all (None), and the scanner's report says where it was.
    """
    masked = quarantine_table(table)
    if scanner is not None and scanner.scan_table("quarantine batch", masked):
        return None
    # The shared atomic writer: a temp file beside the target, renamed into place.
    return write_table(masked, quarantine_path(lake_dir, run_date))
