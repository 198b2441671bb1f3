"""The closed vocabularies every layer keeps values from, and the check before masking."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pytest

from local_api.countries import COUNTRIES
from tasks.common.vocabulary import (
    GENDERS,
    HOST_NAME_PATTERN,
    OTHER_DOMAIN,
    VocabularyError,
    check_vocabulary,
    country_names,
    country_pairs,
    host_names,
    in_vocabulary,
    is_host_name,
    kept_words,
    outside_vocabulary,
)

EXPECTATIONS = Path(__file__).resolve().parents[3] / "expectations"


def test_countries_are_cldr_english_names_of_iso_codes() -> None:
    names = country_names()
    # ISO 3166-1 has 249 alpha-2 codes; CLDR's extra regions are not among them.
    assert len(names) == 249
    assert not {"XK", "EU", "UN", "ZZ", "AC", "IC", "QO", "XA"} & set(names)
    assert names["BA"] == "Bosnia & Herzegovina"
    assert names["CI"] == "Côte d\u2019Ivoire"
    assert names["TR"] == "Türkiye"
    # The API's two spellings of its own are accepted beside CLDR's.
    assert ("SH", "St. Helena") in country_pairs() and ("TF", "French Southern Territories") in (
        country_pairs()
    )


def test_the_local_api_serves_only_vocabulary_countries() -> None:
    assert len(COUNTRIES) == 247
    assert {(code, name) for name, code in COUNTRIES} <= country_pairs()


def _source(countries: list[tuple[str | None, str | None]], genders: list[str | None]) -> pa.Table:
    return pa.table(
        {
            "country_code": [c for c, _ in countries],
            "country": [n for _, n in countries],
            "gender": genders,
        }
    )


def test_outside_vocabulary_counts_fields_and_leaves_nulls_to_validation() -> None:
    source = _source(
        [
            ("DE", "Germany"),
            ("US", "Michael Nielsen"),  # a name as the country, the code valid
            ("DE", "France"),  # a real country, but not this code's
            ("QX", "Evil <img src=x>"),  # a made-up code: counted once, as the code
            (None, "Zebediah"),  # no code: no name can be its name
            ("FR", None),
            (None, None),
        ],
        ["male", "female", "Zelda Planted", None, "male", "female", "male"],
    )
    assert outside_vocabulary(source) == {"country_code": 1, "country": 3, "gender": 1}
    assert in_vocabulary(source, "country").to_pylist() == [
        True,
        False,
        False,
        False,
        False,
        None,
        None,
    ]


def test_check_vocabulary_names_field_rule_and_count_never_a_value() -> None:
    source = _source([("US", "Michael Nielsen"), ("SH", "St. Helena")], ["Zelda Planted", "male"])
    with pytest.raises(VocabularyError) as raised:
        check_vocabulary(source, "pages 0-3")
    message = str(raised.value)
    assert message == (
        "pages 0-3: values outside their vocabulary: "
        "country 1 (not the English CLDR name of its country_code), "
        "gender 1 (not one of male, female)"
    )
    assert not raised.value.transient
    check_vocabulary(_source([("DE", "Germany")], ["female"]), "page 0")  # clean: no error


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("gmail.com", True),
        ("mail.example.co.uk", True),
        ("kevin35", False),  # a local part moved behind the "@"
        ("Gmail.com", False),  # not lower-cased
        ("a-.com", False),
        ("1.2.3.4", False),
        ("x" * 64 + ".com", False),
        ("exa mple.com", False),
        ("example.com\u200b", False),
        ("", False),
    ],
)
def test_host_names(value: str, ok: bool) -> None:
    assert is_host_name(value) is ok
    assert host_names(pa.array([value])).to_pylist() == [ok]


def test_kept_words_hold_every_vocabulary_and_nothing_else() -> None:
    words = kept_words()
    assert {"Germany", "DE", "St. Helena", *GENDERS, "gmail.com", OTHER_DOMAIN} <= words
    assert len(words) == len({w for pair in country_pairs() for w in pair}) + 2 + 3 + 1


def _expectation(suite: str, kind: str, column: str) -> dict:
    spec = json.loads((EXPECTATIONS / suite).read_text())
    [found] = [
        e["kwargs"]
        for e in spec["expectations"]
        if e["type"] == kind and e["kwargs"]["column"] == column
    ]
    return found


def test_the_suites_check_the_same_vocabularies() -> None:
    """The GX suites are files; these hold their value sets and patterns to the vocabulary."""
    domain = f"(?:{OTHER_DOMAIN}|{HOST_NAME_PATTERN})$"
    masked = _expectation("masked_persons.json", "expect_column_values_to_match_regex", "email")
    assert masked["regex"] == r"^\*{4}@" + domain
    analytical = _expectation(
        "analytical_persons.json", "expect_column_values_to_match_regex", "email_domain"
    )
    assert analytical["regex"] == "^" + domain
    for suite in ("masked_persons.json", "analytical_persons.json"):
        genders = _expectation(suite, "expect_column_values_to_be_in_set", "gender")
        assert tuple(genders["value_set"]) == GENDERS
    assert re.fullmatch(analytical["regex"], "other")
