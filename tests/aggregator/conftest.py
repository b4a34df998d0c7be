"""Fixtures for the Redis mirror tests: a real Redis (logical DB 9), one key prefix per test.

Set ``CREDITS_TEST_REDIS_URL`` to point elsewhere. Keys are removed by prefix after each test
rather than by FLUSHDB, so tests may share the database with other suites.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from aggregator.wallet_store import WalletStore
from stack.redis_cleanup import unlink_key_space
from tests.redis_support import new_client, new_keyspace


@pytest.fixture
async def redis_client() -> AsyncIterator[Redis]:
    client = new_client()
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis_client: Redis) -> AsyncIterator[WalletStore]:
    keys = new_keyspace()
    yield WalletStore.create(redis_client, keys)
    await unlink_key_space(redis_client, keys)
