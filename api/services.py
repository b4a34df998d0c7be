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

from aggregator.multiplexed_redis import MultiplexedRedis
from aggregator.redis_client import HiredisPackedConnection
from aggregator.redis_keys import KeySpace
from aggregator.wallet_store import WalletStore
from api.idempotency import IdempotencyStore
from api.keys import ApiKeys
from api.live.hub import LiveHub
from api.payments.gateway import PaymentGateway
from api.payments.razorpay import RazorpaySettings
from api.payments.service import PaymentService
from api.payments.wiring import open_gateway, payment_service
from api.recharge.charger import RechargeCharger
from api.recharge.store import RechargeStore
from api.recharge.worker import RechargeWorker
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
    razorpay: RazorpaySettings | None = None
    """Key id and secrets when ``gateway`` is ``razorpay``."""
    pool_max_size: int = 20
    redis_max_connections: int = 2048
    auto_recharge_worker: bool = True
    live_updates: bool = True
    fast_lane: bool = True
    """Serve ``POST /wallet/consume`` through :mod:`api.fast_lane` (False: the FastAPI route)."""


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
    recharge: RechargeStore
    """Auto-recharge settings, recharges and notifications (api/recharge)."""
    exits: AsyncExitStack
    """Later components (gateways, workers) register their cleanup here."""
    recharge_charger: RechargeCharger | None = None
    """Overrides the payment service behind auto-recharge (tests: a recording charger)."""
    recharge_worker: RechargeWorker | None = None
    live: LiveHub | None = None
    """The live-update hub (api/live), when ``config.live_updates``."""
    live_heartbeat_s: float = 15.0
    gateway: PaymentGateway | None = None
    """The payment gateway (api/payments: the sandbox unless ``config.gateway`` says else)."""
    payments: PaymentService | None = None


@asynccontextmanager
async def open_services(
    config: ApiConfig, *, clock: Clock | None = None
) -> AsyncIterator[ApiServices]:
    clock = clock or SystemClock()
    async with AsyncExitStack() as exits:
        pool = await open_pool(config.database_url, min_size=2, max_size=config.pool_max_size)
        exits.push_async_callback(pool.close)
        # A large pool: past it a request fails fast with a retryable 503 (a blocking pool
        # costs every command an asyncio timeout, measurably on the consume path).
        client = aioredis.Redis(
            connection_pool=aioredis.ConnectionPool.from_url(
                config.redis_url,
                max_connections=config.redis_max_connections,
                connection_class=HiredisPackedConnection,  # C command packing (hot path)
            )
        )
        exits.push_async_callback(client.aclose)
        shared = _shared_connection(config.redis_url)
        if shared is not None:
            exits.push_async_callback(shared.aclose)
        mirror = WalletStore.create(client, KeySpace(config.key_prefix), script_client=shared)
        # No linger: a consume waits for its own ack, so lingering only adds latency;
        # concurrent requests still share batches while a produce request is in flight.
        tuning = ProducerTuning(client_id="credits-api", linger_ms=0)
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
        gateway = open_gateway(
            config.gateway, exits, public_url=config.public_url, razorpay=config.razorpay
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
            idempotency=IdempotencyStore(shared or client, config.key_prefix),
            recharge=RechargeStore(pool, clock),
            exits=exits,
            gateway=gateway,
            payments=payment_service(
                pool=pool,
                ledger=Ledger(pool, clock),
                wallets=Wallets(pool),
                mirror=mirror,
                producer=producer,
                topics=config.topics,
                clock=clock,
                gateway=gateway,
            ),
        )


def _shared_connection(redis_url: str) -> MultiplexedRedis | None:
    """One connection shared by every request for the consume path's Redis calls (the
    authorisation script, the idempotency record); ``None`` for a URL it cannot serve (TLS,
    unix socket, options), where the pooled redis-py client does everything."""
    try:
        return MultiplexedRedis.from_url(redis_url)
    except ValueError:
        return None
