"""Closed vocabularies: the only source values the pipeline keeps unmasked.

A value is kept because it belongs to one of these, never because the batch carries it: every
layer (the source check before masking, the raw lake, the analytical table, the validation
suites) and the leak scanner take their kept values from here.

- `country_code`: an ISO 3166-1 alpha-2 code; `country`: the English CLDR short name of that code,
  from Babel's CLDR data (the source the public API's 247 names match), plus the two spellings
  the API uses where CLDR's name is longer (`API_COUNTRY_ALIASES`).
- `gender`: the values the contract allows.
- e-mail domain: a well-formed, lower-cased host name, kept only where k persons of the batch
  share it or it is a public mail provider (`tasks.privacy.domains.keep_shared_domains`);
  anything else becomes `OTHER_DOMAIN` in every layer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache

import pyarrow as pa
import pyarrow.compute as pc

from tasks.common.errors import BatchError

GENDERS: tuple[str, ...] = ("male", "female")

# Public mail providers: millions share each, so the domain says nothing about one person.
PUBLIC_MAIL_PROVIDERS: frozenset[str] = frozenset({"gmail.com", "hotmail.com", "yahoo.com"})
# What an e-mail domain outside the vocabulary becomes, in the raw lake and the tables alike.
OTHER_DOMAIN = "other"

# A host name as DNS allows it, lower-cased: labels of 1-63 letters, digits and inner hyphens,
# at least two of them, the last alphabetic (so no bare word such as a local part, no IP).
HOST_NAME_PATTERN = r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}"
_HOST_NAME = re.compile(HOST_NAME_PATTERN)
MAX_HOST_NAME = 253

# The public API's spelling where CLDR's English name differs (measured on 60,000 records).
API_COUNTRY_ALIASES: Mapping[str, str] = {
    "SH": "St. Helena",
    "TF": "French Southern Territories",
}
# CLDR region codes that are not ISO 3166-1 country codes: ISO's exceptionally reserved codes
# (Ascension, Clipperton, Sark, Diego Garcia, Ceuta & Melilla, Canary Islands, Tristan da Cunha,
# the EU, the eurozone, the UN). ISO's user-assigned ranges (AA, QM-QZ, XA-XZ, ZZ) are left out
# by `_user_assigned` below.
_NOT_ISO = frozenset({"AC", "CP", "CQ", "DG", "EA", "IC", "TA", "EU", "EZ", "UN"})


def _user_assigned(code: str) -> bool:
    return code == "AA" or code == "ZZ" or code[0] == "X" or (code[0] == "Q" and code[1] >= "M")


@cache
def country_names() -> Mapping[str, str]:
    """ISO 3166-1 alpha-2 code -> English CLDR short name (Babel's CLDR data)."""
    from babel import Locale

    territories = Locale("en").territories
    return {
        code: name
        for code, name in sorted(territories.items())
        if len(code) == 2
        and code.isascii()
        and code.isalpha()
        and code not in _NOT_ISO
        and not _user_assigned(code)
    }


@cache
def country_pairs() -> frozenset[tuple[str, str]]:
    """Every (code, name) pair a source may send: CLDR's names and the API's aliases."""
    names = country_names()
    return frozenset({*names.items(), *API_COUNTRY_ALIASES.items()})


@cache
def kept_words() -> frozenset[str]:
    """Every value of every vocabulary: countries, codes, aliases, genders, public providers."""
    pairs = country_pairs()
    return frozenset(
        {
            *(code for code, _ in pairs),
            *(name for _, name in pairs),
            *GENDERS,
            *PUBLIC_MAIL_PROVIDERS,
            OTHER_DOMAIN,
        }
    )


def is_host_name(value: str) -> bool:
    """True for a well-formed, lower-cased host name of two or more labels."""
    return len(value) <= MAX_HOST_NAME and _HOST_NAME.fullmatch(value) is not None


def host_names(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Per value: is it a well-formed, lower-cased host name (null stays null)."""
    shaped = pc.match_substring_regex(values, f"^{HOST_NAME_PATTERN}$")
    return pc.and_(shaped, pc.less_equal(pc.utf8_length(values), MAX_HOST_NAME))


# What each field must be, as failure texts name it.
RULES: Mapping[str, str] = {
    "country_code": "not an ISO 3166-1 alpha-2 code",
    "country": "not the English CLDR name of its country_code",
    "gender": f"not one of {', '.join(GENDERS)}",
}


class VocabularyError(BatchError):
    """Source values outside their vocabulary; the message names fields, rules and counts."""


def in_vocabulary(table: pa.Table, field: str) -> pa.Array | pa.ChunkedArray:
    """Per row: is the field's value in its vocabulary (null where the value is null).

    `country` is judged with its row's `country_code`: it must be that code's name.
    """
    if field == "country":
        code, name = _text(table["country_code"]), _text(table["country"])
        pairs = pc.binary_join_element_wise(code, name, "\x1f")
        allowed = sorted(f"{c}\x1f{n}" for c, n in country_pairs())
        # Without a code, no name is that code's name.
        found = pc.fill_null(_member(pairs, allowed), False)
        return pc.if_else(pc.is_valid(name), found, pa.scalar(None, pa.bool_()))
    if field == "country_code":
        return _member(_text(table[field]), sorted({c for c, _ in country_pairs()}))
    if field == "gender":
        return _member(_text(table[field]), list(GENDERS))
    raise ValueError(f"no vocabulary for field {field!r}")


def outside_vocabulary(source: pa.Table) -> dict[str, int]:
    """Rows whose country pair or gender is outside its vocabulary, by field.

    Nulls are left to validation: a missing value holds nothing to leak, and the suites name it.
    A row with a bad code counts under `country_code` only (its name cannot be that code's).
    """
    names = set(source.column_names)
    counts: dict[str, int] = {}
    if {"country", "country_code"} <= names:
        good_code = pc.fill_null(in_vocabulary(source, "country_code"), True)
        counts["country_code"] = _false(good_code)
        counts["country"] = _false(pc.or_(in_vocabulary(source, "country"), pc.invert(good_code)))
    if "gender" in names:
        counts["gender"] = _false(in_vocabulary(source, "gender"))
    return {field: count for field, count in counts.items() if count}


def check_vocabulary(source: pa.Table, where: str) -> None:
    """Refuse a batch holding a value outside its vocabulary, before anything is masked or staged.

    The run stops rather than guess: the real source draws from exactly these vocabularies, so
    such a value means the source is broken or hostile, and whatever it holds (a name, an
    address, markup) is written nowhere.
    """
    counts = outside_vocabulary(source)
    if counts:
        found = ", ".join(f"{field} {n} ({RULES[field]})" for field, n in counts.items())
        raise VocabularyError(f"{where}: values outside their vocabulary: {found}")


def _text(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    return values if pa.types.is_string(values.type) else pc.cast(values, pa.string())


def _member(values: pa.Array | pa.ChunkedArray, allowed: list[str]) -> pa.Array | pa.ChunkedArray:
    found = pc.is_in(values, value_set=pa.array(allowed, pa.string()))
    return pc.if_else(pc.is_valid(values), found, pa.scalar(None, pa.bool_()))


def _false(mask: pa.Array | pa.ChunkedArray) -> int:
    """How many values are false (nulls not counted)."""
    return int(pc.sum(pc.cast(pc.invert(pc.fill_null(mask, True)), pa.int64())).as_py() or 0)
