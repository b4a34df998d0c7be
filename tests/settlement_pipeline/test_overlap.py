"""settle_batches: the next batch is prepared while one is written; writes never overlap."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from aggregator.wallet_store import WalletStore
from domain.pricing import load_catalogue
from meter.topics import TopicNames
from settlement.ledger.batch_writer import BatchWriter
from settlement.ledger.operations import Ledger
from settlement.ledger.wallets import Wallets
from settlement.reconciler import reconcile_all
from settlement.usage_sink import UsageStore
from settlement.worker import (
    BatchReport,
    InboundRecord,
    PreparedBatch,
    SettlementConfig,
    SettlementPipeline,
    _BatchGuard,
    settle_batches,
)
from stack.metrics import RoleMetrics
from stack.retry_policy import RetryPolicy
from stack.tansu import TansuBroker
from tests.meter.kafka_helpers import committed_offsets, wait_for
from tests.redis_support import REDIS_URL
from tests.settlement_pipeline.conftest import TEST_PARTITIONS
from tests.settlement_pipeline.support import (
    fund,
    in_flight,
    payloads,
    produce,
    reserve,
    usage_authorized,
    usage_ids,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.kafka, pytest.mark.clickhouse]

W = "wal_overlap"


class Recording(SettlementPipeline):
    """Notes when each batch is prepared and when its write starts and ends."""

    events: list[tuple[str, int, float]]

    async def prepare_interleaved(self, records: Sequence[InboundRecord]) -> PreparedBatch:
        prepared = await super().prepare_interleaved(records)
        self.events.append(("prepared", records[0].offset, time.monotonic()))
        return prepared

    async def write(self, batch: PreparedBatch) -> BatchReport:
        first = batch.records[0].offset
        self.events.append(("write", first, time.monotonic()))
        try:
            return await super().write(batch)
        finally:
            self.events.append(("written", first, time.monotonic()))


async def test_batches_are_prepared_ahead_and_written_one_after_another(
    tansu: TansuBroker,
    topics: TopicNames,
    producer: AIOKafkaProducer,
    wallets: Wallets,
    ledger: Ledger,
    batch_writer: BatchWriter,
    mirror: WalletStore,
    usage: UsageStore,
    metrics: RoleMetrics,
    ledger_db_url: str,
    tmp_path: Path,
) -> None:
    await fund(wallets, ledger, W, 1_000)
    await reconcile_all(batch_writer.pool, mirror)
    events = [usage_authorized(f"ov-{i:02d}", W, 3) for i in range(12)]
    for event in events:
        await reserve(mirror, event)
    ends = await produce(producer, topics.usage_authorized, payloads(events))
    pipeline = Recording(
        writer=batch_writer, mirror=mirror, usage=usage, producer=producer, topics=topics,
        catalogue=load_catalogue(), metrics=metrics,
        retry=RetryPolicy(attempts=2, first_delay_s=0.05),
    )  # fmt: skip
    pipeline.events = []
    config = SettlementConfig(
        bootstrap=tansu.bootstrap, redis_url=REDIS_URL, database_url=ledger_db_url,
        clickhouse_url=None, data_dir=tmp_path, topics=topics,
        group_id=f"overlap-{uuid.uuid4().hex[:8]}", batch_max=3, batch_ms=50,
        session_timeout_ms=2_000,
    )  # fmt: skip
    guard = _BatchGuard()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=tansu.bootstrap, group_id=config.group_id, enable_auto_commit=False,
        auto_offset_reset="earliest", max_poll_records=3, session_timeout_ms=2_000,
        heartbeat_interval_ms=500,
    )  # fmt: skip
    consumer.subscribe([topics.usage_authorized], listener=guard)
    await consumer.start()
    stop = asyncio.Event()
    loop = asyncio.create_task(
        settle_batches(consumer, pipeline, guard, config, stop=stop, metrics=metrics)
    )

    async def committed() -> bool:
        done = await committed_offsets(
            tansu.bootstrap, config.group_id, topics.usage_authorized, TEST_PARTITIONS
        )
        return all(done.get(p) == end for p, end in ends.items())

    try:
        await wait_for(committed, timeout_s=30, interval_s=0.2)
    finally:
        stop.set()
        await asyncio.wait_for(loop, 30)
        await consumer.stop()

    writes = [(kind, at) for kind, _, at in pipeline.events if kind != "prepared"]
    assert [kind for kind, _ in writes] == ["write", "written"] * 4  # never two at once
    starts = [first for kind, first, _ in pipeline.events if kind == "write"]
    assert starts == sorted(starts)  # in log order
    assert any(  # a batch was prepared while the one before it was being written
        kind == "prepared" and before[0] == "write"
        for before, (kind, _, _) in zip(pipeline.events, pipeline.events[1:], strict=False)
    ), pipeline.events
    assert await usage_ids(ledger_db_url) == sorted(e.event.event_id for e in events)
    assert await in_flight(mirror, W) == {}
