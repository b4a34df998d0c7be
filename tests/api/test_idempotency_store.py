"""IdempotencyStore on the shared connection (real Redis, DB 9): the final record replaces the
request's claim without waiting for Redis, and a record that could not be stored is reported
and leaves the claim to expire (a retry then replays: it never runs the action twice)."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator

import pytest
from fastapi.responses import Response
from redis.asyncio import Redis

from aggregator.multiplexed_redis import MultiplexedRedis
from api.idempotency import LOCK_TTL_S, RECORD_TTL_S, IdempotencyStore
from tests.redis_support import REDIS_URL, cleaning_client

pytestmark = pytest.mark.redis


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis_py(prefix: str) -> AsyncIterator[Redis]:
    async with cleaning_client(f"{prefix}:*") as client:
        yield client


class Counted:
    """An action that answers 200 and counts its runs."""

    def __init__(self) -> None:
        self.runs = 0

    async def __call__(self) -> tuple[int, dict[str, int]]:
        self.runs += 1
        return 200, {"run": self.runs}


async def execute(store: IdempotencyStore, action: Counted, key: str = "k1") -> Response:
    return await store.execute(
        scope="w1", key=key, fingerprint="fp", instance="/x", action=store.claim_first(action)
    )


async def test_the_final_record_replaces_the_claim_and_answers_the_retry(
    redis_py: Redis, prefix: str
) -> None:
    client = MultiplexedRedis.from_url(REDIS_URL)
    store = IdempotencyStore(client, prefix)
    action = Counted()
    try:
        first = await execute(store, action)
        again = await execute(store, action)
    finally:
        await client.aclose()
    assert first.status_code == again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert json.loads(bytes(again.body)) == {"run": 1}
    assert action.runs == 1
    rkey = store.record_key("w1", "k1")
    assert json.loads(await redis_py.get(rkey) or b"{}")["state"] == "done"
    assert LOCK_TTL_S < await redis_py.ttl(rkey) <= RECORD_TTL_S


async def test_a_record_lost_with_the_connection_is_logged_and_the_claim_left_to_expire(
    redis_py: Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = MultiplexedRedis.from_url(REDIS_URL)
    store = IdempotencyStore(client, prefix)
    action = Counted()
    with caplog.at_level(logging.WARNING, logger="api.idempotency"):
        answer = await execute(store, action)
        # The final record is queued, not yet written: losing the connection now loses it.
        await client.aclose()
    assert answer.status_code == 200
    rkey = store.record_key("w1", "k1")
    assert any(rkey in r.getMessage() and "not stored" in r.getMessage() for r in caplog.records)
    claim = json.loads(await redis_py.get(rkey) or b"{}")
    assert claim == {"state": "in_progress", "fp": "fp"}
    assert 0 < await redis_py.ttl(rkey) <= LOCK_TTL_S
