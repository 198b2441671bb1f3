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
    map_codes,
)

# The two ISO 3166-1 codes the local API leaves out (uninhabited Bouvet and Heard Islands).
NOT_SERVED = ("BV", "HM")
# UN M49 sub-regions (intermediate regions in Africa and the Americas) and the continent each
# lies in, written out here: the seven continents, the Americas split North / South.
CONTINENT_OF_SUB_REGION = {
    "Northern Africa": "Africa",
    "Eastern Africa": "Africa",
    "Middle Africa": "Africa",
    "Southern Africa": "Africa",
    "Western Africa": "Africa",
    "Northern America": "North America",
    "Central America": "North America",
    "Caribbean": "North America",
    "South America": "South America",
    "Central Asia": "Asia",
    "Eastern Asia": "Asia",
    "South-eastern Asia": "Asia",
    "Southern Asia": "Asia",
    "Western Asia": "Asia",
    "Eastern Europe": "Europe",
    "Northern Europe": "Europe",
    "Southern Europe": "Europe",
    "Western Europe": "Europe",
    "Australia and New Zealand": "Oceania",
    "Melanesia": "Oceania",
    "Micronesia": "Oceania",
    "Polynesia": "Oceania",
    "Antarctica": "Antarctica",
}
SEVEN_CONTINENTS = (
    "Africa",
    "North America",
    "South America",
    "Asia",
    "Europe",
    "Oceania",
    "Antarctica",
)


def sub_regions(*codes: str | None) -> list[str]:
    """map_codes at the sub-region level, one code at a time."""
    return map_codes(pa.array(codes, pa.string()), "sub_region").to_pylist()


def continents(*codes: str | None) -> list[str]:
    """map_codes at the continent level, one code at a time."""
    return map_codes(pa.array(codes, pa.string()), "continent").to_pylist()


def test_every_country_the_api_serves_maps() -> None:
    assert len(COUNTRY_CODES) == 247
    codes = pa.array(list(COUNTRY_CODES))
    by_code = zip(
        map_codes(codes, "sub_region").to_pylist(),
        map_codes(codes, "continent").to_pylist(),
        strict=True,
    )
    for code, (sub_region, continent) in zip(COUNTRY_CODES, by_code, strict=True):
        assert sub_region in CONTINENT_OF_SUB_REGION, code
        assert continent == CONTINENT_OF_SUB_REGION[sub_region], code


def test_all_249_iso_codes_map_and_nothing_else() -> None:
    iso = set(COUNTRY_CODES) | set(NOT_SERVED)
    assert len(iso) == 249
    # XK (Kosovo) is user-assigned, not ISO, but common in data: it maps too.
    assert set(SUB_REGION_OF) == set(CONTINENT_OF) == iso | {"XK"}


def test_unknown_and_odd_codes() -> None:
    assert sub_regions("ZZ") == continents("ZZ") == [UNKNOWN]
    assert continents(None, "") == [UNKNOWN, UNKNOWN]
    assert continents(" de ") == ["Europe"]


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
    assert sub_regions(code) == [sub_region]
    assert continents(code) == [continent]


def test_hierarchy_is_a_tree_with_seven_continents() -> None:
    assert CONTINENTS == SEVEN_CONTINENTS
    assert set(SUB_REGIONS) == set(CONTINENT_OF_SUB_REGION)
    assert len(SUB_REGIONS) == len(CONTINENT_OF_SUB_REGION)
    for code, sub_region in SUB_REGION_OF.items():
        # Every sub-region lies in exactly one continent.
        assert CONTINENT_OF[code] == CONTINENT_OF_SUB_REGION[sub_region], code


def test_map_codes_is_vectorized_and_matches_code_by_code() -> None:
    codes = pa.chunked_array([["DE", "fr", None], ["ZZ", "AQ"]])
    assert map_codes(codes, "continent").to_pylist() == [
        "Europe",
        "Europe",
        UNKNOWN,
        UNKNOWN,
        "Antarctica",
    ]
    assert map_codes(pa.array(list(COUNTRY_CODES)), "sub_region").to_pylist() == [
        sub_regions(c)[0] for c in COUNTRY_CODES
    ]
    with pytest.raises(ValueError):
        map_codes(codes, "planet")
