"""The e-mail rule in each of its forms (Arrow regex, DuckDB macro, Python) gives the same parts."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tasks.common.emails import local_part
from tasks.common.memdb import cursor
from tasks.privacy.domains import email_domain, email_local_part

ADDRESSES = [
    "a@b.com",
    "quoted@local@example.org",
    "no-at-sign",
    "x@",
    "@y.com",
    " A@B.COM ",
    "",
    "@",
    "a@@b",
]


@pytest.mark.parametrize("address", ADDRESSES)
def test_every_form_splits_an_address_the_same_way(address: str) -> None:
    (arrow_domain,) = email_domain(pa.array([address])).to_pylist()
    (arrow_local,) = email_local_part(pa.array([address])).to_pylist()
    # fetchall: the cursor is the thread's, shared with masking, so no result is left open.
    [(sql_domain,)] = (
        cursor()
        .execute("select case when contains($a, '@') then email_domain($a) end", {"a": address})
        .fetchall()
    )
    assert sql_domain == arrow_domain
    assert local_part(address) == arrow_local
    if arrow_domain is not None:
        assert f"{arrow_local}@{arrow_domain}" == address
    else:
        assert "@" not in address
