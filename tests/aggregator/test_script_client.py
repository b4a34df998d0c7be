"""WalletStore.script_client: authorize/release through the one-connection multiplexer.

A second store shares the fixture store's key space (so its keys are cleaned up with it) and
runs the consume path's scripts through :class:`MultiplexedRedis`; everything else (loading,
auditing) goes through redis-py as usual. Nothing here flushes scripts: the server is shared.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import uuid
from collections.abc import AsyncIterator

import pytest
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from aggregator.authorize import ReleaseResult, authorize, release
from aggregator.decision import Decision, Outcome
from aggregator.multiplexed_redis import Arg, MultiplexedRedis
from aggregator.scripts import script_source
from aggregator.wallet_store import WalletStore
from domain.errors import IdempotencyConflict
from tests.aggregator.support import audit, load, request
from tests.redis_support import REDIS_URL

pytestmark = pytest.mark.redis


class CountingMultiplexer(MultiplexedRedis):
    """The real multiplexer, remembering the name of every command it sent."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.commands: list[str] = []

    async def execute(self, *args: Arg) -> object:
        name = args[0]
        self.commands.append(name.decode() if isinstance(name, bytes) else str(name))
        return await super().execute(*args)


@pytest.fixture
async def mux() -> AsyncIterator[CountingMultiplexer]:
    client = CountingMultiplexer.from_url(REDIS_URL)
    assert isinstance(client, CountingMultiplexer)
    yield client
    await client.aclose()


@pytest.fixture
def mux_store(redis_client: Redis, store: WalletStore, mux: MultiplexedRedis) -> WalletStore:
    """Same server, same key space as ``store``; scripts run through ``mux``."""
    return WalletStore.create(redis_client, store.keys, script_client=mux)


Step = Decision | ReleaseResult | IdempotencyConflict


async def run_sequence(store: WalletStore, wallet_id: str) -> list[object]:
    """A fixed consume-path sequence; each step's result with the wallet id blanked out."""
    await load(store, 100, wallet_id=wallet_id)
    results: list[Step] = []

    async def auth(event_id: str, credits: int) -> None:
        try:
            results.append(await authorize(store, request(event_id, credits, wallet_id=wallet_id)))
        except IdempotencyConflict as conflict:
            results.append(conflict)

    await auth("e1", 30)  # authorized
    await auth("e2", 80)  # insufficient credits
    await auth("e1", 30)  # replay: duplicate of the original
    await auth("e1", 31)  # same id, another amount: conflict
    await auth("e3", 70)  # authorized, empties the wallet (paused_now)
    await auth("e4", 1)  # premium-paused / insufficient: nothing left
    results.append(await release(store, wallet_id, "e1"))  # released: 30 back
    results.append(await release(store, wallet_id, "e1"))  # already released: no-op
    results.append(await release(store, wallet_id, "nope"))  # unknown: no-op
    await auth("e1", 30)  # a released id may be retried as a fresh authorisation
    await auth("e2", 80)  # replay of the remembered refusal
    return [_comparable(result) for result in results]


def _comparable(result: Step) -> object:
    if isinstance(result, IdempotencyConflict):
        return ("conflict", type(result).__name__, result.message, result.details)
    return dataclasses.replace(result, wallet_id="*")


def _outcome(result: object) -> str:
    if isinstance(result, Decision):
        return result.outcome.value
    if isinstance(result, ReleaseResult):
        return "released" if result.released else "not_released"
    assert isinstance(result, tuple)
    return str(result[0])


async def test_the_multiplexed_store_answers_exactly_like_the_plain_one(
    store: WalletStore, mux_store: WalletStore, mux: CountingMultiplexer
) -> None:
    plain = await run_sequence(store, "wa")
    assert mux.commands == []
    multiplexed = await run_sequence(mux_store, "wb")
    assert multiplexed == plain
    assert [_outcome(r) for r in plain] == [
        "authorized",
        "insufficient_credits",
        "duplicate",
        "conflict",
        "authorized",
        _outcome(plain[5]),  # whichever refusal an empty wallet gives, the same for both
        "released",
        "not_released",
        "not_released",
        "authorized",
        "duplicate",
    ]
    assert _outcome(plain[5]) in {"insufficient_credits", "premium_paused"}
    first = plain[0]
    assert isinstance(first, Decision)
    assert (first.available_after, first.reserved_after) == (70, 30)
    emptied = plain[4]
    assert isinstance(emptied, Decision)
    assert emptied.paused_now
    # Every authorize and release of the second run went through the multiplexer.
    assert mux.commands.count("EVALSHA") == 11
    plain_state, mux_state = await audit(store, "wa"), await audit(mux_store, "wb")
    assert dataclasses.replace(mux_state.mirror, wallet_id="*") == dataclasses.replace(
        plain_state.mirror, wallet_id="*"
    )
    assert mux_state.in_flight == plain_state.in_flight == {"e1": 30, "e3": 70}
    assert (mux_state.mirror.available, mux_state.mirror.reserved) == (0, 100)


async def test_concurrent_authorisations_through_the_multiplexer_never_overdraw(
    store: WalletStore, mux_store: WalletStore
) -> None:
    funding = 1_000
    await load(store, funding, wallet_id="wc")
    rng = random.Random(7)
    amounts = {f"c{i}": rng.randint(1, 20) for i in range(200)}  # about 2,100 asked for
    decisions = await asyncio.gather(
        *(authorize(mux_store, request(e, c, wallet_id="wc")) for e, c in amounts.items())
    )
    granted = {d.event_id: d.credits for d in decisions if d.authorized}
    assert all(d.outcome in (Outcome.AUTHORIZED, Outcome.INSUFFICIENT_CREDITS) for d in decisions)
    assert sum(granted.values()) <= funding
    assert sum(granted.values()) > funding - 20  # refused only once nearly nothing was left
    assert len(granted) < len(amounts)
    state = await audit(store, "wc")
    assert state.in_flight == granted
    assert state.mirror.available + state.mirror.reserved == funding
    assert state.mirror.reserved == sum(granted.values())


async def test_both_clients_on_one_wallet_at_once_never_overdraw(
    store: WalletStore, mux_store: WalletStore
) -> None:
    funding = 500
    await load(store, funding, wallet_id="wd")
    calls = [
        authorize(mux_store if i % 2 else store, request(f"d{i}", 7, wallet_id="wd"))
        for i in range(200)
    ]
    decisions = await asyncio.gather(*calls)
    granted = [d for d in decisions if d.authorized]
    assert len(granted) == funding // 7
    state = await audit(store, "wd")
    assert (state.mirror.available, state.mirror.reserved) == (funding % 7, funding - funding % 7)
    releases = await asyncio.gather(*(release(mux_store, "wd", d.event_id) for d in granted))
    assert all(r.released for r in releases)
    state = await audit(store, "wd")
    assert (state.mirror.available, state.mirror.reserved, state.in_flight) == (funding, 0, {})


async def test_a_script_unknown_to_the_server_is_loaded_through_the_multiplexer(
    redis_client: Redis, store: WalletStore, mux: CountingMultiplexer
) -> None:
    """The NOSCRIPT path: a source this server has never seen (a unique trailing comment gives
    it its own SHA1) is loaded by ``AsyncScript`` through the multiplexer, then run."""
    source = f"{script_source('authorize')}\n-- script_client test {uuid.uuid4().hex}\n"
    fresh = dataclasses.replace(store.scripts, authorize=redis_client.register_script(source))
    fresh_store = dataclasses.replace(store, scripts=fresh, script_client=mux)
    sha = fresh.authorize.sha
    assert await redis_client.script_exists(sha) == [False]
    await load(store, 50, wallet_id="we")
    decision = await authorize(fresh_store, request("e1", 20, wallet_id="we"))
    assert decision.outcome is Outcome.AUTHORIZED
    assert (decision.available_after, decision.reserved_after) == (30, 20)
    assert mux.commands == ["EVALSHA", "SCRIPT", "EVALSHA"]
    assert await redis_client.script_exists(sha) == [True]
    assert fresh.authorize.sha == sha


async def test_script_calls_fail_once_the_multiplexer_is_closed(
    store: WalletStore, mux_store: WalletStore, mux: MultiplexedRedis
) -> None:
    """The store really routes its scripts to ``script_client`` (no silent fallback)."""
    await load(store, 10, wallet_id="wf")
    await mux.aclose()
    with pytest.raises(redis_errors.ConnectionError):
        await authorize(mux_store, request("e1", 1, wallet_id="wf"))
    with pytest.raises(redis_errors.ConnectionError):
        await release(mux_store, "wf", "e1")
    assert (await authorize(store, request("e1", 1, wallet_id="wf"))).authorized
