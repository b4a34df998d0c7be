"""Funded benchmark wallets (``bench_w0000``...), posted through the real ledger."""

from __future__ import annotations

from settlement.ledger.db import open_pool
from settlement.ledger.operations import Ledger
from settlement.ledger.wallets import Wallets


async def fund_wallets(database_url: str, count: int, credits_each: int) -> None:
    pool = await open_pool(database_url, max_size=2)
    try:
        registry, ledger = Wallets(pool), Ledger(pool)
        for index in range(count):
            wallet_id = f"bench_w{index:04d}"
            await registry.create(wallet_id, owner_type="community", owner_id=wallet_id)
            await ledger.adjust(
                wallet_id, f"fund-{wallet_id}", credits_each, actor="bench", reason="funding"
            )
    finally:
        await pool.close()
