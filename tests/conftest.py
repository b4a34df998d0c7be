"""Shared fixtures: real PostgreSQL databases migrated to head, and a Redis mirror, per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from psycopg_pool import AsyncConnectionPool

from aggregator.wallet_store import WalletStore
from settlement.ledger.batch_writer import BatchWriter
from settlement.ledger.db import open_pool
from settlement.ledger.operations import Ledger
from settlement.ledger.scratch import scratch_database
from settlement.ledger.wallets import Wallets
from settlement.ledger.writer import Conn
from stack.redis_cleanup import unlink_key_space
from tests.pg import ADMIN_URL
from tests.redis_support import new_client, new_keyspace


@pytest.fixture(scope="session")
def ledger_template() -> Iterator[str]:
    """A migrated database that per-test databases are cloned from (fast: no migrations)."""
    with scratch_database(ADMIN_URL) as url:
        yield url.rpartition("/")[2].partition("?")[0]


@pytest.fixture
def ledger_db_url(ledger_template: str) -> Iterator[str]:
    with scratch_database(ADMIN_URL, template=ledger_template) as url:
        yield url


@pytest.fixture
async def ledger_pool(ledger_db_url: str) -> AsyncIterator[AsyncConnectionPool[Conn]]:
    pool = await open_pool(ledger_db_url, min_size=1, max_size=72)
    yield pool
    await pool.close()


@pytest.fixture
def ledger(ledger_pool: AsyncConnectionPool[Conn]) -> Ledger:
    return Ledger(ledger_pool)


@pytest.fixture
def wallets(ledger_pool: AsyncConnectionPool[Conn]) -> Wallets:
    return Wallets(ledger_pool)


@pytest.fixture
def batch_writer(ledger_pool: AsyncConnectionPool[Conn]) -> BatchWriter:
    return BatchWriter(ledger_pool)


@pytest.fixture
async def mirror() -> AsyncIterator[WalletStore]:
    """A Redis mirror on the real server under a key prefix of its own."""
    client = new_client()
    keys = new_keyspace()
    yield WalletStore.create(client, keys)
    await unlink_key_space(client, keys)
    await client.aclose()
