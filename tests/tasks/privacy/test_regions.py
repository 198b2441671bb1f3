"""Country -> sub-region -> continent mapping used to generalize geography."""

from __future__ import annotations

import pyarrow as pa
import pytest

from local_api.countries import COUNTRY_CODES
from tasks.privacy.regions import (
    CONTINENT_OF,
    CONTINENTS,
    SUB_REGION_OF,
    SUB_REGIONS,
    UNKNOWN,
    continent_of,
    map_codes,
    sub_region_of,
)

# The two ISO 3166-1 codes the local API leaves out (uninhabited Bouvet and Heard Islands).
NOT_SERVED = ("BV", "HM")


def test_every_country_the_api_serves_maps() -> None:
    assert len(COUNTRY_CODES) == 247
    for code in COUNTRY_CODES:
        assert sub_region_of(code) in SUB_REGIONS, code
        assert continent_of(code) in CONTINENTS, code


def test_all_249_iso_codes_map_and_nothing_else() -> None:
    iso = set(COUNTRY_CODES) | set(NOT_SERVED)
    assert len(iso) == 249
    # XK (Kosovo) is user-assigned, not ISO, but common in data: it maps too.
    assert set(SUB_REGION_OF) == set(CONTINENT_OF) == iso | {"XK"}


def test_unknown_and_odd_codes() -> None:
    assert sub_region_of("ZZ") == continent_of("ZZ") == UNKNOWN
    assert continent_of(None) == UNKNOWN and continent_of("") == UNKNOWN
    assert continent_of(" de ") == "Europe"


@pytest.mark.parametrize(
    ("code", "sub_region", "continent"),
    [
        ("DE", "Western Europe", "Europe"),
        ("US", "Northern America", "North America"),
        ("MX", "Central America", "North America"),
        ("JM", "Caribbean", "North America"),
        ("BR", "South America", "South America"),
        ("CI", "Western Africa", "Africa"),
        ("EG", "Northern Africa", "Africa"),
        ("TR", "Western Asia", "Asia"),
        ("TW", "Eastern Asia", "Asia"),
        ("MH", "Micronesia", "Oceania"),
        ("AU", "Australia and New Zealand", "Oceania"),
        ("AQ", "Antarctica", "Antarctica"),
    ],
)
def test_known_codes(code: str, sub_region: str, continent: str) -> None:
    assert sub_region_of(code) == sub_region
    assert continent_of(code) == continent


def test_hierarchy_is_a_tree_with_seven_continents() -> None:
    assert len(CONTINENTS) == 7
    parent: dict[str, str] = {}
    for code, sub_region in SUB_REGION_OF.items():
        # Every sub-region lies in exactly one continent.
        assert parent.setdefault(sub_region, CONTINENT_OF[code]) == CONTINENT_OF[code]
    assert set(parent) == set(SUB_REGIONS)


def test_map_codes_is_vectorized_and_matches_scalars() -> None:
    codes = pa.chunked_array([["DE", "fr", None], ["ZZ", "AQ"]])
    assert map_codes(codes, "continent").to_pylist() == [
        "Europe",
        "Europe",
        UNKNOWN,
        UNKNOWN,
        "Antarctica",
    ]
    assert map_codes(pa.array(list(COUNTRY_CODES)), "sub_region").to_pylist() == [
        sub_region_of(c) for c in COUNTRY_CODES
    ]
    with pytest.raises(ValueError):
        map_codes(codes, "planet")
