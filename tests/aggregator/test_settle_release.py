"""Settlement and release of authorisations: idempotency and the ambiguous-produce path."""

from __future__ import annotations

import pytest

from aggregator.authorize import authorize, release, settle
from aggregator.decision import Outcome
from aggregator.wallet_store import WalletStore
from tests.aggregator.support import audit, load, request

pytestmark = pytest.mark.redis


async def test_settle_drops_reservations_once(store: WalletStore) -> None:
    await load(store, 100)
    for event_id, credits in (("e1", 10), ("e2", 20), ("e3", 30)):
        await authorize(store, request(event_id, credits))
    first = await settle(store, "w1", ["e1", "e2", "e2"], ledger_version=2)
    assert first.settled_event_ids == ("e1", "e2")
    assert first.settled_credits == 30
    assert (first.available_after, first.reserved_after) == (40, 30)
    again = await settle(store, "w1", ["e1", "e2", "nope"], ledger_version=2)
    assert again.settled_event_ids == ()
    assert again.settled_credits == 0
    assert again.unknown_event_ids == ("e1", "e2", "nope")
    state = await audit(store)
    assert state.in_flight == {"e3": 30}
    assert (state.mirror.available, state.mirror.reserved) == (40, 30)
    # A settled event stays a duplicate: a redelivery never reserves again.
    duplicate = await authorize(store, request("e1", 10))
    assert duplicate.outcome is Outcome.DUPLICATE
    assert duplicate.authorized
    assert (await audit(store)).mirror.available == 40


async def test_settle_on_an_unloaded_mirror_changes_nothing(store: WalletStore) -> None:
    result = await settle(store, "w1", ["e1"])
    assert not result.loaded
    assert result.unknown_event_ids == ("e1",)
    assert await store.client.exists(store.keys.wallet("w1").wallet) == 0


async def test_release_returns_credits_once_and_allows_a_retry(store: WalletStore) -> None:
    await load(store, 100)
    await authorize(store, request("e1", 30))
    released = await release(store, "w1", "e1")
    assert released.released
    assert released.credits == 30
    assert (released.available_after, released.reserved_after) == (100, 0)
    again = await release(store, "w1", "e1")
    assert not again.released
    assert again.available_after == 100
    # The producer retries the same event id: it is a fresh authorisation, reserved once.
    retry = await authorize(store, request("e1", 30))
    assert retry.outcome is Outcome.AUTHORIZED
    assert (await authorize(store, request("e1", 30))).outcome is Outcome.DUPLICATE
    state = await audit(store)
    assert state.in_flight == {"e1": 30}
    assert state.mirror.available == 70


async def test_release_after_settlement_is_a_no_op(store: WalletStore) -> None:
    await load(store, 100)
    await authorize(store, request("e1", 30))
    await settle(store, "w1", ["e1"])
    assert not (await release(store, "w1", "e1")).released
    assert (await authorize(store, request("e1", 30))).outcome is Outcome.DUPLICATE
    assert (await audit(store)).mirror.available == 70


async def test_an_event_that_reached_the_ledger_after_release_is_charged(
    store: WalletStore,
) -> None:
    """Ambiguous produce: the producer saw a failure and released, but the event was written."""
    await load(store, 100)
    await authorize(store, request("e1", 30))
    await release(store, "w1", "e1")
    late = await settle(store, "w1", ["e1"], ledger_version=2)
    assert late.late_event_ids == ("e1",)
    assert late.settled_event_ids == ()
    assert (late.available_after, late.shortfall) == (70, 0)
    # Now charged, the event id is final: a retry is a duplicate, not a second charge.
    assert (await authorize(store, request("e1", 30))).outcome is Outcome.DUPLICATE
    assert (await settle(store, "w1", ["e1"])).unknown_event_ids == ("e1",)
    assert (await audit(store)).mirror.available == 70


async def test_a_late_event_beyond_the_balance_is_reported_as_shortfall(
    store: WalletStore,
) -> None:
    await load(store, 30)
    await authorize(store, request("e1", 30))
    await release(store, "w1", "e1")
    await authorize(store, request("e2", 20))
    late = await settle(store, "w1", ["e1"], ledger_version=2)
    assert (late.available_after, late.shortfall) == (0, 20)
    assert (await audit(store)).mirror.reserved == 20


async def test_an_in_flight_event_whose_record_expired_is_still_never_reserved_twice(
    store: WalletStore,
) -> None:
    await load(store, 100)
    await authorize(store, request("e1", 30))
    record = store.keys.wallet("w1").event("e1")
    await store.client.delete(record)  # as if settlement stalled past the record TTL
    again = await authorize(store, request("e1", 30))
    assert again.outcome is Outcome.DUPLICATE
    assert again.original_outcome is Outcome.AUTHORIZED
    # Released, then posted late: the rebuilt record still answers duplicates.
    await release(store, "w1", "e1")
    assert 0 < await store.client.pttl(record) <= store.record_ttl_ms
    await settle(store, "w1", ["e1"])
    late = await authorize(store, request("e1", 30))
    assert late.outcome is Outcome.DUPLICATE
    assert late.available_after == 70
    assert (await audit(store)).mirror.available == 70
