"""The test helpers' own checks, where a helper is more than a line of plain Python."""

from __future__ import annotations

import random

from tests.helpers import leaked, occurring


def test_occurring_finds_exactly_what_in_finds() -> None:
    rng = random.Random(5)
    alphabet = b"ab@.-0123456789"
    blob = bytes(rng.choice(alphabet) for _ in range(50_000))
    # Needles taken from the blob at every offset modulo 8, near both ends, sharing heads, and
    # random ones that are (mostly) absent.
    needles = {blob[at : at + rng.randint(8, 30)] for at in rng.sample(range(len(blob) - 30), 300)}
    needles |= {blob[:8], blob[-8:], blob[-12:], blob[100:140], blob[100:109]}
    needles |= {bytes(rng.choice(alphabet) for _ in range(rng.randint(8, 20))) for _ in range(300)}
    expected = {n for n in needles if n in blob}
    assert len(expected) > 300 and len(needles - expected) > 50
    assert occurring(needles, blob) == expected
    assert occurring(needles, b"") == set() == occurring(set(), blob)


def test_leaked_checks_cells_whole_and_long_values_in_bytes() -> None:
    secrets = {"1234", "dana.hostile@example.net", "52.520007", "Zelda Planted"}
    blob = b'{"note": "dana.hostile@example.net", "took": 52.520007, "x": "1234"}'
    assert leaked(secrets, {"1234"}, blob) == ["1234", "dana.hostile@example.net"]
    assert leaked(secrets, set(), b"...Zelda Planted...") == ["Zelda Planted"]
