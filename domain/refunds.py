"""Refund math for a purchase (SPEC §1, §3 REFUND): money back, credits out, bonus clawed back.

Every proportional part (bonus claw-back, GST, and the platform fee when it is refunded) is
computed **cumulatively**: the share owed after this refund, rounded half-up, minus the share owed
before it. Rounding therefore never drifts: any sequence of partial refunds that sums to the full
amount refunds exactly the GST that was charged and claws back exactly the whole bonus, and no
sequence can return more than was paid.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from domain.errors import InvalidAmount
from domain.money import (
    PAISE_PER_CREDIT,
    div_round_half_up,
    format_inr,
    paise_to_credits,
    require_credits,
    require_int,
    require_paise,
)
from domain.quote import AddFundsQuote


class FeeRefundPolicy(StrEnum):
    """Whether a refund returns the platform fee. RETAINED is the default: the fee paid for the
    payment processing that already happened."""

    RETAINED = "retained"
    PROPORTIONAL = "proportional"


@dataclass(frozen=True, slots=True)
class PurchaseTerms:
    """The parts of a captured purchase that refunds are computed against.

    Equivalent to the :class:`AddFundsQuote` the purchase was made on; built from stored rows,
    so it is validated with typed errors rather than assertions.
    """

    amount_paise: int
    gst_paise: int
    platform_fee_paise: int
    bonus_credits: int

    def __post_init__(self) -> None:
        require_paise(self.amount_paise)
        paise_to_credits(self.amount_paise)
        require_paise(self.gst_paise, field="gst_paise", positive=False)
        require_paise(self.platform_fee_paise, field="platform_fee_paise", positive=False)
        require_credits(self.bonus_credits, field="bonus_credits", positive=False)

    @classmethod
    def from_quote(cls, quote: AddFundsQuote) -> PurchaseTerms:
        return cls(
            amount_paise=quote.amount_paise,
            gst_paise=quote.gst_paise,
            platform_fee_paise=quote.platform_fee_paise,
            bonus_credits=quote.bonus_credits,
        )

    @property
    def total_paise(self) -> int:
        return self.amount_paise + self.gst_paise + self.platform_fee_paise


@dataclass(frozen=True, slots=True)
class RefundQuote:
    """One refund: what goes back to the payer and which credits leave the wallet."""

    refund_amount_paise: int
    gst_refund_paise: int
    fee_refund_paise: int
    total_refund_paise: int
    base_credits_removed: int
    bonus_credits_clawed_back: int

    def __post_init__(self) -> None:
        assert self.total_refund_paise == (
            self.refund_amount_paise + self.gst_refund_paise + self.fee_refund_paise
        )

    @property
    def credits_removed(self) -> int:
        """Purchased plus bonus credits the wallet must give up (must be available)."""
        return self.base_credits_removed + self.bonus_credits_clawed_back


def quote_refund(
    purchase: PurchaseTerms | AddFundsQuote,
    refund_amount_paise: object,
    already_refunded_paise: object = 0,
    fee_policy: FeeRefundPolicy = FeeRefundPolicy.RETAINED,
) -> RefundQuote:
    """Refund ``refund_amount_paise`` of the purchase's amount (before GST and fee).

    ``already_refunded_paise`` is the sum of the amounts of earlier refunds of this purchase.
    Raises :class:`InvalidAmount` for a non-positive or non-whole-credit amount, or when the
    cumulative refunded amount would exceed what was paid.
    """
    terms = _terms(purchase)
    before = _require_refunded_so_far(terms, already_refunded_paise)
    amount = _require_refund_amount(refund_amount_paise)
    after = before + amount
    if after > terms.amount_paise:
        raise InvalidAmount(
            f"refund of {format_inr(amount)} exceeds the refundable "
            f"{format_inr(terms.amount_paise - before)} ({format_inr(before)} of "
            f"{format_inr(terms.amount_paise)} already refunded)",
            field="refund_amount_paise",
            value=amount,
        )
    gst = _cumulative_share(terms.gst_paise, terms.amount_paise, before, after)
    fee = 0
    if fee_policy is FeeRefundPolicy.PROPORTIONAL:
        fee = _cumulative_share(terms.platform_fee_paise, terms.amount_paise, before, after)
    return RefundQuote(
        refund_amount_paise=amount,
        gst_refund_paise=gst,
        fee_refund_paise=fee,
        total_refund_paise=amount + gst + fee,
        base_credits_removed=amount // PAISE_PER_CREDIT,
        bonus_credits_clawed_back=_cumulative_share(
            terms.bonus_credits, terms.amount_paise, before, after
        ),
    )


def max_refundable_paise(
    purchase: PurchaseTerms | AddFundsQuote,
    available_credits: object,
    already_refunded_paise: object = 0,
) -> int:
    """The largest refund amount whose credits (base plus claw-back) the wallet still holds.

    Credits already spent cannot be refunded. The result is a whole number of credits in paise,
    possibly 0. Credits removed grow monotonically with the amount, so a binary search over
    whole credits finds the boundary exactly.
    """
    terms = _terms(purchase)
    before = _require_refunded_so_far(terms, already_refunded_paise)
    available = require_credits(available_credits, field="available_credits", positive=False)
    low, high = 0, (terms.amount_paise - before) // PAISE_PER_CREDIT
    while low < high:
        mid = (low + high + 1) // 2
        if _credits_removed(terms, before, mid * PAISE_PER_CREDIT) <= available:
            low = mid
        else:
            high = mid - 1
    return low * PAISE_PER_CREDIT


def _credits_removed(terms: PurchaseTerms, before: int, amount: int) -> int:
    clawback = _cumulative_share(terms.bonus_credits, terms.amount_paise, before, before + amount)
    return amount // PAISE_PER_CREDIT + clawback


def _cumulative_share(whole: int, amount_paise: int, before: int, after: int) -> int:
    """The part of ``whole`` owed for refunding ``before..after`` of ``amount_paise``.

    Owed-after minus owed-before, each rounded half-up: telescopes to ``whole`` at a full refund.
    """
    owed_after = div_round_half_up(whole * after, amount_paise)
    owed_before = div_round_half_up(whole * before, amount_paise)
    return owed_after - owed_before


def _terms(purchase: PurchaseTerms | AddFundsQuote) -> PurchaseTerms:
    if isinstance(purchase, AddFundsQuote):
        return PurchaseTerms.from_quote(purchase)
    return purchase


def _require_refund_amount(value: object) -> int:
    amount = require_int(value, field="refund_amount_paise", minimum=1)
    if amount % PAISE_PER_CREDIT:
        raise InvalidAmount(
            f"refund amount must be a whole number of credits ({PAISE_PER_CREDIT} paise each), "
            f"got {amount} paise",
            field="refund_amount_paise",
            value=amount,
        )
    return amount


def _require_refunded_so_far(terms: PurchaseTerms, value: object) -> int:
    before = require_int(
        value, field="already_refunded_paise", minimum=0, maximum=terms.amount_paise
    )
    if before % PAISE_PER_CREDIT:
        raise InvalidAmount(
            f"already refunded amount must be a whole number of credits, got {before} paise",
            field="already_refunded_paise",
            value=before,
        )
    return before
