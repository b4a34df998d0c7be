"""Assertions shared by the ledger tests: verify passes and balances equal summed postings."""

from __future__ import annotations

import psycopg

from settlement.ledger.verify import VerifyReport, verify_ledger


async def verify(url: str) -> VerifyReport:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        return await verify_ledger(conn)


async def assert_consistent(url: str) -> VerifyReport:
    report = await verify(url)
    assert report.ok, "\n".join(str(d) for d in report.discrepancies)
    return report


async def count_transactions(url: str, wallet_id: str | None = None) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM ledger_transactions WHERE %s::text IS NULL OR wallet_id = %s",
            (wallet_id, wallet_id),
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def posting_balance(url: str, wallet_id: str, bucket: str) -> int:
    """A wallet bucket's balance as the sum of its postings (independent of the wallet row)."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(
            "SELECT coalesce(sum(p.amount), 0) FROM ledger_postings p "
            "JOIN ledger_accounts a ON a.id = p.account_id WHERE a.wallet_id = %s AND a.name = %s",
            (wallet_id, bucket),
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])
