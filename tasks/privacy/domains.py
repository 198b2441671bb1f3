"""E-mail domains, one rule for every layer: a domain is kept only if it is a public mail provider,
or a well-formed host name that k or more persons of the batch share; any other becomes `other`,
so a domain never singles a person out (nor carries their name, or text that is no domain)."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from tasks.common.emails import DOMAIN_REGEX, LOCAL_REGEX
from tasks.common.schemas import MASK, ArrayLike
from tasks.common.vocabulary import OTHER_DOMAIN, PUBLIC_MAIL_PROVIDERS, host_names

KEEP_DOMAINS: frozenset[str] = PUBLIC_MAIL_PROVIDERS


def email_domain(emails: ArrayLike) -> ArrayLike:
    """The text after the last "@" of each address, as written; null where there is no "@"."""
    return pc.struct_field(pc.extract_regex(emails, DOMAIN_REGEX), "domain")


def email_local_part(emails: ArrayLike) -> ArrayLike:
    """The text before the last "@" of each address; null where there is no "@"."""
    return pc.struct_field(pc.extract_regex(emails, LOCAL_REGEX), "local")


def rare_domains(
    analytical: pa.Table,
    k: int,
    keep: frozenset[str] = KEEP_DOMAINS,
    column: str = "email_domain",
) -> tuple[pa.Array, int]:
    """The domains the rule replaces (not in `keep`, and malformed or shared by fewer than k
    users; never null), and how many records hold one."""
    counts = pc.value_counts(analytical[column])
    values, users = counts.field("values"), counts.field("counts")
    shared = pc.and_(host_names(values), pc.greater_equal(users, k))
    kept = pc.or_kleene(
        pc.is_in(values, value_set=pa.array(sorted({*keep, OTHER_DOMAIN}), pa.string())), shared
    )
    # Null is not a domain: it stays null so validation keeps seeing it.
    rare = pc.and_kleene(pc.invert(kept), pc.is_valid(values))
    domains = pc.filter(values, rare)
    records = pc.sum(pc.filter(users, rare)).as_py() or 0
    return domains, int(records)


def collapse_rare_domains(
    analytical: pa.Table,
    k: int,
    keep: frozenset[str] = KEEP_DOMAINS,
    column: str = "email_domain",
) -> tuple[pa.Table, int]:
    """Domains outside the rule (`rare_domains`) become `other`; return (table, domains)."""
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


@dataclass
class SharedDomains:
    """The masked batch with the domain rule applied to its e-mails, and what it replaced."""

    table: pa.Table
    kept: frozenset[str]  # the domains left in the batch
    domains_replaced: int
    records_replaced: int


def keep_shared_domains(masked: pa.Table, k: int) -> SharedDomains:
    """Apply the domain rule to a masked batch's `****@domain` e-mails (lower-cased, trimmed)."""
    emails = masked["email"]
    domain = pc.utf8_lower(pc.utf8_trim_whitespace(email_domain(emails)))
    replaced, records = rare_domains(pa.table({"domain": domain}), k, column="domain")
    outside = pc.fill_null(pc.is_in(domain, value_set=replaced), False)
    kept_domain = pc.if_else(outside, pa.scalar(OTHER_DOMAIN, pa.string()), domain)
    # An e-mail without "@" stays "****": validation names it.
    email = pc.if_else(
        pc.is_valid(domain), pc.binary_join_element_wise(MASK, kept_domain, "@"), emails
    )
    index = masked.schema.get_field_index("email")
    table = masked.set_column(index, masked.schema.field(index), email)
    kept = {d for d in pc.unique(kept_domain).to_pylist() if d is not None}
    return SharedDomains(table, frozenset(kept), len(replaced), int(records))
