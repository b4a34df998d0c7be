"""The add-funds quote (SPEC §1): amount, GST and platform fee on top, credits and bonus.

₹500 -> GST ₹90, platform fee ₹12, total charged ₹602, 5,000 + 500 = 5,500 credits added.
Every part is integer paise rounded half-up on its own, and the total is their exact sum, so the
receipt always adds up to the paisa.
"""

from __future__ import annotations

from dataclasses import dataclass

from domain.errors import ConfigError, InvalidAmount
from domain.money import (
    BASIS_POINTS,
    PAISE_PER_RUPEE,
    basis_points_of,
    format_inr,
    paise_to_credits,
    require_int,
)
from domain.packs import PackNudge, bonus_for_amount, next_pack_nudge


@dataclass(frozen=True, slots=True)
class FeeSchedule:
    """Rates in basis points (18% = 1800) and the per-payment bounds in whole-rupee paise.

    Raises :class:`ConfigError` naming the field when a value is out of range: fix the setting
    that built the schedule.
    """

    gst_bp: int = 1_800
    platform_fee_bp: int = 240
    min_amount_paise: int = 15_000
    max_amount_paise: int = 20_000_000

    def __post_init__(self) -> None:
        _check_setting("gst_bp", self.gst_bp, 0, BASIS_POINTS)
        _check_setting("platform_fee_bp", self.platform_fee_bp, 0, BASIS_POINTS)
        _check_setting("min_amount_paise", self.min_amount_paise, PAISE_PER_RUPEE, None)
        _check_setting("max_amount_paise", self.max_amount_paise, self.min_amount_paise, None)
        for name in ("min_amount_paise", "max_amount_paise"):
            if getattr(self, name) % PAISE_PER_RUPEE:
                raise ConfigError(f"fee schedule: field {name!r} must be whole rupees", field=name)


def _check_setting(name: str, value: object, minimum: int, maximum: int | None) -> None:
    try:
        require_int(value, field=name, minimum=minimum, maximum=maximum)
    except InvalidAmount as exc:
        raise ConfigError(f"fee schedule: field {name!r}: {exc.message}", field=name) from exc


DEFAULT_FEE_SCHEDULE = FeeSchedule()


@dataclass(frozen=True, slots=True)
class AddFundsQuote:
    """What the payer is charged and what the wallet receives; the parts always add up."""

    amount_paise: int
    gst_paise: int
    platform_fee_paise: int
    total_paise: int
    base_credits: int
    bonus_credits: int
    credits_added: int
    nudge: PackNudge | None

    def __post_init__(self) -> None:
        # Built only by quote_add_funds; a mismatch here is a bug, not bad input.
        assert self.total_paise == self.amount_paise + self.gst_paise + self.platform_fee_paise
        assert self.credits_added == self.base_credits + self.bonus_credits
        assert self.base_credits == paise_to_credits(self.amount_paise)


def quote_add_funds(
    amount_paise: object, schedule: FeeSchedule = DEFAULT_FEE_SCHEDULE
) -> AddFundsQuote:
    """Quote a top-up of ``amount_paise``.

    Raises :class:`InvalidAmount` for a non-int (bool and float included), an amount that is
    not whole rupees, below ``schedule.min_amount_paise`` or above ``schedule.max_amount_paise``.
    """
    amount = require_add_funds_amount(amount_paise, schedule)
    gst = basis_points_of(amount, schedule.gst_bp)
    fee = basis_points_of(amount, schedule.platform_fee_bp)
    base = paise_to_credits(amount)
    bonus = bonus_for_amount(amount)
    return AddFundsQuote(
        amount_paise=amount,
        gst_paise=gst,
        platform_fee_paise=fee,
        total_paise=amount + gst + fee,
        base_credits=base,
        bonus_credits=bonus,
        credits_added=base + bonus,
        nudge=next_pack_nudge(amount),
    )


def require_add_funds_amount(amount_paise: object, schedule: FeeSchedule) -> int:
    """Return ``amount_paise`` if it is a payable top-up under ``schedule``; else InvalidAmount."""
    amount = require_int(amount_paise, field="amount_paise")
    if amount % PAISE_PER_RUPEE:
        raise InvalidAmount(
            f"add-funds amount must be whole rupees, got {format_inr(amount)}",
            field="amount_paise",
            value=amount,
        )
    if amount < schedule.min_amount_paise:
        raise InvalidAmount(
            f"minimum add-funds amount is {format_inr(schedule.min_amount_paise)}, "
            f"got {format_inr(amount)}",
            field="amount_paise",
            value=amount,
        )
    if amount > schedule.max_amount_paise:
        raise InvalidAmount(
            f"maximum add-funds amount is {format_inr(schedule.max_amount_paise)} per payment, "
            f"got {format_inr(amount)}",
            field="amount_paise",
            value=amount,
        )
    return amount
