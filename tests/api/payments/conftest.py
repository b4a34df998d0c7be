"""A payment service on real PostgreSQL, Redis and Tansu, with the sandbox gateway holding its
webhooks until a test delivers them (``auto_deliver=False``), in any order, any number of times.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest_asyncio
from psycopg_pool import AsyncConnectionPool

from aggregator import mirror as mirror_ops
from aggregator.wallet_store import WalletStore
from api.payments.effects import KafkaWalletEvents, PaymentEffects
from api.payments.sandbox import SandboxGateway
from api.payments.service import PaymentService
from api.payments.store import PaymentStore
from domain.clock import SystemClock
from meter.consume import DecisionProducer
from meter.topics import TopicNames
from settlement.ledger.operations import Ledger
from settlement.ledger.wallets import Wallets
from settlement.ledger.writer import Conn
from stack.tansu import TansuBroker
from tests.meter import conftest as meter_fixtures

tansu = meter_fixtures.tansu
topics = meter_fixtures.topics


@dataclass
class Rig:
    service: PaymentService
    store: PaymentStore
    gateway: SandboxGateway
    ledger: Ledger
    wallets: Wallets
    mirror: WalletStore
    topics: TopicNames
    bootstrap: str
    wallet_id: str
    member_id: str

    async def mirror_available(self) -> int:
        snap = await mirror_ops.snapshot(self.mirror, self.wallet_id)
        assert snap is not None
        return snap.available

    async def ledger_available(self) -> int:
        return (await self.wallets.get(self.wallet_id)).balances.available


@pytest_asyncio.fixture(loop_scope="session")
async def rig(
    ledger_pool: AsyncConnectionPool[Conn],
    ledger: Ledger,
    wallets: Wallets,
    mirror: WalletStore,
    tansu: TansuBroker,
    topics: TopicNames,
) -> AsyncIterator[Rig]:
    producer = DecisionProducer(bootstrap=tansu.bootstrap, topics=topics)
    await producer.start()
    gateway = SandboxGateway(auto_deliver=False)
    store = PaymentStore(ledger_pool)
    effects = PaymentEffects(
        store, ledger, mirror, KafkaWalletEvents(producer, topics), SystemClock()
    )
    service = PaymentService(
        store=store, ledger=ledger, wallets=wallets, gateway=gateway, effects=effects
    )
    wallet_id, member_id = f"w_{uuid.uuid4().hex[:10]}", f"m_{uuid.uuid4().hex[:6]}"
    wallet = await wallets.create(wallet_id, owner_type="community", owner_id=member_id)
    await wallets.add_member(wallet_id, member_id, role="owner")
    await mirror_ops.load_wallet(
        mirror, wallet_id, ledger_available=0, ledger_version=wallet.head_seq
    )
    yield Rig(
        service, store, gateway, ledger, wallets, mirror, topics, tansu.bootstrap,
        wallet_id, member_id,
    )  # fmt: skip
    await gateway.aclose()
    await producer.stop()
