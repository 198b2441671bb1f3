"""The source record shape we rely on, and the check that turns a page into typed Arrow columns."""

from __future__ import annotations

import pyarrow as pa

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
_ARROW = {"string": pa.string(), "number": pa.float64()}

# The typed, flattened raw page: held in memory between fetch and mask, never written anywhere.
SOURCE_SCHEMA = pa.schema(
    [pa.field(name, _ARROW[kind]) for name, kind, _ in SOURCE_FIELDS.values()]
    + [pa.field("page", pa.int32())]
)


class SchemaDriftError(RuntimeError):
    """The source changed shape in a way the pipeline cannot absorb; names the field."""


def _type_class(arrow_type: pa.DataType) -> str:
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


def signature_of(flat: pa.Schema) -> str:
    """A stable text form of a page's shape (`path:type`, sorted) to compare runs by."""
    return ",".join(sorted(f"{f.name}:{_type_class(f.type)}" for f in flat))


def to_source_table(records: list[dict], page_index: int) -> tuple[pa.Table, str]:
    """Typed columns of one page, plus its signature; raises SchemaDriftError naming the field."""
    try:
        table = pa.Table.from_pylist(records)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        # Arrow's own message quotes the offending value, which may be PII: never pass it on.
        raise SchemaDriftError(
            f"page {page_index}: records disagree on field types (schema drift)"
        ) from None
    flat = table.flatten()
    signature = signature_of(flat.schema)
    present = {f.name: _type_class(f.type) for f in flat.schema}
    columns = []
    for path, (_name, kind, required) in SOURCE_FIELDS.items():
        found = present.get(path)
        if found is None:
            if required:
                unknown = sorted(set(present) - set(SOURCE_FIELDS) - {"id", "address.id"})
                hint = f" (unexpected fields: {', '.join(unknown)})" if unknown else ""
                raise SchemaDriftError(
                    f"page {page_index}: field '{path}' is missing from the source{hint}"
                )
            columns.append(pa.nulls(flat.num_rows, _ARROW[kind]))
            continue
        if found not in (kind, "null"):
            raise SchemaDriftError(
                f"page {page_index}: field '{path}' has type {found}, expected {kind}"
            )
        columns.append(flat.column(path).cast(_ARROW[kind]))
    columns.append(pa.array([page_index] * flat.num_rows, pa.int32()))
    return pa.Table.from_arrays(columns, schema=SOURCE_SCHEMA), signature
