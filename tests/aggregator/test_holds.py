"""Two-phase holds: reserve, capture (never more than held), release, exactly-once resolution."""

from __future__ import annotations

import pytest

from aggregator.authorize import authorize, release, settle
from aggregator.decision import Outcome, WalletStatus
from aggregator.hold_types import HoldOutcome, HoldRequest, HoldState
from aggregator.holds import capture_hold, release_hold, reserve_hold
from aggregator.policy import CapClass, DailyCap, Limits, Tier
from aggregator.wallet_store import WalletStore
from domain.errors import IdempotencyConflict, InvalidAmount
from tests.aggregator.support import NOW_MS, audit, load, request

pytestmark = pytest.mark.redis
TTL_MS = 60_000


def hold(hold_id: str, credits: int, **kwargs: object) -> HoldRequest:
    fields: dict[str, object] = {"member_id": "m1", "ttl_ms": TTL_MS, "now_ms": NOW_MS}
    return HoldRequest(hold_id, "w1", credits=credits, **{**fields, **kwargs})  # type: ignore[arg-type]


async def test_capture_charges_the_actual_cost_and_releases_the_rest(store: WalletStore) -> None:
    await load(store, 100)
    held = await reserve_hold(store, hold("h1", 40))
    assert held.outcome is HoldOutcome.HELD
    assert held.state is HoldState.HELD
    assert (held.available_after, held.reserved_after) == (60, 40)
    assert held.expires_at_ms == NOW_MS + TTL_MS
    assert (await audit(store)).holds == {"h1": 40}

    captured = await capture_hold(store, "w1", "h1", 25, NOW_MS + 1_000)
    assert captured.outcome is HoldOutcome.CAPTURED
    assert (captured.captured, captured.released) == (25, 15)
    assert (captured.available_after, captured.reserved_after) == (75, 25)
    assert captured.settlement_event_id == "h1"
    state = await audit(store)
    assert state.holds == {}
    assert state.in_flight == {"h1": 25}

    # The hand-off: settlement posts event "h1" and settles it like any authorised event.
    settled = await settle(store, "w1", ["h1"], ledger_version=2)
    assert settled.settled_event_ids == ("h1",)
    assert settled.settled_credits == 25
    assert (await audit(store)).mirror.reserved == 0
    assert (await authorize(store, request("h1", 25))).outcome is Outcome.DUPLICATE


async def test_over_capture_is_refused_and_changes_nothing(store: WalletStore) -> None:
    await load(store, 100)
    await reserve_hold(store, hold("h1", 40))
    over = await capture_hold(store, "w1", "h1", 41, NOW_MS)
    assert over.outcome is HoldOutcome.EXCEEDS_HOLD
    assert over.state is HoldState.HELD
    state = await audit(store)
    assert state.holds == {"h1": 40}
    assert state.mirror.available == 60
    assert (await capture_hold(store, "w1", "h1", 40, NOW_MS)).outcome is HoldOutcome.CAPTURED
    assert (await audit(store)).mirror.available == 60
    with pytest.raises(InvalidAmount):
        await capture_hold(store, "w1", "h1", -1, NOW_MS)


async def test_reserve_is_idempotent_on_the_hold_id(store: WalletStore) -> None:
    await load(store, 100)
    await reserve_hold(store, hold("h1", 40))
    again = await reserve_hold(store, hold("h1", 40, now_ms=NOW_MS + 5))
    assert again.outcome is HoldOutcome.DUPLICATE
    assert again.expires_at_ms == NOW_MS + TTL_MS
    with pytest.raises(IdempotencyConflict):
        await reserve_hold(store, hold("h1", 41))
    assert (await audit(store)).mirror.available == 60


async def test_each_hold_resolves_exactly_once(store: WalletStore) -> None:
    await load(store, 100)
    await reserve_hold(store, hold("h1", 40))
    await reserve_hold(store, hold("h2", 30))

    released = await release_hold(store, "w1", "h1", NOW_MS)
    assert released.outcome is HoldOutcome.RELEASED
    assert released.released == 40
    assert (await release_hold(store, "w1", "h1", NOW_MS)).outcome is HoldOutcome.DUPLICATE
    late_capture = await capture_hold(store, "w1", "h1", 10, NOW_MS)
    assert late_capture.outcome is HoldOutcome.ALREADY_RESOLVED
    assert late_capture.state is HoldState.RELEASED
    # A resolved hold id is never held again, whatever the retry.
    assert (await reserve_hold(store, hold("h1", 40))).outcome is HoldOutcome.ALREADY_RESOLVED

    await capture_hold(store, "w1", "h2", 10, NOW_MS)
    assert (await capture_hold(store, "w1", "h2", 10, NOW_MS)).outcome is HoldOutcome.DUPLICATE
    assert (await capture_hold(store, "w1", "h2", 11, NOW_MS)).outcome is (
        HoldOutcome.ALREADY_RESOLVED
    )
    assert (await release_hold(store, "w1", "h2", NOW_MS)).outcome is HoldOutcome.ALREADY_RESOLVED
    state = await audit(store)
    assert (state.mirror.available, state.mirror.reserved) == (90, 10)
    assert (await release_hold(store, "w1", "nope", NOW_MS)).outcome is HoldOutcome.NOT_FOUND


async def test_a_due_hold_expires_instead_of_being_captured(store: WalletStore) -> None:
    await load(store, 100)
    await reserve_hold(store, hold("h1", 40))
    at_expiry = NOW_MS + TTL_MS
    expired = await capture_hold(store, "w1", "h1", 10, at_expiry)
    assert expired.outcome is HoldOutcome.EXPIRED
    assert (expired.captured, expired.released) == (0, 40)
    assert (await release_hold(store, "w1", "h1", at_expiry)).outcome is (
        HoldOutcome.ALREADY_RESOLVED
    )
    state = await audit(store)
    assert (state.mirror.available, state.mirror.reserved) == (100, 0)


async def test_a_failed_produce_after_capture_is_released_like_any_event(
    store: WalletStore,
) -> None:
    await load(store, 100)
    await reserve_hold(store, hold("h1", 40))
    await capture_hold(store, "w1", "h1", 25, NOW_MS)
    assert (await release(store, "w1", "h1")).credits == 25
    state = await audit(store)
    assert (state.mirror.available, state.mirror.reserved) == (100, 0)


async def test_reserve_goes_through_authorisation_gates(store: WalletStore) -> None:
    await load(store, 50)
    refused = await reserve_hold(store, hold("h1", 60))
    assert refused.outcome is HoldOutcome.INSUFFICIENT_CREDITS
    assert refused.state is None
    exhausting = await reserve_hold(store, hold("h2", 50))
    assert exhausting.paused_now
    assert exhausting.status_after is WalletStatus.PREMIUM_PAUSED
    assert (await reserve_hold(store, hold("h3", 1))).outcome is HoldOutcome.PREMIUM_PAUSED
    await release_hold(store, "w1", "h2", NOW_MS)
    # A refused reservation wrote nothing: the same hold id may be retried.
    assert (await reserve_hold(store, hold("h1", 50))).outcome is HoldOutcome.HELD
    cap = Limits(daily_cap=DailyCap(CapClass.AI, limit=0, day_key="2025-04-01"))
    capped = await reserve_hold(store, hold("h4", 1, tier=Tier.CORE, limits=cap))
    assert capped.outcome is HoldOutcome.DAILY_CAP_REACHED


async def test_frozen_and_unloaded_wallets_refuse_holds(store: WalletStore) -> None:
    assert (await reserve_hold(store, hold("h1", 1))).outcome is HoldOutcome.WALLET_NOT_LOADED
    await load(store, 50, status=WalletStatus.FROZEN)
    assert (await reserve_hold(store, hold("h1", 1))).outcome is HoldOutcome.WALLET_FROZEN


async def test_a_capture_cannot_reuse_an_existing_event_id(store: WalletStore) -> None:
    await load(store, 100)
    await authorize(store, request("shared-id", 5))
    await reserve_hold(store, hold("shared-id", 10))
    with pytest.raises(IdempotencyConflict):
        await capture_hold(store, "w1", "shared-id", 5, NOW_MS)
    state = await audit(store)
    assert state.holds == {"shared-id": 10}
    assert state.in_flight == {"shared-id": 5}
