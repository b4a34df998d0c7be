"""Ledger account ids, cached: accounts are immutable rows, so a cached id never goes stale."""

from __future__ import annotations

from collections.abc import Iterable

from psycopg import AsyncConnection

from domain.ledger_rules import Account, Bucket, Platform, parse_account


class AccountDirectory:
    def __init__(self) -> None:
        self._platform: dict[Account, int] = {}
        self._wallets: dict[str, dict[Account, int]] = {}

    async def for_wallets(
        self, conn: AsyncConnection[tuple[object, ...]], wallet_ids: Iterable[str]
    ) -> dict[str, dict[Account, int]]:
        """Each wallet's accounts plus the platform's, keyed by account."""
        wanted = sorted(set(wallet_ids))
        missing = [w for w in wanted if w not in self._wallets]
        if missing or not self._platform:
            cur = await conn.execute(
                "SELECT id, wallet_id, name FROM ledger_accounts "
                "WHERE wallet_id IS NULL OR wallet_id = ANY(%s)",
                (missing,),
            )
            for account_id, wallet_id, name in await cur.fetchall():
                assert isinstance(account_id, int)
                assert isinstance(name, str)
                if wallet_id is None:
                    self._platform[parse_account(name)] = account_id
                else:
                    self._wallets.setdefault(str(wallet_id), {})[Bucket(name)] = account_id
        assert len(self._platform) == len(Platform), "platform accounts are seeded by migration"
        return {w: {**self._platform, **self._wallets[w]} for w in wanted if w in self._wallets}
