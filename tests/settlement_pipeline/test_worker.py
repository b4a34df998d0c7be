"""run_settlement in-process: a real consumer group on Tansu, offsets, dead letters, metrics."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from psycopg_pool import AsyncConnectionPool

from aggregator.wallet_store import WalletStore
from meter.schema import SchemaReason, decode_dead_letter, encode
from meter.topics import TopicNames
from settlement.ledger.operations import Ledger
from settlement.ledger.wallets import Wallets
from settlement.ledger.writer import Conn
from settlement.reconciler import reconcile_all
from settlement.worker import SettlementConfig, open_usage, run_settlement
from stack.metrics import RoleMetrics
from stack.tansu import TansuBroker
from tests.ledger.helpers import assert_consistent
from tests.meter.kafka_helpers import committed_offsets, read_topic, wait_for
from tests.redis_support import REDIS_URL
from tests.settlement_pipeline.conftest import TEST_PARTITIONS
from tests.settlement_pipeline.support import (
    assert_mirror_never_promises_more,
    fund,
    in_flight,
    payloads,
    produce,
    reserve,
    usage_authorized,
    usage_ids,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.kafka, pytest.mark.clickhouse]

W = "wal_worker"


def _config(
    tansu: TansuBroker, url: str, topics: TopicNames, mirror: WalletStore, data_dir: Path
) -> SettlementConfig:
    return SettlementConfig(
        bootstrap=tansu.bootstrap,
        redis_url=REDIS_URL,
        database_url=url,
        clickhouse_url=None,
        data_dir=data_dir,
        topics=topics,
        group_id=f"settle-{uuid.uuid4().hex[:8]}",
        key_prefix=mirror.keys.prefix,
        batch_max=2,  # several batches even for a handful of records
        batch_ms=50,
        session_timeout_ms=2_000,
    )


@asynccontextmanager
async def _running(config: SettlementConfig, metrics: RoleMetrics) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_settlement(config, stop=stop, metrics=metrics))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)  # re-raises whatever ended the worker


async def _until_committed(config: SettlementConfig, ends: dict[int, int]) -> None:
    async def committed() -> bool:
        topic = config.topics.usage_authorized
        done = await committed_offsets(config.bootstrap, config.group_id, topic, TEST_PARTITIONS)
        return all(done.get(p) == end for p, end in ends.items())

    await wait_for(committed, timeout_s=30, interval_s=0.2)


async def test_an_event_delivered_many_times_is_charged_once(
    tansu: TansuBroker,
    topics: TopicNames,
    producer: AIOKafkaProducer,
    wallets: Wallets,
    ledger: Ledger,
    ledger_pool: AsyncConnectionPool[Conn],
    ledger_db_url: str,
    mirror: WalletStore,
    metrics: RoleMetrics,
    tmp_path: Path,
) -> None:
    await fund(wallets, ledger, W, 100)
    await reconcile_all(ledger_pool, mirror)
    event = usage_authorized("ev-five-times", W, 25)
    await reserve(mirror, event)
    ends = await produce(producer, topics.usage_authorized, payloads([event] * 5))
    config = _config(tansu, ledger_db_url, topics, mirror, tmp_path / "chdb")

    async with _running(config, metrics):
        await _until_committed(config, ends)

    assert await usage_ids(ledger_db_url) == ["ev-five-times"]
    with open_usage(None, config.data_dir) as usage:
        assert usage.count_events() == 1
    assert await in_flight(mirror, W) == {}
    assert await assert_mirror_never_promises_more(ledger_pool, mirror, W) == (75, 75)
    await assert_consistent(ledger_db_url)
    settled = metrics.settled.labels("settlement", "posted")._value.get()
    duplicates = metrics.settled.labels("settlement", "duplicate")._value.get()
    assert (settled, duplicates) == (1, 4)
    (partition,) = ends
    assert metrics.consumer_lag.labels("settlement", str(partition))._value.get() == 0


async def test_an_undecodable_record_is_dead_lettered_and_the_stream_goes_on(
    tansu: TansuBroker,
    topics: TopicNames,
    producer: AIOKafkaProducer,
    wallets: Wallets,
    ledger: Ledger,
    ledger_pool: AsyncConnectionPool[Conn],
    ledger_db_url: str,
    mirror: WalletStore,
    metrics: RoleMetrics,
    tmp_path: Path,
) -> None:
    await fund(wallets, ledger, W, 100)
    await reconcile_all(ledger_pool, mirror)
    before = usage_authorized("ev-before", W, 10)
    after = usage_authorized("ev-after", W, 10)
    for event in (before, after):
        await reserve(mirror, event)
    garbage = b'{"schema_version": 1, "event": '
    not_authorized = encode(before.event)  # a usage.events payload on the wrong topic
    ends = await produce(
        producer,
        topics.usage_authorized,
        [
            *payloads([before]),
            (W, garbage),
            (W, not_authorized),
            *payloads([after]),
        ],
    )
    config = _config(tansu, ledger_db_url, topics, mirror, tmp_path / "chdb")

    async with _running(config, metrics):
        await _until_committed(config, ends)

    letters = [
        decode_dead_letter(r.value)
        for r in await read_topic(tansu.bootstrap, topics.usage_dead_letter, 2)
    ]
    assert [(d.reason, d.raw()) for d in letters] == [
        (SchemaReason.MALFORMED_JSON.value, garbage),
        (SchemaReason.UNKNOWN_FIELD.value, not_authorized),
    ]
    assert [d.source.offset for d in letters] == [1, 2]
    assert all(d.source.topic == topics.usage_authorized and d.message for d in letters)
    assert await usage_ids(ledger_db_url) == ["ev-after", "ev-before"]
    with open_usage(None, config.data_dir) as usage:
        assert usage.count_events() == 2
    assert await assert_mirror_never_promises_more(ledger_pool, mirror, W) == (80, 80)
    assert metrics.dead_letters.labels("settlement", "malformed_json")._value.get() == 1
