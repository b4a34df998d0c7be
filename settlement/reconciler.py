"""Keep the Redis mirror converging on the ledger, and report how far it had drifted.

For each wallet, in one consistent ledger snapshot (REPEATABLE READ): the wallet's available
balance, status and chain position (its *ledger version*), and which of the mirror's in-flight
events the ledger already holds. Those are settled in the mirror first (a settlement worker
that crashed between its commit and its Redis settle leaves exactly these), then the mirror is
reloaded from the snapshot. A snapshot older than something the mirror already applied is
refused as stale by the mirror; we re-read and retry.

After Redis is lost entirely, :func:`reconcile_all` over every ledger wallet rebuilds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from psycopg_pool import AsyncConnectionPool

from aggregator.authorize import settle
from aggregator.decision import WalletStatus
from aggregator.mirror import LoadOutcome, load_wallet
from aggregator.wallet_store import WalletStore
from domain.errors import Unavailable, UnknownWallet
from settlement.ledger.writer import Conn

MAX_ATTEMPTS = 8


@dataclass(frozen=True, slots=True)
class WalletReconciliation:
    wallet_id: str
    ledger_available: int
    mirror_available: int
    drift: int  # previous mirror available - new (> 0: the mirror had been too generous)
    shortfall: int  # reservations the ledger could not cover (an operator should look)
    settled_late: int  # in-flight events already in the ledger, settled now
    attempts: int


@dataclass(slots=True)
class ReconcileReport:
    wallets: int = 0
    drifted: list[WalletReconciliation] = field(default_factory=list)
    settled_late: int = 0

    @property
    def total_drift(self) -> int:
        return sum(abs(r.drift) for r in self.drifted)

    def summary(self) -> str:
        return (
            f"reconciled {self.wallets} wallets: {len(self.drifted)} drifted "
            f"(total |drift| {self.total_drift} credits), {self.settled_late} late settlements"
        )


async def reconcile_wallet(
    pool: AsyncConnectionPool[Conn], store: WalletStore, wallet_id: str
) -> WalletReconciliation:
    """Settle what the ledger already holds, then reload the mirror from the ledger."""
    in_flight_key = store.keys.wallet(wallet_id).in_flight
    for attempt in range(1, MAX_ATTEMPTS + 1):
        raw_ids = await store.client.hkeys(in_flight_key)
        in_flight = [i.decode() if isinstance(i, bytes) else str(i) for i in raw_ids]
        available, status, version, posted = await _snapshot(pool, wallet_id, in_flight)
        if posted:
            await settle(store, wallet_id, posted, ledger_version=version)
        result = await load_wallet(
            store,
            wallet_id,
            ledger_available=available,
            ledger_version=version,
            status=WalletStatus(status),
        )
        if result.outcome is LoadOutcome.LOADED:
            return WalletReconciliation(
                wallet_id, available, result.available, result.drift, result.shortfall,
                len(posted), attempt,
            )  # fmt: skip
    raise Unavailable(
        f"wallet {wallet_id!r} kept changing while being reconciled ({MAX_ATTEMPTS} attempts); "
        "retry, or stop settlement for this wallet's partition while reconciling"
    )


async def reconcile_all(
    pool: AsyncConnectionPool[Conn], store: WalletStore, wallet_ids: list[str] | None = None
) -> ReconcileReport:
    """Reconcile ``wallet_ids`` (default: every wallet in the ledger)."""
    if wallet_ids is None:
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT id FROM wallets ORDER BY id")
            wallet_ids = [str(row[0]) for row in await cur.fetchall()]
    report = ReconcileReport()
    for wallet_id in wallet_ids:
        outcome = await reconcile_wallet(pool, store, wallet_id)
        report.wallets += 1
        report.settled_late += outcome.settled_late
        if outcome.drift or outcome.shortfall:
            report.drifted.append(outcome)
    return report


async def _snapshot(
    pool: AsyncConnectionPool[Conn], wallet_id: str, in_flight: list[str]
) -> tuple[int, str, int, list[str]]:
    """(available, status, chain position, in-flight ids already posted), one snapshot."""
    async with pool.connection() as conn, conn.transaction():
        # REPEATABLE READ: the balance and the posted-events check see one snapshot.
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cur = await conn.execute(
            "SELECT available, status, head_seq FROM wallets WHERE id = %s", (wallet_id,)
        )
        row = await cur.fetchone()
        if row is None:
            raise UnknownWallet(f"wallet {wallet_id!r} does not exist")
        posted: list[str] = []
        if in_flight:
            cur = await conn.execute(
                "SELECT source_id FROM ledger_transactions WHERE wallet_id = %s "
                "AND source = 'usage' AND source_id = ANY(%s)",
                (wallet_id, in_flight),
            )
            posted = [str(r[0]) for r in await cur.fetchall()]
    return int(row[0]), str(row[1]), int(row[2]), posted
