"""Fixtures for the settlement pipeline: real Tansu, PostgreSQL, Redis and chdb (a tmp dir).

The ledger database and the Redis mirror (own key prefix) come from ``tests/conftest.py``. One
Tansu broker serves the session; each test gets its own prefixed topics. chdb runs one data
directory per process at a time, so every store opened here is closed at teardown.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer

from aggregator.wallet_store import WalletStore
from domain.pricing import load_catalogue
from meter.topics import TopicNames
from settlement.ledger.batch_writer import BatchWriter
from settlement.usage_sink import UsageStore
from settlement.worker import SettlementPipeline, open_usage
from stack.metrics import RoleMetrics
from stack.retry_policy import RetryPolicy
from stack.tansu import TansuBroker

TEST_PARTITIONS = 4


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def tansu(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TansuBroker]:
    async with TansuBroker(tmp_path_factory.mktemp("tansu")) as broker:
        yield broker


@pytest_asyncio.fixture(loop_scope="session")
async def topics(tansu: TansuBroker) -> TopicNames:
    names = TopicNames.prefixed(f"t{uuid.uuid4().hex[:10]}-")
    await tansu.create_topics(names.all(), TEST_PARTITIONS)
    return names


@pytest_asyncio.fixture(loop_scope="session")
async def producer(tansu: TansuBroker) -> AsyncIterator[AIOKafkaProducer]:
    client = AIOKafkaProducer(
        bootstrap_servers=tansu.bootstrap, acks="all", enable_idempotence=False, linger_ms=5
    )
    await client.start()
    yield client
    await client.stop()


@pytest.fixture
def usage(tmp_path: Path) -> Iterator[UsageStore]:
    store = open_usage(None, tmp_path / "chdb")
    yield store
    store.close()


@pytest.fixture
def metrics() -> RoleMetrics:
    return RoleMetrics("settlement")


@pytest.fixture
def pipeline(
    batch_writer: BatchWriter,
    mirror: WalletStore,
    usage: UsageStore,
    producer: AIOKafkaProducer,
    topics: TopicNames,
    metrics: RoleMetrics,
) -> SettlementPipeline:
    return SettlementPipeline(
        writer=batch_writer,
        mirror=mirror,
        usage=usage,
        producer=producer,
        topics=topics,
        catalogue=load_catalogue(),
        metrics=metrics,
        retry=RetryPolicy(attempts=2, first_delay_s=0.05),
    )
