"""Country table: English CLDR short names with one ISO 3166-1 alpha-2 code each.

The public API draws countries uniformly from 247 names in CLDR's spelling (``&`` rather than
``and``, ``Türkiye``, Côte d'Ivoire with U+2019 as apostrophe), independent of the locale; so do
we, from the same source the pipeline checks them against (Babel's CLDR data, through
``tasks.common.vocabulary``), with the API's own spelling of St. Helena and the French Southern
Territories.
"""

from __future__ import annotations

from tasks.common.vocabulary import API_COUNTRY_ALIASES, country_names

# Bouvet Island (BV) and Heard & McDonald Islands (HM) are left out to match the 247 countries
# measured on the public service.
NOT_SERVED = frozenset({"BV", "HM"})

COUNTRIES: tuple[tuple[str, str], ...] = tuple(
    (API_COUNTRY_ALIASES.get(code, name), code)
    for code, name in country_names().items()
    if code not in NOT_SERVED
)
"""(name, alpha-2 code) pairs, in code order."""

COUNTRY_NAMES: tuple[str, ...] = tuple(name for name, _ in COUNTRIES)
COUNTRY_CODES: tuple[str, ...] = tuple(code for _, code in COUNTRIES)
