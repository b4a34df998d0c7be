"""How a ledger transaction turns into postings and changes a wallet's balances (pure).

Every movement is a plan of *legs* over accounts that sums to zero. A wallet has four balance
buckets (available, pending, reserved, locked); the platform has issuer and sink accounts. The
wallet-facing counters (lifetime purchased/used, payout eligibility) are *derived from the legs*
by :func:`Balances.apply`, so the writer and the verifier share one rule and cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from domain.errors import InsufficientCredits, InvalidAmount, InvalidInput
from domain.money import require_credits


class TxnType(StrEnum):
    CREDIT_PURCHASE = "CREDIT_PURCHASE"
    USAGE_DEDUCTION = "USAGE_DEDUCTION"
    BONUS_CREDIT = "BONUS_CREDIT"
    REFUND = "REFUND"
    PAYOUT_HOLD = "PAYOUT_HOLD"
    PAYOUT_RELEASE = "PAYOUT_RELEASE"
    ADMIN_ADJUSTMENT = "ADMIN_ADJUSTMENT"
    # Two-phase usage holds (SPEC §4 token pricing): available -> reserved, then a capture
    # (a USAGE_DEDUCTION) or this release.
    USAGE_HOLD = "USAGE_HOLD"
    USAGE_HOLD_RELEASE = "USAGE_HOLD_RELEASE"


class Phase(StrEnum):
    """Two-phase state of a transaction (TigerBeetle's pending / post / void)."""

    PENDING = "pending"
    POSTED = "posted"
    VOIDED = "voided"
    EXPIRED = "expired"


class Bucket(StrEnum):
    """A wallet's balance buckets; each is one ledger account per wallet."""

    AVAILABLE = "available"
    PENDING = "pending"
    RESERVED = "reserved"
    LOCKED = "locked"


class Platform(StrEnum):
    """Platform-side accounts (one each, not per wallet). Their balances may be negative."""

    PURCHASES = "platform:purchases"  # issuer of bought credits
    BONUS_POOL = "platform:bonus_pool"  # issuer of bonus credits
    REVENUE = "platform:revenue"  # credits consumed by usage
    PAYOUT_CLEARING = "platform:payout_clearing"  # credits paid out
    ADJUSTMENTS = "platform:adjustments"  # counterpart of admin adjustments
    EARNINGS = "platform:earnings"  # issuer of payout-eligible community earnings


Account = Bucket | Platform


def parse_account(name: str) -> Account:
    """The account named ``name`` (as stored in the database)."""
    if name.startswith("platform:"):
        return Platform(name)
    return Bucket(name)


@dataclass(frozen=True, slots=True)
class Leg:
    account: Account
    amount: int  # signed credits: + increases the account's balance

    def __post_init__(self) -> None:
        assert isinstance(self.amount, int)
        assert not isinstance(self.amount, bool)
        assert self.amount != 0, "a leg moves a non-zero amount"


@dataclass(frozen=True, slots=True)
class Plan:
    """A transaction before it is written: type, phase and legs that sum to zero."""

    type: TxnType
    phase: Phase | None
    credits: int  # the magnitude shown in the wallet view
    legs: tuple[Leg, ...]

    def __post_init__(self) -> None:
        assert self.legs, "a transaction has postings"
        assert sum(leg.amount for leg in self.legs) == 0, "postings must sum to zero"
        accounts = [leg.account for leg in self.legs]
        assert len(set(accounts)) == len(accounts), "one leg per account"
        assert self.credits > 0


@dataclass(frozen=True, slots=True)
class Balances:
    """A wallet's balances; every field is a non-negative integer number of credits."""

    available: int = 0
    pending: int = 0
    reserved: int = 0
    locked: int = 0
    lifetime_purchased: int = 0
    lifetime_used: int = 0
    payout_eligible: int = 0

    def bucket(self, bucket: Bucket) -> int:
        value: int = getattr(self, bucket.value)
        return value

    def as_tuple(self) -> tuple[int, ...]:
        return (
            self.available,
            self.pending,
            self.reserved,
            self.locked,
            self.lifetime_purchased,
            self.lifetime_used,
            self.payout_eligible,
        )

    def apply(self, txn_type: TxnType, phase: Phase | None, legs: tuple[Leg, ...]) -> Balances:
        """Balances after ``legs``; raises :class:`InsufficientCredits` if any would be < 0."""
        values = list(self.as_tuple())
        for leg in legs:
            if isinstance(leg.account, Bucket):
                values[_FIELD_INDEX[leg.account.value]] += leg.amount
        for name, delta in _counter_deltas(txn_type, phase, legs).items():
            values[_FIELD_INDEX[name]] += delta
        if min(values) < 0:
            name = BALANCE_FIELDS[next(i for i, v in enumerate(values) if v < 0)]
            raise InsufficientCredits(
                f"{txn_type.value} needs more {name} credits than the wallet has "
                f"({getattr(self, name)} in {name})",
                bucket=name,
                balance=getattr(self, name),
                shortfall=-values[_FIELD_INDEX[name]],
            )
        return Balances(*values)


BALANCE_FIELDS = (
    "available",
    "pending",
    "reserved",
    "locked",
    "lifetime_purchased",
    "lifetime_used",
    "payout_eligible",
)
_FIELD_INDEX = {name: index for index, name in enumerate(BALANCE_FIELDS)}


def _leg_amount(legs: tuple[Leg, ...], account: Account) -> int:
    return sum(leg.amount for leg in legs if leg.account == account)


def _counter_deltas(
    txn_type: TxnType, phase: Phase | None, legs: tuple[Leg, ...]
) -> dict[str, int]:
    """Monotonic counters and payout eligibility, derived from the legs (one rule, two users)."""
    if txn_type is TxnType.CREDIT_PURCHASE and phase is Phase.POSTED:
        return {"lifetime_purchased": _leg_amount(legs, Bucket.AVAILABLE)}
    if txn_type is TxnType.USAGE_DEDUCTION:
        return {"lifetime_used": _leg_amount(legs, Platform.REVENUE)}
    if txn_type is TxnType.ADMIN_ADJUSTMENT:
        return {"payout_eligible": -_leg_amount(legs, Platform.EARNINGS)}
    if txn_type is TxnType.PAYOUT_HOLD:
        return {"payout_eligible": -_leg_amount(legs, Bucket.LOCKED)}
    if txn_type is TxnType.PAYOUT_RELEASE and phase is Phase.VOIDED:
        return {"payout_eligible": _leg_amount(legs, Bucket.AVAILABLE)}
    return {}


def _move(credits: int, source: Account, target: Account) -> tuple[Leg, ...]:
    return (Leg(source, -credits), Leg(target, credits))


def _plan(txn_type: TxnType, phase: Phase | None, credits: int, *legs: Leg) -> Plan:
    require_credits(credits)
    return Plan(txn_type, phase, credits, tuple(legs))


def _transfer(
    txn_type: TxnType, phase: Phase | None, credits: int, source: Account, target: Account
) -> Plan:
    """``credits`` (validated first: whole and positive) from ``source`` to ``target``."""
    require_credits(credits)
    return Plan(txn_type, phase, credits, _move(credits, source, target))


def purchase_pending(credits: int) -> Plan:
    return _transfer(
        TxnType.CREDIT_PURCHASE, Phase.PENDING, credits, Platform.PURCHASES, Bucket.PENDING
    )


def purchase_confirmed(credits: int) -> Plan:
    return _transfer(
        TxnType.CREDIT_PURCHASE, Phase.POSTED, credits, Bucket.PENDING, Bucket.AVAILABLE
    )


def purchase_failed(credits: int) -> Plan:
    return _transfer(
        TxnType.CREDIT_PURCHASE, Phase.VOIDED, credits, Bucket.PENDING, Platform.PURCHASES
    )


def bonus(credits: int) -> Plan:
    return _transfer(TxnType.BONUS_CREDIT, None, credits, Platform.BONUS_POOL, Bucket.AVAILABLE)


# Plans are immutable and settlement builds thousands of identical ones. typed=True, so that
# 5.0 or True never hit the cached plan for 5 and skip validation.
@lru_cache(maxsize=1024, typed=True)
def usage(credits: int) -> Plan:
    return _transfer(TxnType.USAGE_DEDUCTION, None, credits, Bucket.AVAILABLE, Platform.REVENUE)


def usage_reversal(credits: int) -> Plan:
    return _transfer(TxnType.REFUND, None, credits, Platform.REVENUE, Bucket.AVAILABLE)


def purchase_refund(base_credits: int, bonus_credits: int) -> Plan:
    """Purchased credits go back to the issuer; the clawed-back bonus back to the bonus pool."""
    require_credits(base_credits)
    require_credits(bonus_credits, field="bonus_credits", positive=False)
    legs = [
        Leg(Bucket.AVAILABLE, -(base_credits + bonus_credits)),
        Leg(Platform.PURCHASES, base_credits),
    ]
    if bonus_credits:
        legs.append(Leg(Platform.BONUS_POOL, bonus_credits))
    return _plan(TxnType.REFUND, None, base_credits + bonus_credits, *legs)


def hold(credits: int) -> Plan:
    return _transfer(TxnType.USAGE_HOLD, Phase.PENDING, credits, Bucket.AVAILABLE, Bucket.RESERVED)


def hold_captured(reserved_credits: int, captured_credits: int) -> Plan:
    """Capture ``captured_credits`` (1..reserved) as usage; the rest returns to available."""
    require_credits(reserved_credits, field="reserved_credits")
    require_credits(captured_credits, field="captured_credits")
    if captured_credits > reserved_credits:
        raise InvalidInput(
            f"cannot capture {captured_credits} credits: only {reserved_credits} are reserved",
            field="captured_credits",
        )
    legs = [Leg(Bucket.RESERVED, -reserved_credits), Leg(Platform.REVENUE, captured_credits)]
    if reserved_credits > captured_credits:
        legs.append(Leg(Bucket.AVAILABLE, reserved_credits - captured_credits))
    return _plan(TxnType.USAGE_DEDUCTION, Phase.POSTED, captured_credits, *legs)


def hold_released(reserved_credits: int, phase: Phase = Phase.VOIDED) -> Plan:
    assert phase in (Phase.VOIDED, Phase.EXPIRED)
    return _transfer(
        TxnType.USAGE_HOLD_RELEASE, phase, reserved_credits, Bucket.RESERVED, Bucket.AVAILABLE
    )


def payout_held(credits: int) -> Plan:
    return _transfer(TxnType.PAYOUT_HOLD, Phase.PENDING, credits, Bucket.AVAILABLE, Bucket.LOCKED)


def payout_completed(credits: int) -> Plan:
    return _transfer(
        TxnType.PAYOUT_RELEASE, Phase.POSTED, credits, Bucket.LOCKED, Platform.PAYOUT_CLEARING
    )


def payout_cancelled(credits: int) -> Plan:
    return _transfer(TxnType.PAYOUT_RELEASE, Phase.VOIDED, credits, Bucket.LOCKED, Bucket.AVAILABLE)


EARNINGS_REASON = "community_earnings"


def admin_adjustment(delta_credits: int, reason: str) -> Plan:
    """A signed manual adjustment; ``community_earnings`` credits are payout-eligible."""
    if isinstance(delta_credits, bool) or not isinstance(delta_credits, int) or not delta_credits:
        raise InvalidAmount(
            f"adjustment credits must be a non-zero whole number, got {delta_credits!r}",
            field="credits",
        )
    counterpart = Platform.EARNINGS if reason == EARNINGS_REASON else Platform.ADJUSTMENTS
    return _plan(
        TxnType.ADMIN_ADJUSTMENT,
        None,
        abs(delta_credits),
        *_move(delta_credits, counterpart, Bucket.AVAILABLE),
    )
