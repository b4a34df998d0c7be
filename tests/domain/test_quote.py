"""The add-funds quote: GST and platform fee on top, half-up to the paisa, exact total."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.errors import ConfigError, InvalidAmount
from domain.packs import PACKS, RechargePack
from domain.quote import DEFAULT_FEE_SCHEDULE, FeeSchedule, quote_add_funds

WHOLE_RUPEE_AMOUNTS = st.integers(min_value=150, max_value=200_000).map(lambda r: r * 100)


def test_spec_live_preview_for_500_rupees() -> None:
    quote = quote_add_funds(50_000)
    assert quote.amount_paise == 50_000
    assert quote.gst_paise == 9_000
    assert quote.platform_fee_paise == 1_200
    assert quote.total_paise == 60_200
    assert (quote.base_credits, quote.bonus_credits, quote.credits_added) == (5_000, 500, 5_500)


@pytest.mark.parametrize("pack", PACKS, ids=lambda p: str(p.amount_paise))
def test_every_pack_quotes_its_credits(pack: RechargePack) -> None:
    quote = quote_add_funds(pack.amount_paise)
    assert quote.base_credits == pack.credits
    assert quote.credits_added == pack.credits_added


def test_quote_carries_the_nudge() -> None:
    nudge = quote_add_funds(70_000).nudge
    assert nudge is not None
    assert nudge.message == "add ₹300 more for +1,500 bonus credits"
    assert quote_add_funds(250_000).nudge is None


def test_boundaries_are_accepted() -> None:
    assert quote_add_funds(DEFAULT_FEE_SCHEDULE.min_amount_paise).credits_added == 1_500
    assert quote_add_funds(DEFAULT_FEE_SCHEDULE.max_amount_paise).base_credits == 2_000_000


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (14_900, "minimum add-funds amount is ₹150, got ₹149"),
        (20_000_100, "maximum add-funds amount is ₹2,00,000 per payment"),
        (15_050, "must be whole rupees, got ₹150.50"),
        (-15_000, "must be >= 0"),
        (50_000.0, "must be a whole number"),
        (True, "must be a whole number"),
        ("50000", "must be a whole number"),
        (None, "must be a whole number"),
    ],
)
def test_refuses_bad_amounts(bad: object, message: str) -> None:
    with pytest.raises(InvalidAmount, match=message) as caught:
        quote_add_funds(bad)
    assert caught.value.code == "invalid_amount"


def test_half_paisa_rounds_up() -> None:
    # 1 bp of ₹150 is 1.5 paise and 3 bp is 4.5 paise: both halves round up.
    quote = quote_add_funds(15_000, FeeSchedule(gst_bp=1, platform_fee_bp=3))
    assert (quote.gst_paise, quote.platform_fee_paise, quote.total_paise) == (2, 5, 15_007)


def test_fraction_below_half_rounds_down() -> None:
    # 2.4% of ₹151 is 362.4 paise.
    assert quote_add_funds(15_100).platform_fee_paise == 362


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"gst_bp": -1}, "gst_bp"),
        ({"platform_fee_bp": 10_001}, "platform_fee_bp"),
        ({"gst_bp": 18.0}, "gst_bp"),
        ({"min_amount_paise": 15_050}, "min_amount_paise"),
        ({"min_amount_paise": 0}, "min_amount_paise"),
        ({"max_amount_paise": 10_000}, "max_amount_paise"),
    ],
)
def test_fee_schedule_is_validated(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=f"field '{field}'"):
        FeeSchedule(**kwargs)  # type: ignore[arg-type]


@settings(max_examples=300)
@given(WHOLE_RUPEE_AMOUNTS)
def test_parts_always_add_up_to_the_paisa(amount_paise: int) -> None:
    quote = quote_add_funds(amount_paise)
    assert quote.total_paise == quote.amount_paise + quote.gst_paise + quote.platform_fee_paise
    # Each part is within half a paisa of its exact value, ties rounded up.
    for part, rate_bp in ((quote.gst_paise, 1_800), (quote.platform_fee_paise, 240)):
        error = part * 10_000 - amount_paise * rate_bp
        assert -5_000 < error <= 5_000
    for credits in (quote.base_credits, quote.bonus_credits, quote.credits_added):
        assert type(credits) is int
    assert quote.credits_added == amount_paise // 10 + quote.bonus_credits


@settings(max_examples=100)
@given(st.integers(min_value=15_001, max_value=20_000_000).filter(lambda a: a % 100 != 0))
def test_non_whole_rupees_are_always_refused(amount_paise: int) -> None:
    with pytest.raises(InvalidAmount, match="whole rupees"):
        quote_add_funds(amount_paise)
