"""An e-mail address's parts, one rule in each form the pipeline needs: the domain is everything
after the last "@" (a quoted local part may hold "@", a domain never does), the local part
everything before it; an address without "@" has neither. Arrow (regex), DuckDB (a macro) and
Python (`local_part`) read it from here; tests/tasks/common/test_emails.py holds the forms equal."""

from __future__ import annotations

DOMAIN_REGEX = r"@(?P<domain>[^@]*)$"
LOCAL_REGEX = r"^(?P<local>.*)@[^@]*$"
# `email_domain(address)` in SQL, created in the in-memory database (tasks/common/memdb.py):
# split_part costs half what the regex does in DuckDB.
DOMAIN_MACRO = "create or replace macro email_domain(address) as split_part(address, '@', -1)"


def local_part(address: str) -> str | None:
    """The text before the last "@"; None where there is no "@"."""
    local, at, _ = address.rpartition("@")
    return local if at else None
