"""The synchronous SDK path (``CreditConsumer.consume``) against real Tansu, Redis, PostgreSQL."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from aggregator.admission import VerdictCode
from aggregator.mirror import snapshot
from domain.errors import UnknownFeature
from meter.consume import CreditConsumer, DecisionProducer
from meter.producer import ProducerTuning, PublishFailed
from meter.schema import (
    PremiumPaused,
    decode_usage_authorized,
    decode_usage_rejected,
    decode_wallet_event,
)
from stack.tansu import TansuBroker
from tests.aggregator_pipeline.conftest import Rig, usage

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.postgres]


def consumer_for(rig: Rig, producer: DecisionProducer | None = None) -> CreditConsumer:
    return CreditConsumer(
        rig.store, producer or rig.producer, rig.pool, rig.catalogue, rig.caps, rig.clock,
        topics=rig.topics,
    )  # fmt: skip


async def test_64_concurrent_consumes_authorise_exactly_the_affordable_ones(rig: Rig) -> None:
    await rig.fund("w-race", 100)
    sdk = consumer_for(rig)
    events = [usage(f"r{i}", "w-race", "storage.mb100_month", member_id=f"m{i}") for i in range(64)]
    lowest_seen: list[int] = []
    racing = asyncio.Event()

    async def watch() -> None:  # stopped by an event: redis-py may swallow a cancellation
        while not racing.is_set():
            view = await snapshot(rig.store, "w-race")
            if view is not None:
                lowest_seen.append(view.available)
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    try:
        results = await asyncio.gather(*(sdk.consume(e) for e in events))
    finally:
        racing.set()
        await watcher

    outcomes = Counter(r.outcome for r in results)
    assert outcomes == {VerdictCode.AUTHORIZED: 20, VerdictCode.INSUFFICIENT_CREDITS: 44}
    assert min(lowest_seen) >= 0
    assert all(r.available_after >= 0 for r in results)
    view = await snapshot(rig.store, "w-race")
    assert view is not None
    assert (view.available, view.reserved) == (0, 100)
    authorized = await rig.read(rig.topics.usage_authorized, 20)
    assert len({decode_usage_authorized(r.value).event.event_id for r in authorized}) == 20
    rejected = await rig.read(rig.topics.usage_rejected, 44)
    assert {decode_usage_rejected(r.value).reason for r in rejected} == {"insufficient_credits"}
    (paused,) = [decode_wallet_event(r.value) for r in await rig.read(rig.topics.wallet_events, 1)]
    assert isinstance(paused, PremiumPaused)


async def test_an_unloaded_wallet_is_loaded_from_the_ledger(rig: Rig) -> None:
    await rig.fund("w-cold", 50)
    assert await snapshot(rig.store, "w-cold") is None
    result = await consumer_for(rig).consume(usage("c1", "w-cold", "api.heavy_query"))
    assert (result.outcome, result.credits, result.available_after) == ("authorized", 5, 45)
    view = await snapshot(rig.store, "w-cold")
    assert view is not None
    assert (view.available, view.reserved) == (45, 5)


async def test_a_retry_returns_the_original_result_and_produces_again(rig: Rig) -> None:
    await rig.fund("w-retry", 50)
    sdk = consumer_for(rig)
    first = await sdk.consume(usage("same", "w-retry", "api.heavy_query"))
    again = await sdk.consume(usage("same", "w-retry", "api.heavy_query"))
    assert (first.authorized, first.replayed, again.authorized, again.replayed) == (
        True, False, True, True,
    )  # fmt: skip
    assert again.available_after == first.available_after == 45
    records = await rig.read(rig.topics.usage_authorized, 2)
    assert len(records) == 2
    assert records[0].value == records[1].value


async def test_an_unknown_feature_is_the_callers_error(rig: Rig) -> None:
    await rig.fund("w-bug", 50)
    with pytest.raises(UnknownFeature):
        await consumer_for(rig).consume(usage("b1", "w-bug", "api.teleport"))


async def test_a_failed_produce_releases_the_reservation(rig: Rig, tmp_path: Path) -> None:
    await rig.fund("w-down", 50)
    tuning = ProducerTuning(delivery_timeout_s=1.5, request_timeout_ms=1_000)
    async with TansuBroker(tmp_path / "doomed") as doomed:
        await doomed.create_topics(rig.topics.all(), 1)
        down = DecisionProducer(bootstrap=doomed.bootstrap, topics=rig.topics, tuning=tuning)
        await down.start()
    try:  # the broker is gone now
        with pytest.raises(PublishFailed):
            await consumer_for(rig, down).consume(usage("d1", "w-down", "api.export_data"))
    finally:
        await down.stop()
    view = await snapshot(rig.store, "w-down")
    assert view is not None
    assert (view.available, view.reserved) == (50, 0)  # released: nothing charged

    retried = await consumer_for(rig).consume(usage("d1", "w-down", "api.export_data"))
    assert (retried.outcome, retried.replayed, retried.available_after) == ("authorized", False, 30)
