"""Reads the operations need while a wallet is locked (two-phase state, refund totals)."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from domain.errors import NotFound, StateConflict
from domain.ledger_rules import Phase
from settlement.ledger.records import TxnRecord
from settlement.ledger.sql import READ_RECORD_COLUMNS, txn_from_row

Conn = AsyncConnection[tuple[Any, ...]]


async def open_transfer(conn: Conn, wallet_id: str, ref: str, what: str) -> TxnRecord:
    """The unresolved pending transaction ``ref`` of this wallet, or a typed error."""
    cur = await conn.execute(
        f"SELECT {READ_RECORD_COLUMNS} FROM ledger_transactions WHERE opens_ref = %s", (ref,)
    )
    row = await cur.fetchone()
    if row is None or row[1] != wallet_id:
        raise NotFound(f"{what} {ref.split(':', 1)[1]!r} not found on wallet {wallet_id!r}")
    cur = await conn.execute(
        "SELECT phase, source_id FROM ledger_transactions WHERE resolves_ref = %s", (ref,)
    )
    resolved = await cur.fetchone()
    if resolved is not None:
        raise StateConflict(
            f"{what} {ref.split(':', 1)[1]!r} is already {Phase(resolved[0]).value}",
            phase=resolved[0],
        )
    return txn_from_row(row)


async def resolved_transfer(conn: Conn, ref: str) -> TxnRecord | None:
    cur = await conn.execute(
        f"SELECT {READ_RECORD_COLUMNS} FROM ledger_transactions WHERE resolves_ref = %s", (ref,)
    )
    row = await cur.fetchone()
    return txn_from_row(row, replayed=True) if row else None


async def group_metadata_sums(conn: Conn, group_ref: str, *keys: str) -> tuple[int, ...]:
    """Sums of integer metadata ``keys`` over the transactions of ``group_ref``."""
    columns = ", ".join("coalesce(sum((metadata->>%s)::bigint), 0)" for _ in keys)
    cur = await conn.execute(
        f"SELECT {columns} FROM ledger_transactions WHERE group_ref = %s", (*keys, group_ref)
    )
    row = await cur.fetchone()
    assert row is not None
    return tuple(int(value) for value in row)


async def find_by_source(
    conn: Conn, source: str, source_id: str, *, replayed: bool = False
) -> TxnRecord | None:
    cur = await conn.execute(
        f"SELECT {READ_RECORD_COLUMNS} FROM ledger_transactions "
        "WHERE source = %s AND source_id = %s",
        (source, source_id),
    )
    row = await cur.fetchone()
    return txn_from_row(row, replayed=replayed) if row else None
