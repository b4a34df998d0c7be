"""``run_aggregator`` as a process runs it: a consumer group, the hold sweeper, and stalling
without committing when a dependency is down."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from aggregator.admission import now_ms
from aggregator.hold_types import HoldRequest
from aggregator.holds import reserve_hold
from aggregator.mirror import snapshot
from aggregator.redis_keys import KeySpace
from aggregator.wallet_store import WalletStore
from aggregator.worker import (
    AggregatorConfig,
    AggregatorPipeline,
    AggregatorStalled,
    consume_loop,
    run_aggregator,
)
from domain.clock import SystemClock
from meter.consume import EventAuthorizer
from meter.schema import decode_usage_authorized
from settlement.reconciler import reconcile_wallet
from stack.metrics import RoleMetrics
from stack.retry_policy import RetryPolicy
from stack.tansu import free_port
from tests.aggregator_pipeline.conftest import Rig, consumed, usage
from tests.meter.kafka_helpers import committed_offsets, wait_for
from tests.redis_support import REDIS_URL

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.postgres]


async def test_run_aggregator_consumes_as_a_group_commits_and_sweeps_holds(
    rig: Rig, ledger_db_url: str
) -> None:
    await rig.fund("w-run", 500)
    await reconcile_wallet(rig.pool, rig.store, "w-run")
    await reserve_hold(
        rig.store,
        HoldRequest("h-stale", "w-run", "m1", 40, ttl_ms=50, now_ms=now_ms(SystemClock().now())),
    )
    events = [usage(f"g{i}", "w-run", "api.basic_request", member_id=f"m{i}") for i in range(10)]
    await rig.publish(events)
    config = AggregatorConfig(
        bootstrap=rig.tansu.bootstrap,
        redis_url=REDIS_URL,
        database_url=ledger_db_url,
        topics=rig.topics,
        group_id=rig.group_id,
        key_prefix=rig.store.keys.prefix,
        batch_ms=20,
        hold_sweep_interval_ms=50,
        session_timeout_ms=2_000,
    )
    metrics, stop = RoleMetrics("aggregator"), asyncio.Event()
    task = asyncio.create_task(run_aggregator(config, stop=stop, metrics=metrics))

    async def done() -> bool:
        return consumed(metrics, rig.topics) >= 10

    await wait_for(done, timeout_s=20)
    stop.set()
    await asyncio.wait_for(task, 15)

    records = await rig.read(rig.topics.usage_authorized, 10)
    assert sorted(decode_usage_authorized(r.value).event.event_id for r in records) == sorted(
        e.event_id for e in events
    )
    committed = await committed_offsets(
        rig.tansu.bootstrap, rig.group_id, rig.topics.usage_events, 4
    )
    assert sum(o or 0 for o in committed.values()) == 10
    view = await snapshot(rig.store, "w-run")
    assert view is not None
    assert (view.available, view.in_flight_total, view.holds_total) == (490, 10, 0)  # swept


async def test_a_dependency_down_stalls_the_loop_without_committing(rig: Rig) -> None:
    await rig.fund("w-stall", 100)
    await rig.publish([usage("s1", "w-stall")])
    dead = WalletStore.create(Redis.from_url(f"redis://127.0.0.1:{free_port()}/9"), KeySpace())
    consumer = await rig.consumer()
    pipeline = AggregatorPipeline(
        authorizer=EventAuthorizer(dead, rig.pool, rig.catalogue, rig.caps, rig.clock),
        producer=rig.producer,
        committer=consumer,
        metrics=RoleMetrics("aggregator"),
        topics=rig.topics,
    )
    started = time.monotonic()
    try:
        with pytest.raises(AggregatorStalled):
            await consume_loop(
                consumer,
                pipeline,
                stop=asyncio.Event(),
                batch_max=100,
                batch_ms=20,
                retry=RetryPolicy(attempts=3, first_delay_s=0.05),
            )
    finally:
        await consumer.stop()
        await dead.client.aclose()
    assert time.monotonic() - started < 10
    committed = await committed_offsets(
        rig.tansu.bootstrap, rig.group_id, rig.topics.usage_events, 4
    )
    assert set(committed.values()) == {None}
