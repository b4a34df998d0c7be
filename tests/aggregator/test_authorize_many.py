"""authorize_many / settle_many against the real Redis: the answers of one call per script, in
one round trip, with the same atomicity, idempotency and never-negative balances."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from uuid import uuid4

import pytest
from redis.asyncio import Redis

from aggregator.authorize import (
    SettleCall,
    authorize,
    authorize_many,
    settle,
    settle_many,
)
from aggregator.decision import AuthRequest, Decision, Outcome
from aggregator.redis_client import connect, run_scripts
from aggregator.wallet_store import WalletStore
from domain.errors import IdempotencyConflict
from stack.redis_cleanup import unlink_key_space
from tests.aggregator.support import audit, load, request
from tests.redis_support import REDIS_URL, new_keyspace

pytestmark = pytest.mark.redis


@pytest.fixture
async def twin() -> AsyncIterator[WalletStore]:
    """A second mirror (its own key space) on a hiredis-packing client."""
    client = connect(REDIS_URL, Redis)
    keys = new_keyspace()
    yield WalletStore.create(client, keys)
    await unlink_key_space(client, keys)
    await client.aclose()


def mixed_requests() -> list[AuthRequest]:
    """Three wallets, amounts that run one of them dry, a redelivery and a reused id."""
    reqs = [request(f"e{i}", 7, wallet_id=f"w{i % 3}", member_id=f"m{i % 5}") for i in range(30)]
    reqs.append(request("e4", 7, wallet_id="w1", member_id="m4"))  # redelivery of e4
    reqs.append(request("e5", 9, wallet_id="w2", member_id="m0"))  # e5 reused for 9 credits
    return reqs


def summary(answers: list[Decision | IdempotencyConflict]) -> list[tuple[object, ...]]:
    return [
        ("conflict", a.message)
        if isinstance(a, IdempotencyConflict)
        else (a.outcome, a.original_outcome, a.credits, a.available_after, a.reserved_after)
        for a in answers
    ]


async def test_the_answers_are_those_of_one_call_per_request(
    store: WalletStore, twin: WalletStore
) -> None:
    for mirror in (store, twin):
        await load(mirror, 1_000, wallet_id="w0")
        await load(mirror, 30, wallet_id="w1")  # 4 of its 10 events fit
        await load(mirror, 1_000, wallet_id="w2")
    one_by_one: list[Decision | IdempotencyConflict] = []
    for r in mixed_requests():
        try:
            one_by_one.append(await authorize(store, r))
        except IdempotencyConflict as conflict:
            one_by_one.append(conflict)

    batched = await authorize_many(twin, mixed_requests())

    assert summary(batched) == summary(one_by_one)
    assert isinstance(batched[-1], IdempotencyConflict)
    outcomes = Counter(a.outcome for a in batched if not isinstance(a, IdempotencyConflict))
    assert outcomes[Outcome.INSUFFICIENT_CREDITS] == 6
    for wallet_id in ("w0", "w1", "w2"):
        assert (await audit(twin, wallet_id)).mirror == (await audit(store, wallet_id)).mirror


async def test_a_redelivered_batch_is_answered_with_the_original_decisions(
    store: WalletStore,
) -> None:
    await load(store, 20, wallet_id="w1")
    requests = [request(f"r{i}", 3, wallet_id="w1") for i in range(10)]
    first = await authorize_many(store, requests)
    before = await audit(store, "w1")

    again = await authorize_many(store, requests)

    assert all(isinstance(d, Decision) and d.outcome is Outcome.DUPLICATE for d in again)
    assert [d.final_outcome for d in again if isinstance(d, Decision)] == [
        d.outcome for d in first if isinstance(d, Decision)
    ]
    assert (await audit(store, "w1")).mirror == before.mirror  # nothing reserved twice


async def test_concurrent_batches_on_one_wallet_never_overdraw(store: WalletStore) -> None:
    await load(store, 100, wallet_id="w1")
    batches = [
        [request(f"b{b}-{i}", 3, wallet_id="w1", member_id=f"m{b}") for i in range(20)]
        for b in range(8)
    ]

    answers = await asyncio.gather(*(authorize_many(store, batch) for batch in batches))

    decisions = [d for batch in answers for d in batch if isinstance(d, Decision)]
    assert len(decisions) == 160
    authorized = [d for d in decisions if d.outcome is Outcome.AUTHORIZED]
    assert len(authorized) == 33  # exactly the affordable ones: 33 * 3 <= 100 < 34 * 3
    assert all(d.available_after >= 0 for d in decisions)
    view = await audit(store, "w1")
    assert (view.mirror.available, view.mirror.in_flight_total) == (1, 99)


async def test_settle_many_answers_like_one_settle_per_wallet(
    store: WalletStore, twin: WalletStore
) -> None:
    calls: list[SettleCall] = []
    for mirror in (store, twin):
        for wallet_id in ("w1", "w2"):
            await load(mirror, 50, wallet_id=wallet_id)
            ids = [f"{wallet_id}-e{i}" for i in range(4)]
            for event_id in ids:
                await authorize(mirror, request(event_id, 5, wallet_id=wallet_id))
            if mirror is store:
                calls.append(SettleCall(wallet_id, (*ids[:3], "never-seen"), 2))
    one_by_one = [
        await settle(store, c.wallet_id, c.event_ids, ledger_version=c.ledger_version)
        for c in calls
    ]

    batched = await settle_many(twin, calls)

    assert batched == one_by_one
    assert [r.settled_event_ids for r in batched] == [
        ("w1-e0", "w1-e1", "w1-e2"),
        ("w2-e0", "w2-e1", "w2-e2"),
    ]
    replayed = await settle_many(twin, calls)  # a replay settles nothing
    assert [r.settled_event_ids for r in replayed] == [(), ()]
    view = await audit(twin, "w1")
    assert view.in_flight == {"w1-e3": 5}


async def test_an_unknown_script_is_loaded_before_the_batch_runs(twin: WalletStore) -> None:
    client = twin.client
    assert isinstance(client, Redis)
    fresh = client.register_script(f"-- {uuid4().hex}\nreturn tonumber(ARGV[1]) * 2")
    replies = await run_scripts(client, [(fresh, [], [n]) for n in range(5)])
    assert replies == [0, 2, 4, 6, 8]


async def test_an_error_reply_takes_its_place_and_the_rest_still_run(twin: WalletStore) -> None:
    client = twin.client
    assert isinstance(client, Redis)
    script = client.register_script("if ARGV[1] == 'x' then error('boom') end return ARGV[1]")
    replies = await run_scripts(client, [(script, [], [a]) for a in ("a", "x", "b")])
    assert replies[0] == b"a"
    assert replies[2] == b"b"
    assert isinstance(replies[1], Exception)
    assert "boom" in str(replies[1])
