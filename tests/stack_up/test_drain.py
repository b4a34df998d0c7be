"""Lag and drain on a real Tansu: ends come from fetch high watermarks (Tansu's ListOffsets
under-reports multi-record batches), committed offsets from the group, stages in order."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from domain.errors import Unavailable
from stack.drain import LagProbe, Stage, wait_until_drained
from stack.tansu import TansuBroker

pytestmark = pytest.mark.kafka
PARTITIONS = 2


async def _produce(bootstrap: str, topic: str, count: int) -> None:
    # One linger window: several records share a batch, the case ListOffsets gets wrong.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=50)
    await producer.start()
    try:
        sends = [await producer.send(topic, b"x", partition=i % PARTITIONS) for i in range(count)]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


async def _commit(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    """Commit as ``group`` without joining it (manual assignment)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


async def test_lag_is_measured_per_stage_and_drain_waits_for_the_last_one(
    broker: TansuBroker,
) -> None:
    prefix = uuid.uuid4().hex[:8]
    first, second = f"{prefix}-in", f"{prefix}-out"
    await broker.create_topics([first, second], PARTITIONS)
    stages = [Stage(f"{prefix}-g1", first), Stage(f"{prefix}-g2", second)]
    await _produce(broker.bootstrap, first, 10)

    async with LagProbe(broker.bootstrap, stages) as probe:
        lags = await probe.measure()
        assert [lag.total for lag in lags] == [10, 0]  # nothing committed yet: all behind
        assert dict(lags[0].behind) == {0: 5, 1: 5}

        tps = [TopicPartition(first, p) for p in range(PARTITIONS)]
        await _commit(broker.bootstrap, stages[0].group_id, dict.fromkeys(tps, 5))
        await _produce(broker.bootstrap, second, 4)  # what the first stage produced
        lags = await probe.measure()
        assert [lag.total for lag in lags] == [0, 4]

    report = await wait_until_drained(broker.bootstrap, stages, timeout_s=1.0, interval_s=0.1)
    assert not report.drained
    assert report.waited_s >= 1.0
    assert "NOT drained" in report.summary()
    assert "4 behind" in report.summary()

    out = [TopicPartition(second, p) for p in range(PARTITIONS)]
    await _commit(broker.bootstrap, stages[1].group_id, dict.fromkeys(out, 2))
    report = await wait_until_drained(broker.bootstrap, stages, timeout_s=10.0)
    assert report.drained, report.summary()


async def test_abort_ends_the_wait_early(broker: TansuBroker) -> None:
    topic = f"{uuid.uuid4().hex[:8]}-in"
    await broker.create_topics([topic], PARTITIONS)
    await _produce(broker.bootstrap, topic, 3)
    abort = asyncio.Event()
    abort.set()
    report = await wait_until_drained(
        broker.bootstrap, [Stage("nobody", topic)], timeout_s=60.0, abort=abort
    )
    assert not report.drained
    assert report.waited_s < 5.0


async def test_a_missing_topic_is_an_operator_error(broker: TansuBroker) -> None:
    with pytest.raises(Unavailable, match="does not exist"):
        await wait_until_drained(
            broker.bootstrap, [Stage("g", f"missing-{uuid.uuid4().hex[:8]}")], timeout_s=1.0
        )
