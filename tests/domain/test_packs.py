"""Recharge packs, the bonus rule and the next-pack nudge (SPEC §1)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.errors import InvalidAmount
from domain.packs import LARGEST_PACK, PACKS, bonus_for_amount, next_pack_nudge, pack_at_or_below

AMOUNTS = st.integers(min_value=0, max_value=30_000_000)


def test_pack_table_matches_spec() -> None:
    rows = [(p.amount_paise, p.credits, p.bonus_credits, p.credits_added) for p in PACKS]
    assert rows == [
        (15_000, 1_500, 0, 1_500),
        (30_000, 3_000, 200, 3_200),
        (50_000, 5_000, 500, 5_500),
        (100_000, 10_000, 2_000, 12_000),
        (250_000, 25_000, 7_000, 32_000),
    ]
    assert LARGEST_PACK.amount_paise == 250_000


@pytest.mark.parametrize(
    ("amount_paise", "bonus"),
    [
        (0, 0),
        (14_900, 0),
        (15_000, 0),
        (29_900, 0),
        (30_000, 200),
        (50_000, 500),
        (70_000, 500),  # SPEC: ₹700 earns the ₹500 pack's bonus
        (99_900, 500),
        (100_000, 2_000),
        (250_000, 7_000),
        (20_000_000, 7_000),
    ],
)
def test_bonus_of_largest_pack_at_or_below(amount_paise: int, bonus: int) -> None:
    assert bonus_for_amount(amount_paise) == bonus


def test_nudge_at_700_rupees_matches_spec_message() -> None:
    nudge = next_pack_nudge(70_000)
    assert nudge is not None
    assert nudge.pack.amount_paise == 100_000
    assert nudge.additional_paise == 30_000
    assert nudge.bonus_credits == 2_000
    assert nudge.extra_bonus_credits == 1_500
    assert nudge.message == "add ₹300 more for +1,500 bonus credits"


def test_nudge_from_an_exact_pack_goes_to_the_next_one() -> None:
    nudge = next_pack_nudge(50_000)
    assert nudge is not None
    assert (nudge.pack.amount_paise, nudge.extra_bonus_credits) == (100_000, 1_500)
    assert nudge.message == "add ₹500 more for +1,500 bonus credits"


def test_nudge_below_the_smallest_pack_points_at_the_minimum() -> None:
    nudge = next_pack_nudge(10_000)
    assert nudge is not None
    assert nudge.extra_bonus_credits == 0
    assert nudge.message == "add ₹50 more for the ₹150 pack"


@pytest.mark.parametrize("amount_paise", [250_000, 250_100, 20_000_000])
def test_no_nudge_at_or_above_the_largest_pack(amount_paise: int) -> None:
    assert next_pack_nudge(amount_paise) is None


@pytest.mark.parametrize("bad", [1.5, 15_000.0, "15000", True, -100, None])
def test_bonus_refuses_non_amounts(bad: object) -> None:
    with pytest.raises(InvalidAmount):
        bonus_for_amount(bad)  # type: ignore[arg-type]


@settings(max_examples=200)
@given(AMOUNTS, AMOUNTS)
def test_bonus_is_monotonic_in_amount(a: int, b: int) -> None:
    low, high = sorted((a, b))
    assert bonus_for_amount(low) <= bonus_for_amount(high)


@settings(max_examples=200)
@given(AMOUNTS)
def test_nudge_reaches_exactly_the_next_pack(amount_paise: int) -> None:
    nudge = next_pack_nudge(amount_paise)
    if nudge is None:
        assert amount_paise >= LARGEST_PACK.amount_paise
        return
    assert nudge.additional_paise > 0
    assert amount_paise + nudge.additional_paise == nudge.pack.amount_paise
    reached = bonus_for_amount(nudge.pack.amount_paise)
    assert nudge.extra_bonus_credits == reached - bonus_for_amount(amount_paise) >= 0
    at_or_below = pack_at_or_below(amount_paise)
    assert at_or_below is None or at_or_below.amount_paise < nudge.pack.amount_paise
