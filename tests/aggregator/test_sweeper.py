"""The expired-hold sweeper: exactly-once expiry across wallets, stale index entries."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from aggregator.hold_sweeper import sweep_expired
from aggregator.hold_types import HoldOutcome, HoldRequest, HoldState
from aggregator.holds import capture_hold, release_hold, reserve_hold
from aggregator.redis_keys import hold_index_member
from aggregator.wallet_store import WalletStore
from stack.redis_cleanup import unlink_key_space
from tests.aggregator.support import NOW_MS, audit, load
from tests.redis_support import new_keyspace

pytestmark = pytest.mark.redis


def hold(hold_id: str, credits: int, ttl_ms: int, wallet_id: str = "w1") -> HoldRequest:
    return HoldRequest(hold_id, wallet_id, "m1", credits, ttl_ms, NOW_MS)


async def test_sweeper_expires_due_holds_once(store: WalletStore) -> None:
    await load(store, 100, wallet_id="w1")
    await load(store, 100, wallet_id="w2")
    await reserve_hold(store, hold("h1", 10, 1_000))
    await reserve_hold(store, hold("h2", 20, 5_000))
    await reserve_hold(store, hold("h3", 30, 1_000, wallet_id="w2"))

    early = await sweep_expired(store, NOW_MS + 999)
    assert early.expired == ()
    assert early.examined == 0
    swept = await sweep_expired(store, NOW_MS + 1_000)
    assert sorted(h.hold_id for h in swept.expired) == ["h1", "h3"]
    assert swept.expired_credits == 40
    assert (await sweep_expired(store, NOW_MS + 1_000)).examined == 0
    assert (await audit(store, "w1")).mirror.available == 80
    assert (await audit(store, "w2")).mirror.available == 100

    late_capture = await capture_hold(store, "w1", "h1", 5, NOW_MS + 1_000)
    assert late_capture.outcome is HoldOutcome.ALREADY_RESOLVED
    assert late_capture.state is HoldState.EXPIRED
    last = await sweep_expired(store, NOW_MS + 10_000)
    assert [h.hold_id for h in last.expired] == ["h2"]
    assert (await audit(store, "w1")).mirror.available == 100


async def test_sweeper_respects_its_limit(store: WalletStore) -> None:
    await load(store, 100)
    for n in range(5):
        await reserve_hold(store, hold(f"h{n}", 1, 1_000))
    first = await sweep_expired(store, NOW_MS + 1_000, limit=3)
    assert len(first.expired) == 3
    second = await sweep_expired(store, NOW_MS + 1_000, limit=3)
    assert len(second.expired) == 2
    assert (await audit(store)).mirror.available == 100


async def test_stale_index_entries_are_dropped_or_rescheduled(store: WalletStore) -> None:
    await load(store, 10)
    # A refused reservation leaves its index entry (written first); the sweep drops it and
    # tombstones the id, so a racing late reservation could not create a born-expired hold.
    refused = await reserve_hold(store, hold("h1", 50, 1_000))
    assert refused.outcome is HoldOutcome.INSUFFICIENT_CREDITS
    report = await sweep_expired(store, NOW_MS + 1_000)
    assert (report.expired, report.dropped) == ((), 1)
    assert (await reserve_hold(store, hold("h1", 5, 1_000))).outcome is (
        HoldOutcome.ALREADY_RESOLVED
    )
    # An entry whose score is earlier than the hold's real expiry is rescheduled, not expired.
    await reserve_hold(store, hold("h2", 5, 10_000))
    index = store.keys.hold_index("w1")
    await store.client.zadd(index, {hold_index_member("w1", "h2"): NOW_MS})
    rescheduled = await sweep_expired(store, NOW_MS + 1_000)
    assert (rescheduled.expired, rescheduled.rescheduled) == ((), 1)
    assert await store.client.zscore(index, hold_index_member("w1", "h2")) == NOW_MS + 10_000
    assert (await audit(store)).holds == {"h2": 5}


async def test_resolved_holds_leave_the_index(store: WalletStore) -> None:
    await load(store, 100)
    await reserve_hold(store, hold("h1", 10, 1_000))
    await reserve_hold(store, hold("h2", 10, 1_000))
    await capture_hold(store, "w1", "h1", 5, NOW_MS)
    await release_hold(store, "w1", "h2", NOW_MS)
    assert await store.client.zcard(store.keys.hold_index("w1")) == 0


async def test_sharded_index_and_concurrent_sweepers_expire_each_hold_once(
    redis_client: Redis,
) -> None:
    keys = new_keyspace(shards=4)
    store = WalletStore.create(redis_client, keys)
    try:
        wallets = [f"w{n}" for n in range(8)]
        for wallet_id in wallets:
            await load(store, 100, wallet_id=wallet_id)
            for n in range(5):
                await reserve_hold(store, hold(f"h{n}", 7, 1_000, wallet_id=wallet_id))
        # Captures race with four sweepers that see the holds due: whoever comes first
        # resolves each hold, and every hold resolves exactly once.
        captures, reports = await asyncio.gather(
            asyncio.gather(*(capture_hold(store, w, "h0", 3, NOW_MS + 999) for w in wallets)),
            asyncio.gather(*(sweep_expired(store, NOW_MS + 1_000, limit=1_000) for _ in range(4))),
        )
        captured = {c.wallet_id for c in captures if c.outcome is HoldOutcome.CAPTURED}
        expired = [h for report in reports for h in report.expired]
        assert len(expired) + len(captured) == len(wallets) * 5
        assert len({(h.wallet_id, h.hold_id) for h in expired}) == len(expired)
        for wallet_id in wallets:
            state = await audit(store, wallet_id)
            charged = 3 if wallet_id in captured else 0
            assert (state.mirror.available, state.mirror.reserved) == (100 - charged, charged)
        assert all([await redis_client.zcard(k) == 0 for k in keys.hold_index_keys()])
    finally:
        await unlink_key_space(redis_client, keys)
