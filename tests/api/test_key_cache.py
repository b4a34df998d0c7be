"""The per-process API-key cache of :class:`api.keys.ApiKeys` on a real PostgreSQL database.

Wallets, members and keys are created with the project's own code (``Wallets``,
``ApiKeys.issue``). The pool handed to ``ApiKeys`` is the real one behind a thin proxy that
counts the key lookups reaching PostgreSQL and can hold a lookup just after its query ran (to
put an invalidation "in flight"). Time is an injected fake monotonic clock.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from psycopg import AsyncCursor
from psycopg_pool import AsyncConnectionPool

import api.keys
from api.keys import (
    CACHE_TTL_S,
    REFRESH_AFTER_S,
    REFRESH_SPREAD_S,
    ApiKeys,
    IssuedKey,
    Principal,
    Role,
    Scope,
    new_token,
)
from domain.errors import Unauthenticated
from settlement.ledger.wallets import Wallets
from settlement.ledger.writer import Conn

pytestmark = pytest.mark.postgres

WAIT_S = 5.0
"""Upper bound for anything the tests wait on (never reached when the code is right)."""


def _is_key_lookup(query: str) -> bool:
    """The authentication read (``ApiKeys._load``), not issue/revoke/list statements."""
    return query.lstrip().upper().startswith("SELECT") and "api_keys k" in query


class _CountingConnection:
    """A real connection whose key lookups are counted (and held while the gate is shut)."""

    def __init__(self, conn: Conn, counter: LookupCounter) -> None:
        self._conn = conn
        self._counter = counter

    async def execute(self, query: str, params: Any = None) -> AsyncCursor[tuple[Any, ...]]:
        cursor = await self._conn.execute(query, params)
        if _is_key_lookup(query):
            self._counter.lookups += 1
            if not self._counter.gate.is_set():
                self._counter.held.set()
                await self._counter.gate.wait()
        return cursor


@dataclass
class LookupCounter:
    """Stands in for the pool: every connection is the real pool's, lookups are counted."""

    pool: AsyncConnectionPool[Conn]
    lookups: int = 0
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    """Shut (cleared): a lookup waits here after its query ran, with its result in hand."""
    held: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once a lookup is waiting at the shut gate."""

    def __post_init__(self) -> None:
        self.gate.set()

    def shut(self) -> None:
        self.held.clear()
        self.gate.clear()

    def open(self) -> None:
        self.gate.set()

    async def wait_held(self) -> None:
        await asyncio.wait_for(self.held.wait(), WAIT_S)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[_CountingConnection]:
        async with self.pool.connection() as conn:
            yield _CountingConnection(conn, self)


@dataclass
class Env:
    keys: ApiKeys
    db: LookupCounter
    pool: AsyncConnectionPool[Conn]
    wallets: Wallets
    wallet_id: str
    member_id: str
    clock: list[float]

    def advance(self, seconds: float) -> None:
        self.clock[0] += seconds

    async def issue(self, member_id: str | None = None) -> IssuedKey:
        return await self.keys.issue(
            self.wallet_id,
            member_id or self.member_id,
            name="test key",
            scopes=[Scope.WALLET_READ, Scope.USAGE_WRITE],
            created_by="tests",
        )

    def expected(self, issued: IssuedKey, role: Role = Role.OWNER) -> Principal:
        return Principal(
            key_id=issued.key_id,
            scopes=frozenset({Scope.WALLET_READ, Scope.USAGE_WRITE}),
            wallet_id=self.wallet_id,
            member_id=issued.member_id,
            role=role,
        )

    async def revoke_elsewhere(self, key_id: str) -> None:
        """Revoke in the database as ANOTHER API process would (this cache is not told)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE api_keys SET revoked_at = now() WHERE id = %s", (key_id,)
            )
            assert cur.rowcount == 1


@pytest.fixture
async def env(ledger_pool: AsyncConnectionPool[Conn]) -> Env:
    wallets = Wallets(ledger_pool)
    wallet_id, member_id = f"w_{uuid.uuid4().hex[:10]}", f"m_{uuid.uuid4().hex[:6]}"
    await wallets.create(wallet_id, owner_type="community", owner_id=member_id)
    await wallets.add_member(wallet_id, member_id, role="owner")
    db = LookupCounter(ledger_pool)
    clock = [1_000.0]
    keys = ApiKeys(
        cast(AsyncConnectionPool[Conn], db),
        admin_token=None,
        monotonic=lambda: clock[0],
        jitter=lambda: 0.0,  # refreshes due exactly REFRESH_AFTER_S after a load
    )
    return Env(keys, db, ledger_pool, wallets, wallet_id, member_id, clock)


async def drain_refreshes(keys: ApiKeys) -> None:
    while keys._loading:
        await asyncio.wait_for(asyncio.gather(*list(keys._loading.values())), WAIT_S)


async def test_concurrent_cold_lookups_of_one_key_share_one_query(env: Env) -> None:
    issued = await env.issue()
    env.db.shut()
    callers = [asyncio.ensure_future(env.keys.authenticate(issued.token)) for _ in range(50)]
    await env.db.wait_held()
    for _ in range(5):
        await asyncio.sleep(0)
    assert env.db.lookups == 1
    assert not any(caller.done() for caller in callers)
    env.db.open()
    principals = await asyncio.wait_for(asyncio.gather(*callers), WAIT_S)
    assert set(principals) == {env.expected(issued)}
    assert env.db.lookups == 1
    assert not env.keys._loading


async def test_a_fresh_entry_costs_no_query(env: Env) -> None:
    issued = await env.issue()
    assert await env.keys.authenticate(issued.token) == env.expected(issued)
    env.advance(REFRESH_AFTER_S - 0.1)
    for _ in range(10):
        assert await env.keys.authenticate(issued.token) == env.expected(issued)
    assert env.db.lookups == 1
    assert not env.keys._loading


async def test_a_stale_entry_is_served_at_once_and_refreshed_once_in_the_background(
    env: Env,
) -> None:
    issued = await env.issue()
    expected = env.expected(issued)
    await env.keys.authenticate(issued.token)
    env.advance(REFRESH_AFTER_S + 1)  # past refresh_after, before expiry
    env.db.shut()  # the refresh's query cannot complete: authenticate must not wait for it
    assert await asyncio.wait_for(env.keys.authenticate(issued.token), WAIT_S) == expected
    await env.db.wait_held()
    assert env.db.lookups == 2
    assert len(env.keys._loading) == 1
    for _ in range(10):  # requests arriving while the refresh runs are served from the cache
        assert await env.keys.authenticate(issued.token) == expected
        await asyncio.sleep(0)
    assert env.db.lookups == 2
    assert len(env.keys._loading) == 1
    env.db.open()
    await drain_refreshes(env.keys)
    assert not env.keys._loading
    assert env.keys._cache[issued.key_id].refresh_after == env.clock[0] + REFRESH_AFTER_S
    assert env.keys._cache[issued.key_id].expires == env.clock[0] + CACHE_TTL_S
    env.advance(REFRESH_AFTER_S - 0.1)  # fresh again: no further query
    assert await env.keys.authenticate(issued.token) == expected
    assert env.db.lookups == 2


async def test_a_burst_of_stale_hits_in_one_loop_step_still_refreshes_with_one_query(
    env: Env,
) -> None:
    issued = await env.issue()
    await env.keys.authenticate(issued.token)
    env.advance(REFRESH_AFTER_S + 1)
    # No yield between the calls, like many requests handled in one event-loop iteration.
    for _ in range(10):
        assert await env.keys.authenticate(issued.token) == env.expected(issued)
    await drain_refreshes(env.keys)
    assert env.db.lookups == 2
    assert not env.keys._loading


async def test_revoked_elsewhere_is_accepted_until_expiry_then_refused(env: Env) -> None:
    """The documented bound: a revocation by another API process reaches this one's cache
    within CACHE_TTL_S (here: not at all before it while the entry is fresh)."""
    issued = await env.issue()
    await env.keys.authenticate(issued.token)
    await env.revoke_elsewhere(issued.key_id)
    env.advance(REFRESH_AFTER_S - 0.1)
    assert await env.keys.authenticate(issued.token) == env.expected(issued)  # the TTL window
    assert env.db.lookups == 1
    env.advance(CACHE_TTL_S + 1 - (REFRESH_AFTER_S - 0.1))  # +11 s since the load: expired
    with pytest.raises(Unauthenticated):
        await env.keys.authenticate(issued.token)
    assert env.db.lookups == 2
    with pytest.raises(Unauthenticated):  # the revocation is cached as such
        await env.keys.authenticate(issued.token)
    assert env.db.lookups == 2


async def test_revoked_elsewhere_is_picked_up_by_the_background_refresh(env: Env) -> None:
    issued = await env.issue()
    await env.keys.authenticate(issued.token)
    await env.revoke_elsewhere(issued.key_id)
    env.advance(REFRESH_AFTER_S + 1)
    # Served stale once (the bound), and that very hit refreshes the entry.
    assert await env.keys.authenticate(issued.token) == env.expected(issued)
    await drain_refreshes(env.keys)
    assert env.db.lookups == 2
    with pytest.raises(Unauthenticated):
        await env.keys.authenticate(issued.token)


async def test_revoke_through_this_process_takes_effect_at_once(env: Env) -> None:
    issued = await env.issue()
    other = await env.issue()
    await env.keys.authenticate(issued.token)
    await env.keys.authenticate(other.token)
    info = await env.keys.revoke(env.wallet_id, issued.key_id)
    assert info.revoked_at is not None
    with pytest.raises(Unauthenticated):
        await env.keys.authenticate(issued.token)
    assert env.db.lookups == 3
    assert await env.keys.authenticate(other.token) == env.expected(other)  # still cached
    assert env.db.lookups == 3


async def test_a_lookup_in_flight_during_forget_is_answered_but_not_cached(env: Env) -> None:
    issued = await env.issue()
    env.db.shut()
    caller = asyncio.ensure_future(env.keys.authenticate(issued.token))
    await env.db.wait_held()  # its query has run: it holds the owner role
    await env.wallets.add_member(env.wallet_id, env.member_id, role="member")
    env.keys.forget(env.wallet_id)
    env.db.open()
    # The caller that asked before the change gets what was read for it...
    assert await asyncio.wait_for(caller, WAIT_S) == env.expected(issued, Role.OWNER)
    # ...but it is not cached: the next request reads the new role.
    assert issued.key_id not in env.keys._cache
    assert await env.keys.authenticate(issued.token) == env.expected(issued, Role.MEMBER)
    assert env.db.lookups == 2
    assert await env.keys.authenticate(issued.token) == env.expected(issued, Role.MEMBER)
    assert env.db.lookups == 2


async def test_forget_drops_only_that_wallets_entries(env: Env) -> None:
    issued = await env.issue()
    await env.keys.authenticate(issued.token)
    other_wallet, other_member = f"w_{uuid.uuid4().hex[:10]}", f"m_{uuid.uuid4().hex[:6]}"
    await env.wallets.create(other_wallet, owner_type="user", owner_id=other_member)
    await env.wallets.add_member(other_wallet, other_member, role="owner")
    other = await env.keys.issue(
        other_wallet, other_member, name="k", scopes=["wallet:read"], created_by="tests"
    )
    await env.keys.authenticate(other.token)
    env.keys.forget(env.wallet_id)
    assert set(env.keys._cache) == {other.key_id}
    await env.keys.authenticate(other.token)
    assert env.db.lookups == 2


async def test_a_request_after_revoke_does_not_join_a_lookup_started_before_it(
    env: Env,
) -> None:
    issued = await env.issue()
    env.db.shut()
    early = asyncio.ensure_future(env.keys.authenticate(issued.token))
    await env.db.wait_held()  # its query ran before the revocation: it saw the key valid
    await env.keys.revoke(env.wallet_id, issued.key_id)  # returns: the key is revoked
    late = asyncio.ensure_future(env.keys.authenticate(issued.token))
    for _ in range(5):
        await asyncio.sleep(0)
    env.db.open()
    assert await asyncio.wait_for(early, WAIT_S) == env.expected(issued)  # asked before: fine
    # "A revocation through this process takes effect at once": a request that starts after
    # revoke() returned must be refused, not handed the lookup started before it.
    with pytest.raises(Unauthenticated):
        await asyncio.wait_for(late, WAIT_S)


async def test_a_request_after_forget_does_not_join_a_lookup_started_before_it(
    env: Env,
) -> None:
    issued = await env.issue()
    env.db.shut()
    early = asyncio.ensure_future(env.keys.authenticate(issued.token))
    await env.db.wait_held()
    await env.wallets.add_member(env.wallet_id, env.member_id, role="member")  # demoted
    env.keys.forget(env.wallet_id)
    late = asyncio.ensure_future(env.keys.authenticate(issued.token))
    for _ in range(5):
        await asyncio.sleep(0)
    env.db.open()
    assert await asyncio.wait_for(early, WAIT_S) == env.expected(issued, Role.OWNER)
    late_principal = await asyncio.wait_for(late, WAIT_S)
    assert late_principal.role is Role.MEMBER, "a demoted owner kept owner rights"


async def test_the_oldest_loaded_entry_is_evicted_first(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api.keys, "CACHE_MAX_KEYS", 3)
    issued = [await env.issue() for _ in range(4)]
    for key in issued:
        await env.keys.authenticate(key.token)
        env.advance(0.1)
    assert list(env.keys._cache) == [k.key_id for k in issued[1:]]
    assert env.db.lookups == 4
    for key in issued[1:]:  # still cached
        await env.keys.authenticate(key.token)
    assert env.db.lookups == 4
    assert await env.keys.authenticate(issued[0].token) == env.expected(issued[0])  # reloaded
    assert env.db.lookups == 5
    assert list(env.keys._cache) == [issued[2].key_id, issued[3].key_id, issued[0].key_id]


async def test_a_refresh_moves_the_entry_to_the_young_end(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api.keys, "CACHE_MAX_KEYS", 3)
    first, second, third = [await env.issue() for _ in range(3)]
    for key in (first, second, third):
        await env.keys.authenticate(key.token)
    env.advance(REFRESH_AFTER_S + 1)
    await env.keys.authenticate(first.token)  # refreshed in the background: now the youngest
    await drain_refreshes(env.keys)
    fourth = await env.issue()
    await env.keys.authenticate(fourth.token)
    assert list(env.keys._cache) == [third.key_id, first.key_id, fourth.key_id]


async def test_a_wrong_secret_for_a_cached_key_is_refused_without_a_query(env: Env) -> None:
    issued = await env.issue()
    await env.keys.authenticate(issued.token)
    forged = f"cdk_{issued.key_id}_{secrets.token_urlsafe(32)}"
    with pytest.raises(Unauthenticated):
        await env.keys.authenticate(forged)
    assert env.db.lookups == 1
    assert await env.keys.authenticate(issued.token) == env.expected(issued)


async def test_a_wrong_secret_for_a_cold_key_is_refused(env: Env) -> None:
    issued = await env.issue()
    with pytest.raises(Unauthenticated):
        await env.keys.authenticate(f"cdk_{issued.key_id}_{secrets.token_urlsafe(32)}")
    assert env.db.lookups == 1
    assert await env.keys.authenticate(issued.token) == env.expected(issued)  # now cached
    assert env.db.lookups == 1


async def test_an_unknown_key_is_refused_and_cached_as_unknown(env: Env) -> None:
    _, _, token = new_token()
    with pytest.raises(Unauthenticated):
        await env.keys.authenticate(token)
    assert env.db.lookups == 1
    env.advance(CACHE_TTL_S - 0.1)
    with pytest.raises(Unauthenticated):
        await env.keys.authenticate(token)
    assert env.db.lookups == 1
    env.advance(0.2)  # expired: asked again
    with pytest.raises(Unauthenticated):
        await env.keys.authenticate(token)
    assert env.db.lookups == 2


@pytest.mark.parametrize("token", [None, "", "Bearer nope", "cdk_0123_short"])
async def test_malformed_tokens_never_reach_the_database(env: Env, token: str | None) -> None:
    with pytest.raises(Unauthenticated):
        await env.keys.authenticate(token)
    assert env.db.lookups == 0


async def test_keys_loaded_together_are_refreshed_at_spread_times(env: Env) -> None:
    """Keys first used in the same instant (a process's start) get refresh times spread over
    REFRESH_SPREAD_S, each still before its expiry, so their refreshes do not arrive as one
    burst of queries."""
    fractions = [0.0, 0.25, 0.5, 0.75, 0.999]
    draws = itertools.cycle(fractions)  # the refreshes draw again
    env.keys._jitter = lambda: next(draws)
    issued = [await env.issue() for _ in fractions]
    env.keys._cache.clear()  # as in a process that has not seen them yet
    for each in issued:
        await env.keys.authenticate(each.token)
    entries = [env.keys._cache[each.key_id] for each in issued]
    assert [e.refresh_after - env.clock[0] for e in entries] == pytest.approx(
        [REFRESH_AFTER_S + f * REFRESH_SPREAD_S for f in fractions]
    )
    assert all(e.refresh_after < e.expires == env.clock[0] + CACHE_TTL_S for e in entries)
    env.advance(REFRESH_AFTER_S + 0.5 * REFRESH_SPREAD_S + 0.01)  # three of five are due
    for each in issued:
        await env.keys.authenticate(each.token)
    await drain_refreshes(env.keys)
    assert env.db.lookups == 5 + 3
