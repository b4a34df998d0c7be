"""Bring the Redis mirror back to the ledger before the workers start (``credits up``).

Two steps, both reported:

1. :func:`settlement.reconciler.reconcile_all`: settle in-flight events the ledger already
   holds, reload every wallet from one ledger snapshot, measure the drift.
2. Only when the broker is new and empty (the embedded Tansu keeps topics in memory, so a
   restart loses whatever was still on ``usage.authorized``): release the reservations still
   in flight. After step 1 none of them is in the ledger, and with the events gone no worker
   will ever settle them, so keeping them would hold the credits forever. Each released event
   id may be authorised afresh if its producer retries it. With a durable Kafka the events
   are still on their topic and settlement will post them: nothing is released.

Runs while no worker is up, so nothing settles concurrently.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import redis.asyncio as aioredis

from aggregator.authorize import release
from aggregator.redis_keys import KeySpace
from aggregator.wallet_store import WalletStore
from settlement.ledger.db import open_pool
from settlement.reconciler import ReconcileReport, reconcile_all

_SHOWN_IDS = 5  # event ids named per wallet in the report; the rest are counted


@dataclass(frozen=True, slots=True)
class Released:
    wallet_id: str
    event_id: str
    credits: int


@dataclass(slots=True)
class MirrorSyncReport:
    reconcile: ReconcileReport
    released: list[Released] = field(default_factory=list)

    @property
    def released_credits(self) -> int:
        return sum(r.credits for r in self.released)

    def summary(self) -> str:
        return (
            f"{self.reconcile.summary()}; released {len(self.released)} reservations "
            f"({self.released_credits} credits) of events lost with the previous broker"
        )

    def details(self) -> list[str]:
        """One line per drifted wallet and per released reservation (for the operator)."""
        lines = [
            f"wallet {r.wallet_id}: mirror drift {r.drift:+d} credits (ledger available "
            f"{r.ledger_available}, mirror now {r.mirror_available}), shortfall {r.shortfall}, "
            f"settled late {r.settled_late}"
            for r in self.reconcile.drifted
        ]
        by_wallet: dict[str, list[Released]] = {}
        for released in self.released:
            by_wallet.setdefault(released.wallet_id, []).append(released)
        for wallet_id, items in by_wallet.items():
            shown = ", ".join(r.event_id for r in items[:_SHOWN_IDS])
            more = f" and {len(items) - _SHOWN_IDS} more" if len(items) > _SHOWN_IDS else ""
            lines.append(
                f"wallet {wallet_id}: released {len(items)} reservations "
                f"({sum(r.credits for r in items)} credits) of lost events {shown}{more}"
            )
        return lines


async def sync_mirror(
    database_url: str, redis_url: str, key_prefix: str, *, release_in_flight: bool
) -> MirrorSyncReport:
    """Reconcile every ledger wallet, then (``release_in_flight``) release what is in flight."""
    pool = await open_pool(database_url, max_size=2)
    client = aioredis.from_url(redis_url)
    try:
        store = WalletStore.create(client, KeySpace(key_prefix))
        report = MirrorSyncReport(await reconcile_all(pool, store))
        if release_in_flight:
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT id FROM wallets ORDER BY id")
                wallet_ids = [str(row[0]) for row in await cur.fetchall()]
            for wallet_id in wallet_ids:
                in_flight = await client.hkeys(store.keys.wallet(wallet_id).in_flight)
                for raw in in_flight:
                    event_id = raw.decode() if isinstance(raw, bytes) else str(raw)
                    result = await release(store, wallet_id, event_id)
                    if result.released:
                        report.released.append(Released(wallet_id, event_id, result.credits))
        return report
    finally:
        await client.aclose()
        await pool.close()
