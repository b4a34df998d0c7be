"""The worker end to end on real PostgreSQL, Redis and Tansu: 1,000 concurrent threshold
crossings on one wallet start exactly one recharge, charged exactly once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer
from psycopg_pool import AsyncConnectionPool

from aggregator.mirror import load_wallet
from aggregator.wallet_store import WalletStore
from api.recharge.engine import RechargeEngine
from api.recharge.store import RechargeStore
from api.recharge.worker import RechargeWorker, WorkerConfig
from domain.auto_recharge import StartVerdict, settings_from
from domain.clock import SystemClock
from meter.consume import DecisionProducer, Outbound
from meter.schema import BalanceChanged, LowBalance, decode_wallet_event, encode
from meter.topics import TopicNames, wallet_key
from settlement.ledger.wallets import Wallets
from settlement.ledger.writer import Conn
from stack.tansu import TansuBroker
from tests.api.recharge.support import RecordingCharger
from tests.meter.kafka_helpers import read_topic, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.kafka]


@pytest.fixture
async def live_wallet(wallets: Wallets, ledger_pool: AsyncConnectionPool[Conn]) -> str:
    wallet = f"w_{uuid.uuid4().hex[:10]}"
    await wallets.create(wallet, owner_type="community", owner_id="owner_1")
    settings = settings_from(
        threshold_credits=200, amount_rupees=150, payment_method_token="tok_card_4111",
        daily_max=3,
    )  # fmt: skip
    await RechargeStore(ledger_pool, SystemClock()).save_settings(wallet, settings, "owner_1")
    return wallet


@pytest.fixture
async def producer(tansu: TansuBroker, topics: TopicNames) -> AsyncIterator[DecisionProducer]:
    async with DecisionProducer(bootstrap=tansu.bootstrap, topics=topics) as started:
        yield started


WorkerFactory = Callable[[RecordingCharger, str], RechargeWorker]


@pytest.fixture
def make_worker(
    ledger_pool: AsyncConnectionPool[Conn],
    mirror: WalletStore,
    tansu: TansuBroker,
    topics: TopicNames,
    producer: DecisionProducer,
) -> WorkerFactory:
    """A worker (not started) in its own consumer group, as one API process runs it."""

    def make(charger: RecordingCharger, group_id: str) -> RechargeWorker:
        store = RechargeStore(ledger_pool, SystemClock())
        engine = RechargeEngine(store, charger, SystemClock(), mirror)
        config = WorkerConfig(
            bootstrap=tansu.bootstrap, topics=topics, group_id=group_id, tick_s=0.2
        )
        return RechargeWorker(engine, producer, config, SystemClock())

    return make


async def test_a_thousand_concurrent_observations_start_one_recharge(
    ledger_pool: AsyncConnectionPool[Conn], live_wallet: str, mirror: WalletStore
) -> None:
    await load_wallet(mirror, live_wallet, ledger_available=150, ledger_version=1)
    charger = RecordingCharger(delay_s=0.05)
    engines = [  # four "processes", each with its own store object, on one database
        RechargeEngine(RechargeStore(ledger_pool, SystemClock()), charger, SystemClock(), mirror)
        for _ in range(4)
    ]
    claims = await asyncio.gather(
        *(engines[n % 4].observe(live_wallet, 199 - n % 150, f"low:{n}") for n in range(1000))
    )
    started = [c for c in claims if c.verdict is StartVerdict.START]
    assert len(started) == 1
    assert {c.verdict for c in claims} <= {
        StartVerdict.START, StartVerdict.IN_FLIGHT, StartVerdict.COOLING_DOWN
    }  # fmt: skip
    assert len(charger.calls) == 1
    assert charger.calls[0].amount_paise == 15_000
    recent = await engines[0].store.recent(live_wallet)
    assert [r.state for r in recent] == ["succeeded"]


async def test_worker_reacts_to_low_balance_events_on_kafka(
    ledger_pool: AsyncConnectionPool[Conn],
    live_wallet: str,
    mirror: WalletStore,
    tansu: TansuBroker,
    topics: TopicNames,
    make_worker: WorkerFactory,
) -> None:
    await load_wallet(mirror, live_wallet, ledger_available=120, ledger_version=1)
    charger = RecordingCharger(delay_s=0.05)
    # Two API processes; separate groups: both see every event.
    workers = [make_worker(charger, f"auto-recharge-{n}") for n in range(2)]
    await asyncio.gather(*(w.start() for w in workers))
    try:
        await _produce_crossings(tansu.bootstrap, topics, live_wallet, 1000)
        await wait_for(_all_observed(workers, 1000), timeout_s=60)
        expected = {"recharge_requested", "recharge_succeeded"}
        records = await read_topic(tansu.bootstrap, topics.wallet_events, 1002, timeout_s=30)
        recharge_events = [
            e for e in (decode_wallet_event(r.value) for r in records) if e.type in expected
        ]
    finally:
        await asyncio.gather(*(w.stop() for w in workers))
    assert len(charger.calls) == 1
    assert sorted(e.type for e in recharge_events) == sorted(expected)
    recent = await RechargeStore(ledger_pool, SystemClock()).recent(live_wallet)
    assert [r.state for r in recent] == ["succeeded"]


async def test_worker_leaves_usage_balance_changes_to_the_sweep(
    live_wallet: str,
    mirror: WalletStore,
    topics: TopicNames,
    producer: DecisionProducer,
    make_worker: WorkerFactory,
) -> None:
    await load_wallet(mirror, live_wallet, ledger_available=120, ledger_version=1)
    worker = make_worker(RecordingCharger(), "auto-recharge-usage")
    await worker.start()
    try:
        # Settlement's usage balances (below the threshold), then one purchase's balance.
        await producer.publish(
            [_balance(topics, live_wallet, f"usage-{n}", "usage") for n in range(5)]
            + [_balance(topics, live_wallet, "purchase-1", "purchase")]
        )
        await wait_for(_all_observed([worker], 1), timeout_s=30)
        await asyncio.sleep(0.5)  # every record of the batch has been looked at by now
    finally:
        await worker.stop()
    assert worker.observed == 1  # the purchase's; usage's are not database claims


def _balance(topics: TopicNames, wallet_id: str, source_id: str, cause: str) -> Outbound:
    event = BalanceChanged(
        type="balance_changed",
        event_id=f"balance:{cause}:{source_id}",
        wallet_id=wallet_id,
        occurred_at=datetime.now(UTC),
        available_credits=120,
        reserved_credits=0,
        delta_credits=-10,
        cause=cause,
        source_id=source_id,
    )
    return Outbound(topics.wallet_events, wallet_key(wallet_id), encode(event), source_id)


async def _produce_crossings(bootstrap: str, topics: TopicNames, wallet_id: str, n: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        sends = []
        for i in range(n):
            event = LowBalance(
                type="low_balance",
                event_id=f"low:{uuid.uuid4().hex}",
                wallet_id=wallet_id,
                occurred_at=datetime.now(UTC),
                available_credits=199 - i % 150,
                threshold_credits=200,
            )
            sends.append(
                await producer.send(topics.wallet_events, encode(event), key=wallet_key(wallet_id))
            )
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


def _all_observed(workers: list[RechargeWorker], n: int):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return all(w.observed >= n for w in workers)

    return check
