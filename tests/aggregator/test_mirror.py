"""Mirror maintenance: the load formula, ledger versions, credits, status, snapshots."""

from __future__ import annotations

import pytest

from aggregator.authorize import authorize, settle
from aggregator.decision import WalletStatus
from aggregator.hold_types import HoldRequest
from aggregator.holds import reserve_hold
from aggregator.mirror import (
    CreditOutcome,
    LoadOutcome,
    credit,
    load_wallet,
    set_status,
    snapshot,
)
from aggregator.wallet_store import WalletStore
from tests.aggregator.support import NOW_MS, audit, load, request

pytestmark = pytest.mark.redis


async def test_load_subtracts_in_flight_and_holds_from_the_ledger(store: WalletStore) -> None:
    await load(store, 100)
    await authorize(store, request("e1", 30))
    await reserve_hold(store, HoldRequest("h1", "w1", "m1", 20, 60_000, NOW_MS))
    # The ledger has not seen e1 or h1: its available still holds them.
    reload = await load_wallet(store, "w1", ledger_available=100, ledger_version=1)
    assert reload.outcome is LoadOutcome.LOADED
    assert (reload.available, reload.in_flight_total, reload.holds_total) == (50, 30, 20)
    assert (reload.drift, reload.shortfall, reload.healed) == (0, 0, False)
    # The ledger lost 70 credits meanwhile (say a refund): floored at zero, never negative.
    short = await load_wallet(store, "w1", ledger_available=30, ledger_version=2)
    assert (short.available, short.shortfall, short.drift) == (0, 20, 50)
    state = await audit(store)
    assert (state.mirror.available, state.mirror.reserved) == (0, 50)


async def test_a_load_older_than_an_applied_settlement_is_stale(store: WalletStore) -> None:
    await load(store, 100, version=1)
    await authorize(store, request("e1", 30))
    # Read at version 1 (e1 not posted), but settlement committed e1 at version 2 and settled
    # it before the load ran: applying it would re-grant e1's 30 credits.
    await settle(store, "w1", ["e1"], ledger_version=2)
    stale = await load_wallet(store, "w1", ledger_available=100, ledger_version=1)
    assert stale.outcome is LoadOutcome.STALE
    fresh = await load_wallet(store, "w1", ledger_available=70, ledger_version=2)
    assert fresh.outcome is LoadOutcome.LOADED
    assert fresh.available == 70


async def test_a_load_newer_than_a_pending_settlement_is_corrected_by_it(
    store: WalletStore,
) -> None:
    await load(store, 100, version=1)
    await authorize(store, request("e1", 30))
    # Read at version 2, after e1's commit but before its settle: e1 is counted twice.
    loaded = await load_wallet(store, "w1", ledger_available=70, ledger_version=2)
    assert loaded.available == 40
    settled = await settle(store, "w1", ["e1"], ledger_version=2)
    assert (settled.available_after, settled.reserved_after) == (70, 0)


async def test_credit_is_idempotent_and_version_aware(store: WalletStore) -> None:
    await load(store, 100, version=5)
    assert (await credit(store, "w1", 50, "p1", ledger_version=6)).outcome is (
        CreditOutcome.CREDITED
    )
    again = await credit(store, "w1", 50, "p1", ledger_version=6)
    assert (again.outcome, again.available_after) == (CreditOutcome.DUPLICATE, 150)
    reflected = await credit(store, "w1", 25, "p0", ledger_version=5)
    assert reflected.outcome is CreditOutcome.ALREADY_REFLECTED
    assert (await audit(store)).mirror.available == 150


async def test_credit_on_an_unloaded_wallet_waits_for_the_load(store: WalletStore) -> None:
    result = await credit(store, "w1", 50, "p1", ledger_version=3)
    assert result.outcome is CreditOutcome.WALLET_NOT_LOADED
    assert await snapshot(store, "w1") is None
    # A ledger snapshot from before that purchase can no longer be loaded.
    stale = await load_wallet(store, "w1", ledger_available=0, ledger_version=2)
    assert stale.outcome is LoadOutcome.STALE
    await load(store, 50, version=3)
    assert (await credit(store, "w1", 50, "p1", ledger_version=3)).outcome is (
        CreditOutcome.DUPLICATE
    )
    assert (await audit(store)).mirror.available == 50


async def test_status_survives_a_reload_without_status(store: WalletStore) -> None:
    assert await set_status(store, "w1", WalletStatus.FROZEN) is None
    await load(store, 10, status=WalletStatus.ACTIVE)
    assert await set_status(store, "w1", WalletStatus.FROZEN) is WalletStatus.FROZEN
    await load(store, 10, version=2)
    mirror = await snapshot(store, "w1")
    assert mirror is not None
    assert mirror.status is WalletStatus.FROZEN
    await load(store, 0, version=3, status=WalletStatus.ACTIVE)
    mirror = await snapshot(store, "w1")
    assert mirror is not None
    assert (mirror.account_status, mirror.status) == (
        WalletStatus.ACTIVE,
        WalletStatus.PREMIUM_PAUSED,
    )


async def test_load_heals_cached_totals_from_their_maps(store: WalletStore) -> None:
    await load(store, 100)
    await authorize(store, request("e1", 30))
    await store.client.hset(store.keys.wallet("w1").wallet, "in_flight", 999)
    healed = await load_wallet(store, "w1", ledger_available=100, ledger_version=1)
    assert healed.healed
    assert healed.in_flight_total == 30
    assert (await audit(store)).mirror.reserved == 30


async def test_snapshot_reports_the_mirror(store: WalletStore) -> None:
    assert await snapshot(store, "w1") is None
    await load(store, 100, version=4)
    await authorize(store, request("e1", 30))
    await reserve_hold(store, HoldRequest("h1", "w1", "m1", 20, 60_000, NOW_MS))
    mirror = await snapshot(store, "w1")
    assert mirror is not None
    assert (mirror.available, mirror.reserved) == (50, 50)
    assert (mirror.in_flight_total, mirror.holds_total) == (30, 20)
    assert (mirror.status, mirror.loaded_version) == (WalletStatus.ACTIVE, 4)
