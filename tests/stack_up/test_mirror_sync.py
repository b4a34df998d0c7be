"""Start-up mirror sync: reservations of events that did not survive the broker are released
(only when the broker is new), events the ledger already holds are settled, never released."""

from __future__ import annotations

import pytest

from aggregator.authorize import authorize
from aggregator.decision import Outcome
from aggregator.mirror import snapshot
from aggregator.wallet_store import WalletStore
from settlement.ledger.batch_writer import BatchWriter, UsageCharge
from settlement.ledger.operations import Ledger
from settlement.ledger.wallets import Wallets
from stack.mirror_sync import Released, sync_mirror
from tests.aggregator.support import request
from tests.redis_support import REDIS_URL

WALLET = "w_sync"
pytestmark = [pytest.mark.postgres, pytest.mark.redis]


async def _funded(wallets: Wallets, ledger: Ledger, credits: int) -> None:
    await wallets.create(WALLET, owner_type="community", owner_id="c1")
    await ledger.adjust(WALLET, "adj_sync_1", credits, actor="ops@test", reason="goodwill")


async def test_lost_reservations_are_released_only_on_a_fresh_broker(
    ledger_db_url: str,
    wallets: Wallets,
    ledger: Ledger,
    batch_writer: BatchWriter,
    mirror: WalletStore,
) -> None:
    await _funded(wallets, ledger, 500)
    prefix = mirror.keys.prefix
    loaded = await sync_mirror(ledger_db_url, REDIS_URL, prefix, release_in_flight=False)
    assert loaded.reconcile.wallets == 1
    assert not loaded.released
    lost = await authorize(mirror, request("ev_lost", 30, wallet_id=WALLET))
    posted = await authorize(mirror, request("ev_posted", 20, wallet_id=WALLET))
    assert lost.outcome is Outcome.AUTHORIZED
    assert posted.outcome is Outcome.AUTHORIZED
    # Settlement posted ev_posted but crashed before settling it in Redis.
    await batch_writer.post_usage([UsageCharge("ev_posted", WALLET, 20, "api.basic_request")])

    durable = await sync_mirror(ledger_db_url, REDIS_URL, prefix, release_in_flight=False)
    assert durable.released == []  # a durable Kafka still holds ev_lost: settlement will post it
    assert durable.reconcile.settled_late == 1
    state = await snapshot(mirror, WALLET)
    assert state is not None
    assert state.in_flight_total == 30

    fresh = await sync_mirror(ledger_db_url, REDIS_URL, prefix, release_in_flight=True)
    assert fresh.released == [Released(WALLET, "ev_lost", 30)]
    assert "released 1 reservations (30 credits)" in fresh.summary()
    assert any("ev_lost" in line for line in fresh.details())
    state = await snapshot(mirror, WALLET)
    assert state is not None
    assert (state.available, state.reserved) == (480, 0)  # 500 - the one posted charge
