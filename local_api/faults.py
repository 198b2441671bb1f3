"""Fault injection: which failure (if any) a persons request gets, decided deterministically.

Each fault kind draws from its own ``random.Random`` seeded from ``fault_seed`` so that switching
one fault on does not shift the decisions of another.
"""

from __future__ import annotations

import collections
import email.utils
import math
import random
import threading
import time
from dataclasses import dataclass, field

DRIFTS: tuple[str, ...] = (
    "county_code",
    "missing-email",
    "wrong-type",
    "extra-field",
    "bad-values",
    # Hostile source: values that must never reach outputs, logs or errors (leak drills).
    "email-in-country",
    "name-in-gender",
    "int-coordinates",
    "email-keys",
    # A person's own data as their country, the code left valid: only the vocabulary stops it.
    "name-in-country",
    "phone-in-country",
    "street-in-country",
    "birthday-in-country",
    "spelled-email-in-country",
    "zero-width-email-in-country",
    # Markup as the country of every Gmail user, with a made-up code.
    "markup-in-country",
    # E-mail domains that are no shared domain: text after a moved "@", a person's own names.
    "local-at-domain",
    "vanity-domain",
)
# What markup-in-country serves: an image beacon, a markdown image, a form field, a script link.
MARKUP_COUNTRY = (
    "Evil <img src=https://evil.example/b.png> ![x](https://evil.example/i.png) "
    '<input type="password"> [click](javascript:alert(1))'
)
MARKUP_CODE = "QX"
# What bad-values serves as a birthday: a date no run date reaches.
FUTURE_BIRTHDAY = "2999-01-01"
RETRY_AFTER_FORMATS: tuple[str, ...] = ("seconds", "http-date", "none")
TRUNCATE_MODES: tuple[str, ...] = ("json", "connection")
REDIRECT_STATUSES: tuple[int, ...] = (301, 302, 303, 307, 308)
# Where a redirect points: the same server, so a client that follows it shows in the served log.
REDIRECT_PREFIX = "/moved"
# Every fault that fires on a share of requests; each is a fraction in [0, 1].
RATES: tuple[str, ...] = (
    "error_rate",
    "truncate_rate",
    "reset_rate",
    "hang_rate",
    "short_rate",
    "redirect_rate",
    "gzip_bomb_rate",
    "deep_json_rate",
    "slow_body_rate",
)


def normalize_drift(name: str) -> str:
    """Canonical drift name; accepts ``_``/``-`` spellings (``missing_email``, ``county-code``)."""
    key = name.strip().lower().replace("_", "-")
    for drift in DRIFTS:
        if drift.replace("_", "-") == key:
            return drift
    raise ValueError(f"unknown drift {name!r}; expected one of {', '.join(DRIFTS)}")


@dataclass(frozen=True)
class FaultConfig:
    """Faults to inject on the persons endpoints; the default injects none."""

    rate_limit: int | None = None  # max requests per rate_window seconds
    rate_window: float = 60.0
    retry_after: str = "seconds"  # seconds | http-date | none
    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (500,)
    fail_first: int = 0  # first N requests per distinct query fail
    latency_ms: float = 0.0
    truncate_rate: float = 0.0
    truncate_mode: str = "json"  # json | connection
    reset_rate: float = 0.0
    hang_rate: float = 0.0
    hang_seconds: float = 30.0
    short_rate: float = 0.0
    drift: tuple[str, ...] = ()
    down: bool = False
    error_message: str | None = None  # JSON message of every injected error instead of default
    # Hostile source: a redirect elsewhere, a gzip bomb, JSON nested far deeper than a page.
    redirect_rate: float = 0.0
    redirect_status: int = 302
    gzip_bomb_rate: float = 0.0
    gzip_bomb_bytes: int = 1 << 30  # what a bomb expands to (~1 MB on the wire per GiB)
    deep_json_rate: float = 0.0
    deep_json_levels: int = 900  # under orjson's own limit (1024), so only a client cap refuses it
    # A 200 whose headers come at once and whose body trickles, one byte per slow_body_seconds:
    # no read ever waits long, so only a client's total deadline stops it.
    slow_body_rate: float = 0.0
    slow_body_first: int = 0  # the first N tries per distinct query get a slow body
    slow_body_seconds: float = 1.0
    fault_seed: int = 0

    def __post_init__(self) -> None:
        if self.retry_after not in RETRY_AFTER_FORMATS:
            raise ValueError(f"retry_after must be one of {RETRY_AFTER_FORMATS}")
        if self.truncate_mode not in TRUNCATE_MODES:
            raise ValueError(f"truncate_mode must be one of {TRUNCATE_MODES}")
        if not self.error_statuses:
            raise ValueError("error_statuses must not be empty")
        if self.redirect_status not in REDIRECT_STATUSES:
            raise ValueError(f"redirect_status must be one of {REDIRECT_STATUSES}")
        if self.gzip_bomb_bytes < 1 << 20 or self.deep_json_levels < 1:
            raise ValueError("gzip_bomb_bytes must be at least 1 MiB, deep_json_levels at least 1")
        if self.slow_body_seconds <= 0 or self.slow_body_first < 0:
            raise ValueError("slow_body_seconds must be above 0, slow_body_first at least 0")
        for name in RATES:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        object.__setattr__(self, "drift", tuple(normalize_drift(d) for d in self.drift))


@dataclass
class Decision:
    """What to do with one persons request; fields are checked by the handler in order."""

    down: bool = False
    reset: bool = False
    hang: bool = False
    delay: float = 0.0  # hang plus latency, seconds
    error_status: int | None = None
    rate_limited: bool = False
    retry_after: str | None = None  # header value when rate limited
    truncate: bool = False
    short_fraction: float | None = None  # keep this share of records when set
    redirect: bool = False
    gzip_bomb: bool = False
    deep_json: bool = False
    slow_body: bool = False
    headers: dict[str, str] = field(default_factory=dict)


class FaultInjector:
    """Thread-safe state for rate limiting, fail-first counters and random fault draws."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._hits: collections.deque[float] = collections.deque()
        self._attempts: collections.Counter[str] = collections.Counter()
        kinds = (
            "error",
            "status",
            "truncate",
            "reset",
            "hang",
            "short",
            "short-size",
            "redirect",
            "gzip-bomb",
            "deep-json",
            "slow-body",
        )
        self._rng = {k: random.Random(f"{config.fault_seed}:{k}") for k in kinds}

    def reset(self) -> None:
        """Forget rate-limit history and fail-first counters."""
        with self._lock:
            self._hits.clear()
            self._attempts.clear()

    def _chance(self, kind: str, rate: float) -> bool:
        """Draw from the kind's own stream, only when the fault is on (keeps streams aligned)."""
        return rate > 0 and self._rng[kind].random() < rate

    def _rate_limit(self, now: float) -> tuple[bool, dict[str, str]]:
        """Sliding-window limiter; rejected requests do not count, as in Laravel's throttle."""
        cfg = self.config
        if cfg.rate_limit is None:
            return False, {}
        limit = str(cfg.rate_limit)
        while self._hits and self._hits[0] <= now - cfg.rate_window:
            self._hits.popleft()
        if len(self._hits) < cfg.rate_limit:
            self._hits.append(now)
            remaining = str(cfg.rate_limit - len(self._hits))
            return False, {"X-RateLimit-Limit": limit, "X-RateLimit-Remaining": remaining}
        oldest = self._hits[0] if self._hits else now
        wait = max(1, math.ceil(oldest + cfg.rate_window - now))
        headers = {"X-RateLimit-Limit": limit, "X-RateLimit-Remaining": "0"}
        if cfg.retry_after == "seconds":
            headers["Retry-After"] = str(wait)
        elif cfg.retry_after == "http-date":
            headers["Retry-After"] = email.utils.formatdate(time.time() + wait, usegmt=True)
        return True, headers

    def decide(self, query_key: str) -> Decision:
        """Decide the fate of one persons request identified by its normalized query."""
        cfg = self.config
        with self._lock:
            d = Decision()
            if cfg.down:
                d.down = True
                return d
            d.rate_limited, d.headers = self._rate_limit(time.monotonic())
            if d.rate_limited:
                return d
            if self._chance("reset", cfg.reset_rate):
                d.reset = True
                return d
            d.hang = self._chance("hang", cfg.hang_rate)
            d.delay = (cfg.hang_seconds if d.hang else 0.0) + cfg.latency_ms / 1000.0
            self._attempts[query_key] += 1
            failing_first = self._attempts[query_key] <= cfg.fail_first
            if failing_first or self._chance("error", cfg.error_rate):
                d.error_status = self._rng["status"].choice(cfg.error_statuses)
                return d
            d.redirect = self._chance("redirect", cfg.redirect_rate)
            if d.redirect:
                return d
            d.truncate = self._chance("truncate", cfg.truncate_rate)
            if self._chance("short", cfg.short_rate):
                d.short_fraction = self._rng["short-size"].uniform(0.1, 0.9)
            d.gzip_bomb = self._chance("gzip-bomb", cfg.gzip_bomb_rate)
            d.deep_json = self._chance("deep-json", cfg.deep_json_rate)
            slow_first = self._attempts[query_key] <= cfg.slow_body_first
            d.slow_body = self._chance("slow-body", cfg.slow_body_rate) or slow_first
            return d


def apply_drift(records: list[dict[str, object]], drifts: tuple[str, ...]) -> None:
    """Mutate records in place to show the configured schema and hostile-source drifts."""
    if not drifts:
        return
    # Hostile drifts plant the generated e-mails, so take them before missing-email or bad-values
    # can remove or alter them: every combination of drifts still leaks real values.
    emails = [rec.get("email") for rec in records]
    for rec in records:
        address = rec["address"]
        assert isinstance(address, dict)
        if "county_code" in drifts:
            # Rebuild so the misspelt key keeps its position, as old v1 responses had it.
            rebuilt = {("county_code" if k == "country_code" else k): v for k, v in address.items()}
            address.clear()
            address.update(rebuilt)
        if "missing-email" in drifts:
            rec.pop("email", None)
        if "wrong-type" in drifts:
            rec["birthday"] = int(str(rec["birthday"]).replace("-", ""))
            address["latitude"] = str(address["latitude"])
        if "extra-field" in drifts:
            rec["title"] = "Ms." if rec["gender"] == "female" else "Mr."
    if "bad-values" in drifts:
        # Same shape, wrong content: what only validation can catch (a kept field outside its
        # vocabulary is refused before that). Every tenth record loses the "@" of its email and
        # is born in the future, so its age is negative.
        for rec in records[::10]:
            rec["email"] = str(rec["email"]).replace("@", "-at-")
            rec["birthday"] = FUTURE_BIRTHDAY
    _apply_hostile(records, drifts, emails)


def _apply_hostile(
    records: list[dict[str, object]], drifts: tuple[str, ...], emails: list[object]
) -> None:
    """Plant source values where only a leak scan (or strict validation) notices them."""
    if "email-in-country" in drifts:
        # country_code stays a valid code, so validation passes and only a leak scan can tell.
        for rec, mail in zip(records[::7], emails[::7], strict=True):
            address = rec["address"]
            assert isinstance(address, dict)
            address["country"] = mail
    if "name-in-gender" in drifts:
        for rec in records[::10]:
            rec["gender"] = f"{rec['firstname']} {rec['lastname']}"
    if "int-coordinates" in drifts:
        # Past 2**53 once |value| > ~9.007: checked int-to-float casts (pyarrow's) reject them and
        # quote the value in the error. float() also takes wrong-type's strings.
        for rec in records:
            address = rec["address"]
            assert isinstance(address, dict)
            for key in ("latitude", "longitude"):
                address[key] = round(float(address[key]) * 1e15)
    _apply_country_plants(records, drifts, emails)
    _apply_domain_plants(records, drifts, emails)
    if "email-keys" in drifts:
        # One extra key per record, named by a raw e-mail: column names become values to leak.
        for rec, mail in zip(records, emails, strict=True):
            rec.pop("email", None)
            if mail is not None:
                rec[str(mail)] = "subscribed"


def _country_plant(drift: str, rec: dict[str, object], mail: object) -> str:
    """The person's own value that `drift` serves as their country."""
    address = rec["address"]
    assert isinstance(address, dict)
    local, _, domain = str(mail).rpartition("@")
    return {
        "name-in-country": f"{rec['firstname']} {rec['lastname']}",
        "phone-in-country": str(rec["phone"]),
        "street-in-country": str(address["street"]),
        "birthday-in-country": str(rec["birthday"]),
        "spelled-email-in-country": f"{local} at {domain}",
        "zero-width-email-in-country": f"{local}\u200b@{domain}",
    }[drift]


def _apply_country_plants(
    records: list[dict[str, object]], drifts: tuple[str, ...], emails: list[object]
) -> None:
    """A person's own data as their country in 1 of 7 records; markup for every Gmail user."""
    for drift in drifts:
        if drift.endswith("-in-country") and drift not in ("email-in-country", "markup-in-country"):
            for rec, mail in zip(records[::7], emails[::7], strict=True):
                address = rec["address"]
                assert isinstance(address, dict)
                address["country"] = _country_plant(drift, rec, mail)
    if "markup-in-country" in drifts:
        for rec, mail in zip(records, emails, strict=True):
            address = rec["address"]
            assert isinstance(address, dict)
            if str(mail).endswith("@gmail.com"):
                address["country"], address["country_code"] = MARKUP_COUNTRY, MARKUP_CODE


def _apply_domain_plants(
    records: list[dict[str, object]], drifts: tuple[str, ...], emails: list[object]
) -> None:
    """E-mails whose domain is a local part or the person's names (1 in 5 records each)."""
    if "local-at-domain" in drifts:
        for i, (rec, mail) in enumerate(zip(records[::5], emails[::5], strict=True)):
            local, _, domain = str(mail).rpartition("@")
            # Alternately the domain moved in front of the "@", and a name as the domain.
            name = f"{rec['firstname']}.{rec['lastname']}.example".lower()
            rec["email"] = f"{domain}@{local}" if i % 2 == 0 else f"x@{name}"
    if "vanity-domain" in drifts:
        for rec in records[1::5]:
            first, last = str(rec["firstname"]).lower(), str(rec["lastname"]).lower()
            rec["email"] = f"{first}@{first}{last}.com"
