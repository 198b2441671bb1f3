"""The one builder of analytical batches (persons_anonymized rows) and of masked raw batches
(the raw lake's rows) for the task tests."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa

from tasks.common.schemas import ANALYTICAL_SCHEMA, MASK, MASKED_COLUMNS, RAW_SCHEMA

# The age groups as design.md defines them, written out here rather than taken from the code.
AGE_GROUP_LABELS = (
    "[0-10]",
    "[10-20]",
    "[20-30]",
    "[30-40]",
    "[40-50]",
    "[50-60]",
    "[60-70]",
    "[70-80]",
    "[80-90]",
    "[90+]",
)


def analytical_batch(
    rows: Iterable[Mapping[str, Any]],
    run_date: dt.date,
    *,
    key: Callable[[int], str] = "k{}".format,
) -> pa.Table:
    """An analytical batch of run_date: each row's gender, age_group, email_domain, country and
    country_code; person_key is key(row number) unless a row gives its own."""
    return pa.Table.from_pylist(
        [{"person_key": key(i), "run_date": run_date, **row} for i, row in enumerate(rows)],
        schema=ANALYTICAL_SCHEMA,
    )


def cycled_batch(
    n: int,
    run_date: dt.date,
    *,
    domains: Sequence[str],
    countries: Sequence[tuple[str, str]],
    key: Callable[[int], str] = "k{}".format,
) -> pa.Table:
    """n rows that cycle through the age groups, the genders (odd rows male), the domains and
    the (country, code) pairs, each by row number."""
    return analytical_batch(
        (
            {
                "gender": "male" if i % 2 else "female",
                "age_group": AGE_GROUP_LABELS[i % len(AGE_GROUP_LABELS)],
                "email_domain": domains[i % len(domains)],
                "country": countries[i % len(countries)][0],
                "country_code": countries[i % len(countries)][1],
            }
            for i in range(n)
        ),
        run_date,
        key=key,
    )


def german_gmail_batch(n: int, run_date: dt.date, prefix: str = "p") -> pa.Table:
    """n rows keyed `prefix-i`: the even ones German Gmail users, the odd ones French on Yahoo."""
    return cycled_batch(
        n,
        run_date,
        domains=("gmail.com", "yahoo.com"),
        countries=(("Germany", "DE"), ("France", "FR")),
        key=f"{prefix}-{{}}".format,
    )


def masked_batch(
    n: int,
    run_date: dt.date,
    *,
    domains: Sequence[str],
    countries: Sequence[tuple[str, str]],
    key: Callable[[int], str] = "k{}".format,
) -> pa.Table:
    """n masked raw rows (RAW_SCHEMA) of run_date: masked fields are the mask, e-mails
    `****@domain`; ages, genders (odd rows male), domains and (country, code) pairs cycle."""
    columns: dict[str, list[Any]] = {
        "person_key": [key(i) for i in range(n)],
        "run_date": [run_date] * n,
        "email": [f"{MASK}@{domains[i % len(domains)]}" for i in range(n)],
        "age": [i % 131 for i in range(n)],
        "gender": ["male" if i % 2 else "female" for i in range(n)],
        "country": [countries[i % len(countries)][0] for i in range(n)],
        "country_code": [countries[i % len(countries)][1] for i in range(n)],
    }
    for name in MASKED_COLUMNS:
        columns[name] = [MASK] * n
    return pa.table({name: columns[name] for name in RAW_SCHEMA.names}, schema=RAW_SCHEMA)


def plant(table: pa.Table, column: str, row: int, value: object) -> pa.Table:
    """The table with one cell replaced."""
    values = table[column].to_pylist()
    values[row] = value
    index = table.schema.get_field_index(column)
    return table.set_column(index, table.schema.field(index), pa.array(values, table[column].type))
