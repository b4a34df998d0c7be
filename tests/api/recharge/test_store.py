"""The recharge state machine on real PostgreSQL: claims, tries, retries, auto-disable."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from api.recharge.engine import RechargeEngine
from api.recharge.store import RechargeStore
from domain.auto_recharge import AutoRechargeNotConfigured, RechargePolicy, StartVerdict
from domain.clock import FrozenClock
from meter.schema import decode_wallet_event
from settlement.ledger.writer import Conn
from tests.api.recharge.support import OUTAGE, RecordingCharger, declined, pending, success

pytestmark = pytest.mark.postgres


async def _states(pool: AsyncConnectionPool[Conn], wallet_id: str) -> list[str]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT state FROM auto_recharges WHERE wallet_id = %s ORDER BY created_at",
            (wallet_id,),
        )
        return [row[0] for row in await cur.fetchall()]


async def test_claim_refuses_while_in_flight_then_cools_down_then_daily_max(
    store: RechargeStore, wallet_id: str, clock: FrozenClock
) -> None:
    assert (await store.claim(wallet_id, 250, "e0")).verdict is StartVerdict.ABOVE_THRESHOLD
    first = await store.claim(wallet_id, 150, "e1")
    assert first.verdict is StartVerdict.START
    assert first.recharge is not None
    assert first.recharge.state == "pending"
    assert (await store.claim(wallet_id, 100, "e2")).verdict is StartVerdict.IN_FLIGHT

    engine = RechargeEngine(store, RecordingCharger(), clock)
    assert await engine.drive_due() == 1
    assert (await store.claim(wallet_id, 100, "e3")).verdict is StartVerdict.COOLING_DOWN
    for n in range(2):
        clock.advance(timedelta(minutes=10))
        assert (await engine.observe(wallet_id, 100, f"e4{n}")).verdict is StartVerdict.START
    clock.advance(timedelta(minutes=10))
    assert (await store.claim(wallet_id, 100, "e5")).verdict is StartVerdict.DAILY_MAX_REACHED
    clock.advance(timedelta(hours=13))  # past midnight in Kolkata
    assert (await store.claim(wallet_id, 100, "e6")).verdict is StartVerdict.START


async def test_the_database_refuses_a_second_recharge_in_flight(
    store: RechargeStore, wallet_id: str, ledger_pool: AsyncConnectionPool[Conn]
) -> None:
    await store.claim(wallet_id, 10, "e1")
    with pytest.raises(psycopg.errors.UniqueViolation):
        async with ledger_pool.connection() as conn:
            await conn.execute(
                "INSERT INTO auto_recharges (id, wallet_id, state, amount_paise,"
                " payment_method_token, trigger_event_id, trigger_available_credits, local_day,"
                " next_try_at, created_at, updated_at) VALUES ('rch_' || md5('x'), %s,"
                " 'retry_wait', 15000, 'tok_card_4111', 'e2', 10, current_date, now(), now(),"
                " now())",
                (wallet_id,),
            )


async def test_declines_retry_with_backoff_then_give_up_and_notify(
    ledger_pool: AsyncConnectionPool[Conn], wallet_id: str, clock: FrozenClock
) -> None:
    store = RechargeStore(ledger_pool, clock, RechargePolicy(retry_delays_s=(60, 300)))
    charger = RecordingCharger().then([declined(), declined(), declined()])
    engine = RechargeEngine(store, charger, clock)
    await engine.observe(wallet_id, 10, "e1")
    assert await _states(ledger_pool, wallet_id) == ["retry_wait"]
    clock.advance(timedelta(seconds=59))
    assert await engine.drive_due() == 0  # backoff not over yet
    clock.advance(timedelta(seconds=1))
    assert await engine.drive_due() == 1
    clock.advance(timedelta(seconds=300))
    assert await engine.drive_due() == 1
    assert await _states(ledger_pool, wallet_id) == ["failed"]
    keys = [call.idempotency_key for call in charger.calls]
    assert len(set(keys)) == 3  # each try its own payment
    kinds = [n.kind for n in await store.notifications(wallet_id)]
    assert kinds == ["recharge_failed"] * 3
    settings = await store.settings(wallet_id)
    assert settings is not None
    assert settings[0].enabled  # 3 declines < disable_after_failures (6)

    events = [decode_wallet_event(p) for _, _, p in await store.unpublished()]
    assert [e.type for e in events] == ["recharge_requested"] + ["recharge_failed"] * 3
    assert [getattr(e, "will_retry", None) for e in events[1:]] == [True, True, False]


async def test_repeated_failure_disables_auto_recharge(
    ledger_pool: AsyncConnectionPool[Conn], wallet_id: str, clock: FrozenClock
) -> None:
    policy = RechargePolicy(retry_delays_s=(0, 0, 0, 0), disable_after_failures=3)
    store = RechargeStore(ledger_pool, clock, policy)
    engine = RechargeEngine(store, RecordingCharger().then([declined()] * 5), clock)
    await engine.observe(wallet_id, 10, "e1")
    while await engine.drive_due():
        pass
    assert await _states(ledger_pool, wallet_id) == ["failed"]
    settings = await store.settings(wallet_id)
    assert settings is not None
    assert not settings[0].enabled
    assert settings[1] == "repeated_failures"
    kinds = [n.kind for n in await store.notifications(wallet_id)]
    assert kinds[0] == "auto_recharge_disabled"
    clock.advance(timedelta(days=1))
    assert (await store.claim(wallet_id, 10, "e2")).verdict is StartVerdict.DISABLED


async def test_pending_payment_is_asked_again_with_the_same_key(
    store: RechargeStore, wallet_id: str, clock: FrozenClock, ledger_pool: AsyncConnectionPool[Conn]
) -> None:
    charger = RecordingCharger().then([pending(), OUTAGE, success(1500)])
    engine = RechargeEngine(store, charger, clock)
    await engine.observe(wallet_id, 10, "e1")
    assert await engine.drive_due() == 0  # pending: asked again after the poll interval
    clock.advance(timedelta(seconds=store.leases.pending_poll_s))
    assert await engine.drive_due() == 1  # gateway outage: same try later
    clock.advance(timedelta(seconds=store.leases.outage_retry_s))
    assert await engine.drive_due() == 1
    assert await _states(ledger_pool, wallet_id) == ["succeeded"]
    assert len({call.idempotency_key for call in charger.calls}) == 1
    assert [n.kind for n in await store.notifications(wallet_id)] == ["recharge_succeeded"]


async def test_a_crashed_try_is_taken_over_after_its_lease(
    store: RechargeStore, wallet_id: str, clock: FrozenClock
) -> None:
    claim = await store.claim(wallet_id, 10, "e1")
    assert claim.recharge is not None
    (leased,) = await store.lease_due()  # this worker "crashes" holding the lease
    assert await store.lease_due() == []
    clock.advance(timedelta(seconds=store.leases.charge_s))
    (taken,) = await store.lease_due()
    assert taken.idempotency_key == leased.idempotency_key  # the same try, the same payment
    assert await store.succeeded(taken, "pay_1", 1500)
    assert not await store.succeeded(leased, "pay_1", 1500)  # stale: changes nothing
    assert await store.declined(leased, "card_declined", "late") is None


async def test_disable_stops_waiting_retries_and_needs_settings(
    store: RechargeStore, wallet_id: str, clock: FrozenClock, ledger_pool: AsyncConnectionPool[Conn]
) -> None:
    engine = RechargeEngine(store, RecordingCharger().then([declined()]), clock)
    await engine.observe(wallet_id, 10, "e1")
    await store.disable(wallet_id, actor="owner_1")
    assert await _states(ledger_pool, wallet_id) == ["failed"]
    with pytest.raises(AutoRechargeNotConfigured):
        await store.disable("w_unknown", actor="owner_1")
