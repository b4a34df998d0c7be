"""Every authorisation outcome, idempotency, caps and rate limits, on a real Redis."""

from __future__ import annotations

import pytest

from aggregator.authorize import authorize
from aggregator.decision import AuthRequest, Outcome, WalletStatus
from aggregator.mirror import credit, set_status
from aggregator.policy import CapClass, DailyCap, Limits, RateLimit, Tier
from aggregator.wallet_store import WalletStore
from domain.errors import IdempotencyConflict, InvalidAmount, InvalidInput
from tests.aggregator.support import NOW_MS, audit, load, request

pytestmark = pytest.mark.redis


async def test_authorized_moves_available_to_reserved(store: WalletStore) -> None:
    await load(store, 100)
    decision = await authorize(store, request("e1", 30))
    assert decision.outcome is Outcome.AUTHORIZED
    assert decision.authorized
    assert (decision.available_after, decision.reserved_after) == (70, 30)
    assert decision.status_after is WalletStatus.ACTIVE
    state = await audit(store)
    assert state.in_flight == {"e1": 30}
    assert (state.mirror.available, state.mirror.reserved) == (70, 30)


async def test_duplicate_returns_the_original_decision_and_reserves_once(
    store: WalletStore,
) -> None:
    await load(store, 100)
    first = await authorize(store, request("e1", 30))
    await authorize(store, request("e2", 10))
    again = await authorize(store, request("e1", 30))
    assert again.outcome is Outcome.DUPLICATE
    assert again.original_outcome is Outcome.AUTHORIZED
    assert again.authorized
    assert (again.available_after, again.reserved_after) == (
        first.available_after,
        first.reserved_after,
    )
    state = await audit(store)
    assert (state.mirror.available, state.mirror.reserved) == (60, 40)


async def test_duplicate_with_another_amount_or_member_is_a_conflict(store: WalletStore) -> None:
    await load(store, 100)
    await authorize(store, request("e1", 30))
    with pytest.raises(IdempotencyConflict):
        await authorize(store, request("e1", 31))
    with pytest.raises(IdempotencyConflict):
        await authorize(store, request("e1", 30, member_id="m2"))
    assert (await audit(store)).mirror.available == 70


async def test_insufficient_credits_changes_nothing_and_is_remembered(store: WalletStore) -> None:
    await load(store, 20)
    refused = await authorize(store, request("e1", 30))
    assert refused.outcome is Outcome.INSUFFICIENT_CREDITS
    assert not refused.authorized
    assert (refused.available_after, refused.reserved_after) == (20, 0)
    await credit(store, "w1", 100, "purchase-1")
    # A redelivery of the same event keeps its final answer; a new attempt uses a new id.
    again = await authorize(store, request("e1", 30))
    assert again.outcome is Outcome.DUPLICATE
    assert again.original_outcome is Outcome.INSUFFICIENT_CREDITS
    assert (await authorize(store, request("e2", 30))).outcome is Outcome.AUTHORIZED
    assert (await audit(store)).mirror.available == 90


async def test_wallet_not_loaded_is_transient(store: WalletStore) -> None:
    refused = await authorize(store, request("e1", 5))
    assert refused.outcome is Outcome.WALLET_NOT_LOADED
    assert [key async for key in store.client.scan_iter(store.keys.all_keys_pattern())] == []
    await load(store, 10)
    assert (await authorize(store, request("e1", 5))).outcome is Outcome.AUTHORIZED


async def test_frozen_wallet_refuses_everything(store: WalletStore) -> None:
    await load(store, 100, status=WalletStatus.FROZEN)
    for event_id, credits, tier in (
        ("e1", 5, Tier.CORE),
        ("e2", 0, Tier.CORE),
        ("e3", 5, Tier.PREMIUM),
    ):
        decision = await authorize(store, request(event_id, credits, tier=tier))
        assert decision.outcome is Outcome.WALLET_FROZEN
        assert decision.status_after is WalletStatus.FROZEN
    assert await set_status(store, "w1", WalletStatus.ACTIVE) is WalletStatus.ACTIVE
    assert (await authorize(store, request("e4", 5))).outcome is Outcome.AUTHORIZED
    assert (await audit(store)).mirror.available == 95


async def test_exhaustion_pauses_premium_and_core_keeps_working(store: WalletStore) -> None:
    await load(store, 12)
    exhausting = await authorize(store, request("e1", 12, tier=Tier.PREMIUM))
    assert exhausting.outcome is Outcome.AUTHORIZED
    assert exhausting.paused_now
    assert exhausting.status_after is WalletStatus.PREMIUM_PAUSED
    paused = await authorize(store, request("e2", 5, tier=Tier.PREMIUM))
    assert paused.outcome is Outcome.PREMIUM_PAUSED
    assert (await authorize(store, request("e3", 1))).outcome is Outcome.INSUFFICIENT_CREDITS
    free = await authorize(store, request("e4", 0, tier=Tier.PREMIUM))
    assert free.outcome is Outcome.AUTHORIZED
    assert not free.paused_now
    # Credits coming back lift an exhaustion pause by themselves.
    assert (await credit(store, "w1", 10, "purchase-1")).available_after == 10
    resumed = await authorize(store, request("e5", 5, tier=Tier.PREMIUM))
    assert resumed.outcome is Outcome.AUTHORIZED
    assert resumed.status_after is WalletStatus.ACTIVE


async def test_review_pause_refuses_premium_but_allows_affordable_core(store: WalletStore) -> None:
    await load(store, 50, status=WalletStatus.PREMIUM_PAUSED)
    assert (await authorize(store, request("e1", 5, tier=Tier.PREMIUM))).outcome is (
        Outcome.PREMIUM_PAUSED
    )
    core = await authorize(store, request("e2", 5))
    assert core.outcome is Outcome.AUTHORIZED
    assert core.status_after is WalletStatus.PREMIUM_PAUSED
    assert not core.paused_now
    assert (await authorize(store, request("e3", 60))).outcome is Outcome.INSUFFICIENT_CREDITS


async def test_free_operations_work_on_an_empty_wallet(store: WalletStore) -> None:
    await load(store, 0)
    for n, tier in enumerate((Tier.CORE, Tier.PREMIUM)):
        decision = await authorize(store, request(f"free-{n}", 0, tier=tier))
        assert decision.outcome is Outcome.AUTHORIZED
        assert decision.status_after is WalletStatus.PREMIUM_PAUSED
    state = await audit(store)
    assert state.in_flight == {"free-0": 0, "free-1": 0}
    assert state.mirror.available == 0


async def test_daily_cap_boundary_and_next_day(store: WalletStore) -> None:
    await load(store, 1_000)

    def capped(event_id: str, day: str, units: int = 1) -> AuthRequest:
        cap = DailyCap(CapClass.AI, limit=3, day_key=day, units=units)
        return request(event_id, 5, limits=Limits(daily_cap=cap))

    outcomes = [(await authorize(store, capped(f"d1-{n}", "2025-04-01"))).outcome for n in range(4)]
    assert outcomes == [Outcome.AUTHORIZED] * 3 + [Outcome.DAILY_CAP_REACHED]
    assert (await authorize(store, capped("d2-0", "2025-04-02"))).outcome is Outcome.AUTHORIZED
    # A batched operation counts its units and is refused whole when it would pass the cap.
    assert (await authorize(store, capped("d2-1", "2025-04-02", 3))).outcome is (
        Outcome.DAILY_CAP_REACHED
    )
    assert (await authorize(store, capped("d2-2", "2025-04-02", 2))).outcome is Outcome.AUTHORIZED
    assert (await audit(store)).mirror.available == 1_000 - 5 * 5
    cap_key = store.keys.wallet("w1").cap("ai", "2025-04-01")
    assert 0 < await store.client.pttl(cap_key) <= store.cap_ttl_ms


async def test_cap_classes_are_counted_apart(store: WalletStore) -> None:
    await load(store, 100)
    for cap_class in CapClass:
        limits = Limits(daily_cap=DailyCap(cap_class, limit=1, day_key="2025-04-01"))
        assert (await authorize(store, request(f"{cap_class}-1", 1, limits=limits))).authorized
        refused = await authorize(store, request(f"{cap_class}-2", 1, limits=limits))
        assert refused.outcome is Outcome.DAILY_CAP_REACHED


async def test_rate_limit_gives_an_exact_retry_after(store: WalletStore) -> None:
    await load(store, 100)
    limits = Limits(wallet_rate=RateLimit(limit=2, window_ms=1_000))

    async def at(event_id: str, now_ms: int) -> Outcome:
        decision = await authorize(store, request(event_id, 1, now_ms=now_ms, limits=limits))
        return decision.outcome

    assert [await at("r1", NOW_MS), await at("r2", NOW_MS)] == [Outcome.AUTHORIZED] * 2
    limited = await authorize(store, request("r3", 1, now_ms=NOW_MS, limits=limits))
    assert limited.outcome is Outcome.RATE_LIMITED
    assert limited.retry_after_ms == 500
    assert await at("r3", NOW_MS + 499) is Outcome.RATE_LIMITED
    assert await store.client.exists(store.keys.wallet("w1").event("r3")) == 0
    # Not remembered: the same event id goes through once the advertised delay has passed.
    assert await at("r3", NOW_MS + 500) is Outcome.AUTHORIZED
    assert await at("r4", NOW_MS + 2_000) is Outcome.AUTHORIZED
    assert await at("r5", NOW_MS + 2_000) is Outcome.AUTHORIZED
    assert await at("r6", NOW_MS + 2_000) is Outcome.RATE_LIMITED
    assert (await audit(store)).mirror.available == 95


async def test_member_rate_limits_are_per_member(store: WalletStore) -> None:
    await load(store, 100)
    limits = Limits(member_rate=RateLimit(limit=1, window_ms=60_000, scope="ai"))
    assert (await authorize(store, request("a1", 1, limits=limits))).authorized
    limited = await authorize(store, request("a2", 1, limits=limits))
    assert limited.outcome is Outcome.RATE_LIMITED
    assert limited.retry_after_ms == 60_000
    other = await authorize(store, request("b1", 1, member_id="m2", limits=limits))
    assert other.outcome is Outcome.AUTHORIZED


async def test_refusals_do_not_consume_caps_or_rate(store: WalletStore) -> None:
    await load(store, 10)
    limits = Limits(
        daily_cap=DailyCap(CapClass.EMAILS, limit=1, day_key="2025-04-01"),
        wallet_rate=RateLimit(limit=1, window_ms=60_000),
    )
    assert (await authorize(store, request("big", 50, limits=limits))).outcome is (
        Outcome.INSUFFICIENT_CREDITS
    )
    assert (await authorize(store, request("small", 5, limits=limits))).outcome is (
        Outcome.AUTHORIZED
    )


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"credits": -1}, InvalidAmount),
        ({"credits": 1.5}, InvalidAmount),
        ({"credits": 2.0}, InvalidAmount),
        ({"credits": True}, InvalidAmount),
        ({"credits": 10**13}, InvalidAmount),
        ({"event_id": ""}, InvalidInput),
        ({"event_id": "has space"}, InvalidInput),
        ({"wallet_id": "w{1}"}, InvalidInput),
        ({"member_id": ""}, InvalidInput),
        ({"tier": "premium"}, InvalidInput),
        ({"now_ms": -1}, InvalidAmount),
    ],
)
def test_invalid_requests_are_refused_before_any_io(kwargs: dict[str, object], error: type) -> None:
    fields: dict[str, object] = {
        "event_id": "e1",
        "wallet_id": "w1",
        "member_id": "m1",
        "credits": 1,
        "tier": Tier.CORE,
        "now_ms": NOW_MS,
    }
    with pytest.raises(error):
        AuthRequest(**{**fields, **kwargs})  # type: ignore[arg-type]


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(InvalidInput):
        DailyCap(CapClass.AI, limit=1, day_key="2025/04/01")
    with pytest.raises(InvalidAmount):
        DailyCap(CapClass.AI, limit=-1, day_key="2025-04-01")
    with pytest.raises(InvalidAmount):
        RateLimit(limit=0, window_ms=1_000)
    with pytest.raises(InvalidInput):
        RateLimit(limit=1, window_ms=1_000, scope="a:b")
