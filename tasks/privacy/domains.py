"""E-mail domains in the analytical batch: the three big providers are kept, rare ones become
`other`, so a domain shared by fewer than k people never singles them out."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from tasks.common.schemas import ArrayLike

KEEP_DOMAINS: frozenset[str] = frozenset({"gmail.com", "hotmail.com", "yahoo.com"})
OTHER_DOMAIN = "other"

# An e-mail's domain is everything after its last "@" (a quoted local part may hold "@", the
# domain never does); an address without "@" has none. tasks/sql/mask_persons.sql says the same
# in SQL (`split_part(email, '@', -1)`, half the cost of a regex), and a test holds them equal.
_DOMAIN = r"@(?P<domain>[^@]*)$"
_LOCAL = r"^(?P<local>.*)@[^@]*$"


def email_domain(emails: ArrayLike) -> ArrayLike:
    """The text after the last "@" of each address, as written; null where there is no "@"."""
    return pc.struct_field(pc.extract_regex(emails, _DOMAIN), "domain")


def email_local_part(emails: ArrayLike) -> ArrayLike:
    """The text before the last "@" of each address; null where there is no "@"."""
    return pc.struct_field(pc.extract_regex(emails, _LOCAL), "local")


def rare_domains(
    analytical: pa.Table,
    k: int,
    keep: frozenset[str] = KEEP_DOMAINS,
    column: str = "email_domain",
) -> tuple[pa.Array, int]:
    """The domains with fewer than k users (never `keep` or null), and how many records hold one."""
    counts = pc.value_counts(analytical[column])
    values, users = counts.field("values"), counts.field("counts")
    rare = pc.and_(
        pc.less(users, k),
        pc.invert(pc.is_in(values, value_set=pa.array(sorted({*keep, OTHER_DOMAIN}), pa.string()))),
    )
    # Null is not a domain: it stays null so validation keeps seeing it.
    rare = pc.and_kleene(rare, pc.is_valid(values))
    domains = pc.filter(values, rare)
    records = pc.sum(pc.filter(users, rare)).as_py() or 0
    return domains, int(records)


def collapse_rare_domains(
    analytical: pa.Table,
    k: int,
    keep: frozenset[str] = KEEP_DOMAINS,
    column: str = "email_domain",
) -> tuple[pa.Table, int]:
    """Domains with fewer than k users in the batch become `other`; return (table, domains)."""
    domains, _ = rare_domains(analytical, k, keep, column)
    if len(domains) == 0:
        return analytical, 0
    values = analytical[column]
    collapsed = pc.if_else(
        pc.fill_null(pc.is_in(values, value_set=domains), False),
        pa.scalar(OTHER_DOMAIN, pa.string()),
        values,
    )
    index = analytical.schema.get_field_index(column)
    return analytical.set_column(index, analytical.schema.field(index), collapsed), len(domains)
