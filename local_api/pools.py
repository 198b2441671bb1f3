"""Per-locale pools of faker-generated values, built once so requests only pick from lists.

Calling faker per field is slow enough that a 1000-record page would keep a client waiting. Pools
are generated lazily (first use of a locale), under a lock, from a seed derived from the locale
name with a stable hash, so they are identical across processes and restarts.
"""

from __future__ import annotations

import random
import threading
import unicodedata
import zlib
from dataclasses import dataclass

from faker import Faker

DEFAULT_LOCALE = "en_US"
SUPPORTED_LOCALES: tuple[str, ...] = ("en_US", "en_GB", "de_DE", "fr_FR", "it_IT", "es_ES")
FREE_EMAIL_DOMAINS: tuple[str, ...] = ("gmail.com", "hotmail.com", "yahoo.com")

# (country calling code, national digits) per locale; en_US matches the public API's +1XXXXXXXXXX.
PHONE_FORMATS: dict[str, tuple[str, int]] = {
    "en_US": ("+1", 10),
    "en_GB": ("+44", 10),
    "de_DE": ("+49", 10),
    "fr_FR": ("+33", 9),
    "it_IT": ("+39", 10),
    "es_ES": ("+34", 9),
}

NAME_POOL_SIZE = 3000
PLACE_POOL_SIZE = 2000
DOMAIN_POOL_SIZE = 2000

# Letters NFKD does not decompose into ASCII.
_ASCII_FIXES = str.maketrans({"ß": "ss", "æ": "ae", "ø": "o", "œ": "oe", "ł": "l", "đ": "d"})


def to_ascii_token(text: str) -> str:
    """Lower-case ``text`` and reduce it to ASCII letters and digits, as faker does for emails."""
    folded = unicodedata.normalize("NFKD", text.lower().translate(_ASCII_FIXES))
    return "".join(ch for ch in folded if ch.isascii() and ch.isalnum())


@dataclass(frozen=True)
class Pools:
    """Value pools for one locale; every tuple is non-empty."""

    locale: str
    first_names_male: tuple[str, ...]
    first_names_female: tuple[str, ...]
    last_names: tuple[str, ...]
    # ASCII tokens for email local parts, index-aligned with the name tuples above.
    first_tokens_male: tuple[str, ...]
    first_tokens_female: tuple[str, ...]
    last_tokens: tuple[str, ...]
    streets: tuple[str, ...]
    street_names: tuple[str, ...]
    building_numbers: tuple[str, ...]
    cities: tuple[str, ...]
    postcodes: tuple[str, ...]
    company_domains: tuple[str, ...]


def _repeat(fn: object, n: int) -> tuple[str, ...]:
    """Call a zero-argument faker method ``n`` times."""
    return tuple(str(fn()) for _ in range(n))  # type: ignore[operator]


def _company_domains(
    fake: Faker, last_tokens: tuple[str, ...], rng: random.Random
) -> tuple[str, ...]:
    """Build distinct company domains like faker's (``fahey.com``, ``smith-jones.net``)."""
    words = sorted({t for t in last_tokens if len(t) > 1})
    tlds = sorted({str(fake.tld()) for _ in range(50)})
    domains: dict[str, None] = {}
    # Bounded so a locale with few surnames cannot loop forever; it just gets fewer domains.
    for _ in range(DOMAIN_POOL_SIZE * 20):
        if len(domains) >= DOMAIN_POOL_SIZE:
            break
        word = rng.choice(words)
        if rng.random() < 0.3:
            word = f"{word}-{rng.choice(words)}"
        domains[f"{word}.{rng.choice(tlds)}"] = None
    return tuple(domains)


def build_pools(locale: str) -> Pools:
    """Generate the pools for ``locale`` deterministically (same locale -> same pools)."""
    seed = zlib.crc32(locale.encode())
    fake = Faker(locale)
    fake.seed_instance(seed)
    rng = random.Random(seed)
    male = _repeat(fake.first_name_male, NAME_POOL_SIZE)
    female = _repeat(fake.first_name_female, NAME_POOL_SIZE)
    last = _repeat(fake.last_name, NAME_POOL_SIZE)
    last_tokens = tuple(to_ascii_token(n) or "user" for n in last)
    return Pools(
        locale=locale,
        first_names_male=male,
        first_names_female=female,
        last_names=last,
        first_tokens_male=tuple(to_ascii_token(n) or "user" for n in male),
        first_tokens_female=tuple(to_ascii_token(n) or "user" for n in female),
        last_tokens=last_tokens,
        streets=_repeat(fake.street_address, PLACE_POOL_SIZE),
        street_names=_repeat(fake.street_name, PLACE_POOL_SIZE),
        building_numbers=_repeat(fake.building_number, PLACE_POOL_SIZE),
        cities=_repeat(fake.city, PLACE_POOL_SIZE),
        postcodes=_repeat(fake.postcode, PLACE_POOL_SIZE),
        company_domains=_company_domains(fake, last_tokens, rng),
    )


_cache: dict[str, Pools] = {}
_lock = threading.Lock()


def normalize_locale(value: str | None) -> str:
    """Map a ``_locale`` value to a supported locale; unknown or missing -> en_US."""
    if not value:
        return DEFAULT_LOCALE
    candidate = value.strip().replace("-", "_")
    for locale in SUPPORTED_LOCALES:
        if locale.lower() == candidate.lower():
            return locale
    return DEFAULT_LOCALE


def get_pools(locale: str) -> Pools:
    """Return the pools for a supported locale, building them on first use."""
    pools = _cache.get(locale)
    if pools is None:
        with _lock:
            pools = _cache.get(locale)
            if pools is None:
                pools = build_pools(locale)
                _cache[locale] = pools
    return pools
