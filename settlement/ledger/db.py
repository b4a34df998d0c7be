"""Connection pools for the ledger (created in ``main()``, never at import time)."""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool

from settlement.ledger.writer import Conn


async def open_pool(
    database_url: str, *, min_size: int = 1, max_size: int = 10
) -> AsyncConnectionPool[Conn]:
    pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
        database_url, min_size=min_size, max_size=max_size, open=False, timeout=30
    )
    await pool.open(wait=True)
    return pool
