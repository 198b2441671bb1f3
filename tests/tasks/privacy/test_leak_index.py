"""The leak scan's index: hashes in input order, kinds in their fixed priority order."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from tasks.privacy.leak_index import SECRET_KINDS, hash_strings


def test_hashes_keep_input_order_and_agree_with_single_values() -> None:
    values = [f"value-{i}@example.org" for i in range(50_000)]
    bulk = hash_strings(pa.array(values))
    assert bulk.dtype == np.uint64 and len(np.unique(bulk)) == len(values)
    for i in (0, 1, 12_345, 49_999):
        assert hash_strings([values[i]])[0] == bulk[i]


def test_secret_kinds_keep_their_ids_and_priority() -> None:
    # Derived from MASKED_COLUMNS: a kind's position is its id in every index entry and its
    # priority when a value is of two kinds, so a reordered schema must not move them silently.
    contact = ("email", "email_local", "phone", "phone_digits")
    person = ("firstname", "lastname", "birthday")
    place = ("street", "street_name", "building_number", "city", "zipcode", "latitude", "longitude")
    assert (*contact, *person, *place, "website") == SECRET_KINDS
