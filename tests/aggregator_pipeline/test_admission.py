"""Admission and verdicts: pure, no services."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from aggregator.admission import (
    VerdictCode,
    admit,
    gcra_rate,
    mirror_event_id,
    now_ms,
    verdict_of_capture,
    verdict_of_decision,
)
from aggregator.decision import Decision, Outcome, WalletStatus
from aggregator.hold_types import HoldOutcome, HoldResult, HoldState
from aggregator.policy import CapClass, Limits, Tier
from domain.caps import CapsConfig, RateLimit, load_caps
from domain.errors import UnknownFeature
from domain.pricing import Category, PricingCatalogue, load_catalogue
from tests.aggregator_pipeline.conftest import usage

NOW = datetime(2026, 3, 14, 20, 0, tzinfo=UTC)  # 01:30 on the 15th in Asia/Kolkata


@pytest.fixture(scope="module")
def catalogue() -> PricingCatalogue:
    return load_catalogue()


@pytest.fixture(scope="module")
def caps() -> CapsConfig:
    return load_caps()


def test_price_tier_cap_and_limits_come_from_config(
    catalogue: PricingCatalogue, caps: CapsConfig
) -> None:
    request = admit(usage("e1", "w1", "ai.moderation", quantity=3), catalogue, caps, NOW)
    assert (request.credits, request.tier, request.now_ms) == (15, Tier.PREMIUM, now_ms(NOW))
    cap = request.limits.daily_cap
    assert cap is not None
    assert (cap.cap_class, cap.limit, cap.units) == (CapClass.AI, 200, 3)
    assert cap.day_key == "2026-03-15"  # the IST calendar day, not UTC's
    wallet, member = request.limits.wallet_rate, request.limits.member_rate
    assert wallet is not None
    assert member is not None
    assert (wallet.scope, wallet.limit, wallet.window_ms) == ("ai", 5, 5_000)  # 5/s, 60/min
    assert (member.scope, member.limit, member.window_ms) == ("ai", 2, 6_000)  # 2/s, 20/min


def test_core_operation_without_a_cap(catalogue: PricingCatalogue, caps: CapsConfig) -> None:
    request = admit(usage("e1", "w1", "api.basic_request"), catalogue, caps, NOW)
    assert (request.credits, request.tier, request.limits.daily_cap) == (1, Tier.CORE, None)


def test_one_gcra_gives_the_burst_of_per_second_and_the_rate_of_per_minute() -> None:
    rate = gcra_rate(RateLimit(per_second=100, per_minute=3000), Category.API)
    assert (rate.limit, rate.window_ms) == (100, 2_000)  # 100 at once, then 50/s = 3000/min


def test_a_token_priced_hold_capture_prices_tokens(
    catalogue: PricingCatalogue, caps: CapsConfig
) -> None:
    event = usage("e1", "w1", "ai.summary", quantity=3_001, hold_id="h1")
    capture = admit(event, catalogue, caps, NOW)
    assert capture.credits == 16  # 5 per 1k tokens, rounded up
    assert capture.limits == Limits()  # applied when the hold was reserved
    huge = usage("e3", "w1", "ai.summary", quantity=50_000_000, hold_id="h2")
    assert admit(huge, catalogue, caps, NOW).credits == 250_000  # tokens are not cap units
    assert mirror_event_id(event) == "h1"
    flat = usage("e2", "w1", "ai.summary", quantity=2)
    assert admit(flat, catalogue, caps, NOW).credits == 30
    assert mirror_event_id(flat) == "e2"


def test_unknown_feature_is_a_typed_error(catalogue: PricingCatalogue, caps: CapsConfig) -> None:
    with pytest.raises(UnknownFeature):
        admit(usage("e1", "w1", "api.teleport"), catalogue, caps, NOW)


def _decision(outcome: Outcome, available: int, credits: int = 20, **kw: object) -> Decision:
    status = WalletStatus.ACTIVE if available else WalletStatus.PREMIUM_PAUSED
    fields: dict[str, object] = {
        "outcome": outcome, "event_id": "e1", "wallet_id": "w1", "credits": credits,
        "available_after": available, "reserved_after": credits, "status_after": status,
    }  # fmt: skip
    fields.update(kw)
    return Decision(**fields)  # type: ignore[arg-type]


def test_low_balance_crossing_is_true_for_exactly_the_crossing_authorisation() -> None:
    event = usage("e1", "w1")
    crossed = [
        verdict_of_decision(event, _decision(Outcome.AUTHORIZED, after)).crossed_below(200)
        for after in (230, 210, 190, 170)
    ]
    assert crossed == [False, False, True, False]
    assert (
        verdict_of_decision(event, _decision(Outcome.AUTHORIZED, 200)).crossed_below(200) is False
    )
    assert verdict_of_decision(event, _decision(Outcome.AUTHORIZED, 180)).crossed_below(200)


def test_a_duplicate_replays_the_original_outcome() -> None:
    event = usage("e1", "w1")
    replay = verdict_of_decision(
        event,
        _decision(Outcome.DUPLICATE, 0, original_outcome=Outcome.AUTHORIZED),
    )
    assert (replay.code, replay.replayed, replay.new_charge) == (VerdictCode.AUTHORIZED, True, 0)
    assert replay.paused_now  # it emptied the wallet: announce the pause again, same id
    refusal = verdict_of_decision(
        event,
        _decision(Outcome.DUPLICATE, 5, original_outcome=Outcome.INSUFFICIENT_CREDITS),
    )
    assert (refusal.code, refusal.replayed) == (VerdictCode.INSUFFICIENT_CREDITS, True)
    assert "costs 20" in refusal.message


def test_rate_limited_carries_retry_after() -> None:
    verdict = verdict_of_decision(
        usage("e1", "w1"), _decision(Outcome.RATE_LIMITED, 50, retry_after_ms=1234)
    )
    assert (verdict.code, verdict.retry_after_ms) == (VerdictCode.RATE_LIMITED, 1234)
    assert "retry after 1234 ms" in verdict.message


def _hold(outcome: HoldOutcome, state: HoldState | None, captured: int) -> HoldResult:
    return HoldResult(
        outcome, "w1", "h1", state, credits=20, captured=captured, released=20 - captured,
        expires_at_ms=0, available_after=80, reserved_after=captured,
        status_after=WalletStatus.ACTIVE,
    )  # fmt: skip


def test_capture_verdicts() -> None:
    event = usage("e1", "w1", "ai.summary", quantity=9_000, hold_id="h1")
    fresh = verdict_of_capture(event, 45, _hold(HoldOutcome.CAPTURED, HoldState.CAPTURED, 20))
    assert (fresh.code, fresh.credits, fresh.replayed) == (VerdictCode.HOLD_CAPTURED, 20, False)
    # Redelivered: capturing 45 again finds it captured for min(45, 20) = 20: a replay.
    again = verdict_of_capture(
        event, 45, _hold(HoldOutcome.ALREADY_RESOLVED, HoldState.CAPTURED, 20)
    )
    assert (again.code, again.credits, again.replayed) == (VerdictCode.HOLD_CAPTURED, 20, True)
    other = verdict_of_capture(
        event, 15, _hold(HoldOutcome.ALREADY_RESOLVED, HoldState.CAPTURED, 12)
    )
    assert other.code is VerdictCode.HOLD_ALREADY_RESOLVED
    gone = verdict_of_capture(event, 15, _hold(HoldOutcome.NOT_FOUND, None, 0))
    assert gone.code is VerdictCode.HOLD_NOT_FOUND
    late = verdict_of_capture(event, 15, _hold(HoldOutcome.EXPIRED, HoldState.EXPIRED, 0))
    assert late.code is VerdictCode.HOLD_EXPIRED
