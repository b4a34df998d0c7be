"""Concurrent authorisations on one wallet: never negative, nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from redis.asyncio import Redis

from aggregator.authorize import authorize
from aggregator.decision import Decision, Outcome
from aggregator.policy import Tier
from aggregator.wallet_store import WalletStore
from tests.aggregator.support import audit, load, request
from tests.redis_support import new_client

pytestmark = pytest.mark.redis


def assert_conserved(decisions: list[Decision], balance: int, cost: int) -> None:
    authorised = [d for d in decisions if d.outcome is Outcome.AUTHORIZED]
    assert len(authorised) == balance // cost
    assert all(d.available_after >= 0 for d in decisions)
    assert all(d.available_after + d.reserved_after == balance for d in decisions)
    # Each admission saw a distinct balance: no two read the same value (no lost update).
    assert len({d.available_after for d in authorised}) == len(authorised)


async def test_64_concurrent_authorisations_on_one_client(store: WalletStore) -> None:
    balance, cost = 100, 7
    await load(store, balance)
    decisions = await asyncio.gather(*(authorize(store, request(f"e{n}", cost)) for n in range(64)))
    assert_conserved(decisions, balance, cost)
    assert Counter(d.outcome for d in decisions)[Outcome.INSUFFICIENT_CREDITS] == 64 - 14
    state = await audit(store)
    assert (state.mirror.available, state.mirror.reserved) == (2, 98)
    assert len(state.in_flight) == 14


async def test_64_concurrent_authorisations_over_several_connections(store: WalletStore) -> None:
    balance, cost = 105, 7
    await load(store, balance)
    clients = [new_client() for _ in range(8)]
    try:
        stores = [WalletStore.create(client, store.keys) for client in clients]
        decisions = await asyncio.gather(
            *(
                authorize(stores[n % 8], request(f"e{n}", cost, tier=Tier.PREMIUM))
                for n in range(64)
            )
        )
    finally:
        await asyncio.gather(*(client.aclose() for client in clients))
    assert_conserved(decisions, balance, cost)
    # Exactly one admission exhausted the wallet; later premium requests see it paused.
    assert sum(d.paused_now for d in decisions) == 1
    refused = {d.outcome for d in decisions if d.outcome is not Outcome.AUTHORIZED}
    assert refused <= {Outcome.PREMIUM_PAUSED, Outcome.INSUFFICIENT_CREDITS}
    state = await audit(store)
    assert (state.mirror.available, state.mirror.reserved) == (0, 105)


async def test_concurrent_redeliveries_of_one_event_reserve_once(
    store: WalletStore, redis_client: Redis
) -> None:
    await load(store, 100)
    decisions = await asyncio.gather(*(authorize(store, request("same", 9)) for _ in range(64)))
    outcomes = Counter(d.outcome for d in decisions)
    assert outcomes == {Outcome.AUTHORIZED: 1, Outcome.DUPLICATE: 63}
    assert all(d.authorized and d.available_after == 91 for d in decisions)
    state = await audit(store)
    assert state.in_flight == {"same": 9}
