"""The streaming path end to end: usage.events -> the real consume loop -> Redis -> topics.

Real Tansu, Redis and PostgreSQL; wallets exist only in the ledger when a test starts, so every
test also proves that an unloaded wallet is loaded from the ledger on its first event.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from aggregator.anomaly import RAPID_BURN, AnomalySettings, BurnDetector
from aggregator.hold_types import HoldRequest
from aggregator.holds import reserve_hold
from aggregator.mirror import snapshot
from aggregator.replies import integer, text
from aggregator.worker import consume_loop
from domain.caps import CapsConfig, DailyCaps
from meter.schema import (
    LowBalance,
    PremiumPaused,
    SchemaReason,
    decode_dead_letter,
    decode_suspicious_burn,
    decode_usage_authorized,
    decode_usage_rejected,
    decode_wallet_event,
)
from settlement.reconciler import reconcile_wallet
from stack.metrics import RoleMetrics
from tests.aggregator_pipeline.conftest import NeverCommits, Rig, consumed, relaxed, usage
from tests.meter.kafka_helpers import committed_offsets

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.postgres]


async def test_authorised_events_reach_usage_authorized_with_their_credits(rig: Rig) -> None:
    await rig.fund("w-a", 1_000)
    await rig.fund("w-b", 1_000)
    events = [
        usage("a1", "w-a", "api.basic_request"),
        usage("a2", "w-a", "api.export_data", quantity=2),
        usage("b1", "w-b", "storage.gb_month"),
        usage("b2", "w-b", "community.create_community"),  # free
    ]
    await rig.publish(events)
    metrics = await rig.run(len(events))

    out = {
        m.event.event_id: m
        for m in map(
            decode_usage_authorized,
            [r.value for r in await rig.read(rig.topics.usage_authorized, 4)],
        )
    }
    assert {k: v.credits for k, v in out.items()} == {"a1": 1, "a2": 40, "b1": 40, "b2": 0}
    assert all(m.decision == "authorized" and m.pricing_version == "1" for m in out.values())
    assert out["a2"].event == events[1]
    a, b = await snapshot(rig.store, "w-a"), await snapshot(rig.store, "w-b")
    assert a is not None
    assert b is not None
    assert (a.available, a.reserved, b.available, b.reserved) == (959, 41, 960, 40)
    committed = await committed_offsets(
        rig.tansu.bootstrap, rig.group_id, rig.topics.usage_events, 4
    )
    assert sum(o or 0 for o in committed.values()) == 4
    assert consumed(metrics, rig.topics) == 4


async def test_refusals_reach_usage_rejected_with_their_reasons(rig: Rig) -> None:
    await rig.fund("w-poor", 15)
    await rig.fund("w-cap", 1_000)
    caps = relaxed(rig.caps, daily=DailyCaps(ai=2, webhooks=10_000, emails=5_000))
    events = [
        usage("p1", "w-poor", "ai.summary"),  # 15 of 15: authorised, wallet now empty
        usage("p2", "w-poor", "ai.moderation"),  # premium on an empty wallet
        usage("p3", "w-poor", "api.basic_request"),  # core, but no credits
        usage("c1", "w-cap", "ai.moderation", member_id="m1"),
        usage("c2", "w-cap", "ai.moderation", member_id="m2"),
        usage("c3", "w-cap", "ai.moderation", member_id="m3"),  # the day's third AI request
        usage("u1", "w-cap", "api.teleport"),
        usage("x1", "w-nobody", "api.basic_request"),  # no such wallet in the ledger
    ]
    await rig.publish(events)
    await rig.run(len(events), caps=caps)

    rejected = [
        decode_usage_rejected(r.value) for r in await rig.read(rig.topics.usage_rejected, 5)
    ]
    reasons = {m.event.event_id: m.reason for m in rejected}
    assert reasons == {
        "p2": "premium_paused",
        "p3": "insufficient_credits",
        "c3": "daily_cap_reached",
        "u1": "unknown_feature",
        "x1": "unknown_wallet",
    }
    assert all(m.message for m in rejected)
    authorized = await rig.read(rig.topics.usage_authorized, 3)
    assert sorted(decode_usage_authorized(r.value).event.event_id for r in authorized) == [
        "c1",
        "c2",
        "p1",
    ]


async def test_rate_limited_events_are_rejected_with_retry_after(
    rig: Rig, real_caps: CapsConfig
) -> None:
    await rig.fund("w-rl", 1_000)
    # Real caps: a member may make 2 AI requests at once (2/s, 20/min), then one per 3 s.
    events = [usage(f"r{i}", "w-rl", "ai.moderation") for i in range(3)]
    await rig.publish(events)
    await rig.run(3, caps=real_caps)

    (rejected,) = [
        decode_usage_rejected(r.value) for r in await rig.read(rig.topics.usage_rejected, 1)
    ]
    assert (rejected.event.event_id, rejected.reason) == ("r2", "rate_limited")
    assert "retry after" in rejected.message


async def test_malformed_bytes_are_dead_lettered_and_the_stream_flows_on(rig: Rig) -> None:
    await rig.fund("w-dl", 100)
    await rig.publish([usage("before", "w-dl")])
    await rig.publish_raw("w-dl", b"{not json")
    await rig.publish_raw("w-dl", b'{"schema_version": 1, "event_id": "e"}')
    await rig.publish([usage("after", "w-dl")])
    metrics = await rig.run(4)

    letters = [decode_dead_letter(r.value) for r in await rig.read(rig.topics.usage_dead_letter, 2)]
    assert sorted(letter.reason for letter in letters) == [
        SchemaReason.MALFORMED_JSON,
        SchemaReason.MISSING_FIELD,
    ]
    assert {letter.raw() for letter in letters} == {
        b"{not json",
        b'{"schema_version": 1, "event_id": "e"}',
    }
    assert all(letter.source.topic == rig.topics.usage_events for letter in letters)
    authorized = await rig.read(rig.topics.usage_authorized, 2)
    assert sorted(decode_usage_authorized(r.value).event.event_id for r in authorized) == [
        "after",
        "before",
    ]
    assert (
        metrics.registry.get_sample_value(
            "credits_dead_letters_total", {"role": "aggregator", "reason": "malformed_json"}
        )
        == 1
    )


async def test_an_event_delivered_n_times_reserves_once_and_is_authorised_n_times(
    rig: Rig,
) -> None:
    await rig.fund("w-dup", 100)
    event = usage("dup-1", "w-dup", "api.export_data")
    for _ in range(5):  # a client retrying the same event id
        await rig.publish([event])
    await rig.run(5)

    records = await rig.read(rig.topics.usage_authorized, 5)
    assert len(records) == 5
    assert len({r.value for r in records}) == 1  # identical bytes (frozen clock)
    assert decode_usage_authorized(records[0].value).credits == 20
    view = await snapshot(rig.store, "w-dup")
    assert view is not None
    assert (view.available, view.reserved) == (80, 20)


async def test_a_crash_before_commit_is_reprocessed_without_double_reserving(rig: Rig) -> None:
    await rig.fund("w-crash", 1_000)
    events = [usage(f"c{i}", "w-crash", "api.heavy_query", member_id=f"m{i}") for i in range(20)]
    await rig.publish(events)

    # First run: everything is decided and produced, then the task dies before its commit.
    consumer = await rig.consumer()
    blocker = NeverCommits()
    pipeline = rig.pipeline(blocker, RoleMetrics("aggregator"))
    crashed = asyncio.create_task(
        consume_loop(consumer, pipeline, stop=asyncio.Event(), batch_max=500, batch_ms=20)
    )
    await asyncio.wait_for(blocker.reached.wait(), 15)
    await asyncio.sleep(0.2)  # let the other partitions' batches reach their commit too
    crashed.cancel()  # it is blocked in the commit, not inside a Redis call
    finished, _ = await asyncio.wait([crashed], timeout=10)
    assert finished, "the crashed loop did not stop"
    await consumer.stop()
    committed = await committed_offsets(
        rig.tansu.bootstrap, rig.group_id, rig.topics.usage_events, 4
    )
    assert set(committed.values()) == {None}

    # Restart: the same records are redelivered; the mirror answers with the original decisions.
    await rig.run(len(events))
    view = await snapshot(rig.store, "w-crash")
    assert view is not None
    assert (view.available, view.reserved) == (900, 100)  # 20 x 5, reserved once
    records = await rig.read(rig.topics.usage_authorized, 40)
    per_event = Counter(decode_usage_authorized(r.value).event.event_id for r in records)
    assert per_event == {f"c{i}": 2 for i in range(20)}  # settlement deduplicates on event id
    committed = await committed_offsets(
        rig.tansu.bootstrap, rig.group_id, rig.topics.usage_events, 4
    )
    assert sum(o or 0 for o in committed.values()) == 20


async def test_low_balance_and_premium_paused_are_announced_once(rig: Rig) -> None:
    await rig.fund("w-low", 240)
    events = [usage(f"l{i}", "w-low", "api.export_data", member_id=f"m{i}") for i in range(13)]
    await rig.publish(events)
    await rig.run(len(events), low_balance_threshold=200)

    wallet_events = [
        decode_wallet_event(r.value) for r in await rig.read(rig.topics.wallet_events, 2)
    ]
    low = [e for e in wallet_events if isinstance(e, LowBalance)]
    paused = [e for e in wallet_events if isinstance(e, PremiumPaused)]
    assert len(low) == 1
    assert len(paused) == 1
    assert (low[0].available_credits, low[0].threshold_credits) == (180, 200)  # by the third
    assert low[0].event_id == "low:l2"
    assert (paused[0].reason, paused[0].event_id) == ("credits_exhausted", "paused:l11")
    (rejected,) = [
        decode_usage_rejected(r.value) for r in await rig.read(rig.topics.usage_rejected, 1)
    ]
    assert (rejected.event.event_id, rejected.reason) == ("l12", "premium_paused")


async def test_a_synthetic_burst_raises_one_suspicious_burn_alert(rig: Rig) -> None:
    await rig.fund("w-burst", 10_000)
    await rig.fund("w-calm", 10_000)
    detector = BurnDetector(AnomalySettings(min_burn_credits=300, baseline_floor_credits=5))
    burst = [usage(f"b{i}", "w-burst", "api.export_data", member_id=f"m{i % 9}") for i in range(40)]
    calm = [usage(f"k{i}", "w-calm", "api.basic_request") for i in range(5)]
    await rig.publish(burst + calm)
    await rig.run(len(burst) + len(calm), detector=detector)

    (record,) = await rig.read(rig.topics.suspicious_burn, 1)
    alert = decode_suspicious_burn(record.value)
    assert alert.wallet_id == "w-burst"
    assert RAPID_BURN in alert.reason_codes
    assert alert.credits_in_window == 800
    assert alert.score >= 50
    assert record.key == b"w-burst"


async def test_an_event_with_a_hold_captures_it_never_more_than_held(rig: Rig) -> None:
    await rig.fund("w-hold", 1_000)
    await reconcile_wallet(rig.pool, rig.store, "w-hold")
    now_ms = 1_773_464_400_000
    for hold_id in ("h-small", "h-big"):
        held = await reserve_hold(
            rig.store,
            HoldRequest(hold_id, "w-hold", "m1", credits=20, ttl_ms=600_000, now_ms=now_ms),
        )
        assert held.outcome == "held"
    small = usage("t1", "w-hold", "ai.summary", quantity=3_000, hold_id="h-small")  # 15 credits
    big = usage("t2", "w-hold", "ai.summary", quantity=10_000, hold_id="h-big")  # 50 > 20 held
    await rig.publish([small, big, big])  # the big one delivered twice
    await rig.run(3)

    out = [decode_usage_authorized(r.value) for r in await rig.read(rig.topics.usage_authorized, 3)]
    assert sorted((m.event.event_id, m.credits, m.decision) for m in out) == [
        ("t1", 15, "hold_captured"),
        ("t2", 20, "hold_captured"),
        ("t2", 20, "hold_captured"),
    ]
    in_flight = await rig.store.client.hgetall(rig.store.keys.wallet("w-hold").in_flight)
    assert {text(k): integer(v) for k, v in in_flight.items()} == {"h-small": 15, "h-big": 20}
    view = await snapshot(rig.store, "w-hold")
    assert view is not None
    assert (view.available, view.reserved) == (965, 35)
