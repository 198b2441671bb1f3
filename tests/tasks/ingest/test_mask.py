import datetime as dt
import hashlib
import hmac
import unicodedata

import pyarrow as pa
import pytest

from tasks.common.schemas import MASK, MASKED_COLUMNS, RAW_SCHEMA
from tasks.ingest.mask import mask_pii
from tasks.ingest.source_schema import SchemaDriftError, to_source_table

KEY = b"test-key-0123456789abcdef"
RUN_DATE = dt.date(2026, 3, 1)


def person(**over):
    rec = {
        "id": 1,
        "firstname": "Brown",
        "lastname": "Schroeder",
        "email": "emilie24@fahey.com",
        "phone": "+18725574706",
        "birthday": "1939-03-20",
        "gender": "male",
        "address": {
            "id": 1,
            "street": "599 Huel Drive Suite 372",
            "streetName": "Gladyce Bypass",
            "buildingNumber": "6739",
            "city": "East Trevorstad",
            "zipcode": "25475-1707",
            "country": "Côte d’Ivoire",
            "country_code": "CI",
            "latitude": 85.275994,
            "longitude": -48.109736,
        },
        "website": "http://jerde.com",
        "image": "http://placeimg.com/640/480/people",
    }
    rec.update(over)
    return rec


def masked(records, run_date=RUN_DATE):
    table, _ = to_source_table(records, page_index=3)
    return mask_pii(table, run_date, KEY)


def test_every_identifier_is_masked_and_schema_is_exact():
    out = masked([person()])
    assert out.schema == RAW_SCHEMA
    row = out.to_pylist()[0]
    for column in MASKED_COLUMNS:
        assert row[column] == MASK, column
    assert row["email"] == "****@fahey.com"
    assert row["country"] == "Côte d’Ivoire" and row["country_code"] == "CI"
    assert row["gender"] == "male" and row["run_date"] == RUN_DATE
    assert "birthday" not in out.column_names


def test_person_key_is_keyed_hmac_sha256():
    row = masked([person()]).to_pylist()[0]
    message = b"emilie24@fahey.com\x1fBrown\x1fSchroeder\x1f1939-03-20"
    assert row["person_key"] == hmac.new(KEY, message, hashlib.sha256).hexdigest()
    # an unsalted hash of the same identity must not be what we store
    assert row["person_key"] != hashlib.sha256(message).hexdigest()


def test_person_key_differs_per_person_and_per_key():
    a, b = masked([person(), person(firstname="Browne")]).column("person_key").to_pylist()
    assert a != b
    table, _ = to_source_table([person()], 0)
    assert mask_pii(table, RUN_DATE, b"another-key-0123456789").column("person_key")[0] != a


@pytest.mark.parametrize(
    ("email", "expected"),
    [
        ("USER@Gmail.COM", "****@Gmail.COM"),
        ("a.b@mail.example.co.uk", "****@mail.example.co.uk"),
        ("no-at-sign.example.com", "****"),
        ("weird@odd@host.org", "****@host.org"),
    ],
)
def test_email_keeps_only_the_domain(email, expected):
    assert masked([person(email=email)]).column("email")[0].as_py() == expected


@pytest.mark.parametrize(
    ("birthday", "run_date", "age"),
    [
        ("2000-03-01", dt.date(2026, 3, 1), 26),  # birthday today
        ("2000-03-02", dt.date(2026, 3, 1), 25),  # birthday tomorrow
        ("2000-02-29", dt.date(2026, 2, 28), 25),  # leap-day birthday, non-leap year: not yet
        ("2000-02-29", dt.date(2026, 3, 1), 26),
        ("2000-02-29", dt.date(2028, 2, 29), 28),
        ("1936-03-01", dt.date(2026, 3, 1), 90),  # 90th birthday today
        ("1936-03-02", dt.date(2026, 3, 1), 89),
        ("2026-03-01", dt.date(2026, 3, 1), 0),
        ("not-a-date", dt.date(2026, 3, 1), None),
    ],
)
def test_age_at_run_date(birthday, run_date, age):
    assert masked([person(birthday=birthday)], run_date).column("age")[0].as_py() == age


def test_unknown_source_fields_are_never_kept():
    out = masked([person(ssn="123-45-6789", address={**person()["address"], "extra": "x"})])
    assert out.schema == RAW_SCHEMA
    assert "123-45-6789" not in str(out.to_pylist())


def test_drift_names_the_field():
    renamed = person()
    renamed["address"] = {**renamed["address"], "county_code": "CI"}
    del renamed["address"]["country_code"]
    with pytest.raises(SchemaDriftError, match=r"'address\.country_code'.*county_code"):
        to_source_table([renamed], 4)
    with pytest.raises(SchemaDriftError, match="page 2: field 'email' is missing"):
        to_source_table([{k: v for k, v in person().items() if k != "email"}], 2)
    with pytest.raises(SchemaDriftError, match="'birthday' has type number"):
        to_source_table([person(birthday=19390320)], 0)


def test_type_drift_error_never_quotes_values():
    with pytest.raises(SchemaDriftError) as info:
        to_source_table([person(), person(phone=18725574706)], 0)
    assert "18725574706" not in str(info.value)


def test_optional_masked_fields_may_be_missing():
    rec = person()
    del rec["website"]
    table, signature = to_source_table([rec], 0)
    assert "website" not in signature
    assert mask_pii(table, RUN_DATE, KEY).column("website")[0].as_py() == MASK


def test_many_records_vectorized():
    records = [person(email=f"user{i}@example{i % 7}.com") for i in range(5000)]
    out = masked(records)
    assert out.num_rows == 5000
    assert len(set(out.column("person_key").to_pylist())) == 5000
    assert pa.compute.all(pa.compute.equal(out.column("firstname"), MASK)).as_py()


def _trim_spaces(text: str) -> str:
    """DuckDB's trim(): strips Unicode space separators (category Zs), not tabs or newlines."""
    start, end = 0, len(text)
    while start < end and unicodedata.category(text[start]) == "Zs":
        start += 1
    while end > start and unicodedata.category(text[end - 1]) == "Zs":
        end -= 1
    return text[start:end]


def test_every_row_gets_its_own_key_and_values_across_pages():
    # Row-by-row against Python's hmac, over several pages and every email shape (ASCII, padded,
    # tabbed, non-ASCII, Unicode spaces, null), so no row can be paired with another's values.
    emails = [
        "Ann.Lee@Example.COM",
        "  spaced@Mail.org ",
        "\ttab@x.io",
        "ÀNNA@Exämple.de",
        "\u00a0nbsp@Y.com\u2003",
        None,
        "two@at@Host.net",
    ]
    countries = [("Germany", "DE"), ("Côte d’Ivoire", "CI"), ("Japan", "JP")]
    pages = []
    for page in range(3):
        records = []
        for i in range(400):
            country, code = countries[(i + page) % 3]
            records.append(
                person(
                    email=emails[i % len(emails)],
                    firstname=f"F{page}-{i}",
                    lastname=None if i % 11 == 0 else f"L{i}",
                    birthday=f"{1930 + i % 90}-{1 + i % 12:02d}-{1 + i % 28:02d}",
                    gender="female" if i % 2 else "male",
                    address={**person()["address"], "country": country, "country_code": code},
                )
            )
        pages.append(to_source_table(records, page)[0])
    out = mask_pii(pa.concat_tables(pages), RUN_DATE, KEY).to_pylist()
    sources = [row for table in pages for row in table.to_pylist()]
    assert len(out) == len(sources) == 1200
    for row, src in zip(out, sources, strict=True):
        email = src["email"]
        parts = [_trim_spaces(email).lower() if email is not None else ""]
        parts += [src[name] or "" for name in ("firstname", "lastname", "birthday")]
        message = "\x1f".join(parts).encode()
        assert row["person_key"] == hmac.new(KEY, message, hashlib.sha256).hexdigest()
        assert row["email"] == (None if email is None else "****@" + email.rsplit("@", 1)[1])
        birthday = dt.date.fromisoformat(src["birthday"])
        before_birthday = (RUN_DATE.month, RUN_DATE.day) < (birthday.month, birthday.day)
        assert row["age"] == RUN_DATE.year - birthday.year - before_birthday
        assert (row["gender"], row["country"], row["country_code"]) == (
            src["gender"],
            src["country"],
            src["country_code"],
        )


def test_integer_coordinates_fail_naming_the_field_never_the_value():
    rec = person()
    rec["address"] = {**rec["address"], "latitude": -72201712000000000, "longitude": 1}
    with pytest.raises(SchemaDriftError) as info:
        to_source_table([rec], 4)
    assert str(info.value) == (
        "page 4: field 'address.latitude' has values that do not convert to number"
    )
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_unexpected_keys_are_counted_never_named():
    rec = person()
    del rec["email"]
    records = [{**rec, "jane.doe@example.org": "x", "john@example.org": "y"}]
    with pytest.raises(SchemaDriftError) as info:
        to_source_table(records, 0)
    assert "2 unexpected field(s) present, names not shown" in str(info.value)
    assert "example.org" not in str(info.value)
    _, signature = to_source_table([{**person(), "jane.doe@example.org": "x"}], 0)
    assert "unexpected:string=1" in signature and "example.org" not in signature


@pytest.mark.parametrize(
    "email", ["a@b.com", "quoted@local@example.org", "no-at-sign", "x@", "@y.com", " A@B.COM "]
)
def test_the_masked_email_keeps_the_domain_the_analytical_layer_reads(email):
    from tasks.privacy.domains import email_domain

    (masked_email,) = masked([person(email=email)]).column("email").to_pylist()
    (domain,) = email_domain(pa.array([email])).to_pylist()
    assert masked_email == (MASK if domain is None else f"{MASK}@{domain}")


@pytest.mark.parametrize("length", [16, 64, 65, 88, 200])
def test_keys_of_any_length_give_pythons_hmac(length):
    # An 88-character key is what `openssl rand -base64 64` prints.
    key = ("k" * length).encode()
    rec = person()
    (person_key,) = mask_pii(to_source_table([rec], 0)[0], RUN_DATE, key)["person_key"].to_pylist()
    message = "\x1f".join(
        [rec["email"].strip().lower(), rec["firstname"], rec["lastname"], rec["birthday"]]
    )
    assert person_key == hmac.new(key, message.encode(), hashlib.sha256).hexdigest()
