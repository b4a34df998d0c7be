"""Feasibility: faust-streaming agents on Tansu, in-process, with batched streams.

Shows that with :func:`aggregator.faust_app.faust_settings` a Faust agent joins a consumer group
on Tansu, reads ``usage.events`` in ``take_events`` batches, produces to ``usage.authorized`` with
acks=all, commits offsets, and resumes from them after a restart. The last test pins the Faust
hazard the aggregator must design around: a batch whose body raises is acked and committed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import faust
import pytest
from faust.types import EventT

from aggregator.faust_app import FaustConfig, faust_settings, make_faust_app
from meter.producer import UsageProducer
from meter.schema import (
    Decision,
    UsageAuthorized,
    UsageEvent,
    decode_usage_authorized,
    decode_usage_event,
    encode,
    make_usage_event,
)
from meter.topics import TopicNames, wallet_key
from stack.tansu import TansuBroker
from tests.meter.conftest import TEST_PARTITIONS
from tests.meter.kafka_helpers import committed_offsets, read_topic, wait_for

pytestmark = pytest.mark.kafka

BATCH_MAX = 500
AT = datetime(2026, 3, 14, 4, 0, tzinfo=UTC)


def events(start: int, count: int) -> list[UsageEvent]:
    return [
        make_usage_event(
            event_id=f"ev-{n}",
            wallet_id=f"wal_{n % 37}",
            member_id="mem_1",
            feature="ai.summary",
            quantity=1 + n % 3,
            occurred_at=AT,
        )
        for n in range(start, start + count)
    ]


def batched(stream: faust.StreamT[bytes], size: int) -> AsyncIterator[Sequence[EventT[bytes]]]:
    """``take_events`` (values with their keys and offsets); faust's ``StreamT`` stub lacks it."""
    concrete = cast("faust.Stream[bytes]", stream)
    batches: AsyncIterator[Sequence[EventT[bytes]]] = concrete.take_events(size, within=0.2)
    return batches


def authorizer(
    bootstrap: str, app_id: str, topics: TopicNames, batches: list[int], data_dir: Path
) -> faust.App:
    """A minimal aggregator: usage.events --take_events--> usage.authorized (acks awaited)."""
    config = FaustConfig(
        app_id=app_id,
        bootstrap=bootstrap,
        partitions=TEST_PARTITIONS,
        session_timeout_s=6.0,
        commit_interval_s=0.5,
        data_dir=data_dir,
    )
    app = make_faust_app(config)
    source = app.topic(topics.usage_events, key_serializer="raw", value_serializer="raw")
    sink = app.topic(topics.usage_authorized, key_serializer="raw", value_serializer="raw")

    @app.agent(source)
    async def authorize(stream: faust.StreamT[bytes]) -> None:
        async for batch in batched(stream, BATCH_MAX):
            batches.append(len(batch))
            pending = []
            for item in batch:
                event = decode_usage_event(item.value)
                authorized = UsageAuthorized(
                    event=event,
                    credits=event.quantity * 2,
                    pricing_version="spike",
                    authorised_at=AT,
                    decision=Decision.AUTHORIZED,
                )
                pending.append(
                    await sink.send(key=wallet_key(event.wallet_id), value=encode(authorized))
                )
            # Durable before the batch ends: take_events acks (then commits) when it ends.
            await asyncio.gather(*pending)

    return app


def test_settings_avoid_what_tansu_refuses() -> None:
    settings = faust_settings(FaustConfig(app_id="x", bootstrap="h1:9092,h2:9092"))
    assert settings["broker"] == "kafka://h1:9092;kafka://h2:9092"
    assert settings["processing_guarantee"] == "at_least_once"  # exactly_once needs transactions
    assert settings["producer_acks"] == -1
    assert settings["store"] == "memory://"
    assert settings["stream_wait_empty"] is True
    assert settings["consumer_auto_offset_reset"] == "earliest"
    assert settings["broker_session_timeout"] <= 10.0
    assert settings["datadir"] == ".credits/faust/x"  # not ./x-data in the working directory


async def test_faust_take_batches_flow_end_to_end_commit_and_resume(
    tansu: TansuBroker, topics: TopicNames, tmp_path: Path
) -> None:
    app_id = f"authorizer-{uuid.uuid4().hex[:8]}"
    first_run = events(0, 3000)
    async with UsageProducer(bootstrap=tansu.bootstrap, topics=topics) as producer:
        deliveries = await producer.record_many(first_run)
        source_partition = {
            e.event_id: d.partition for e, d in zip(first_run, deliveries, strict=True)
        }

        batches: list[int] = []
        app = authorizer(tansu.bootstrap, app_id, topics, batches, tmp_path)
        await app.start()
        try:
            out = await read_topic(tansu.bootstrap, topics.usage_authorized, 3000, timeout_s=60)
        finally:
            await app.stop()

        assert len(out) == 3000
        for record in out:
            authorized = decode_usage_authorized(record.value)
            assert record.key == authorized.event.wallet_id.encode()
            assert record.partition == source_partition[authorized.event.event_id]
            assert authorized.credits == authorized.event.quantity * 2
        assert {decode_usage_authorized(r.value).event.event_id for r in out} == {
            e.event_id for e in first_run
        }
        assert max(batches) > 1  # really batched ...
        assert max(batches) <= BATCH_MAX  # ... and never beyond the batch size

        # A clean stop committed everything that was consumed.
        per_partition = {p: 0 for p in range(TEST_PARTITIONS)}
        for d in deliveries:
            per_partition[d.partition] = max(per_partition[d.partition], d.offset + 1)
        committed = await committed_offsets(
            tansu.bootstrap, app_id, topics.usage_events, TEST_PARTITIONS
        )
        assert committed == {p: (n or None) for p, n in per_partition.items()}

        # A new worker of the same group resumes from those offsets: nothing is reprocessed.
        await producer.record_many(events(3000, 500))
        resumed: list[int] = []
        app = authorizer(tansu.bootstrap, app_id, topics, resumed, tmp_path)
        await app.start()
        try:
            out = await read_topic(tansu.bootstrap, topics.usage_authorized, 3500, timeout_s=60)
        finally:
            await app.stop()
    assert len(out) == 3500
    assert sum(resumed) == 500


async def test_hazard_take_events_commits_a_batch_whose_body_raised(
    tansu: TansuBroker, topics: TopicNames, tmp_path: Path
) -> None:
    """Why aggregator batch bodies must never raise (see aggregator/faust_app.py)."""
    app_id = f"raiser-{uuid.uuid4().hex[:8]}"
    app = make_faust_app(
        FaustConfig(
            app_id=app_id,
            bootstrap=tansu.bootstrap,
            session_timeout_s=6.0,
            commit_interval_s=0.5,
            data_dir=tmp_path,
        )
    )
    source = app.topic(topics.usage_events, key_serializer="raw", value_serializer="raw")
    processed: list[str] = []
    batches_seen: list[int] = []

    @app.agent(source)
    async def flaky(stream: faust.StreamT[bytes]) -> None:
        async for batch in batched(stream, 100):
            batches_seen.append(len(batch))
            if len(batches_seen) == 1:
                raise RuntimeError("simulated downstream failure")
            processed.extend(decode_usage_event(e.value).event_id for e in batch)

    async with UsageProducer(bootstrap=tansu.bootstrap, topics=topics) as producer:
        await app.start()
        try:
            await producer.record_many(events(0, 20))

            async def first_batch_failed() -> bool:
                return len(batches_seen) >= 1

            await wait_for(first_batch_failed, timeout_s=30)
            await producer.record_many(events(20, 20))

            async def all_committed() -> bool:
                offsets = await committed_offsets(
                    tansu.bootstrap, app_id, topics.usage_events, TEST_PARTITIONS
                )
                return sum(o or 0 for o in offsets.values()) == 40

            await wait_for(all_committed, timeout_s=30, interval_s=0.5)
        finally:
            await app.stop()
    # Every offset is committed, yet the failed batch's events were never processed: lost.
    assert len(processed) < 40
    assert batches_seen[0] + len(processed) == 40
