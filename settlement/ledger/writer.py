"""The ledger writer: the only code that posts transactions and changes wallet balances.

Each operation is one PostgreSQL transaction that locks the wallet row (``FOR UPDATE``), checks
the idempotency key ``(source, source_id)``, prepares the rows (pure), inserts the transaction and
its postings, and moves the wallet's balances and chain head, guarded by its ``version``. Locking
before the idempotency check makes a concurrent retry wait and then *see* the original, so it
returns the original instead of posting twice; the unique constraint is the backstop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from psycopg import AsyncConnection
from psycopg.errors import UniqueViolation
from psycopg_pool import AsyncConnectionPool

from domain.clock import Clock, SystemClock
from domain.errors import IdempotencyConflict, UnknownWallet
from settlement.ledger.accounts import AccountDirectory
from settlement.ledger.lookups import find_by_source
from settlement.ledger.prepare import ChainHead, PostRequest, prepare
from settlement.ledger.records import TxnRecord, WalletRecord
from settlement.ledger.sql import (
    INSERT_POSTINGS,
    INSERT_TXN,
    UPDATE_WALLET,
    WALLET_COLUMNS,
    txn_from_row,
    wallet_from_row,
)

Conn = AsyncConnection[tuple[Any, ...]]
Builder = Callable[[Conn, WalletRecord], Awaitable[Sequence[PostRequest]]]


async def lock_wallet(conn: Conn, wallet_id: str) -> WalletRecord:
    cur = await conn.execute(
        f"SELECT {WALLET_COLUMNS} FROM wallets WHERE id = %s FOR UPDATE", (wallet_id,)
    )
    row = await cur.fetchone()
    if row is None:
        raise UnknownWallet(f"wallet {wallet_id!r} does not exist", wallet_id=wallet_id)
    return wallet_from_row(row)


def check_replay(found: TxnRecord, wallet_id: str, expected: Mapping[str, object]) -> TxnRecord:
    """A retried request returns the original; the same key for another request is refused."""
    actual = {"wallet_id": found.wallet_id, "credits": found.credits, "type": found.type}
    differs = {
        k: (v, actual[k]) for k, v in {"wallet_id": wallet_id, **expected}.items() if actual[k] != v
    }
    if differs:
        raise IdempotencyConflict(
            f"{found.source}/{found.source_id} was already used for a different request "
            f"(field: requested vs original = {differs})",
            source=found.source,
            source_id=found.source_id,
        )
    return found


class LedgerWriter:
    """Posts transactions. One instance per process; safe for concurrent use."""

    def __init__(self, pool: AsyncConnectionPool[Conn], clock: Clock | None = None) -> None:
        self.pool = pool
        self.clock: Clock = clock or SystemClock()
        self.accounts = AccountDirectory()

    async def post(
        self,
        wallet_id: str,
        source: str,
        source_id: str,
        build: Builder,
        expected: Mapping[str, object] | None = None,
    ) -> tuple[TxnRecord, ...]:
        """Post what ``build`` returns, once per ``(source, source_id)``.

        ``build`` runs with the wallet locked and returns the transactions to write, the first one
        carrying the idempotency key; it may read the ledger and raise a typed error, in which
        case nothing is written. A replay returns ``(original,)``; ``expected`` are the fields it
        must match.
        """
        try:
            return await self._post_once(wallet_id, source, source_id, build, expected or {})
        except UniqueViolation:
            # Another wallet's transaction took this key between our check and insert.
            async with self.pool.connection() as conn:
                found = await find_by_source(conn, source, source_id, replayed=True)
            if found is None:
                raise
            return (check_replay(found, wallet_id, expected or {}),)

    async def _post_once(
        self,
        wallet_id: str,
        source: str,
        source_id: str,
        build: Builder,
        expected: Mapping[str, object],
    ) -> tuple[TxnRecord, ...]:
        async with self.pool.connection() as conn, conn.transaction():
            wallet = await lock_wallet(conn, wallet_id)
            found = await find_by_source(conn, source, source_id, replayed=True)
            if found is not None:
                return (check_replay(found, wallet_id, expected),)
            requests = await build(conn, wallet)
            assert (requests[0].source, requests[0].source_id) == (source, source_id)
            records = []
            for request in requests:
                record, wallet = await self.insert(conn, wallet, request)
                records.append(record)
            return tuple(records)

    async def insert(
        self, conn: Conn, wallet: WalletRecord, request: PostRequest
    ) -> tuple[TxnRecord, WalletRecord]:
        """Write one transaction for a wallet locked by this connection; return its new state."""
        accounts = (await self.accounts.for_wallets(conn, [wallet.id]))[wallet.id]
        cur = await conn.execute("SELECT nextval('ledger_txn_id_seq')")
        id_row = await cur.fetchone()
        assert id_row is not None
        head = ChainHead(wallet.balances, wallet.head_seq, wallet.head_hash)
        prepared = prepare(request, head, id_row[0], self.clock.now(), accounts)
        await conn.execute(INSERT_TXN, prepared.row)
        await conn.execute(
            INSERT_POSTINGS, (id_row[0], list(prepared.account_ids), list(prepared.amounts))
        )
        new = prepared.head
        cur = await conn.execute(
            UPDATE_WALLET,
            (*new.balances.as_tuple(), new.seq, new.hash, wallet.id, wallet.version),
        )
        assert cur.rowcount == 1, "the wallet row is locked by this transaction"
        record = txn_from_row(
            (
                *prepared.row[:10],
                request.member_id,
                request.feature,
                dict(request.metadata),
                prepared.row[23],
                new.hash,
            )
        )
        return record, replace(
            wallet,
            balances=new.balances,
            version=wallet.version + 1,
            head_seq=new.seq,
            head_hash=new.hash,
        )
