"""Fixtures for the Redis mirror tests: a real Redis (logical DB 9), one key prefix per test.

Set ``CREDITS_TEST_REDIS_URL`` to point elsewhere. Keys are removed by prefix after each test
rather than by FLUSHDB, so tests may share the database with other suites.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from aggregator.redis_keys import KeySpace
from aggregator.wallet_store import WalletStore

REDIS_URL = os.environ.get("CREDITS_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")


def new_client() -> Redis:
    return Redis.from_url(REDIS_URL)


def new_keyspace(shards: int = 1) -> KeySpace:
    return KeySpace(prefix=f"t{uuid.uuid4().hex[:12]}", hold_index_shards=shards)


async def delete_keyspace(client: Redis, keys: KeySpace) -> None:
    doomed = [key async for key in client.scan_iter(match=keys.all_keys_pattern(), count=1000)]
    for start in range(0, len(doomed), 500):
        await client.delete(*doomed[start : start + 500])


@pytest.fixture
async def redis_client() -> AsyncIterator[Redis]:
    client = new_client()
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis_client: Redis) -> AsyncIterator[WalletStore]:
    keys = new_keyspace()
    yield WalletStore.create(redis_client, keys)
    await delete_keyspace(redis_client, keys)
