"""Admission of one usage event, and what the mirror's answer means for it (pure, no I/O).

Both authorisation paths, the SDK's ``CreditConsumer`` (flow 1) and the aggregator's stream
(flow 2), turn a :class:`~meter.schema.UsageEvent` into an :class:`AuthRequest` here, and turn
the mirror's answer into a :class:`Verdict` here, so the two paths cannot disagree on a price,
a cap, a limit or a refusal code.

Rules, from SPEC §4-§5:

* **Price**: ``catalogue.price(feature, quantity)``; for an event that captures a hold
  (``hold_id`` set) of a token-priced feature, ``quantity`` counts tokens and the price is
  ``catalogue.price_tokens`` (rounded up to a credit).
* **Tier** and **daily cap** from the operation; the cap counts ``quantity`` units on the
  caller's calendar day in the caps timezone (Asia/Kolkata), from ``now``. A hold capture
  carries no cap or limit: they applied when the hold was reserved.
* **Rate limits**, wallet and member, per pricing category. caps.toml gives a per-second and a
  per-minute limit and the mirror runs one GCRA per scope, so one GCRA enforces both: a burst of
  ``per_second`` and a sustained ``per_minute`` (window = per_second * 60 s / per_minute).
* ``now`` is the processing clock of whoever asks, never the event's ``occurred_at``: the SDK
  and the stream share each wallet's rate-limit state, so they must share a time base. (A
  backlog replayed after an outage is therefore admitted at the wallet's rate limit; the rest
  goes to ``usage.rejected`` as ``rate_limited``, kept with its reason, not lost.)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from aggregator.decision import AuthRequest, Decision, Outcome, WalletStatus
from aggregator.hold_types import HoldOutcome, HoldResult, HoldState
from aggregator.policy import CapClass, DailyCap, Limits, RateLimit, Tier
from domain.caps import CapsConfig, RateScope, WalletCapOverrides
from domain.caps import RateLimit as ConfiguredRate
from domain.pricing import Category, Operation, PricingCatalogue
from meter.schema import UsageEvent

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MINUTE_MS = 60_000


def now_ms(instant: datetime) -> int:
    """Milliseconds since the epoch of an aware instant (integer arithmetic, no float)."""
    return (instant - _EPOCH) // timedelta(milliseconds=1)


def admit(
    event: UsageEvent,
    catalogue: PricingCatalogue,
    caps: CapsConfig,
    now: datetime,
    *,
    overrides: WalletCapOverrides | None = None,
) -> AuthRequest:
    """The authorisation ``event`` asks for at ``now``. Pure.

    Raises :class:`~domain.errors.UnknownFeature` when the feature is not in this pricing
    version, and :class:`~domain.errors.InvalidInput` when the event cannot be admitted as
    sent (an amount or cap unit count out of range). Both are final: retrying cannot help.
    ``overrides`` are the wallet's enterprise cap overrides, when the caller has them.
    """
    operation = catalogue.operation(event.feature)
    # A capture's cap and rate limits were applied when its hold was reserved; capturing
    # checks neither, and its quantity counts tokens, not requests.
    capture = event.hold_id is not None
    return AuthRequest(
        event_id=event.event_id,
        wallet_id=event.wallet_id,
        member_id=event.member_id,
        credits=event_credits(event, catalogue),
        tier=Tier(operation.tier.value),
        now_ms=now_ms(now),
        limits=Limits() if capture else _limits(event, operation, caps, now, overrides),
    )


def event_credits(event: UsageEvent, catalogue: PricingCatalogue) -> int:
    """Credits ``event`` costs: tokens for a token-priced hold capture, else flat per unit."""
    operation = catalogue.operation(event.feature)
    if event.hold_id is not None and operation.token_priced:
        return catalogue.price_tokens(event.feature, event.quantity)
    return catalogue.price(event.feature, event.quantity)


def mirror_event_id(event: UsageEvent) -> str:
    """The id the event has in the Redis mirror and in the ledger (``source_id``).

    A hold capture becomes the in-flight entry ``hold_id`` (``capture_hold``'s hand-off);
    every other event is its own ``event_id``. Settlement posts and settles under this id.
    """
    return event.hold_id if event.hold_id is not None else event.event_id


@functools.cache  # a handful of (limit, category) pairs; asked for every event
def gcra_rate(limit: ConfiguredRate, category: Category) -> RateLimit:
    """One GCRA for a per-second and per-minute pair: burst ``per_second``, rate ``per_minute``."""
    window_ms = math.ceil(limit.per_second * _MINUTE_MS / limit.per_minute)
    return RateLimit(limit=limit.per_second, window_ms=window_ms, scope=category.value)


def _limits(
    event: UsageEvent,
    operation: Operation,
    caps: CapsConfig,
    now: datetime,
    overrides: WalletCapOverrides | None,
) -> Limits:
    category = operation.category
    daily_cap = None
    if operation.cap_class is not None:
        daily_cap = DailyCap(
            cap_class=CapClass(operation.cap_class.value),
            limit=caps.caps_for(overrides).limit_for(operation.cap_class),
            day_key=caps.day_key(now),
            units=event.quantity,
        )
    return Limits(
        daily_cap=daily_cap,
        wallet_rate=gcra_rate(caps.rate_limit(RateScope.WALLET, category), category),
        member_rate=gcra_rate(caps.rate_limit(RateScope.MEMBER, category), category),
    )


# --- verdicts ----------------------------------------------------------------------------------


class VerdictCode(StrEnum):
    """What an event came to. Refusal codes are the ``reason`` on ``usage.rejected``."""

    AUTHORIZED = "authorized"
    HOLD_CAPTURED = "hold_captured"
    INSUFFICIENT_CREDITS = "insufficient_credits"
    DAILY_CAP_REACHED = "daily_cap_reached"
    RATE_LIMITED = "rate_limited"
    PREMIUM_PAUSED = "premium_paused"
    WALLET_FROZEN = "wallet_frozen"
    UNKNOWN_FEATURE = "unknown_feature"
    UNKNOWN_WALLET = "unknown_wallet"
    INVALID_REQUEST = "invalid_request"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    HOLD_NOT_FOUND = "hold_not_found"
    HOLD_EXPIRED = "hold_expired"
    HOLD_ALREADY_RESOLVED = "hold_already_resolved"


_AUTHORIZED = frozenset({VerdictCode.AUTHORIZED, VerdictCode.HOLD_CAPTURED})


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one event, the same whichever path asked and however often.

    ``replayed``: the mirror had decided this event before (a redelivery or a client retry)
    and this is that original decision; nothing changed now. ``credits`` is what the event was
    charged (authorised) or would have cost (refused). ``paused_now``: this authorisation
    exhausted the wallet (announce the premium pause).
    """

    event: UsageEvent
    code: VerdictCode
    credits: int
    available_after: int
    message: str = ""
    retry_after_ms: int = 0
    replayed: bool = False
    paused_now: bool = False

    @property
    def authorized(self) -> bool:
        return self.code in _AUTHORIZED

    @property
    def new_charge(self) -> int:
        """Credits newly reserved by this delivery (0 for a refusal or a replay)."""
        return self.credits if self.authorized and not self.replayed else 0

    def crossed_below(self, threshold: int) -> bool:
        """This authorisation took available from >= ``threshold`` to below it.

        Exactly one authorisation per downward crossing satisfies this (the mirror serialises
        a wallet's decisions), and a replay answers the same as the original.
        """
        if self.code is not VerdictCode.AUTHORIZED or self.credits == 0:
            return False
        return self.available_after < threshold <= self.available_after + self.credits


def refused(event: UsageEvent, code: VerdictCode, message: str, credits: int = 0) -> Verdict:
    """A refusal decided before (or without) the mirror: nothing was reserved."""
    assert code not in _AUTHORIZED
    return Verdict(event, code, credits, available_after=0, message=message[:2048])


def verdict_of_decision(event: UsageEvent, decision: Decision) -> Verdict:
    """Shape an authorisation decision. ``WALLET_NOT_LOADED`` must be handled by the caller."""
    outcome = decision.final_outcome
    assert outcome is not Outcome.WALLET_NOT_LOADED, "load the wallet, then ask again"
    replayed = decision.outcome is Outcome.DUPLICATE
    code = VerdictCode(outcome.value)
    return Verdict(
        event=event,
        code=code,
        credits=decision.credits,
        available_after=decision.available_after,
        message=_refusal_message(code, decision),
        retry_after_ms=decision.retry_after_ms,
        replayed=replayed,
        paused_now=decision.paused_now or (replayed and _exhausted_by(decision)),
    )


def _exhausted_by(decision: Decision) -> bool:
    """A replayed authorisation that emptied the wallet (the mirror keeps no ``paused_now``).

    Same as the original ``paused_now`` unless the account was also paused for review.
    """
    return (
        decision.authorized
        and decision.credits > 0
        and decision.available_after == 0
        and decision.status_after is WalletStatus.PREMIUM_PAUSED
    )


def _refusal_message(code: VerdictCode, decision: Decision) -> str:
    messages = {
        VerdictCode.INSUFFICIENT_CREDITS: (
            f"wallet has {decision.available_after} credits available, "
            f"the event costs {decision.credits}"
        ),
        VerdictCode.DAILY_CAP_REACHED: "the wallet's daily cap for this operation is reached",
        VerdictCode.RATE_LIMITED: f"rate limited: retry after {decision.retry_after_ms} ms",
        VerdictCode.PREMIUM_PAUSED: "premium features are paused for this wallet",
        VerdictCode.WALLET_FROZEN: "the wallet is frozen",
    }
    return messages.get(code, "")


def verdict_of_capture(event: UsageEvent, priced: int, result: HoldResult) -> Verdict:
    """Shape a capture of ``event.hold_id`` for ``min(priced, held)`` credits.

    A capture found already captured for that same amount is a replay (the original capture
    was this event's); any other resolution refuses the event.
    """
    target = min(priced, result.credits)
    replay = result.outcome is HoldOutcome.DUPLICATE or (
        result.outcome is HoldOutcome.ALREADY_RESOLVED
        and result.state is HoldState.CAPTURED
        and result.captured == target
    )
    if result.outcome is HoldOutcome.CAPTURED or replay:
        return Verdict(
            event, VerdictCode.HOLD_CAPTURED, result.captured, result.available_after,
            replayed=replay,
        )  # fmt: skip
    code = {
        HoldOutcome.NOT_FOUND: VerdictCode.HOLD_NOT_FOUND,
        HoldOutcome.EXPIRED: VerdictCode.HOLD_EXPIRED,
    }.get(result.outcome, VerdictCode.HOLD_ALREADY_RESOLVED)
    state = result.state.value if result.state else "missing"
    return refused(event, code, f"hold {event.hold_id} is {state}", credits=priced)
