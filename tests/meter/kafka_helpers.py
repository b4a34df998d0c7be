"""Plain-aiokafka helpers for tests: read a topic back, read a group's committed offsets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


async def read_topic(
    bootstrap: str, topic: str, expected: int, *, timeout_s: float = 30.0
) -> list[Record]:
    """Every record of ``topic`` from the beginning, waiting until ``expected`` have arrived.

    Reads without a consumer group (assign + seek), so it commits nothing and needs no join.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        max_poll_records=50_000,
    )
    await consumer.start()
    try:
        await consumer.topics()  # loads metadata, so partitions_for_topic knows the topic
        partitions = consumer.partitions_for_topic(topic) or set()
        assert partitions, f"topic {topic} does not exist"
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[Record] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for tp, messages in batches.items():
                records.extend(
                    Record(tp.topic, tp.partition, m.offset, m.key, m.value) for m in messages
                )
        # A short extra poll shows whether more than ``expected`` arrived (duplicates).
        for messages in (await consumer.getmany(timeout_ms=300)).values():
            records.extend(Record(m.topic, m.partition, m.offset, m.key, m.value) for m in messages)
        return records
    finally:
        await consumer.stop()


async def committed_offsets(
    bootstrap: str, group_id: str, topic: str, partitions: int
) -> dict[int, int | None]:
    """The group's committed offset per partition (None: nothing committed)."""
    # The admin client's OffsetFetch cannot parse Tansu's answer; the consumer's can.
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id)
    await consumer.start()
    try:
        result: dict[int, int | None] = {}
        for p in range(partitions):
            result[p] = await consumer.committed(TopicPartition(topic, p))
        return result
    finally:
        await consumer.stop()


async def wait_for(
    predicate: Callable[[], Awaitable[bool]], *, timeout_s: float = 20.0, interval_s: float = 0.1
) -> None:
    """Poll an async predicate until it returns True; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s}s")
