"""ScriptBatchingRedis against the real Redis: same answers as one call per script, fewer trips."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from uuid import uuid4

import pytest
import pytest_asyncio
import redis.exceptions

from aggregator.authorize import authorize
from aggregator.decision import AuthRequest, Outcome
from aggregator.mirror import load_wallet
from aggregator.policy import Tier
from aggregator.redis_keys import KeySpace
from aggregator.wallet_store import WalletStore
from aggregator.worker import ScriptBatchingRedis
from stack.redis_cleanup import unlink_key_space
from stack.tansu import free_port
from tests.redis_support import REDIS_URL, new_keyspace

pytestmark = pytest.mark.redis

NOW_MS = 1_773_464_400_000


class CountingBatches(ScriptBatchingRedis):
    """Counts the pipelines sent (one per event-loop tick that queued scripts)."""

    flushes = 0

    def _flush(self) -> None:
        self.flushes += 1
        super()._flush()


@pytest_asyncio.fixture(loop_scope="session")
async def batching() -> AsyncIterator[tuple[CountingBatches, WalletStore]]:
    client = CountingBatches.from_url(REDIS_URL)
    assert isinstance(client, CountingBatches)
    keys = new_keyspace()
    yield client, WalletStore.create(client, keys)
    await unlink_key_space(client, keys)
    await client.aclose()


async def test_concurrent_scripts_share_round_trips_and_stay_atomic(
    batching: tuple[CountingBatches, WalletStore],
) -> None:
    client, store = batching
    for wallet in ("w1", "w2"):
        await load_wallet(store, wallet, ledger_available=150, ledger_version=1)
    requests = [
        AuthRequest(f"e{i}", f"w{i % 2 + 1}", "m1", 1, Tier.CORE, NOW_MS) for i in range(400)
    ]
    decisions = await asyncio.gather(*(authorize(store, r) for r in requests))

    per_wallet = Counter((d.wallet_id, d.outcome) for d in decisions)
    assert per_wallet == {
        ("w1", Outcome.AUTHORIZED): 150,
        ("w1", Outcome.INSUFFICIENT_CREDITS): 50,
        ("w2", Outcome.AUTHORIZED): 150,
        ("w2", Outcome.INSUFFICIENT_CREDITS): 50,
    }
    assert min(d.available_after for d in decisions) == 0
    assert client.flushes <= 3  # 400 scripts, not 400 round trips


async def test_an_unknown_script_is_loaded_and_retried(
    batching: tuple[CountingBatches, WalletStore],
) -> None:
    client, _ = batching
    fresh = client.register_script(f"-- {uuid4().hex}\nreturn tonumber(ARGV[1]) * 2")
    assert await asyncio.gather(*(fresh(args=[n]) for n in range(5))) == [0, 2, 4, 6, 8]


async def test_a_connection_failure_fails_every_waiting_caller() -> None:
    client = ScriptBatchingRedis.from_url(f"redis://127.0.0.1:{free_port()}/9")
    store = WalletStore.create(client, KeySpace(prefix="nowhere"))
    requests = [AuthRequest(f"e{i}", "w1", "m1", 1, Tier.CORE, NOW_MS) for i in range(3)]
    try:
        results = await asyncio.gather(
            *(authorize(store, r) for r in requests), return_exceptions=True
        )
    finally:
        await client.aclose()
    assert all(isinstance(r, redis.exceptions.ConnectionError) for r in results)
