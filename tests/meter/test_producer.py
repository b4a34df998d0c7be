"""UsageProducer against a real Tansu broker: acks, keys, batching, dead letters, failures."""

from __future__ import annotations

import base64
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from domain.errors import Unavailable
from meter.producer import ProducerTuning, PublishFailed, UsageProducer
from meter.schema import (
    MessageSource,
    SchemaReason,
    SchemaViolation,
    UsageEvent,
    decode_dead_letter,
    decode_usage_event,
    make_usage_event,
)
from meter.topics import TopicNames
from stack.tansu import TansuBroker
from tests.meter.kafka_helpers import read_topic

pytestmark = pytest.mark.kafka

FROZEN_NOW = datetime(2026, 3, 14, 5, 0, tzinfo=UTC)


def event(n: int, *, wallets: int = 50) -> UsageEvent:
    return make_usage_event(
        event_id=f"ev-{n}",
        wallet_id=f"wal_{n % wallets}",
        member_id=f"mem_{n % 7}",
        feature="ai.summary",
        quantity=1 + n % 5,
        occurred_at=datetime(2026, 3, 14, 4, 0, tzinfo=UTC),
        metadata={"n": n},
    )


async def test_record_is_acked_and_reads_back_identically(
    tansu: TansuBroker, topics: TopicNames
) -> None:
    sent = event(1)
    async with UsageProducer(bootstrap=tansu.bootstrap, topics=topics) as producer:
        delivery = await producer.record(sent)
    assert delivery.topic == topics.usage_events
    (record,) = await read_topic(tansu.bootstrap, topics.usage_events, 1)
    assert (record.partition, record.offset) == (delivery.partition, delivery.offset)
    assert record.key == b"wal_1"
    assert decode_usage_event(record.value) == sent


async def test_record_many_10k_all_acked_keyed_by_wallet(
    tansu: TansuBroker, topics: TopicNames
) -> None:
    events = [event(n) for n in range(10_000)]
    async with UsageProducer(bootstrap=tansu.bootstrap, topics=topics) as producer:
        started = time.perf_counter()
        deliveries = await producer.record_many(events)
        elapsed = time.perf_counter() - started
    assert len(deliveries) == 10_000
    assert len({(d.partition, d.offset) for d in deliveries}) == 10_000
    print(f"record_many: 10,000 events acked in {elapsed:.2f}s ({10_000 / elapsed:,.0f}/s)")

    records = await read_topic(tansu.bootstrap, topics.usage_events, 10_000)
    assert len(records) == 10_000
    partitions_of_wallet: dict[bytes, set[int]] = defaultdict(set)
    for record in records:
        decoded = decode_usage_event(record.value)
        assert record.key == decoded.wallet_id.encode()
        partitions_of_wallet[record.key].add(record.partition)
    assert all(len(p) == 1 for p in partitions_of_wallet.values())  # one wallet, one partition
    assert len({r.partition for r in records}) > 1  # and wallets do spread over partitions
    by_id = {decode_usage_event(r.value).event_id: r for r in records}
    assert sorted(by_id) == sorted(e.event_id for e in events)
    for sent, delivery in zip(events, deliveries, strict=True):  # deliveries are in input order
        assert (by_id[sent.event_id].partition, by_id[sent.event_id].offset) == (
            delivery.partition,
            delivery.offset,
        )


async def test_invalid_event_is_refused_before_anything_is_sent(
    tansu: TansuBroker, topics: TopicNames
) -> None:
    bypassed = UsageEvent.model_construct(**{**event(2).model_dump(), "quantity": 0})
    async with UsageProducer(bootstrap=tansu.bootstrap, topics=topics) as producer:
        with pytest.raises(SchemaViolation) as caught:
            await producer.record_many([event(3), bypassed])
        assert caught.value.reason is SchemaReason.INVALID_QUANTITY
        await producer.record(event(4))
    records = await read_topic(tansu.bootstrap, topics.usage_events, 1)
    assert [decode_usage_event(r.value).event_id for r in records] == ["ev-4"]


async def test_dead_letter_round_trip(tansu: TansuBroker, topics: TopicNames) -> None:
    raw = b'{"schema_version": 1, "quantity": "5"'
    with pytest.raises(SchemaViolation) as caught:
        decode_usage_event(raw)
    source = MessageSource(
        topic=topics.usage_events,
        partition=3,
        offset=41,
        key_base64=base64.b64encode(b"wal_7").decode(),
    )
    async with UsageProducer(
        bootstrap=tansu.bootstrap, topics=topics, clock=lambda: FROZEN_NOW
    ) as producer:
        delivery = await producer.dead_letter(raw, caught.value, source)
        await producer.dead_letter(b"\xff", "unknown_feature", source, message="no such feature")
    assert delivery.topic == topics.usage_dead_letter
    first, second = sorted(
        await read_topic(tansu.bootstrap, topics.usage_dead_letter, 2), key=lambda r: r.offset
    )
    assert first.key == b"wal_7"  # dead letters stay keyed by the wallet, like their source
    letter = decode_dead_letter(first.value)
    assert letter.raw() == raw
    assert letter.reason == "malformed_json"
    assert letter.source == source
    assert letter.dead_lettered_at == FROZEN_NOW
    assert letter.details["reason"] == "malformed_json"
    other = decode_dead_letter(second.value)
    assert (other.reason, other.message, other.raw()) == (
        "unknown_feature",
        "no such feature",
        b"\xff",
    )


async def test_an_injected_producer_is_used_and_left_running(
    tansu: TansuBroker, topics: TopicNames
) -> None:
    client = AIOKafkaProducer(bootstrap_servers=tansu.bootstrap, acks="all")
    await client.start()
    try:
        async with UsageProducer(producer=client, topics=topics) as producer:
            await producer.record(event(5))
        await client.send_and_wait(topics.usage_events, b"still open")  # not stopped by us
    finally:
        await client.stop()


async def test_unacknowledged_publish_raises_retryable_error(tmp_path: Path) -> None:
    broker = TansuBroker(tmp_path)
    await broker.start()
    tuning = ProducerTuning(request_timeout_ms=1000, delivery_timeout_s=2.0)
    producer = UsageProducer(bootstrap=broker.bootstrap, tuning=tuning)
    await producer.start()
    try:
        await producer.record(event(6))
        await broker.stop()
        started = time.perf_counter()
        with pytest.raises(PublishFailed) as caught:
            await producer.record(event(7))
        assert time.perf_counter() - started < 5
        assert caught.value.retryable
        assert isinstance(caught.value, Unavailable)
        assert caught.value.event_ids == ("ev-7",)
    finally:
        await producer.stop()
        await broker.stop()


async def test_start_against_no_broker_is_unavailable(tmp_path: Path) -> None:
    broker = TansuBroker(tmp_path)
    await broker.start()
    bootstrap = broker.bootstrap
    await broker.stop()
    with pytest.raises(Unavailable):
        await UsageProducer(bootstrap=bootstrap).start()


async def test_one_message_goes_where_the_clients_own_partitioner_puts_it(
    tansu: TansuBroker, topics: TopicNames
) -> None:
    """A single publish passes the partition it remembers for the key; it must be the one the
    client's default partitioner picks (one wallet's events stay ordered on one partition)."""
    keyed = [event(n, wallets=40) for n in range(80)]  # every wallet twice: cached the 2nd time
    reference = AIOKafkaProducer(bootstrap_servers=tansu.bootstrap, acks="all")
    await reference.start()
    used: set[int] = set()
    try:
        async with UsageProducer(bootstrap=tansu.bootstrap, topics=topics) as producer:
            for sent in keyed:
                ours = await producer.record(sent)
                theirs = await reference.send_and_wait(
                    topics.usage_events, b"reference", key=sent.wallet_id.encode()
                )
                assert ours.partition == theirs.partition, sent.wallet_id
                used.add(ours.partition)
    finally:
        await reference.stop()
    assert len(used) > 1  # the topic has several partitions, so the check means something
