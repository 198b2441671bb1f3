"""The source record shape we rely on, and the check that turns a page into typed Arrow columns."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pyarrow as pa

from tasks.common.errors import PipelineError

# source path -> (our column name, type class, required). Required fields feed the pseudonym or
# the reports; the rest are only ever masked, so their absence is noted in the signature, not fatal.
SOURCE_FIELDS: dict[str, tuple[str, str, bool]] = {
    "firstname": ("firstname", "string", True),
    "lastname": ("lastname", "string", True),
    "email": ("email", "string", True),
    "phone": ("phone", "string", False),
    "birthday": ("birthday", "string", True),
    "gender": ("gender", "string", True),
    "address.street": ("street", "string", False),
    "address.streetName": ("street_name", "string", False),
    "address.buildingNumber": ("building_number", "string", False),
    "address.city": ("city", "string", False),
    "address.zipcode": ("zipcode", "string", False),
    "address.country": ("country", "string", True),
    "address.country_code": ("country_code", "string", True),
    "address.latitude": ("latitude", "number", False),
    "address.longitude": ("longitude", "number", False),
    "website": ("website", "string", False),
    "image": ("image", "string", False),
}
# Our Arrow type for each type class of SOURCE_FIELDS.
ARROW_TYPES = {"string": pa.string(), "number": pa.float64()}

# The typed, flattened raw page: held in memory between fetch and mask, never written anywhere.
SOURCE_SCHEMA = pa.schema(
    [pa.field(name, ARROW_TYPES[kind]) for name, kind, _ in SOURCE_FIELDS.values()]
)


# Fields the source sends that we neither use nor need to mask: `id` restarts in every response
# and `address.id` is constant.
IGNORED_FIELDS = frozenset({"id", "address.id"})
# Unexpected fields we may name: spellings the source is known to have used. Any other key name
# is the source's own text (a hostile source sent e-mail addresses as keys), so only counted.
KNOWN_DRIFTS: dict[str, str] = {"address.county_code": "the v1 spelling of address.country_code"}
# How unexpected fields appear in a signature: one entry per type, with their count.
UNEXPECTED = "unexpected"


class SchemaDriftError(PipelineError):
    """The source changed shape in a way the pipeline cannot absorb; names the field."""


def type_class(arrow_type: pa.DataType) -> str:
    """The JSON type class an inferred Arrow type stands for, as signatures name it."""
    if pa.types.is_null(arrow_type):
        return "null"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
        return "number"
    if pa.types.is_struct(arrow_type):
        return "object"
    if pa.types.is_boolean(arrow_type):
        return "bool"
    return "list" if pa.types.is_list(arrow_type) else str(arrow_type)


def _is_named(path: str) -> bool:
    return path in SOURCE_FIELDS or path in IGNORED_FIELDS or path in KNOWN_DRIFTS


def signature_of(present: dict[str, str]) -> str:
    """A stable text form of a page's shape to compare runs by: `path:type` entries, sorted.

    Unexpected fields are entered as `unexpected:type=count`, never by name.
    """
    entries = [f"{path}:{kind}" for path, kind in present.items() if _is_named(path)]
    unexpected = Counter(kind for path, kind in present.items() if not _is_named(path))
    entries += [f"{UNEXPECTED}:{kind}={count}" for kind, count in unexpected.items()]
    return ",".join(sorted(entries))


def unexpected_note(present: dict[str, str]) -> str:
    """` (…)` naming known misspellings and counting other unexpected fields, or ``."""
    extra = [path for path in present if path not in SOURCE_FIELDS and path not in IGNORED_FIELDS]
    named = sorted(path for path in extra if path in KNOWN_DRIFTS)
    parts = [f"{path} present: {KNOWN_DRIFTS[path]}" for path in named]
    if others := len(extra) - len(named):
        parts.append(f"{others} unexpected field(s) present, names not shown")
    return f" ({'; '.join(parts)})" if parts else ""


def to_source_table(records: list[dict[str, Any]], page_index: int) -> tuple[pa.Table, str]:
    """Typed columns of one page, plus its signature; raises SchemaDriftError naming the field.

    Arrow's own messages quote the offending value, which may be PII: every Arrow call on the
    records sits inside a `try` whose error names only the page and the field.
    """
    try:
        flat = pa.Table.from_pylist(records).flatten()
    except (pa.ArrowException, TypeError, ValueError):
        raise SchemaDriftError(
            f"page {page_index}: records disagree on field types (schema drift)"
        ) from None
    present = {f.name: type_class(f.type) for f in flat.schema}
    signature = signature_of(present)
    columns = []
    for path, (_name, kind, required) in SOURCE_FIELDS.items():
        found = present.get(path)
        if found is None:
            if required:
                raise SchemaDriftError(
                    f"page {page_index}: field '{path}' is missing from the source"
                    + unexpected_note(present)
                )
            columns.append(pa.nulls(flat.num_rows, ARROW_TYPES[kind]))
            continue
        if found not in (kind, "null"):
            raise SchemaDriftError(
                f"page {page_index}: field '{path}' has type {found}, expected {kind}"
            )
        try:
            columns.append(flat.column(path).cast(ARROW_TYPES[kind]))
        except (pa.ArrowException, TypeError, ValueError):
            # e.g. integer coordinates beyond float64's exact range
            raise SchemaDriftError(
                f"page {page_index}: field '{path}' has values that do not convert to {kind}"
            ) from None
    return pa.Table.from_arrays(columns, schema=SOURCE_SCHEMA), signature
