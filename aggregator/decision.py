"""Authorisation requests and decisions: the stable outcome codes and their frozen types.

The decision itself is taken atomically by ``lua/authorize.lua``; this module validates what
goes in (typed errors, before any I/O) and shapes what comes out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from aggregator.policy import MAX_CREDITS, Limits, Tier, require_now_ms, require_tier
from aggregator.redis_keys import require_id, require_wallet_id
from aggregator.replies import integer, text
from domain.errors import IdempotencyConflict
from domain.money import require_int


class WalletStatus(StrEnum):
    ACTIVE = "active"
    PREMIUM_PAUSED = "premium_paused"
    FROZEN = "frozen"


def effective_status(account_status: WalletStatus, available: int) -> WalletStatus:
    """Frozen beats all; an empty wallet is premium-paused (SPEC §5) until credits return.

    ``account_status`` is the ledger's / operator's; exhaustion is derived from the balance,
    never stored, so it cannot disagree with it. Same rule as ``effective_status`` in lib.lua.
    """
    if account_status is WalletStatus.FROZEN:
        return WalletStatus.FROZEN
    if account_status is WalletStatus.PREMIUM_PAUSED or available <= 0:
        return WalletStatus.PREMIUM_PAUSED
    return WalletStatus.ACTIVE


class Outcome(StrEnum):
    """Stable codes of an authorisation; the API and usage.rejected carry them verbatim."""

    AUTHORIZED = "authorized"
    DUPLICATE = "duplicate"
    INSUFFICIENT_CREDITS = "insufficient_credits"
    DAILY_CAP_REACHED = "daily_cap_reached"
    RATE_LIMITED = "rate_limited"
    PREMIUM_PAUSED = "premium_paused"
    WALLET_FROZEN = "wallet_frozen"
    WALLET_NOT_LOADED = "wallet_not_loaded"


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """One priced operation to authorise; validated on construction (nothing is sent yet).

    ``event_id`` is the producer's idempotency key, reused on every retry. ``credits`` may be
    0 for a free operation. ``now_ms`` is the caller's clock (rate limits).
    """

    event_id: str
    wallet_id: str
    member_id: str
    credits: int
    tier: Tier
    now_ms: int
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        require_id(self.event_id, field="event_id")
        require_wallet_id(self.wallet_id)
        require_id(self.member_id, field="member_id")
        require_int(self.credits, field="credits", minimum=0, maximum=MAX_CREDITS)
        require_tier(self.tier)
        require_now_ms(self.now_ms)


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to an :class:`AuthRequest`.

    For ``DUPLICATE`` the fields are the original decision's (``original_outcome`` says what it
    was) and nothing was changed by this call. ``retry_after_ms`` is set for ``RATE_LIMITED``.
    ``paused_now`` is true on the one authorisation that exhausted the wallet, so the caller
    emits exactly one premium-paused wallet event.
    """

    outcome: Outcome
    event_id: str
    wallet_id: str
    credits: int
    available_after: int
    reserved_after: int
    status_after: WalletStatus
    retry_after_ms: int = 0
    original_outcome: Outcome | None = None
    paused_now: bool = False

    def __post_init__(self) -> None:
        assert self.available_after >= 0, "the mirror can never go negative"
        assert self.reserved_after >= 0, "reservations can never go negative"
        assert (self.outcome is Outcome.DUPLICATE) == (self.original_outcome is not None)

    @property
    def final_outcome(self) -> Outcome:
        """The outcome the event has, whether decided now or by an earlier delivery."""
        return self.original_outcome or self.outcome

    @property
    def authorized(self) -> bool:
        """True when the event holds a reservation (now or from its first delivery)."""
        return self.final_outcome is Outcome.AUTHORIZED


def decision_from_reply(request: AuthRequest, reply: Sequence[object]) -> Decision:
    """Shape authorize.lua's reply; a duplicate of a different request is a conflict.

    Raises :class:`IdempotencyConflict` when the event id was first used with another amount
    or member: the producer reused an id for a different operation.
    """
    outcome, original, credits, member = (text(v) for v in reply[:4])
    decision = Decision(
        outcome=Outcome(outcome),
        event_id=request.event_id,
        wallet_id=request.wallet_id,
        credits=integer(credits),
        available_after=integer(reply[4]),
        reserved_after=integer(reply[5]),
        retry_after_ms=integer(reply[6]),
        status_after=WalletStatus(text(reply[7])),
        original_outcome=Outcome(original) if original else None,
        paused_now=integer(reply[8]) == 1,
    )
    same_member = member in ("", request.member_id)
    if decision.outcome is Outcome.DUPLICATE and (
        decision.credits != request.credits or not same_member
    ):
        raise IdempotencyConflict(
            f"event {request.event_id} was already used for a different operation",
            event_id=request.event_id,
            original_credits=decision.credits,
            credits=request.credits,
        )
    return decision
