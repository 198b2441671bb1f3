"""Country -> sub-region -> continent, for generalizing geography in the shareable extract.

Sub-regions follow the UN M49 standard (its "intermediate regions" for Africa and the Americas,
which split the huge "Sub-Saharan Africa" and "Latin America and the Caribbean" into parts of a
size comparable to the rest). Continents are the usual seven; the Americas split into North
America (Northern America, Central America, Caribbean) and South America, as M49's intermediate
regions allow. Taiwan (not listed by M49) goes to Eastern Asia and Kosovo (XK, user-assigned) to
Southern Europe, as most statistics offices do. Every ISO 3166-1 alpha-2 code maps (249, plus
XK); anything else maps to UNKNOWN at every level.
"""

from __future__ import annotations

from types import MappingProxyType

import pyarrow as pa
import pyarrow.compute as pc

UNKNOWN = "Unknown"

# continent -> sub-region -> ISO 3166-1 alpha-2 codes
_HIERARCHY: dict[str, dict[str, str]] = {
    "Africa": {
        "Northern Africa": "DZ EG EH LY MA SD TN",
        "Eastern Africa": "BI DJ ER ET IO KE KM MG MU MW MZ RE RW SC SO SS TF TZ UG YT ZM ZW",
        "Middle Africa": "AO CD CF CG CM GA GQ ST TD",
        "Southern Africa": "BW LS NA SZ ZA",
        "Western Africa": "BF BJ CI CV GH GM GN GW LR ML MR NE NG SH SL SN TG",
    },
    "North America": {
        "Northern America": "BM CA GL PM US",
        "Central America": "BZ CR GT HN MX NI PA SV",
        "Caribbean": (
            "AG AI AW BB BL BQ BS CU CW DM DO GD GP HT JM KN KY LC MF MQ MS PR SX TC TT VC VG VI"
        ),
    },
    "South America": {
        "South America": "AR BO BR BV CL CO EC FK GF GS GY PE PY SR UY VE",
    },
    "Asia": {
        "Central Asia": "KG KZ TJ TM UZ",
        "Eastern Asia": "CN HK JP KP KR MN MO TW",
        "South-eastern Asia": "BN ID KH LA MM MY PH SG TH TL VN",
        "Southern Asia": "AF BD BT IN IR LK MV NP PK",
        "Western Asia": "AE AM AZ BH CY GE IL IQ JO KW LB OM PS QA SA SY TR YE",
    },
    "Europe": {
        "Eastern Europe": "BG BY CZ HU MD PL RO RU SK UA",
        "Northern Europe": "AX DK EE FI FO GB GG IE IM IS JE LT LV NO SE SJ",
        "Southern Europe": "AD AL BA ES GI GR HR IT ME MK MT PT RS SI SM VA XK",
        "Western Europe": "AT BE CH DE FR LI LU MC NL",
    },
    "Oceania": {
        "Australia and New Zealand": "AU CC CX HM NF NZ",
        "Melanesia": "FJ NC PG SB VU",
        "Micronesia": "FM GU KI MH MP NR PW UM",
        "Polynesia": "AS CK NU PF PN TK TO TV WF WS",
    },
    "Antarctica": {
        "Antarctica": "AQ",
    },
}

SUB_REGION_OF: MappingProxyType[str, str] = MappingProxyType(
    {
        code: sub_region
        for sub_regions in _HIERARCHY.values()
        for sub_region, codes in sub_regions.items()
        for code in codes.split()
    }
)
"""ISO alpha-2 code -> UN M49 sub-region (intermediate region in Africa and the Americas)."""

CONTINENT_OF: MappingProxyType[str, str] = MappingProxyType(
    {
        code: continent
        for continent, sub_regions in _HIERARCHY.items()
        for codes in sub_regions.values()
        for code in codes.split()
    }
)
"""ISO alpha-2 code -> continent (seven continents, Americas split North/South)."""

CONTINENTS: tuple[str, ...] = tuple(_HIERARCHY)
SUB_REGIONS: tuple[str, ...] = tuple(s for subs in _HIERARCHY.values() for s in subs)


def map_codes(codes: pa.Array | pa.ChunkedArray, level: str) -> pa.Array:
    """Vectorized code -> "sub_region" or "continent" label; unknown or null codes -> UNKNOWN."""
    mapping = {"sub_region": SUB_REGION_OF, "continent": CONTINENT_OF}.get(level)
    if mapping is None:
        raise ValueError(f"unknown level {level!r}; use 'sub_region' or 'continent'")
    keys = pa.array(list(mapping), pa.string())
    labels = pa.array([*mapping.values(), UNKNOWN], pa.string())
    normalized = pc.utf8_upper(pc.utf8_trim_whitespace(pc.cast(codes, pa.string())))
    # index_in gives null for misses; those point at the trailing UNKNOWN label.
    index = pc.fill_null(pc.index_in(normalized, value_set=keys), len(keys))
    result = pc.take(labels, index)
    return result.combine_chunks() if isinstance(result, pa.ChunkedArray) else result
