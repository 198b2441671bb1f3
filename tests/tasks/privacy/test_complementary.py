"""Complementary suppression on hand-made figures, each expectation worked out by hand."""

from __future__ import annotations

from tasks.privacy.suppression import (
    SECONDARY_LABEL,
    Relation,
    complementary_suppression,
    small_cell_note,
)

OVER_60 = Relation(members=("60", "70", "80", "90"), totals=("total",))


def cells(sixty: int, seventy: int, eighty: int, ninety: int) -> dict[str, int]:
    total = sixty + seventy + eighty + ninety
    return {"60": sixty, "70": seventy, "80": eighty, "90": ninety, "total": total}


def test_nothing_hidden_needs_no_complement() -> None:
    assert complementary_suppression(cells(5, 6, 7, 8), [OVER_60], 5) == {}


def test_a_lone_hidden_cell_gets_the_smallest_shown_one_as_complement() -> None:
    # 60 = 47 - 6 - 9 - 30 = 2 if only 60 were hidden; 70 (6) is the smallest cover.
    assert complementary_suppression(cells(2, 6, 9, 30), [OVER_60], 5) == {
        "60": "<5",
        "70": SECONDARY_LABEL,
    }


def test_a_complement_of_exactly_k_cannot_cover_a_one() -> None:
    # 60 + 70 = 6 with 60 >= 1 and 70 >= 5 leaves only 60 = 1: the next smallest, 80, covers it.
    assert complementary_suppression(cells(1, 5, 6, 0), [OVER_60], 5) == {
        "60": "<5",
        "80": SECONDARY_LABEL,
    }


def test_equal_complements_go_to_the_earlier_cell() -> None:
    assert complementary_suppression(cells(2, 7, 7, 7), [OVER_60], 5)["70"] == SECONDARY_LABEL


def test_two_hidden_cells_at_their_ceiling_need_a_third() -> None:
    # 4 + 4 = 8 with both below 5: both are 4. The only shown count left is the total.
    assert complementary_suppression(cells(4, 0, 0, 4), [OVER_60], 5) == {
        "60": "<5",
        "90": "<5",
        "total": SECONDARY_LABEL,
    }
    # 2 + 3 = 5 leaves 1..4 for each: no complement.
    assert complementary_suppression(cells(2, 0, 0, 3), [OVER_60], 5) == {"60": "<5", "90": "<5"}


def test_a_hidden_total_over_ones_is_widened() -> None:
    # Four cells of at least 1 under a total below 5: all are 1. Nothing shown is left to hide,
    # so the total's `<5` becomes `x`, which promises no upper bound.
    assert complementary_suppression(cells(1, 1, 1, 1), [OVER_60], 5) == {
        "60": "<5",
        "70": "<5",
        "80": "<5",
        "90": "<5",
        "total": SECONDARY_LABEL,
    }


def test_k_of_2_leaves_lone_cells_alone() -> None:
    # `<2` already says 1: no complement can hide that, so none is spent on it.
    assert complementary_suppression(cells(1, 6, 7, 8), [OVER_60], 2) == {"60": "<2"}


def test_the_note_explains_both_labels() -> None:
    note = small_cell_note(5)
    assert "<5" in note and f"{SECONDARY_LABEL} (at least 1)" in note and "ranked" in note
