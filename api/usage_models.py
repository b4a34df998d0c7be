"""Request and response bodies of the spending routes (consume, usage events, holds)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from aggregator.admission import VerdictCode
from domain.errors import (
    CapExceeded,
    CreditsError,
    HoldAlreadyResolved,
    HoldExpired,
    HoldNotFound,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidInput,
    PremiumPaused,
    RateLimited,
    UnknownFeature,
    UnknownWallet,
    WalletFrozen,
)

Id = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@-]+$")]
Feature = Annotated[str, Field(min_length=1, max_length=64, examples=["ai.summary"])]
Metadata = dict[str, str | int | float | bool | None]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConsumeRequest(_Body):
    feature: Feature
    quantity: Annotated[int, Field(ge=1, le=1_000_000)] = 1
    member_id: Id | None = Field(
        default=None, description="Who spends; defaults to the key's member"
    )
    event_id: Id | None = Field(
        default=None, description="Defaults to an id derived from the Idempotency-Key"
    )
    metadata: Metadata = Field(default_factory=dict)


class ConsumeOut(BaseModel):
    wallet_id: str
    event_id: str
    outcome: str = Field(description="authorized or hold_captured")
    credits: int = Field(description="Credits charged")
    available_after: int
    replayed: bool = Field(description="This event id was decided before; this is that decision")


class UsageEventIn(_Body):
    event_id: Id
    feature: Feature
    quantity: Annotated[int, Field(ge=1, le=1_000_000)] = 1
    member_id: Id | None = None
    occurred_at: datetime | None = Field(default=None, description="RFC 3339; defaults to now")
    metadata: Metadata = Field(default_factory=dict)


class UsageBatch(_Body):
    events: Annotated[list[UsageEventIn], Field(min_length=1, max_length=1000)]


class UsageAccepted(BaseModel):
    accepted: int
    event_ids: list[str]
    topic: str


class HoldRequestIn(_Body):
    feature: Feature
    estimated_quantity: Annotated[int, Field(ge=1, le=10_000_000)] = Field(
        description="Estimated units (tokens for token-priced AI features)"
    )
    ttl_seconds: Annotated[int, Field(ge=5, le=86_400)] = 900
    member_id: Id | None = None


class HoldCaptureIn(_Body):
    quantity: Annotated[int, Field(ge=0, le=10_000_000)] = Field(
        description="Actual units used (0 charges nothing; more than held is refused)"
    )
    metadata: Metadata = Field(default_factory=dict)


class HoldOut(BaseModel):
    hold_id: str
    state: str | None
    credits: int = Field(description="Credits held")
    captured: int
    released: int
    expires_at: datetime | None
    available_after: int


REFUSALS: dict[VerdictCode, type[CreditsError]] = {
    VerdictCode.INSUFFICIENT_CREDITS: InsufficientCredits,
    VerdictCode.DAILY_CAP_REACHED: CapExceeded,
    VerdictCode.RATE_LIMITED: RateLimited,
    VerdictCode.PREMIUM_PAUSED: PremiumPaused,
    VerdictCode.WALLET_FROZEN: WalletFrozen,
    VerdictCode.UNKNOWN_FEATURE: UnknownFeature,
    VerdictCode.UNKNOWN_WALLET: UnknownWallet,
    VerdictCode.INVALID_REQUEST: InvalidInput,
    VerdictCode.IDEMPOTENCY_CONFLICT: IdempotencyConflict,
    VerdictCode.HOLD_NOT_FOUND: HoldNotFound,
    VerdictCode.HOLD_EXPIRED: HoldExpired,
    VerdictCode.HOLD_ALREADY_RESOLVED: HoldAlreadyResolved,
}

REFUSAL_MESSAGES: dict[VerdictCode, str] = {
    VerdictCode.INSUFFICIENT_CREDITS: "not enough credits: add funds to continue",
    VerdictCode.DAILY_CAP_REACHED: "the daily cap for this kind of operation is reached",
    VerdictCode.RATE_LIMITED: "rate limit reached; retry after the advertised delay",
    VerdictCode.PREMIUM_PAUSED: "premium features are paused for this wallet",
    VerdictCode.WALLET_FROZEN: "this wallet is frozen",
}


def refusal_error(
    code: VerdictCode, *, message: str, credits: int, available: int, retry_after_ms: int
) -> CreditsError:
    details: dict[str, object] = {"reason": code.value}
    if code is VerdictCode.PREMIUM_PAUSED and available < credits:
        # Paused because the credits ran out: to the caller that is simply "add funds".
        code = VerdictCode.INSUFFICIENT_CREDITS
    cls = REFUSALS.get(code, InvalidInput)
    if code is VerdictCode.INSUFFICIENT_CREDITS:
        details.update(required_credits=credits, available_credits=available)
    if retry_after_ms > 0:
        details["retry_after_ms"] = retry_after_ms
    return cls(message or REFUSAL_MESSAGES.get(code, code.value), **details)
