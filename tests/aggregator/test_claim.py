"""The idempotency claim authorize.lua takes with its decision (aggregator.claim), real Redis."""

from __future__ import annotations

import asyncio

import pytest
from redis.crc import key_slot

from aggregator.authorize import authorize
from aggregator.claim import ClaimHeld, RequestClaim
from aggregator.decision import Outcome
from aggregator.policy import Limits, RateLimit
from aggregator.wallet_store import WalletStore
from api.idempotency import IdempotencyStore
from tests.aggregator.support import audit, load, request

pytestmark = pytest.mark.redis

TTL_MS = 60_000


def claim_for(store: WalletStore, name: str = "k1") -> RequestClaim:
    key = f"{store.keys.prefix}:idem:{{w1}}:{name}"
    return RequestClaim(key, '{"state":"in_progress","fp":"f"}', TTL_MS)


async def test_an_authorisation_takes_the_claim_with_its_decision(store: WalletStore) -> None:
    await load(store, 100)
    claim = claim_for(store)
    decision = await authorize(store, request("e1", 30), claim)
    assert decision.outcome is Outcome.AUTHORIZED
    assert claim.taken
    assert await store.client.get(claim.key) == claim.record.encode()
    assert 0 < await store.client.pttl(claim.key) <= TTL_MS


async def test_a_held_claim_decides_nothing(store: WalletStore) -> None:
    await load(store, 100)
    await authorize(store, request("e1", 30), claim_for(store))
    second = claim_for(store)
    with pytest.raises(ClaimHeld):
        await authorize(store, request("e2", 30), second)
    assert not second.taken
    state = await audit(store)
    assert state.in_flight == {"e1": 30}
    assert await store.client.exists(store.keys.wallet("w1").event("e2")) == 0


async def test_a_wallet_not_loaded_takes_no_claim(store: WalletStore) -> None:
    claim = claim_for(store)
    decision = await authorize(store, request("e1", 5), claim)
    assert decision.outcome is Outcome.WALLET_NOT_LOADED
    assert not claim.taken
    assert await store.client.exists(claim.key) == 0
    await load(store, 10)
    assert (await authorize(store, request("e1", 5), claim)).authorized
    assert claim.taken


async def test_a_rate_limited_request_gives_its_claim_back(store: WalletStore) -> None:
    await load(store, 100)
    limits = Limits(wallet_rate=RateLimit(limit=1, window_ms=60_000))
    assert (await authorize(store, request("e1", 1, limits=limits))).authorized
    claim = claim_for(store)
    limited = await authorize(store, request("e2", 1, limits=limits), claim)
    assert limited.outcome is Outcome.RATE_LIMITED
    assert not claim.taken
    assert await store.client.exists(claim.key) == 0


async def test_a_final_refusal_keeps_the_claim(store: WalletStore) -> None:
    await load(store, 10)
    claim = claim_for(store)
    refused = await authorize(store, request("e1", 30), claim)
    assert refused.outcome is Outcome.INSUFFICIENT_CREDITS
    assert claim.taken
    assert await store.client.exists(claim.key) == 1


async def test_a_replayed_decision_takes_the_claim_too(store: WalletStore) -> None:
    """A new key for an event id already decided: the claim is taken, the decision replayed."""
    await load(store, 100)
    await authorize(store, request("e1", 30))
    claim = claim_for(store)
    again = await authorize(store, request("e1", 30), claim)
    assert again.outcome is Outcome.DUPLICATE
    assert claim.taken


async def test_concurrent_claims_of_one_key_decide_once(store: WalletStore) -> None:
    await load(store, 1_000)
    claims = [claim_for(store) for _ in range(50)]
    results = await asyncio.gather(
        *(authorize(store, request(f"e{n}", 1), claim) for n, claim in enumerate(claims)),
        return_exceptions=True,
    )
    decided = [r for r in results if not isinstance(r, BaseException)]
    assert len(decided) == 1
    assert all(isinstance(r, ClaimHeld) for r in results if isinstance(r, BaseException))
    assert sum(claim.taken for claim in claims) == 1
    assert (await audit(store)).mirror.available == 999


def test_a_record_key_shares_its_wallets_slot(store: WalletStore) -> None:
    """A cluster runs the script only if the record is in the wallet's slot."""
    records = IdempotencyStore(store.client, store.keys.prefix)
    for wallet_id in ("w1", "wal_0123456789abcdef", "another-wallet"):
        record = records.record_key(wallet_id, "some key")
        assert key_slot(record.encode()) == key_slot(store.keys.wallet(wallet_id).wallet.encode())
