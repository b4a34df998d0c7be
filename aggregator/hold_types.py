"""Two-phase holds (AI token pricing): requests, states, outcomes and results (pure).

A hold is pending until it resolves exactly once: captured (the actual cost, never more than
held, becomes an in-flight usage event with ``event_id = hold_id``), released, or expired.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from aggregator.decision import WalletStatus
from aggregator.policy import MAX_CREDITS, Limits, Tier, require_now_ms, require_tier
from aggregator.redis_keys import require_id, require_wallet_id
from aggregator.replies import integer, text
from domain.money import require_int

MAX_HOLD_TTL_MS = 86_400_000


class HoldState(StrEnum):
    HELD = "held"
    CAPTURED = "captured"
    RELEASED = "released"
    EXPIRED = "expired"


class HoldOutcome(StrEnum):
    """Stable codes of hold operations (refusals share authorisation's codes)."""

    HELD = "held"
    CAPTURED = "captured"
    RELEASED = "released"
    EXPIRED = "expired"
    DUPLICATE = "duplicate"
    ALREADY_RESOLVED = "already_resolved"
    EXCEEDS_HOLD = "exceeds_hold"
    NOT_FOUND = "not_found"
    NOT_DUE = "not_due"
    TOMBSTONED = "tombstoned"
    INSUFFICIENT_CREDITS = "insufficient_credits"
    DAILY_CAP_REACHED = "daily_cap_reached"
    RATE_LIMITED = "rate_limited"
    PREMIUM_PAUSED = "premium_paused"
    WALLET_FROZEN = "wallet_frozen"
    WALLET_NOT_LOADED = "wallet_not_loaded"


@dataclass(frozen=True, slots=True)
class HoldRequest:
    """Reserve ``credits`` (an estimate, >= 1) for ``ttl_ms`` under the caller's ``hold_id``.

    The hold goes through authorisation's gates (status, premium pause, rate limits, daily
    cap: an AI request counts when its hold is taken). AI work is premium by default.
    """

    hold_id: str
    wallet_id: str
    member_id: str
    credits: int
    ttl_ms: int
    now_ms: int
    tier: Tier = Tier.PREMIUM
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        require_id(self.hold_id, field="hold_id")
        require_wallet_id(self.wallet_id)
        require_id(self.member_id, field="member_id")
        require_int(self.credits, field="credits", minimum=1, maximum=MAX_CREDITS)
        require_int(self.ttl_ms, field="ttl_ms", minimum=1, maximum=MAX_HOLD_TTL_MS)
        require_now_ms(self.now_ms)
        require_tier(self.tier)

    @property
    def expires_at_ms(self) -> int:
        return self.now_ms + self.ttl_ms


@dataclass(frozen=True, slots=True)
class HoldResult:
    """A hold as left by one operation. ``state`` is None when no record exists.

    ``credits`` is the amount held; once resolved, ``captured`` went to settlement and
    ``released`` back to available (``captured + released == credits``).
    """

    outcome: HoldOutcome
    wallet_id: str
    hold_id: str
    state: HoldState | None
    credits: int
    captured: int
    released: int
    expires_at_ms: int
    available_after: int
    reserved_after: int
    status_after: WalletStatus
    retry_after_ms: int = 0
    paused_now: bool = False

    @property
    def settlement_event_id(self) -> str | None:
        """The usage event id to produce for a captured hold (its in-flight entry)."""
        return self.hold_id if self.state is HoldState.CAPTURED else None


def hold_result_from_reply(wallet_id: str, hold_id: str, reply: Sequence[object]) -> HoldResult:
    """Shape the reply shared by the hold scripts.

    The scripts answer ``exists`` when the hold already has a record; that becomes
    ``ALREADY_RESOLVED`` here, and the operation refines it with :func:`classify_existing`.
    """
    state, outcome = text(reply[1]), text(reply[0])
    return HoldResult(
        outcome=HoldOutcome.ALREADY_RESOLVED if outcome == "exists" else HoldOutcome(outcome),
        wallet_id=wallet_id,
        hold_id=hold_id,
        state=HoldState(state) if state else None,
        credits=integer(reply[2]),
        captured=integer(reply[3]),
        released=integer(reply[4]),
        expires_at_ms=integer(reply[5]),
        available_after=integer(reply[6]),
        reserved_after=integer(reply[7]),
        retry_after_ms=integer(reply[8]),
        status_after=WalletStatus(text(reply[9])),
        paused_now=integer(reply[10]) == 1,
    )


def classify_existing(
    result: HoldResult, repeat_of: HoldState, captured: int | None = None
) -> HoldOutcome:
    """An operation found the hold's record: is it a replay of itself, or too late?

    A replay (same resolution and, for a capture, same amount) is a ``DUPLICATE`` carrying the
    original result; anything else finds the hold ``ALREADY_RESOLVED``.
    """
    if result.state is not repeat_of:
        return HoldOutcome.ALREADY_RESOLVED
    if captured is not None and captured != result.captured:
        return HoldOutcome.ALREADY_RESOLVED
    return HoldOutcome.DUPLICATE
