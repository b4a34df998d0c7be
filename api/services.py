"""What one API process holds open: pools, clients, producers and the services built on them.

:func:`open_services` builds them in dependency order and closes them in reverse, so the app's
lifespan (and tests) get one object and one ``async with``. Routes reach it through
``request.app.state.services`` (see :func:`api.auth.services`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from aggregator.redis_keys import KeySpace
from aggregator.wallet_store import WalletStore
from api.idempotency import IdempotencyStore
from api.keys import ApiKeys
from domain.caps import CapsConfig, load_caps
from domain.clock import Clock, SystemClock
from domain.pricing import PricingCatalogue, load_catalogue
from meter.consume import CreditConsumer, DecisionProducer
from meter.producer import ProducerTuning, UsageProducer
from meter.topics import TopicNames
from settlement.ledger.db import open_pool
from settlement.ledger.operations import Ledger
from settlement.ledger.wallets import Wallets
from settlement.ledger.writer import Conn


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """Everything the API process needs to know; built from :class:`stack.settings.Settings`
    by ``credits api`` / ``credits up``, or directly by tests."""

    database_url: str
    redis_url: str
    kafka_bootstrap: str
    topics: TopicNames = field(default_factory=TopicNames)
    key_prefix: str = "cdc"
    admin_key: str | None = None
    public_url: str | None = None
    gateway: str = "sandbox"
    low_balance_threshold: int = 200
    usage_query_url: str | None = None
    clickhouse_url: str | None = None
    pool_max_size: int = 20


@dataclass(slots=True)
class ApiServices:
    config: ApiConfig
    clock: Clock
    pool: AsyncConnectionPool[Conn]
    ledger: Ledger
    wallets: Wallets
    redis: Any
    mirror: WalletStore
    producer: DecisionProducer
    usage_producer: UsageProducer
    consumer: CreditConsumer
    catalogue: PricingCatalogue
    caps: CapsConfig
    keys: ApiKeys
    idempotency: IdempotencyStore
    exits: AsyncExitStack
    """Later components (gateways, workers) register their cleanup here."""


@asynccontextmanager
async def open_services(
    config: ApiConfig, *, clock: Clock | None = None
) -> AsyncIterator[ApiServices]:
    clock = clock or SystemClock()
    async with AsyncExitStack() as exits:
        pool = await open_pool(config.database_url, min_size=2, max_size=config.pool_max_size)
        exits.push_async_callback(pool.close)
        client = aioredis.from_url(config.redis_url)
        exits.push_async_callback(client.aclose)
        mirror = WalletStore.create(client, KeySpace(config.key_prefix))
        tuning = ProducerTuning(client_id="credits-api", linger_ms=1)
        producer = DecisionProducer(
            bootstrap=config.kafka_bootstrap, topics=config.topics, tuning=tuning
        )
        await producer.start()
        exits.push_async_callback(producer.stop)
        usage_producer = UsageProducer(
            bootstrap=config.kafka_bootstrap, topics=config.topics, tuning=tuning
        )
        await usage_producer.start()
        exits.push_async_callback(usage_producer.stop)
        catalogue, caps = load_catalogue(), load_caps()
        consumer = CreditConsumer(
            mirror,
            producer,
            pool,
            catalogue,
            caps,
            clock,
            topics=config.topics,
            low_balance_threshold=config.low_balance_threshold,
        )
        yield ApiServices(
            config=config,
            clock=clock,
            pool=pool,
            ledger=Ledger(pool, clock),
            wallets=Wallets(pool),
            redis=client,
            mirror=mirror,
            producer=producer,
            usage_producer=usage_producer,
            consumer=consumer,
            catalogue=catalogue,
            caps=caps,
            keys=ApiKeys(pool, admin_token=config.admin_key),
            idempotency=IdempotencyStore(client, config.key_prefix),
            exits=exits,
        )
