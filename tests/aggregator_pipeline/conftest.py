"""The aggregator pipeline against real services: Tansu, Redis (DB 9, a key prefix per test) and
PostgreSQL (a cloned ledger database per test). Time is frozen unless a test says otherwise.

:class:`Rig` bundles what a test needs: fund a wallet in the ledger, publish usage events, run
the real consume loop over the test's topic until it has consumed N records, read topics back.
The loop's consumer is *assigned* its partitions (with a group id, so it commits) rather than
subscribed: that is the same loop and the same commits without Tansu's slow group joins; the
consumer-group path is exercised by ``test_run_aggregator``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, TopicPartition
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from aggregator.anomaly import BurnDetector
from aggregator.wallet_store import WalletStore
from aggregator.worker import (
    AggregatorPipeline,
    OffsetCommitter,
    ScriptBatchingRedis,
    consume_loop,
)
from domain.caps import CapsConfig, DailyCaps, RateLimit, load_caps
from domain.clock import FrozenClock
from domain.pricing import PricingCatalogue, load_catalogue
from meter.consume import DecisionProducer, EventAuthorizer, Outbound
from meter.schema import UsageEvent, make_usage_event
from meter.topics import TopicNames, wallet_key
from settlement.ledger.operations import Ledger
from settlement.ledger.wallets import Wallets
from settlement.ledger.writer import Conn
from stack.metrics import RoleMetrics
from stack.retry_policy import RetryPolicy
from stack.tansu import TansuBroker
from tests.meter import conftest as meter_fixtures
from tests.meter.kafka_helpers import Record, read_topic, wait_for

# The meter suite's session broker and per-test topics (TEST_PARTITIONS partitions each).
tansu = meter_fixtures.tansu
topics = meter_fixtures.topics
TEST_PARTITIONS = meter_fixtures.TEST_PARTITIONS

FROZEN_AT = datetime(2026, 3, 14, 5, 0, tzinfo=UTC)


def relaxed(caps: CapsConfig, *, daily: DailyCaps | None = None) -> CapsConfig:
    """``caps`` with rate limits out of the way (tests that are not about rate limits)."""
    wide = RateLimit(per_second=100_000, per_minute=6_000_000)
    limits = tuple(replace(entry, limit=wide) for entry in caps.rate_limits)
    return replace(caps, rate_limits=limits, daily_caps=daily or caps.daily_caps)


def usage(
    event_id: str,
    wallet_id: str,
    feature: str = "api.basic_request",
    *,
    member_id: str = "m1",
    quantity: int = 1,
    hold_id: str | None = None,
) -> UsageEvent:
    fields: dict[str, object] = {
        "event_id": event_id,
        "wallet_id": wallet_id,
        "member_id": member_id,
        "feature": feature,
        "quantity": quantity,
        "occurred_at": FROZEN_AT,
    }
    if hold_id is not None:
        fields["hold_id"] = hold_id
    return make_usage_event(**fields)


class NeverCommits:
    """A committer that blocks forever: the task is cancelled right before its commit."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()

    async def commit(self, offsets: object) -> None:
        self.reached.set()
        await asyncio.Event().wait()


@dataclass
class Rig:
    tansu: TansuBroker
    topics: TopicNames
    store: WalletStore
    pool: AsyncConnectionPool[Conn]
    wallets: Wallets
    ledger: Ledger
    producer: DecisionProducer
    catalogue: PricingCatalogue
    caps: CapsConfig
    clock: FrozenClock
    group_id: str

    async def fund(self, wallet_id: str, credits: int) -> None:
        await self.wallets.create(wallet_id, owner_type="community", owner_id=wallet_id)
        await self.ledger.adjust(wallet_id, f"fund-{wallet_id}", credits, actor="t", reason="fund")

    def batching_store(self) -> WalletStore:
        """The mirror through a :class:`ScriptBatchingRedis` sharing the test's connections
        (what ``run_aggregator`` uses)."""
        assert isinstance(self.store.client, Redis)
        client = ScriptBatchingRedis(connection_pool=self.store.client.connection_pool)
        return WalletStore.create(client, self.store.keys)

    def authorizer(self, caps: CapsConfig | None = None) -> EventAuthorizer:
        store = self.batching_store()
        return EventAuthorizer(store, self.pool, self.catalogue, caps or self.caps, self.clock)

    async def publish(self, events: Sequence[UsageEvent]) -> None:
        await self.producer.record_many(events)

    async def publish_raw(self, wallet_id: str, value: bytes) -> None:
        message = Outbound(self.topics.usage_events, wallet_key(wallet_id), value, "raw")
        await self.producer.publish((message,))

    async def consumer(self, batch_max: int = 500) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.tansu.bootstrap,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=batch_max,
        )
        await consumer.start()
        consumer.assign(
            [TopicPartition(self.topics.usage_events, p) for p in range(TEST_PARTITIONS)]
        )
        return consumer

    def pipeline(
        self,
        committer: OffsetCommitter,
        metrics: RoleMetrics,
        *,
        caps: CapsConfig | None = None,
        detector: BurnDetector | None = None,
        low_balance_threshold: int = 200,
    ) -> AggregatorPipeline:
        return AggregatorPipeline(
            authorizer=self.authorizer(caps),
            producer=self.producer,
            committer=committer,
            metrics=metrics,
            topics=self.topics,
            low_balance_threshold=low_balance_threshold,
            detector=detector,
        )

    async def run(
        self,
        expected: int,
        *,
        batch_max: int = 500,
        caps: CapsConfig | None = None,
        detector: BurnDetector | None = None,
        low_balance_threshold: int = 200,
    ) -> RoleMetrics:
        """Run the consume loop until it has consumed ``expected`` more records, then stop it
        (the batch in flight finishes and commits first)."""
        metrics = RoleMetrics("aggregator")
        consumer = await self.consumer(batch_max)
        pipeline = self.pipeline(
            consumer, metrics, caps=caps, detector=detector,
            low_balance_threshold=low_balance_threshold,
        )  # fmt: skip
        stop = asyncio.Event()
        retry = RetryPolicy(attempts=2, first_delay_s=0.05)
        loop = asyncio.create_task(
            consume_loop(
                consumer,
                pipeline,
                stop=stop,
                batch_max=batch_max,
                batch_ms=20,
                retry=retry,
                metrics=metrics,
            )
        )

        async def consumed_enough() -> bool:
            return consumed(metrics, self.topics) >= expected

        try:
            await wait_for(consumed_enough, timeout_s=30)
        finally:
            stop.set()
            await loop
            await consumer.stop()
        return metrics

    async def read(self, topic: str, expected: int) -> list[Record]:
        return await read_topic(self.tansu.bootstrap, topic, expected, timeout_s=10)


def consumed(metrics: RoleMetrics, topics: TopicNames) -> int:
    """Records of ``usage.events`` the pipeline has processed and committed."""
    value = metrics.registry.get_sample_value(
        "credits_events_in_total", {"role": metrics.role, "topic": topics.usage_events}
    )
    return int(value or 0)


@pytest.fixture(scope="session")
def catalogue() -> PricingCatalogue:
    return load_catalogue()


@pytest.fixture(scope="session")
def real_caps() -> CapsConfig:
    return load_caps()


@pytest_asyncio.fixture(loop_scope="session")
async def producer(tansu: TansuBroker, topics: TopicNames) -> AsyncIterator[DecisionProducer]:
    async with DecisionProducer(bootstrap=tansu.bootstrap, topics=topics) as started:
        yield started


@pytest.fixture
def rig(
    tansu: TansuBroker,
    topics: TopicNames,
    mirror: WalletStore,
    ledger_pool: AsyncConnectionPool[Conn],
    wallets: Wallets,
    ledger: Ledger,
    producer: DecisionProducer,
    catalogue: PricingCatalogue,
    real_caps: CapsConfig,
) -> Rig:
    return Rig(
        tansu, topics, mirror, ledger_pool, wallets, ledger, producer, catalogue,
        relaxed(real_caps), FrozenClock(FROZEN_AT), f"agg-{uuid.uuid4().hex[:8]}",
    )  # fmt: skip
