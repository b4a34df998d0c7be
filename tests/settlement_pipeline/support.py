"""Building authorised events the way the aggregator does, and reading every sink back."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from aiokafka import AIOKafkaProducer
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from aggregator.authorize import authorize
from aggregator.decision import AuthRequest, Outcome
from aggregator.mirror import snapshot
from aggregator.policy import Tier
from aggregator.replies import integer, text
from aggregator.wallet_store import WalletStore
from meter.schema import Decision, UsageAuthorized, encode, make_usage_event
from meter.topics import wallet_key
from settlement.ledger.operations import Ledger
from settlement.ledger.wallets import Wallets
from settlement.ledger.writer import Conn
from stack.redis_cleanup import unlink_key_space

NOW = datetime(2026, 3, 14, 10, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class RawRecord:
    """A consumed record as the pipeline sees it (what aiokafka's ConsumerRecord carries)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def as_records(topic: str, payloads: Sequence[bytes]) -> list[RawRecord]:
    """Payloads as consecutive records of partition 0 (in-process pipeline tests)."""
    return [RawRecord(topic, 0, offset, b"k", value) for offset, value in enumerate(payloads)]


def usage_authorized(
    event_id: str,
    wallet_id: str,
    credits: int,
    *,
    feature: str = "api.basic_request",
    hold_id: str | None = None,
    member_id: str = "m1",
    metadata: Mapping[str, object] | None = None,
    pricing_version: str = "1",
) -> UsageAuthorized:
    event = make_usage_event(
        event_id=event_id,
        wallet_id=wallet_id,
        member_id=member_id,
        feature=feature,
        quantity=1,
        occurred_at=NOW,
        hold_id=hold_id,
        metadata=dict(metadata or {}),
    )
    return UsageAuthorized(
        event=event,
        credits=credits,
        pricing_version=pricing_version,
        authorised_at=NOW,
        decision=Decision.HOLD_CAPTURED if hold_id else Decision.AUTHORIZED,
    )


async def fund(wallets: Wallets, ledger: Ledger, wallet_id: str, credits: int) -> None:
    await wallets.create(wallet_id, owner_type="community", owner_id=wallet_id)
    if credits:
        await ledger.adjust(wallet_id, f"fund-{wallet_id}", credits, actor="t", reason="fund")


async def reserve(store: WalletStore, event: UsageAuthorized) -> None:
    """Authorise ``event`` in the mirror, as the aggregator did before producing it."""
    request = AuthRequest(
        event.event.event_id,
        event.event.wallet_id,
        event.event.member_id,
        event.credits,
        Tier.CORE,
        NOW_MS,
    )
    decision = await authorize(store, request)
    assert decision.outcome is Outcome.AUTHORIZED, decision


async def produce(
    producer: AIOKafkaProducer, topic: str, messages: Sequence[tuple[str | None, bytes]]
) -> dict[int, int]:
    """Produce (wallet id, payload) pairs with acks=all; the end offset of each partition."""
    pending = [
        await producer.send(topic, value, key=wallet_key(wallet) if wallet else None)
        for wallet, value in messages
    ]
    ends: dict[int, int] = {}
    for meta in await asyncio.gather(*pending):
        ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
    return ends


def payloads(events: Sequence[UsageAuthorized]) -> list[tuple[str | None, bytes]]:
    return [(e.event.wallet_id, encode(e)) for e in events]


async def usage_ids(url: str) -> list[str]:
    """Every usage event id in the ledger (with repeats, if there were any)."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(
            "SELECT source_id FROM ledger_transactions WHERE source = 'usage' ORDER BY source_id"
        )
        return [str(row[0]) for row in await cur.fetchall()]


async def ledger_available(pool: AsyncConnectionPool[Conn], wallet_id: str) -> int:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT available FROM wallets WHERE id = %s", (wallet_id,))
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def in_flight(store: WalletStore, wallet_id: str) -> dict[str, int]:
    raw = await store.client.hgetall(store.keys.wallet(wallet_id).in_flight)
    return {text(k): integer(v) for k, v in raw.items()}


async def assert_mirror_never_promises_more(
    pool: AsyncConnectionPool[Conn], store: WalletStore, wallet_id: str
) -> tuple[int, int]:
    """Mirror available + reserved <= ledger available (never an over-promise); both >= 0.

    Returns (mirror available, ledger available).
    """
    ledger = await ledger_available(pool, wallet_id)
    view = await snapshot(store, wallet_id)
    assert view is not None
    assert ledger >= 0
    assert view.available >= 0
    assert view.available + view.reserved <= ledger, (view, ledger)
    return view.available, ledger


async def flush_mirror(store: WalletStore) -> None:
    """Lose every key of the mirror, as a Redis FLUSHALL would (this test's key space only)."""
    assert isinstance(store.client, Redis)
    await unlink_key_space(store.client, store.keys)
