"""Query normalization and composition of person records from the locale pools.

Every field is a vectorised numpy draw of pool indices or numbers, so a 1000-record page costs
little next to the pipeline's own work. Seeded requests derive their generator from a SHA-256 of
the normalized query, never from Python's salted ``hash()``, so the same query gives the same
records in any process.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from local_api.countries import COUNTRY_CODES, COUNTRY_NAMES
from local_api.pools import FREE_EMAIL_DOMAINS, PHONE_FORMATS, Pools, normalize_locale
from tasks.common.vocabulary import GENDERS

DEFAULT_QUANTITY = 10
MAX_QUANTITY = 1000
DEFAULT_BIRTHDAY_START = dt.date(1900, 1, 1)
ADDRESS_ID = 1
IMAGE_URL = "http://placeimg.com/640/480/people"


@dataclass(frozen=True)
class PersonsQuery:
    """A ``/persons`` query after the public API's lenient parsing rules."""

    quantity: int
    seed: int | None
    locale: str
    gender: str | None
    birthday_start: dt.date
    birthday_end: dt.date

    def cache_key(self) -> str:
        """Stable text form of every field that influences the records."""
        return "|".join(
            str(v)
            for v in (
                self.quantity,
                self.seed,
                self.locale,
                self.gender,
                self.birthday_start.isoformat(),
                self.birthday_end.isoformat(),
            )
        )

    def params(self) -> dict[str, str | int]:
        """The query string that asks for exactly this query again (no seed: none given)."""
        params: dict[str, str | int] = {"_quantity": self.quantity}
        if self.seed is not None:
            params["_seed"] = self.seed
        params["_locale"] = self.locale
        if self.gender is not None:
            params["_gender"] = self.gender
        params["_birthday_start"] = self.birthday_start.isoformat()
        params["_birthday_end"] = self.birthday_end.isoformat()
        return params


def _first(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    """First value of a query parameter, or None."""
    values = params.get(name)
    return values[0] if values else None


def _parse_int(value: str | None) -> int | None:
    """Parse an integer, or None for missing or junk input."""
    try:
        return int(value.strip()) if value is not None else None
    except ValueError:
        return None


def _parse_date(value: str | None) -> dt.date | None:
    """Parse YYYY-MM-DD strictly, or None."""
    if value is None or len(value.strip()) != 10:
        return None
    try:
        return dt.date.fromisoformat(value.strip())
    except ValueError:
        return None


def parse_query(params: Mapping[str, Sequence[str]], today: dt.date | None = None) -> PersonsQuery:
    """Normalize raw query parameters (as from ``urllib.parse.parse_qs``) into a PersonsQuery."""
    quantity = _parse_int(_first(params, "_quantity"))
    if quantity is None or quantity <= 0:
        quantity = DEFAULT_QUANTITY
    seed = _parse_int(_first(params, "_seed")) or None  # _seed=0 means "no seed" upstream
    gender = (_first(params, "_gender") or "").strip().lower()
    start = _parse_date(_first(params, "_birthday_start")) or DEFAULT_BIRTHDAY_START
    end = _parse_date(_first(params, "_birthday_end")) or (today or dt.date.today())
    if start > end:
        start, end = end, start
    return PersonsQuery(
        quantity=min(quantity, MAX_QUANTITY),
        seed=seed,
        locale=normalize_locale(_first(params, "_locale")),
        gender=gender if gender in GENDERS else None,
        birthday_start=start,
        birthday_end=end,
    )


def make_rng(query: PersonsQuery) -> np.random.Generator:
    """Generator for a query: derived from the query when seeded, fresh entropy otherwise."""
    if query.seed is None:
        return np.random.default_rng()
    digest = hashlib.sha256(query.cache_key().encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


def _pick(rng: np.random.Generator, pool: Sequence[str], n: int) -> list[str]:
    """``n`` uniform picks from ``pool``."""
    return [pool[i] for i in rng.integers(0, len(pool), n).tolist()]


def _emails(rng: np.random.Generator, pools: Pools, n: int) -> list[str]:
    """Emails shaped like faker's: half on free providers (1/6 each), half on company domains."""
    free = rng.random(n) < 0.5
    free_idx = rng.integers(0, len(FREE_EMAIL_DOMAINS), n).tolist()
    company = _pick(rng, pools.company_domains, n)
    # Local parts use fresh name picks: upstream emails are unrelated to the record's own name.
    fmt = rng.integers(0, 4, n).tolist()
    female = rng.random(n) < 0.5
    first_m = _pick(rng, pools.first_tokens_male, n)
    first_f = _pick(rng, pools.first_tokens_female, n)
    last = _pick(rng, pools.last_tokens, n)
    digits = rng.integers(0, 100, n).tolist()
    letters = rng.integers(ord("a"), ord("z") + 1, n).tolist()
    out = []
    for i in range(n):
        first = first_f[i] if female[i] else first_m[i]
        local = (
            f"{last[i]}.{first}",
            f"{first}.{last[i]}",
            f"{first}{digits[i]:02d}",
            f"{chr(letters[i])}{last[i]}",
        )[fmt[i]]
        domain = FREE_EMAIL_DOMAINS[free_idx[i]] if free[i] else company[i]
        out.append(f"{local}@{domain}")
    return out


def _zipcodes(rng: np.random.Generator, pools: Pools, n: int) -> list[str]:
    """US zipcodes ``12345`` or ``12345-6789``; other locales use faker's postcodes."""
    if pools.locale != "en_US":
        return _pick(rng, pools.postcodes, n)
    five = rng.integers(0, 100_000, n).tolist()
    four = rng.integers(0, 10_000, n).tolist()
    plus4 = (rng.random(n) < 0.5).tolist()
    rows = zip(five, four, plus4, strict=True)
    return [f"{a:05d}-{b:04d}" if p else f"{a:05d}" for a, b, p in rows]


def _phones(rng: np.random.Generator, locale: str, n: int) -> list[str]:
    """E.164-style numbers; the first national digit is 2-9 so numbers look dialable."""
    prefix, digits = PHONE_FORMATS.get(locale, PHONE_FORMATS["en_US"])
    low, high = 2 * 10 ** (digits - 1), 10**digits
    return [f"{prefix}{x}" for x in rng.integers(low, high, n).tolist()]


def _birthdays(rng: np.random.Generator, query: PersonsQuery, n: int) -> list[str]:
    """Birthdays uniform over the inclusive range, as ISO dates."""
    span = (query.birthday_end - query.birthday_start).days + 1
    days = np.datetime64(query.birthday_start, "D") + rng.integers(0, span, n)
    dates: list[str] = days.astype(str).tolist()
    return dates


def build_records(query: PersonsQuery, pools: Pools) -> list[dict[str, object]]:
    """Compose ``query.quantity`` person records in the public API's shape and key order."""
    n = query.quantity
    rng = make_rng(query)
    if query.gender is None:
        female = (rng.random(n) < 0.5).tolist()
    else:
        female = [query.gender == "female"] * n
    first_m = _pick(rng, pools.first_names_male, n)
    first_f = _pick(rng, pools.first_names_female, n)
    last = _pick(rng, pools.last_names, n)
    emails = _emails(rng, pools, n)
    phones = _phones(rng, query.locale, n)
    birthdays = _birthdays(rng, query, n)
    streets = _pick(rng, pools.streets, n)
    street_names = _pick(rng, pools.street_names, n)
    buildings = _pick(rng, pools.building_numbers, n)
    cities = _pick(rng, pools.cities, n)
    zipcodes = _zipcodes(rng, pools, n)
    country_idx = rng.integers(0, len(COUNTRY_CODES), n).tolist()
    lats = np.round(rng.uniform(-90.0, 90.0, n), 6).tolist()
    lons = np.round(rng.uniform(-180.0, 180.0, n), 6).tolist()
    websites = _pick(rng, pools.company_domains, n)
    records: list[dict[str, object]] = []
    for i in range(n):
        c = country_idx[i]
        records.append(
            {
                "id": i + 1,
                "firstname": first_f[i] if female[i] else first_m[i],
                "lastname": last[i],
                "email": emails[i],
                "phone": phones[i],
                "birthday": birthdays[i],
                "gender": "female" if female[i] else "male",
                "address": {
                    "id": ADDRESS_ID,
                    "street": streets[i],
                    "streetName": street_names[i],
                    "buildingNumber": buildings[i],
                    "city": cities[i],
                    "zipcode": zipcodes[i],
                    "country": COUNTRY_NAMES[c],
                    "country_code": COUNTRY_CODES[c],
                    "latitude": lats[i],
                    "longitude": lons[i],
                },
                "website": f"http://{websites[i]}",
                "image": IMAGE_URL,
            }
        )
    return records
