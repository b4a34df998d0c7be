"""Wallet lifecycle and membership (no balance changes here: those go through the writer)."""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool

from domain.errors import IdempotencyConflict, InvalidInput, UnknownWallet
from domain.ledger_rules import Bucket
from settlement.ledger.records import (
    MEMBER_ID_RE,
    MEMBER_ROLES,
    OWNER_TYPES,
    WALLET_ID_RE,
    WALLET_STATUSES,
    WalletRecord,
    require_id,
)
from settlement.ledger.sql import WALLET_COLUMNS, wallet_from_row
from settlement.ledger.writer import Conn


def _choice(value: object, options: tuple[str, ...], field: str) -> str:
    if value not in options:
        raise InvalidInput(f"{field} must be one of {', '.join(options)}, got {value!r}")
    assert isinstance(value, str)
    return value


class Wallets:
    def __init__(self, pool: AsyncConnectionPool[Conn]) -> None:
        self.pool = pool

    async def create(self, wallet_id: str, *, owner_type: str, owner_id: str) -> WalletRecord:
        """Create a wallet with its four balance accounts; idempotent for the same owner."""
        require_id(wallet_id, field="wallet_id", pattern=WALLET_ID_RE)
        _choice(owner_type, OWNER_TYPES, "owner_type")
        require_id(owner_id, field="owner_id", pattern=MEMBER_ID_RE)
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "INSERT INTO wallets (id, owner_type, owner_id) VALUES (%s, %s, %s) "
                "ON CONFLICT DO NOTHING RETURNING id",
                (wallet_id, owner_type, owner_id),
            )
            if await cur.fetchone():
                await conn.execute(
                    "INSERT INTO ledger_accounts (wallet_id, name) SELECT %s, unnest(%s::text[])",
                    (wallet_id, [bucket.value for bucket in Bucket]),
                )
            existing = await self._read(conn, wallet_id)
        if existing is None or (existing.owner_type, existing.owner_id) != (owner_type, owner_id):
            raise IdempotencyConflict(
                f"wallet {wallet_id!r} or owner {owner_type}/{owner_id} already exists "
                "with a different owner or id",
                wallet_id=wallet_id,
            )
        return existing

    async def get(self, wallet_id: str) -> WalletRecord:
        async with self.pool.connection() as conn:
            record = await self._read(conn, wallet_id)
        if record is None:
            raise UnknownWallet(f"wallet {wallet_id!r} does not exist", wallet_id=wallet_id)
        return record

    async def add_member(self, wallet_id: str, member_id: str, *, role: str) -> None:
        """Add or re-role a member of a community/organisation wallet."""
        require_id(member_id, field="member_id", pattern=MEMBER_ID_RE)
        _choice(role, MEMBER_ROLES, "role")
        async with self.pool.connection() as conn:
            if await self._read(conn, wallet_id) is None:
                raise UnknownWallet(f"wallet {wallet_id!r} does not exist", wallet_id=wallet_id)
            await conn.execute(
                "INSERT INTO wallet_members (wallet_id, member_id, role) VALUES (%s, %s, %s) "
                "ON CONFLICT (wallet_id, member_id) DO UPDATE SET role = EXCLUDED.role",
                (wallet_id, member_id, role),
            )

    async def set_status(self, wallet_id: str, status: str) -> None:
        _choice(status, WALLET_STATUSES, "status")
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE wallets SET status = %s WHERE id = %s", (status, wallet_id)
            )
            if cur.rowcount != 1:
                raise UnknownWallet(f"wallet {wallet_id!r} does not exist", wallet_id=wallet_id)

    async def list_ids(self) -> list[str]:
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT id FROM wallets ORDER BY id")
            return [str(row[0]) for row in await cur.fetchall()]

    @staticmethod
    async def _read(conn: Conn, wallet_id: str) -> WalletRecord | None:
        cur = await conn.execute(
            f"SELECT {WALLET_COLUMNS} FROM wallets WHERE id = %s", (wallet_id,)
        )
        row: tuple[Any, ...] | None = await cur.fetchone()
        return wallet_from_row(row) if row else None
