"""tasks.privacy.generalize: age groups, email domains and the analytical schema."""

from __future__ import annotations

import datetime

import pyarrow as pa
import pytest

from tasks.common.schemas import ANALYTICAL_SCHEMA, RAW_SCHEMA
from tasks.privacy.generalize import age_group_of, email_domain_of, generalize
from tests.builders import AGE_GROUP_LABELS

RUN_DATE = datetime.date(2024, 5, 1)
# Spelled as the source serves it (typographic apostrophe); names must pass through unchanged.
IVORY_COAST = "C\u00f4te d\u2019Ivoire"


def masked_batch(rows: list[dict], run_date: datetime.date = RUN_DATE) -> pa.Table:
    """A RAW_SCHEMA table from partial rows; unspecified masked fields are "****"."""
    defaults = {field.name: "****" for field in RAW_SCHEMA if field.type == pa.string()}
    full = []
    for i, row in enumerate(rows):
        full.append(
            {
                **defaults,
                "person_key": f"key-{i}",
                "run_date": run_date,
                "email": "****@example.com",
                "age": 30,
                "gender": "female",
                "country": "Germany",
                "country_code": "DE",
                **row,
            }
        )
    return pa.Table.from_pylist(full, schema=RAW_SCHEMA)


@pytest.mark.parametrize(
    ("age", "group"),
    [
        (0, "[0-10]"),
        (9, "[0-10]"),
        (10, "[10-20]"),
        (19, "[10-20]"),
        (59, "[50-60]"),
        (60, "[60-70]"),
        (69, "[60-70]"),
        (70, "[70-80]"),
        (89, "[80-90]"),
        (90, "[90+]"),
        (120, "[90+]"),
        (None, None),
        (-1, None),
    ],
)
def test_age_group_boundaries(age: int | None, group: str | None) -> None:
    assert age_group_of(pa.array([age], pa.int16())).to_pylist() == [group]


def test_age_group_of_every_decade_and_chunked_input() -> None:
    ages = pa.chunked_array([[5, 15, 25, 35], [45, 55, 65, 75, 85, 95]], pa.int16())
    assert age_group_of(ages).to_pylist() == list(AGE_GROUP_LABELS)


def test_age_group_null_is_not_90_plus() -> None:
    # Regression guard: pyarrow's min_element_wise skips nulls by default, which would give "[90+]".
    result = age_group_of(pa.array([None, 95, None], pa.int16()))
    assert result.to_pylist() == [None, "[90+]", None]


@pytest.mark.parametrize(
    ("email", "domain"),
    [
        ("****@Gmail.COM", "gmail.com"),
        ("****@gmail.com", "gmail.com"),
        ("****@mail.Example.co.uk", "mail.example.co.uk"),
        ("****@ hotmail.com ", "hotmail.com"),
        ("****@odd@Yahoo.com", "yahoo.com"),
        ("****@MÜNCHEN.de", "münchen.de"),
        ("****", None),
        ("****@", None),
        ("****@   ", None),
        (None, None),
    ],
)
def test_email_domain(email: str | None, domain: str | None) -> None:
    assert email_domain_of(pa.array([email], pa.string())).to_pylist() == [domain]


def test_generalize_schema_and_values() -> None:
    masked = masked_batch(
        [
            {"age": 61, "email": "****@Gmail.COM", "gender": "male"},
            {"age": None, "email": "****", "country": IVORY_COAST, "country_code": "CI"},
            {"age": 9, "email": "****@sub.Company.io", "country": None, "country_code": None},
        ]
    )
    result = generalize(masked, RUN_DATE)

    assert result.schema == ANALYTICAL_SCHEMA
    assert result.to_pylist() == [
        {
            "person_key": "key-0",
            "run_date": RUN_DATE,
            "gender": "male",
            "age_group": "[60-70]",
            "email_domain": "gmail.com",
            "country": "Germany",
            "country_code": "DE",
        },
        {
            "person_key": "key-1",
            "run_date": RUN_DATE,
            "gender": "female",
            "age_group": None,
            "email_domain": None,
            "country": IVORY_COAST,
            "country_code": "CI",
        },
        {
            "person_key": "key-2",
            "run_date": RUN_DATE,
            "gender": "female",
            "age_group": "[0-10]",
            "email_domain": "sub.company.io",
            "country": None,
            "country_code": None,
        },
    ]


def test_generalize_drops_every_other_column() -> None:
    result = generalize(masked_batch([{}]), RUN_DATE)
    assert result.column_names == ANALYTICAL_SCHEMA.names
    for dropped in ("email", "age", "city", "zipcode", "latitude", "firstname"):
        assert dropped not in result.column_names


def test_generalize_empty_batch() -> None:
    result = generalize(masked_batch([]), RUN_DATE)
    assert result.schema == ANALYTICAL_SCHEMA
    assert result.num_rows == 0


def test_generalize_rejects_rows_of_another_date() -> None:
    masked = pa.concat_tables(
        [masked_batch([{}]), masked_batch([{}], run_date=datetime.date(2024, 4, 30))]
    )
    with pytest.raises(ValueError, match="run_date"):
        generalize(masked, RUN_DATE)


def test_generalize_rejects_missing_person_key() -> None:
    masked = masked_batch([{}])
    no_key = masked.set_column(
        0, pa.field("person_key", pa.string()), pa.array([None], pa.string())
    )
    with pytest.raises(ValueError, match="person_key"):
        generalize(no_key, RUN_DATE)


def test_email_domain_mixed_shapes_keep_their_rows() -> None:
    # Masked rows take the fast path, the rest the regex; each result must land on its own row.
    emails = pa.chunked_array(
        [
            ["****@A.com", "****", "****@odd@B.org"],
            [],
            [None, "x@Y.net", "****@ C.io", "****@"],
        ],
        pa.string(),
    )
    assert email_domain_of(emails).to_pylist() == [
        "a.com",
        None,
        "b.org",
        None,
        "y.net",
        "c.io",
        None,
    ]


def test_the_domain_rule_keeps_public_and_shared_host_names_only() -> None:
    """One rule for every layer: the raw lake's `****@domain` keeps a domain only where it is a
    public provider or a host name k persons share; free text and one person's names become
    `other`, which the analytical layer inherits."""
    from tasks.privacy.domains import keep_shared_domains

    emails = [
        "****@Gmail.com",  # public, lower-cased
        "****@kevin35",  # gmail.com@kevin35: the local part behind the "@"
        "****@claire.dawson.example",  # a person's names as the domain
        "****@johnsmith.com",  # a vanity domain, one person's
        *["****@acme.example"] * 3,  # shared by k = 3
        "****@bad_host.example",  # shared by k, but no host name
        "****@bad_host.example",
        "****@bad_host.example",
        "****",  # no "@": left for validation to name
        None,
    ]
    masked = pa.table({"person_key": [f"{i:064x}" for i in range(len(emails))], "email": emails})
    shared = keep_shared_domains(masked, 3)
    assert shared.table["email"].to_pylist() == [
        "****@gmail.com",
        "****@other",
        "****@other",
        "****@other",
        *["****@acme.example"] * 3,
        *["****@other"] * 3,
        "****",
        None,
    ]
    assert shared.kept == {"gmail.com", "acme.example", "other"}
    assert (shared.domains_replaced, shared.records_replaced) == (4, 6)
    assert shared.table.column("person_key").equals(masked.column("person_key"))
    # Applied again (as generalize does), nothing changes.
    assert keep_shared_domains(shared.table, 3).table.equals(shared.table)
    assert email_domain_of(shared.table["email"]).to_pylist()[:5] == [
        "gmail.com",
        "other",
        "other",
        "other",
        "acme.example",
    ]
