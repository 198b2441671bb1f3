"""Generalize the masked raw batch into the analytical batch (age group, email domain, country)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from tasks.common.schemas import AGE_BAND_YEARS, AGE_GROUPS, ANALYTICAL_SCHEMA, MASK, ArrayLike
from tasks.common.tasks import as_task
from tasks.privacy.domains import collapse_rare_domains, email_domain

_AGE_GROUP_LABELS = pa.array(AGE_GROUPS, pa.string())
# Ages at or above the last group's lower bound all fall into the open-ended "[90+]".
_LAST_GROUP = len(AGE_GROUPS) - 1
# What tasks.ingest.mask writes before the domain.
_MASKED_PREFIX = MASK + "@"


def age_group_of(ages: ArrayLike) -> ArrayLike:
    """Map ages in whole years to AGE_GROUPS labels; null or negative ages map to null."""
    ages = pc.cast(ages, pa.int32())
    # Null instead of a guessed group, so the analytical validation fails loudly on bad ages.
    valid = pc.if_else(pc.less(ages, 0), pa.scalar(None, pa.int32()), ages)
    # Integer division truncates, which is flooring here because negatives are already gone.
    # skip_nulls=False: the default would turn min(null, 9) into 9, i.e. null ages into "[90+]".
    index = pc.min_element_wise(pc.divide(valid, AGE_BAND_YEARS), _LAST_GROUP, skip_nulls=False)
    return pc.take(_AGE_GROUP_LABELS, index)


def _flat(values: ArrayLike) -> pa.Array:
    """One contiguous array (replace_with_mask takes no chunked arrays)."""
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def email_domain_of(emails: ArrayLike) -> ArrayLike:
    """Lower-cased, stripped domain after the last "@"; null when there is no "@" or no domain."""
    # Masked emails are "****@domain" with no other "@": there the domain is a fixed-offset slice,
    # well under half the regex's cost. Only rows of any other shape still go through the regex.
    domain = pc.utf8_slice_codeunits(emails, len(_MASKED_PREFIX))
    other = pc.or_(
        pc.invert(pc.starts_with(emails, _MASKED_PREFIX)), pc.match_substring(domain, "@")
    )
    other = pc.fill_null(other, False)  # null emails: their slice is null already
    if pc.any(other).as_py():
        found = email_domain(pc.filter(emails, other))
        domain = pc.replace_with_mask(_flat(domain), _flat(other), _flat(found))
    domain = pc.utf8_trim_whitespace(domain)
    # Domains are nearly always ASCII, where ascii_lower equals utf8_lower at a fifth of the cost.
    ascii_only = pc.all(pc.string_is_ascii(domain)).as_py()
    domain = pc.ascii_lower(domain) if ascii_only else pc.utf8_lower(domain)
    # Null rather than "" or "unknown": a missing domain must stay visible to validation and must
    # never be counted as a real domain in the reports.
    return pc.if_else(pc.equal(domain, ""), pa.scalar(None, pa.string()), domain)


def generalize(masked: pa.Table, run_date: datetime.date) -> pa.Table:
    """Turn a masked raw batch (RAW_SCHEMA) into an analytical batch (ANALYTICAL_SCHEMA)."""
    if "run_date" in masked.column_names:
        # A batch that mixes dates would be loaded under the wrong date; refuse it.
        other_dates = pc.sum(pc.not_equal(masked["run_date"], pa.scalar(run_date, pa.date32())))
        if (other_dates.as_py() or 0) > 0:
            raise ValueError(f"masked batch has rows whose run_date is not {run_date.isoformat()}")
    if masked["person_key"].null_count:
        raise ValueError("masked batch has rows without a person_key")

    def text(name: str) -> ArrayLike:
        return pc.cast(masked[name], pa.string())

    columns = {
        "person_key": text("person_key"),
        "run_date": pa.repeat(pa.scalar(run_date, pa.date32()), masked.num_rows),
        "gender": text("gender"),
        "age_group": age_group_of(masked["age"]),
        "email_domain": email_domain_of(text("email")),
        "country": text("country"),
        "country_code": text("country_code"),
    }
    return pa.table([columns[field.name] for field in ANALYTICAL_SCHEMA], schema=ANALYTICAL_SCHEMA)


@dataclass
class Generalized:
    """The analytical batch, handed from the generalize task to the flow."""

    table: pa.Table


def generalize_persons(masked: pa.Table, run_date: datetime.date, k: int) -> Generalized:
    """Masked batch -> analytical batch (age group, domain, country); rare domains -> `other`.

    A pipeline run applied the domain rule to the raw batch already (its figures come from
    there), so here it changes nothing; it holds for any other masked batch given.
    """
    table, _ = collapse_rare_domains(generalize(masked, run_date), k)
    return Generalized(table)


generalize_persons_task = as_task(generalize_persons)
