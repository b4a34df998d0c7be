"""Auto-recharge through the real payment service and the sandbox gateway (the gateway's
network edge is the only thing simulated): 1,000 concurrent crossings -> one payment."""

from __future__ import annotations

import asyncio

import pytest
from psycopg_pool import AsyncConnectionPool

from api.recharge.engine import RechargeEngine
from api.recharge.payments_adapter import PaymentServiceCharger
from api.recharge.store import RechargeStore
from domain.auto_recharge import StartVerdict, settings_from
from domain.clock import SystemClock
from settlement.ledger.writer import Conn
from tests.api.payments import conftest as payment_fixtures
from tests.api.payments.conftest import Rig

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.kafka]

rig = payment_fixtures.rig


async def test_one_sandbox_payment_for_a_thousand_crossings(
    rig: Rig, ledger_pool: AsyncConnectionPool[Conn]
) -> None:
    store = RechargeStore(ledger_pool, SystemClock())
    settings = settings_from(
        threshold_credits=200, amount_rupees=150, payment_method_token="tok_sandbox_ok",
        daily_max=3,
    )  # fmt: skip
    await store.save_settings(rig.wallet_id, settings, rig.member_id)
    engine = RechargeEngine(store, PaymentServiceCharger(rig.service), SystemClock(), rig.mirror)
    claims = await asyncio.gather(
        *(engine.observe(rig.wallet_id, 100, f"low:{n}") for n in range(1000))
    )
    assert sum(c.verdict is StartVerdict.START for c in claims) == 1
    async with ledger_pool.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM payments WHERE wallet_id = %s AND purpose = 'auto_recharge'",
            (rig.wallet_id,),
        )
        row = await cur.fetchone()
    assert row == (1,)
    (recharge,) = await store.recent(rig.wallet_id)
    assert recharge.state in ("charging", "succeeded")
    assert recharge.payment_id is not None
