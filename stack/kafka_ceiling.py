"""The Kafka ceiling: a bare aiokafka produce -> consume loop on the same broker.

The pipeline benchmark reports its throughput against this: the most any consumer of these
events could do here, with the same payloads, keys, acks=all and batching producer.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stack.tansu import ensure_topics


def consumer_for(bootstrap: str, topic: str, group_id: str) -> AIOKafkaConsumer:
    """A consumer tuned for throughput (large fetches, manual commits, short sessions)."""
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=16 << 20,
        fetch_max_wait_ms=100,
        max_poll_records=100_000,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )


def producer_for(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=False,  # Tansu refuses idempotent producers
        linger_ms=20,
        max_batch_size=512 * 1024,
        max_request_size=8 << 20,
    )


async def kafka_ceiling(
    bootstrap: str, payloads: Sequence[tuple[bytes, bytes]], partitions: int
) -> float:
    """Events/s from the first send to the last record consumed (and committed)."""
    topic = f"bench.ceiling.{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [topic], partitions)
    producer, consumer = producer_for(bootstrap), consumer_for(bootstrap, topic, f"g-{topic}")
    await producer.start()
    await consumer.start()
    try:
        while not consumer.assignment():
            await asyncio.sleep(0.05)
        started = time.perf_counter()
        consuming = asyncio.create_task(_consume(consumer, len(payloads)))
        acks = [await producer.send(topic, value, key=key) for key, value in payloads]
        await asyncio.gather(*acks)
        finished = await consuming
    finally:
        await producer.stop()
        await consumer.stop()
    return len(payloads) / (finished - started)


async def _consume(consumer: AIOKafkaConsumer, count: int) -> float:
    seen = 0
    while seen < count:
        records = await consumer.getmany(timeout_ms=500)
        seen += sum(len(batch) for batch in records.values())
        if records:
            await consumer.commit()
    return time.perf_counter()
