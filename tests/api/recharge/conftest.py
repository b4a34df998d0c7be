"""Recharge fixtures: a real ledger database with one wallet, a store on a frozen clock."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from psycopg_pool import AsyncConnectionPool

from api.recharge.store import RechargeStore
from domain.auto_recharge import settings_from
from domain.clock import FrozenClock
from settlement.ledger.wallets import Wallets
from settlement.ledger.writer import Conn
from tests.meter import conftest as meter_fixtures

tansu = meter_fixtures.tansu
topics = meter_fixtures.topics

START = datetime(2026, 3, 14, 6, 0, tzinfo=UTC)  # 11:30 in Kolkata


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


@pytest.fixture
def store(ledger_pool: AsyncConnectionPool[Conn], clock: FrozenClock) -> RechargeStore:
    return RechargeStore(ledger_pool, clock)


@pytest.fixture
async def wallet_id(wallets: Wallets, store: RechargeStore) -> str:
    """A wallet with auto-recharge on: below 200 credits, ₹150, at most 3 a day."""
    wallet = f"w_{uuid.uuid4().hex[:10]}"
    await wallets.create(wallet, owner_type="community", owner_id="owner_1")
    settings = settings_from(
        threshold_credits=200, amount_rupees=150, payment_method_token="tok_card_4111",
        daily_max=3,
    )  # fmt: skip
    await store.save_settings(wallet, settings, actor="owner_1")
    return wallet
