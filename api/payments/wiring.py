"""Build the payment gateway and service for one API process (called by ``open_services``).

The sandbox is the gateway of ``make up`` and the tests: in process, delivering its signed
webhooks over HTTP to ``<public_url>/webhooks/razorpay`` (with no ``public_url`` they wait in
``gateway.events`` until delivered). The Razorpay adapter needs its key id, key secret and
webhook secret (:class:`~api.payments.razorpay.RazorpaySettings`).
"""

from __future__ import annotations

from contextlib import AsyncExitStack

from psycopg_pool import AsyncConnectionPool

from aggregator.wallet_store import WalletStore
from api.payments.effects import KafkaWalletEvents, PaymentEffects
from api.payments.gateway import PaymentGateway
from api.payments.razorpay import RazorpayGateway, RazorpaySettings
from api.payments.sandbox import SandboxGateway
from api.payments.service import PaymentService
from api.payments.store import PaymentStore
from domain.clock import Clock
from domain.errors import ConfigError
from meter.consume import DecisionProducer
from meter.topics import TopicNames
from settlement.ledger.operations import Ledger
from settlement.ledger.wallets import Wallets
from settlement.ledger.writer import Conn

WEBHOOK_PATH = "/webhooks/razorpay"


def open_gateway(
    kind: str,
    exits: AsyncExitStack,
    *,
    public_url: str | None = None,
    razorpay: RazorpaySettings | None = None,
) -> PaymentGateway:
    if kind == "sandbox":
        url = public_url.rstrip("/") + WEBHOOK_PATH if public_url else None
        sandbox = SandboxGateway(webhook_url=url)
        exits.push_async_callback(sandbox.aclose)
        return sandbox
    if kind == "razorpay":
        if razorpay is None:
            raise ConfigError("the razorpay gateway needs its key id and secrets", field="gateway")
        adapter = RazorpayGateway.create(razorpay)
        exits.push_async_callback(adapter.aclose)
        return adapter
    raise ConfigError(f"unknown payment gateway {kind!r}", field="gateway")


def payment_service(
    *,
    pool: AsyncConnectionPool[Conn],
    ledger: Ledger,
    wallets: Wallets,
    mirror: WalletStore,
    producer: DecisionProducer,
    topics: TopicNames,
    clock: Clock,
    gateway: PaymentGateway,
) -> PaymentService:
    store = PaymentStore(pool)
    effects = PaymentEffects(store, ledger, mirror, KafkaWalletEvents(producer, topics), clock)
    return PaymentService(
        store=store, ledger=ledger, wallets=wallets, gateway=gateway, effects=effects
    )
