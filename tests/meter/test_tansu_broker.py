"""TansuBroker lifecycle, topic setup, and the Tansu facts the rest of the code relies on.

The "fact" tests pin broker behaviour documented in ``stack/tansu.py``; if a Tansu upgrade makes
one fail, the workaround it justifies can go.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from stack.tansu import LOG_FILE_NAME, BrokerStartFailed, TansuBroker, ensure_topics

pytestmark = pytest.mark.kafka


async def test_start_answers_metadata_then_stop_ends_the_process(tmp_path: Path) -> None:
    async with TansuBroker(tmp_path / "data") as broker:
        assert broker.running
        assert broker.bootstrap == f"127.0.0.1:{broker.port}"
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        assert await admin.list_topics() == []
        await admin.close()
    assert not broker.running
    assert "listening on: tcp://127.0.0.1" in (tmp_path / "data" / LOG_FILE_NAME).read_text()
    await broker.stop()  # idempotent


async def test_a_taken_port_is_refused(tansu: TansuBroker, tmp_path: Path) -> None:
    # Tansu itself would start (SO_REUSEPORT) and share the port with the running broker.
    with pytest.raises(BrokerStartFailed, match="in use"):
        await TansuBroker(tmp_path, port=tansu.port).start()


async def test_a_broken_binary_fails_with_the_log_named(tmp_path: Path) -> None:
    broker = TansuBroker(tmp_path, binary="/bin/false", start_timeout_s=3)
    with pytest.raises(BrokerStartFailed, match=LOG_FILE_NAME):
        await broker.start()
    assert not broker.running


async def test_ensure_topics_sets_partitions_and_is_idempotent(tansu: TansuBroker) -> None:
    names = [f"ensure-{uuid.uuid4().hex[:8]}-{i}" for i in range(2)]
    await tansu.create_topics(names, 6)
    await ensure_topics(tansu.bootstrap, names, 3)  # existing topics keep their 6 partitions
    admin = AIOKafkaAdminClient(bootstrap_servers=tansu.bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    assert sorted(len(t["partitions"]) for t in described) == [6, 6]


async def test_fact_idempotent_producers_are_refused(tansu: TansuBroker) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=tansu.bootstrap, enable_idempotence=True)
    with pytest.raises(KafkaError):
        await asyncio.wait_for(producer.start(), 10)
    await producer.stop()


async def test_fact_list_offsets_latest_lags_behind_multi_record_batches(
    tansu: TansuBroker,
) -> None:
    topic = f"hw-{uuid.uuid4().hex[:8]}"
    await tansu.create_topics([topic], 1)
    tp = TopicPartition(topic, 0)
    producer = AIOKafkaProducer(bootstrap_servers=tansu.bootstrap, acks="all", linger_ms=50)
    consumer = AIOKafkaConsumer(bootstrap_servers=tansu.bootstrap, group_id=None)
    await producer.start()
    await consumer.start()
    try:
        pending = [await producer.send(topic, b"x", partition=0) for _ in range(5)]
        offsets = [m.offset for m in await asyncio.gather(*pending)]
        assert offsets == [0, 1, 2, 3, 4]  # one batch of five records
        end = (await consumer.end_offsets([tp]))[tp]
        assert end == 1  # Kafka would say 5: Tansu answers base offset of the last batch + 1
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        await consumer.getmany(timeout_ms=1000)
        assert consumer.highwater(tp) == 5  # the fetch response's high watermark is right
    finally:
        await producer.stop()
        await consumer.stop()
