"""Benchmarks leave no keys behind: each run works under its own Redis key prefix, removed when
it ends (decision records, caps and idempotency records would otherwise stay for days: 1.7
million keys had piled up in the bench database after a day of runs)."""

from __future__ import annotations

from redis.asyncio import Redis

from aggregator.redis_keys import KeySpace

_BATCH = 1000


async def drop_key_space(redis_url: str, prefix: str) -> int:
    """Delete every key under ``prefix`` (``UNLINK``, in batches while scanning); return how
    many were deleted."""
    pattern = KeySpace(prefix).all_keys_pattern()
    deleted = 0
    client = Redis.from_url(redis_url)
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=pattern, count=_BATCH):
            batch.append(key)
            if len(batch) >= _BATCH:
                deleted += await client.unlink(*batch)
                batch = []
        if batch:
            deleted += await client.unlink(*batch)
    finally:
        await client.aclose()
    return deleted
