"""The reconciler against real PostgreSQL and Redis: late settlement, drift repair, rebuild."""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool

from aggregator.authorize import authorize
from aggregator.decision import AuthRequest, Outcome
from aggregator.mirror import snapshot
from aggregator.policy import Tier
from aggregator.wallet_store import WalletStore
from settlement.ledger.batch_writer import BatchWriter, UsageCharge
from settlement.ledger.operations import Ledger
from settlement.ledger.wallets import Wallets
from settlement.ledger.writer import Conn
from settlement.reconciler import reconcile_all, reconcile_wallet
from tests.ledger.helpers import assert_consistent

W = "wal_rec"
NOW_MS = 1_795_000_000_000


async def _funded(wallets: Wallets, ledger: Ledger, wallet_id: str, credits: int) -> None:
    await wallets.create(wallet_id, owner_type="community", owner_id=wallet_id)
    await ledger.adjust(wallet_id, f"fund-{wallet_id}", credits, actor="t", reason="fund")


async def _authorize(store: WalletStore, event_id: str, credits: int) -> None:
    request = AuthRequest(event_id, W, "m1", credits, Tier.CORE, NOW_MS)
    decision = await authorize(store, request)
    assert decision.outcome is Outcome.AUTHORIZED, decision


async def test_first_reconcile_loads_the_mirror_from_the_ledger(
    wallets: Wallets, ledger: Ledger, ledger_pool: AsyncConnectionPool[Conn], mirror: WalletStore
) -> None:
    await _funded(wallets, ledger, W, 500)
    result = await reconcile_wallet(ledger_pool, mirror, W)
    assert (result.ledger_available, result.mirror_available, result.drift) == (500, 500, 0)
    view = await snapshot(mirror, W)
    assert view is not None
    assert view.available == 500


async def test_events_posted_but_not_settled_in_redis_are_settled_late(
    wallets: Wallets,
    ledger: Ledger,
    batch_writer: BatchWriter,
    ledger_pool: AsyncConnectionPool[Conn],
    mirror: WalletStore,
    ledger_db_url: str,
) -> None:
    await _funded(wallets, ledger, W, 100)
    await reconcile_wallet(ledger_pool, mirror, W)
    for i in range(4):
        await _authorize(mirror, f"ev-{i}", 10)
    # The settlement worker posted ev-0 and ev-1, then died before settling them in Redis.
    await batch_writer.post_usage([UsageCharge(f"ev-{i}", W, 10, "api.x") for i in range(2)])

    result = await reconcile_wallet(ledger_pool, mirror, W)
    assert result.settled_late == 2
    assert result.ledger_available == 80
    view = await snapshot(mirror, W)
    assert view is not None
    # ev-2 and ev-3 are still in flight: available = 80 - 20, nothing double-counted.
    assert (view.available, view.in_flight_total) == (60, 20)
    assert result.drift == 0
    await assert_consistent(ledger_db_url)


async def test_drift_is_reported_and_repaired(
    wallets: Wallets, ledger: Ledger, ledger_pool: AsyncConnectionPool[Conn], mirror: WalletStore
) -> None:
    await _funded(wallets, ledger, W, 300)
    await reconcile_wallet(ledger_pool, mirror, W)
    await mirror.client.hset(mirror.keys.wallet(W).wallet, "available", "1300")
    report = await reconcile_all(ledger_pool, mirror, [W])
    assert [(d.wallet_id, d.drift) for d in report.drifted] == [(W, 1000)]
    assert "1 drifted (total |drift| 1000 credits)" in report.summary()
    view = await snapshot(mirror, W)
    assert view is not None
    assert view.available == 300


async def test_rebuild_after_redis_is_lost(
    wallets: Wallets, ledger: Ledger, ledger_pool: AsyncConnectionPool[Conn], mirror: WalletStore
) -> None:
    for index, credits in enumerate((10, 2_000, 0)):
        wallet_id = f"wal_r{index}"
        await wallets.create(wallet_id, owner_type="user", owner_id=wallet_id)
        if credits:
            await ledger.adjust(wallet_id, f"f-{index}", credits, actor="t", reason="fund")
    await reconcile_all(ledger_pool, mirror)
    lost = [k async for k in mirror.client.scan_iter(match=mirror.keys.all_keys_pattern())]
    await mirror.client.delete(*lost)

    report = await reconcile_all(ledger_pool, mirror)
    assert report.wallets == 3
    for index, credits in enumerate((10, 2_000, 0)):
        view = await snapshot(mirror, f"wal_r{index}")
        assert view is not None
        assert view.available == credits
