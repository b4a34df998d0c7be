"""Script plumbing: NOSCRIPT recovery, decoded clients, one cluster slot per wallet."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from aggregator.authorize import authorize
from aggregator.decision import Outcome
from aggregator.mirror import snapshot
from aggregator.redis_keys import KeySpace
from aggregator.scripts import script_source
from aggregator.wallet_store import WalletStore
from tests.aggregator.support import load, request
from tests.redis_support import REDIS_URL

pytestmark = pytest.mark.redis


async def test_scripts_survive_script_flush(store: WalletStore) -> None:
    await load(store, 100)
    assert (await authorize(store, request("e1", 10))).authorized
    await store.client.script_flush()
    assert not any(await store.client.script_exists(store.scripts.authorize.sha))
    assert (await authorize(store, request("e2", 10))).authorized
    await store.client.script_flush()
    await load(store, 100, version=2)
    mirror = await snapshot(store, "w1")
    assert mirror is not None
    assert mirror.available == 80


async def test_a_decoding_client_gets_the_same_answers(store: WalletStore) -> None:
    client = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        decoded = WalletStore.create(client, store.keys)
        await load(decoded, 100)
        decision = await authorize(decoded, request("e1", 10))
        assert decision.outcome is Outcome.AUTHORIZED
        assert decision.available_after == 90
        assert (await snapshot(decoded, "w1")) == (await snapshot(store, "w1"))
    finally:
        await client.aclose()


def test_all_keys_of_a_wallet_share_one_cluster_slot() -> None:
    keys = KeySpace("cdc").wallet("wallet-42")
    names = [
        keys.wallet,
        keys.in_flight,
        keys.holds,
        keys.hold_exp,
        keys.unused,
        keys.event("evt-{odd}-id"),
        keys.cap("ai", "2025-04-01"),
        keys.wallet_rate("api"),
        keys.member_rate("api", "member}7"),
        keys.hold("hold-1"),
        keys.credit("purchase-1"),
    ]
    assert {key_slot(name.encode()) for name in names} == {key_slot(b"wallet-42")}


def test_hold_index_shards_spread_over_slots() -> None:
    keys = KeySpace("cdc", hold_index_shards=8)
    assert len({key_slot(k.encode()) for k in keys.hold_index_keys()}) == 8


def test_scripts_are_composed_from_their_preludes() -> None:
    source = script_source("hold_capture")
    assert source.index("local function wallet_state") < source.index("local function hold_record")
    assert "KEYS[6] event record" in source
