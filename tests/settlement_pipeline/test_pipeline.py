"""SettlementPipeline.process_batch against real PostgreSQL, Redis, chdb and Tansu."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaProducer
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from aggregator.hold_types import HoldOutcome, HoldRequest
from aggregator.holds import capture_hold, release_hold, reserve_hold
from aggregator.wallet_store import WalletStore
from domain.pricing import load_catalogue
from meter.schema import BalanceChanged, decode_usage_rejected, decode_wallet_event, encode
from meter.topics import TopicNames
from settlement.ledger.operations import Ledger
from settlement.ledger.wallets import Wallets
from settlement.ledger.writer import Conn
from settlement.reconciler import reconcile_all
from settlement.usage_sink import UsageStore
from settlement.worker import SettlementPipeline, SettlementStalled, plan_batch
from stack.metrics import RoleMetrics
from stack.retry_policy import RetryPolicy
from stack.tansu import TansuBroker, free_port
from tests.ledger.helpers import assert_consistent
from tests.meter.kafka_helpers import read_topic
from tests.settlement_pipeline.support import (
    NOW,
    NOW_MS,
    as_records,
    assert_mirror_never_promises_more,
    flush_mirror,
    fund,
    in_flight,
    ledger_available,
    reserve,
    usage_authorized,
    usage_ids,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.kafka, pytest.mark.clickhouse]

W = "wal_pipe"


async def test_a_batch_reaches_every_sink_once(
    pipeline: SettlementPipeline,
    wallets: Wallets,
    ledger: Ledger,
    ledger_pool: AsyncConnectionPool[Conn],
    ledger_db_url: str,
    mirror: WalletStore,
    usage: UsageStore,
    topics: TopicNames,
) -> None:
    await fund(wallets, ledger, W, 1_000)
    await reconcile_all(ledger_pool, mirror)
    events = [usage_authorized(f"ev-{i}", W, 10) for i in range(5)]
    free = usage_authorized("ev-free", W, 0, feature="community.invite_member")
    for event in (*events, free):
        await reserve(mirror, event)

    report = await pipeline.process_batch(
        as_records(topics.usage_authorized, [encode(e) for e in (*events, free)])
    )
    assert (report.posted, report.duplicates, report.free, report.refused) == (5, 0, 1, ())
    assert await usage_ids(ledger_db_url) == [f"ev-{i}" for i in range(5)]
    assert usage.count_events(W) == 6  # the free event is usage too, at 0 credits
    assert await in_flight(mirror, W) == {}
    assert await assert_mirror_never_promises_more(ledger_pool, mirror, W) == (950, 950)
    await assert_consistent(ledger_db_url)


async def test_a_batch_announces_each_charged_wallets_balance_once(
    pipeline: SettlementPipeline,
    wallets: Wallets,
    ledger: Ledger,
    ledger_pool: AsyncConnectionPool[Conn],
    mirror: WalletStore,
    topics: TopicNames,
    tansu: TansuBroker,
) -> None:
    other = "wal_pipe_2"
    await fund(wallets, ledger, W, 1_000)
    await fund(wallets, ledger, other, 500)
    await reconcile_all(ledger_pool, mirror)
    events = [usage_authorized(f"ev-{i}", W, 10) for i in range(3)]
    events.append(usage_authorized("ev-other", other, 25))
    free = usage_authorized("ev-free", other, 0, feature="community.invite_member")
    for event in (*events, free):
        await reserve(mirror, event)
    records = as_records(topics.usage_authorized, [encode(e) for e in (*events, free)])

    await pipeline.process_batch(records)
    await pipeline.process_batch(records)  # redelivered: duplicates change no balance

    announced = [
        decode_wallet_event(r.value)
        for r in await read_topic(tansu.bootstrap, topics.wallet_events, 2)
    ]
    balances = {e.wallet_id: e for e in announced if isinstance(e, BalanceChanged)}
    assert len(announced) == len(balances) == 2
    mine, theirs = balances[W], balances[other]
    assert (mine.available_credits, mine.reserved_credits, mine.delta_credits) == (970, 0, -30)
    assert (theirs.available_credits, theirs.delta_credits) == (475, -25)
    assert (mine.cause, mine.source_id, theirs.source_id) == ("usage", "ev-2", "ev-other")
    assert await assert_mirror_never_promises_more(ledger_pool, mirror, W) == (970, 970)


async def test_the_same_event_delivered_many_times_is_charged_once(
    pipeline: SettlementPipeline,
    wallets: Wallets,
    ledger: Ledger,
    ledger_pool: AsyncConnectionPool[Conn],
    ledger_db_url: str,
    mirror: WalletStore,
    usage: UsageStore,
    topics: TopicNames,
) -> None:
    await fund(wallets, ledger, W, 100)
    await reconcile_all(ledger_pool, mirror)
    event = usage_authorized("ev-dup", W, 30)
    await reserve(mirror, event)
    payload = encode(event)

    first = await pipeline.process_batch(as_records(topics.usage_authorized, [payload] * 4))
    assert (first.posted, first.duplicates) == (1, 3)
    for _ in range(3):  # redeliveries in later batches, as after a crash before the commit
        again = await pipeline.process_batch(as_records(topics.usage_authorized, [payload] * 2))
        assert (again.posted, again.duplicates) == (0, 2)

    assert await usage_ids(ledger_db_url) == ["ev-dup"]
    assert usage.count_events() == 1
    assert await assert_mirror_never_promises_more(ledger_pool, mirror, W) == (70, 70)
    await assert_consistent(ledger_db_url)


async def test_a_crash_between_the_ledger_commit_and_redis_is_repaired_on_restart(
    pipeline: SettlementPipeline,
    wallets: Wallets,
    ledger: Ledger,
    ledger_pool: AsyncConnectionPool[Conn],
    ledger_db_url: str,
    mirror: WalletStore,
    usage: UsageStore,
    topics: TopicNames,
) -> None:
    """Step 3 committed, the process died before step 4: the batch comes back after a restart."""
    await fund(wallets, ledger, W, 100)
    await reconcile_all(ledger_pool, mirror)
    events = [usage_authorized(f"ev-{i}", W, 20) for i in range(3)]
    for event in events:
        await reserve(mirror, event)
    records = as_records(topics.usage_authorized, [encode(e) for e in events])
    plan = plan_batch([*events], load_catalogue(), NOW)
    await pipeline.writer.post_usage(plan.charges)  # step 3 only, then "kill -9"

    startup = await reconcile_all(ledger_pool, mirror)  # what run_settlement does first
    assert startup.settled_late == 3
    redelivered = await pipeline.process_batch(records)
    assert (redelivered.posted, redelivered.duplicates) == (0, 3)

    assert await usage_ids(ledger_db_url) == ["ev-0", "ev-1", "ev-2"]
    assert usage.count_events() == 3
    assert await in_flight(mirror, W) == {}
    assert await assert_mirror_never_promises_more(ledger_pool, mirror, W) == (40, 40)


async def test_an_event_the_ledger_refuses_is_rejected_with_its_reason_and_released(
    pipeline: SettlementPipeline,
    wallets: Wallets,
    ledger: Ledger,
    ledger_pool: AsyncConnectionPool[Conn],
    ledger_db_url: str,
    mirror: WalletStore,
    usage: UsageStore,
    topics: TopicNames,
    tansu: TansuBroker,
) -> None:
    await fund(wallets, ledger, W, 100)
    await reconcile_all(ledger_pool, mirror)
    refused = usage_authorized("ev-too-much", W, 80)
    stranger = usage_authorized("ev-no-wallet", "wal_nobody", 5)
    await reserve(mirror, refused)
    # The ledger lost credits the mirror does not know about yet (an admin correction).
    await ledger.adjust(W, "correction-1", -50, actor="ops", reason="correction")

    report = await pipeline.process_batch(
        as_records(topics.usage_authorized, [encode(refused), encode(stranger)])
    )
    assert report.posted == 0
    assert {(r.authorized.event.event_id, r.reason) for r in report.refused} == {
        ("ev-too-much", "insufficient_credits"),
        ("ev-no-wallet", "unknown_wallet"),
    }
    assert report.reconciled == (W,)
    rejected = [
        decode_usage_rejected(r.value)
        for r in await read_topic(tansu.bootstrap, topics.usage_rejected, 2)
    ]
    assert sorted((r.event.event_id, r.reason) for r in rejected) == [
        ("ev-no-wallet", "unknown_wallet"),
        ("ev-too-much", "insufficient_credits"),
    ]
    assert all(r.message for r in rejected)
    # Released, and the mirror reloaded from the ledger: nothing reserved, 50 available.
    assert await in_flight(mirror, W) == {}
    assert await assert_mirror_never_promises_more(ledger_pool, mirror, W) == (50, 50)
    assert await usage_ids(ledger_db_url) == []
    assert usage.count_events() == 0


async def test_redis_flushed_while_holds_are_live_never_overdraws(
    pipeline: SettlementPipeline,
    wallets: Wallets,
    ledger: Ledger,
    ledger_pool: AsyncConnectionPool[Conn],
    ledger_db_url: str,
    mirror: WalletStore,
    usage: UsageStore,
    topics: TopicNames,
) -> None:
    await fund(wallets, ledger, W, 1_000)
    await reconcile_all(ledger_pool, mirror)
    # Live before the flush: a hold, an authorised event, and a captured hold, both produced.
    live_hold = HoldRequest("hold-live", W, "m1", 300, 60_000, NOW_MS)
    assert (await reserve_hold(mirror, live_hold)).outcome is HoldOutcome.HELD
    consumed = usage_authorized("ev-consumed", W, 200)
    await reserve(mirror, consumed)
    await reserve_hold(mirror, HoldRequest("hold-ai", W, "m1", 100, 60_000, NOW_MS))
    captured = await capture_hold(mirror, W, "hold-ai", 80, NOW_MS + 1)
    assert captured.outcome is HoldOutcome.CAPTURED
    ai = usage_authorized("ev-ai", W, 80, feature="ai.summary", hold_id="hold-ai")
    assert await assert_mirror_never_promises_more(ledger_pool, mirror, W) == (420, 1_000)

    await flush_mirror(mirror)  # the flush
    rebuilt = await reconcile_all(ledger_pool, mirror)
    assert rebuilt.wallets == 1
    assert await assert_mirror_never_promises_more(ledger_pool, mirror, W) == (1_000, 1_000)
    # Holds lost with Redis are refused cleanly: nothing captured, nothing released twice.
    lost = await capture_hold(mirror, W, "hold-live", 250, NOW_MS + 2)
    assert lost.outcome is HoldOutcome.NOT_FOUND
    assert (await release_hold(mirror, W, "hold-live", NOW_MS + 2)).outcome is (
        HoldOutcome.NOT_FOUND
    )

    # The two events acknowledged before the flush settle now: the mirror debits them itself.
    report = await pipeline.process_batch(
        as_records(topics.usage_authorized, [encode(consumed), encode(ai)])
    )
    assert (report.posted, report.recovered, report.reconciled) == (2, 2, ())
    assert await assert_mirror_never_promises_more(ledger_pool, mirror, W) == (720, 720)

    # The rebuilt mirror cannot be talked into more than the ledger has.
    over = usage_authorized("ev-over", W, 721)
    with pytest.raises(AssertionError, match="insufficient_credits"):
        await reserve(mirror, over)
    last = usage_authorized("ev-last", W, 720)
    await reserve(mirror, last)
    final = await pipeline.process_batch(as_records(topics.usage_authorized, [encode(last)]))
    assert (final.posted, final.refused) == (1, ())
    assert await assert_mirror_never_promises_more(ledger_pool, mirror, W) == (0, 0)
    assert await usage_ids(ledger_db_url) == ["ev-consumed", "ev-last", "hold-ai"]
    assert usage.count_events() == 3
    await assert_consistent(ledger_db_url)


async def test_an_over_promise_made_between_flush_and_settlement_is_refused_and_repaired(
    pipeline: SettlementPipeline,
    wallets: Wallets,
    ledger: Ledger,
    ledger_pool: AsyncConnectionPool[Conn],
    ledger_db_url: str,
    mirror: WalletStore,
    topics: TopicNames,
) -> None:
    """Before the lost events arrive the rebuilt mirror cannot know them, so it may admit an
    event the ledger cannot cover: the ledger refuses it, never overdraws, and the wallet's
    mirror is reloaded so the over-promise does not outlive the batch."""
    await fund(wallets, ledger, W, 1_000)
    await reconcile_all(ledger_pool, mirror)
    consumed = usage_authorized("ev-consumed", W, 280)
    await reserve(mirror, consumed)
    await flush_mirror(mirror)
    await reconcile_all(ledger_pool, mirror)
    greedy = usage_authorized("ev-greedy", W, 900)
    await reserve(mirror, greedy)  # admitted: the rebuilt mirror shows 1000

    report = await pipeline.process_batch(
        as_records(topics.usage_authorized, [encode(consumed), encode(greedy)])
    )
    assert report.posted == 1
    assert [(r.authorized.event.event_id, r.reason) for r in report.refused] == [
        ("ev-greedy", "insufficient_credits")
    ]
    assert report.reconciled == (W,)
    assert await ledger_available(ledger_pool, W) == 720
    assert await in_flight(mirror, W) == {}
    assert await assert_mirror_never_promises_more(ledger_pool, mirror, W) == (720, 720)
    await assert_consistent(ledger_db_url)


async def test_a_dependency_down_mid_batch_stalls_it_and_a_retry_completes_it(
    pipeline: SettlementPipeline,
    wallets: Wallets,
    ledger: Ledger,
    ledger_pool: AsyncConnectionPool[Conn],
    ledger_db_url: str,
    mirror: WalletStore,
    usage: UsageStore,
    topics: TopicNames,
    metrics: RoleMetrics,
    producer: AIOKafkaProducer,
) -> None:
    """Redis is unreachable after the ledger commit: the batch raises (its offsets would not be
    committed), and its redelivery to a healthy worker settles every sink exactly once."""
    await fund(wallets, ledger, W, 100)
    await reconcile_all(ledger_pool, mirror)
    event = usage_authorized("ev-1", W, 10)
    await reserve(mirror, event)
    records = as_records(topics.usage_authorized, [encode(event)])
    dead_redis = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    broken = SettlementPipeline(
        writer=pipeline.writer,
        mirror=WalletStore.create(dead_redis, mirror.keys),
        usage=usage,
        producer=producer,
        topics=topics,
        catalogue=load_catalogue(),
        metrics=metrics,
        retry=RetryPolicy(attempts=2, first_delay_s=0.01),
    )
    with pytest.raises(SettlementStalled, match="redis settle"):
        await broken.process_batch(records)
    await dead_redis.aclose()
    assert await usage_ids(ledger_db_url) == ["ev-1"]  # step 3 was durable
    assert usage.count_events() == 0  # step 6 never ran

    redelivered = await pipeline.process_batch(records)
    assert (redelivered.posted, redelivered.duplicates) == (0, 1)
    assert usage.count_events() == 1
    assert await in_flight(mirror, W) == {}
    assert await assert_mirror_never_promises_more(ledger_pool, mirror, W) == (90, 90)
