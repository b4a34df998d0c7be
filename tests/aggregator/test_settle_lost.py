"""Settling events the mirror lost with a Redis flush (authorised before it, posted after it)."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from aggregator.authorize import authorize, settle
from aggregator.decision import Outcome
from aggregator.mirror import LoadOutcome, load_wallet
from aggregator.wallet_store import WalletStore
from domain.errors import InvalidAmount
from stack.redis_cleanup import unlink_key_space
from tests.aggregator.support import audit, load, request

pytestmark = pytest.mark.redis


async def _authorised_then_flushed(store: WalletStore, *events: tuple[str, int]) -> None:
    """Authorise ``events`` on a 100-credit wallet at version 1, then lose the whole mirror."""
    await load(store, 100, version=1)
    for event_id, credits in events:
        assert (await authorize(store, request(event_id, credits))).authorized
    assert isinstance(store.client, Redis)
    await unlink_key_space(store.client, store.keys)


async def test_an_event_lost_with_the_mirror_is_debited_once_when_it_posts(
    store: WalletStore,
) -> None:
    await _authorised_then_flushed(store, ("e1", 30))
    # Rebuilt from the ledger at version 1: e1 has not posted, so the ledger still counts it.
    await load(store, 100, version=1)
    posted = await settle(store, "w1", ["e1"], ledger_version=2, credits={"e1": 30})
    assert posted.recovered_event_ids == ("e1",)
    assert posted.settled_event_ids == ()
    assert (posted.available_after, posted.reserved_after, posted.shortfall) == (70, 0, 0)
    replay = await settle(store, "w1", ["e1"], ledger_version=3, credits={"e1": 30})
    assert replay.unknown_event_ids == ("e1",)
    assert replay.available_after == 70
    # The id is now final: a redelivery to authorisation is a duplicate, never a second charge.
    again = await authorize(store, request("e1", 30))
    assert again.outcome is Outcome.DUPLICATE
    assert (await audit(store)).mirror.available == 70


async def test_a_rebuild_that_already_reflects_the_posting_is_not_debited_again(
    store: WalletStore,
) -> None:
    await _authorised_then_flushed(store, ("e1", 30))
    # The rebuild read the ledger after e1 posted at version 2: 70 is already right.
    await load(store, 70, version=2)
    result = await settle(store, "w1", ["e1"], ledger_version=2, credits={"e1": 30})
    assert result.unknown_event_ids == ("e1",)
    assert result.recovered_event_ids == ()
    assert (await audit(store)).mirror.available == 70


async def test_without_credits_a_lost_event_stays_unknown(store: WalletStore) -> None:
    await _authorised_then_flushed(store, ("e1", 30))
    await load(store, 100, version=1)
    result = await settle(store, "w1", ["e1"], ledger_version=2)
    assert result.unknown_event_ids == ("e1",)
    assert result.available_after == 100


async def test_a_lost_event_beyond_the_balance_is_floored_and_reported(
    store: WalletStore,
) -> None:
    await _authorised_then_flushed(store, ("e1", 80))
    await load(store, 100, version=1)
    # The rebuilt mirror promised the same credits again before e1 posted.
    assert (await authorize(store, request("e2", 50))).authorized
    result = await settle(store, "w1", ["e1"], ledger_version=2, credits={"e1": 80})
    assert (result.available_after, result.shortfall) == (0, 30)
    state = await audit(store)
    assert (state.mirror.available, state.in_flight) == (0, {"e2": 50})


async def test_mixed_outcomes_in_one_call_are_each_reported_once(store: WalletStore) -> None:
    await _authorised_then_flushed(store, ("lost", 10))
    await load(store, 100, version=1)
    assert (await authorize(store, request("live", 20))).authorized
    result = await settle(
        store,
        "w1",
        ["live", "lost", "lost", "free"],
        ledger_version=4,
        credits={"live": 20, "lost": 10},
    )
    assert result.settled_event_ids == ("live",)
    assert result.recovered_event_ids == ("lost",)
    assert result.unknown_event_ids == ("free",)
    assert (result.available_after, result.reserved_after) == (70, 0)


async def test_a_settle_on_an_unloaded_mirror_makes_older_snapshots_stale(
    store: WalletStore,
) -> None:
    # Flushed; a rebuild read the ledger at version 1, then e1 committed at version 2 and its
    # settle found nothing loaded. Loading the older snapshot now would forget e1's debit.
    result = await settle(store, "w1", ["e1"], ledger_version=2, credits={"e1": 30})
    assert not result.loaded
    stale = await load_wallet(store, "w1", ledger_available=100, ledger_version=1)
    assert stale.outcome is LoadOutcome.STALE
    await load(store, 70, version=2)
    assert (await audit(store)).mirror.available == 70


async def test_credits_must_be_whole_and_in_range(store: WalletStore) -> None:
    await load(store, 100)
    with pytest.raises(InvalidAmount, match="credits"):
        await settle(store, "w1", ["e1"], ledger_version=2, credits={"e1": -1})
