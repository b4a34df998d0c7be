"""Refund math: proportional, cumulative-consistent, never more than was paid."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.errors import InvalidAmount
from domain.packs import PACKS
from domain.quote import AddFundsQuote, quote_add_funds
from domain.refunds import (
    FeeRefundPolicy,
    PurchaseTerms,
    RefundQuote,
    max_refundable_paise,
    quote_refund,
)

PURCHASES = st.integers(min_value=150, max_value=200_000).map(lambda r: quote_add_funds(r * 100))
POLICIES = st.sampled_from(list(FeeRefundPolicy))


def refund_all_in_steps(
    purchase: AddFundsQuote, steps_credits: list[int], policy: FeeRefundPolicy
) -> list[RefundQuote]:
    """Refund ``steps_credits`` (in credits) while they fit, then whatever remains."""
    refunds: list[RefundQuote] = []
    done = 0
    for step in steps_credits:
        amount = step * 10
        if done + amount >= purchase.amount_paise:
            break
        refunds.append(quote_refund(purchase, amount, done, policy))
        done += amount
    refunds.append(quote_refund(purchase, purchase.amount_paise - done, done, policy))
    return refunds


def test_full_refund_of_500_rupees_keeps_the_fee_by_default() -> None:
    refund = quote_refund(quote_add_funds(50_000), 50_000)
    assert refund.refund_amount_paise == 50_000
    assert refund.gst_refund_paise == 9_000
    assert refund.fee_refund_paise == 0
    assert refund.total_refund_paise == 59_000
    assert (refund.base_credits_removed, refund.bonus_credits_clawed_back) == (5_000, 500)
    assert refund.credits_removed == 5_500


def test_full_refund_with_proportional_fee_returns_the_whole_charge() -> None:
    quote = quote_add_funds(50_000)
    refund = quote_refund(quote, 50_000, fee_policy=FeeRefundPolicy.PROPORTIONAL)
    assert refund.fee_refund_paise == 1_200
    assert refund.total_refund_paise == quote.total_paise == 60_200


def test_partial_refund_is_proportional() -> None:
    refund = quote_refund(quote_add_funds(50_000), 10_000)
    assert (refund.gst_refund_paise, refund.bonus_credits_clawed_back) == (1_800, 100)
    assert refund.base_credits_removed == 1_000


def test_thirds_claw_back_exactly_the_whole_bonus() -> None:
    quote = quote_add_funds(30_000)  # bonus 200: thirds are 66.67 credits each
    refunds = [quote_refund(quote, 10_000, done) for done in (0, 10_000, 20_000)]
    assert [r.bonus_credits_clawed_back for r in refunds] == [67, 66, 67]
    assert sum(r.gst_refund_paise for r in refunds) == quote.gst_paise


def test_purchase_terms_and_quote_give_the_same_refund() -> None:
    quote = quote_add_funds(70_000)
    terms = PurchaseTerms.from_quote(quote)
    assert terms.total_paise == quote.total_paise
    assert quote_refund(terms, 12_340, 1_000) == quote_refund(quote, 12_340, 1_000)


@pytest.mark.parametrize(
    ("amount", "already", "message"),
    [
        (20_000, 40_000, r"refund of ₹200 exceeds the refundable ₹100 \(₹400 of ₹500"),
        (50_010, 0, "exceeds the refundable ₹500"),
        (0, 0, "refund_amount_paise must be >= 1"),
        (-1_000, 0, "refund_amount_paise must be >= 1"),
        (1_005, 0, "whole number of credits"),
        (1_000.0, 0, "must be a whole number"),
        (True, 0, "must be a whole number"),
        (1_000, 50_010, "already_refunded_paise must be <= 50000"),
        (1_000, 5, "already refunded amount must be a whole number of credits"),
        (1_000, -10, "already_refunded_paise must be >= 0"),
    ],
)
def test_refuses_bad_refunds(amount: object, already: object, message: str) -> None:
    with pytest.raises(InvalidAmount, match=message):
        quote_refund(quote_add_funds(50_000), amount, already)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"amount_paise": 15_005},
        {"amount_paise": 0},
        {"gst_paise": -1},
        {"platform_fee_paise": 1.5},
        {"bonus_credits": -1},
    ],
)
def test_purchase_terms_are_validated(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {
        "amount_paise": 50_000,
        "gst_paise": 9_000,
        "platform_fee_paise": 1_200,
        "bonus_credits": 500,
    }
    with pytest.raises(InvalidAmount):
        PurchaseTerms(**(base | kwargs))  # type: ignore[arg-type]


@settings(max_examples=150)
@given(PURCHASES, st.lists(st.integers(min_value=1, max_value=30_000), max_size=8), POLICIES)
def test_any_sequence_of_refunds_returns_exactly_what_was_paid(
    purchase: AddFundsQuote, steps: list[int], policy: FeeRefundPolicy
) -> None:
    refunds = refund_all_in_steps(purchase, steps, policy)
    paid_back = 0
    for refund in refunds:
        assert refund.gst_refund_paise >= 0
        assert refund.bonus_credits_clawed_back >= 0
        paid_back += refund.total_refund_paise
        assert paid_back <= purchase.total_paise
    retained_fee = purchase.platform_fee_paise if policy is FeeRefundPolicy.RETAINED else 0
    assert paid_back == purchase.total_paise - retained_fee
    assert sum(r.refund_amount_paise for r in refunds) == purchase.amount_paise
    assert sum(r.gst_refund_paise for r in refunds) == purchase.gst_paise
    assert sum(r.bonus_credits_clawed_back for r in refunds) == purchase.bonus_credits
    assert sum(r.base_credits_removed for r in refunds) == purchase.base_credits
    with pytest.raises(InvalidAmount, match="exceeds"):
        quote_refund(purchase, 10, purchase.amount_paise, policy)


@settings(max_examples=150)
@given(PURCHASES, st.lists(st.integers(min_value=1, max_value=30_000), max_size=6))
def test_claw_back_depends_only_on_the_cumulative_amount(
    purchase: AddFundsQuote, steps: list[int]
) -> None:
    refunds = refund_all_in_steps(purchase, steps, FeeRefundPolicy.PROPORTIONAL)
    done = 0
    clawed = 0
    for refund in refunds:
        done += refund.refund_amount_paise
        clawed += refund.bonus_credits_clawed_back
        in_one_go = quote_refund(purchase, done, 0, FeeRefundPolicy.PROPORTIONAL)
        assert clawed == in_one_go.bonus_credits_clawed_back


def test_max_refundable_is_everything_when_no_credit_was_spent() -> None:
    quote = quote_add_funds(50_000)
    assert max_refundable_paise(quote, available_credits=5_500) == 50_000
    assert max_refundable_paise(quote, available_credits=0) == 0
    assert max_refundable_paise(quote, available_credits=10_000, already_refunded_paise=20_000) == (
        30_000
    )


def test_max_refundable_stops_where_spent_credits_begin() -> None:
    quote = quote_add_funds(50_000)  # 5,500 credits; 2,300 spent leaves 3,200
    limit = max_refundable_paise(quote, available_credits=3_200)
    assert quote_refund(quote, limit).credits_removed <= 3_200
    assert quote_refund(quote, limit + 10).credits_removed > 3_200


@settings(max_examples=150)
@given(
    st.sampled_from(PACKS).map(lambda p: quote_add_funds(p.amount_paise)),
    st.integers(min_value=0, max_value=40_000),
    st.integers(min_value=0, max_value=100),
)
def test_max_refundable_is_the_exact_boundary(
    purchase: AddFundsQuote, available: int, already_percent: int
) -> None:
    already = purchase.amount_paise * already_percent // 100 // 10 * 10
    limit = max_refundable_paise(purchase, available, already)
    assert 0 <= limit <= purchase.amount_paise - already
    assert limit % 10 == 0
    if limit:
        assert quote_refund(purchase, limit, already).credits_removed <= available
    if already + limit < purchase.amount_paise:
        assert quote_refund(purchase, limit + 10, already).credits_removed > available
