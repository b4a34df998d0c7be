"""Removing a whole key space: benchmarks (and tests) leave no keys behind.

Each benchmark run works under its own Redis key prefix and removes it when it ends: decision
records, caps and idempotency records would otherwise stay for days (1.7 million keys had piled
up in the bench database after a day of runs).
"""

from __future__ import annotations

from redis.asyncio import Redis

from aggregator.redis_keys import KeySpace

_BATCH = 1000


async def unlink_key_space(client: Redis, keys: KeySpace) -> int:
    """Delete every key of ``keys`` (``UNLINK`` in batches while scanning); return how many."""
    deleted = 0
    batch: list[bytes] = []
    async for key in client.scan_iter(match=keys.all_keys_pattern(), count=_BATCH):
        batch.append(key)
        if len(batch) >= _BATCH:
            deleted += await client.unlink(*batch)
            batch = []
    if batch:
        deleted += await client.unlink(*batch)
    return deleted


async def drop_key_space(redis_url: str, prefix: str) -> int:
    """:func:`unlink_key_space` of the key space ``prefix`` on the server at ``redis_url``."""
    client = Redis.from_url(redis_url)
    try:
        return await unlink_key_space(client, KeySpace(prefix))
    finally:
        await client.aclose()
