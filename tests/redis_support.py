"""The Redis the tests use (real server, logical DB 9), with one key prefix per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis

from aggregator.redis_keys import KeySpace

REDIS_URL = os.environ.get("CREDITS_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")


def new_client() -> Redis:
    return Redis.from_url(REDIS_URL)


def new_keyspace(shards: int = 1) -> KeySpace:
    return KeySpace(prefix=f"t{uuid.uuid4().hex[:12]}", hold_index_shards=shards)


@asynccontextmanager
async def cleaning_client(pattern: str) -> AsyncIterator[Redis]:
    """A redis-py client that deletes the keys matching ``pattern`` afterwards."""
    client = new_client()
    try:
        yield client
        doomed = [key async for key in client.scan_iter(match=pattern, count=1000)]
        if doomed:
            await client.delete(*doomed)
    finally:
        await client.aclose()
