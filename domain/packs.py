"""Recharge packs and the bonus rule (SPEC §1).

A custom amount earns the bonus of the largest pack at or below it (₹700 earns the ₹500 pack's
+500). The add-funds UI nudges towards the next pack up. Pure functions over a frozen table.
"""

from __future__ import annotations

from dataclasses import dataclass

from domain.money import format_inr, paise_to_credits, require_credits, require_paise


@dataclass(frozen=True, slots=True)
class RechargePack:
    """One row of the pack table: ``credits`` is what ``amount_paise`` buys at ₹1 = 10 credits."""

    amount_paise: int
    credits: int
    bonus_credits: int

    def __post_init__(self) -> None:
        require_paise(self.amount_paise)
        require_credits(self.bonus_credits, field="bonus_credits", positive=False)
        # A pack that disagreed with the conversion rate would mint or destroy credits.
        assert self.credits == paise_to_credits(self.amount_paise), "pack credits != conversion"

    @property
    def credits_added(self) -> int:
        """Purchased plus bonus credits: what the wallet gains when the payment succeeds."""
        return self.credits + self.bonus_credits


# Ordered by amount; the bonus is non-decreasing along the table (tests hold this).
PACKS: tuple[RechargePack, ...] = (
    RechargePack(amount_paise=15_000, credits=1_500, bonus_credits=0),
    RechargePack(amount_paise=30_000, credits=3_000, bonus_credits=200),
    RechargePack(amount_paise=50_000, credits=5_000, bonus_credits=500),
    RechargePack(amount_paise=100_000, credits=10_000, bonus_credits=2_000),
    RechargePack(amount_paise=250_000, credits=25_000, bonus_credits=7_000),
)

LARGEST_PACK = PACKS[-1]


@dataclass(frozen=True, slots=True)
class PackNudge:
    """The next pack above a custom amount, and what topping up to it would add.

    ``extra_bonus_credits`` is the next pack's bonus minus the bonus the current amount already
    earns, which is the figure the UI advertises ("+1,500", not "+2,000", at ₹700).
    """

    pack: RechargePack
    additional_paise: int
    extra_bonus_credits: int
    message: str

    @property
    def bonus_credits(self) -> int:
        return self.pack.bonus_credits


def pack_at_or_below(amount_paise: int) -> RechargePack | None:
    """The largest pack whose amount is <= ``amount_paise``; ``None`` below the smallest pack."""
    require_paise(amount_paise, positive=False)
    eligible = [pack for pack in PACKS if pack.amount_paise <= amount_paise]
    return eligible[-1] if eligible else None


def bonus_for_amount(amount_paise: int) -> int:
    """Bonus credits earned by paying ``amount_paise`` (0 below the smallest pack)."""
    pack = pack_at_or_below(amount_paise)
    return pack.bonus_credits if pack is not None else 0


def next_pack_nudge(amount_paise: int) -> PackNudge | None:
    """The nudge towards the smallest pack strictly above ``amount_paise``; ``None`` at the top."""
    require_paise(amount_paise, positive=False)
    above = [pack for pack in PACKS if pack.amount_paise > amount_paise]
    if not above:
        return None
    pack = above[0]
    additional_paise = pack.amount_paise - amount_paise
    extra_bonus = pack.bonus_credits - bonus_for_amount(amount_paise)
    return PackNudge(
        pack=pack,
        additional_paise=additional_paise,
        extra_bonus_credits=extra_bonus,
        message=_nudge_message(additional_paise, extra_bonus, pack),
    )


def _nudge_message(additional_paise: int, extra_bonus: int, pack: RechargePack) -> str:
    more = format_inr(additional_paise)
    if extra_bonus > 0:
        return f"add {more} more for +{extra_bonus:,} bonus credits"
    # Only below the smallest pack, which carries no bonus: nudge to the minimum instead.
    return f"add {more} more for the {format_inr(pack.amount_paise)} pack"
