"""The Redis the tests use (real server, logical DB 9), with one key prefix per test."""

from __future__ import annotations

import os
import uuid

from redis.asyncio import Redis

from aggregator.redis_keys import KeySpace

REDIS_URL = os.environ.get("CREDITS_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")


def new_client() -> Redis:
    return Redis.from_url(REDIS_URL)


def new_keyspace(shards: int = 1) -> KeySpace:
    return KeySpace(prefix=f"t{uuid.uuid4().hex[:12]}", hold_index_shards=shards)
