"""Fixtures of the analytics tests: both readers over the real chdb usage store and query
service of ``tests/api/conftest.py`` (``usage_store``, ``usage_queries``).

chdb allows one data directory per process, so each test opens its own directory and closes it
afterwards (the usage-sink suite does the same).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio

from api.analytics.reader import StoreUsageReader, UsageReader
from api.analytics.remote_reader import RemoteUsageReader
from settlement.usage_sink import UsageRow, UsageStore
from settlement.usage_sink.query_service import UsageQueryService

# 2024-05-15 12:00 IST, a Wednesday.
NOW = datetime(2024, 5, 15, 6, 30, tzinfo=UTC)


@pytest_asyncio.fixture(loop_scope="session", params=["store", "remote"])
async def reader(
    request: pytest.FixtureRequest, usage_store: UsageStore
) -> AsyncIterator[UsageReader]:
    """Both readers over the same store: every contract test runs against each."""
    if request.param == "store":
        yield StoreUsageReader(usage_store)
        return
    service = UsageQueryService(usage_store)
    await service.start(0)
    remote = await RemoteUsageReader.connect(service.url)
    yield remote
    await remote.aclose()
    await service.close()


def row(
    event_id: str,
    occurred_at: datetime,
    *,
    wallet_id: str = "w1",
    credits: int = 10,
    feature: str = "ai.summary",
    category: str = "ai",
    member_id: str | None = "m1",
) -> UsageRow:
    return UsageRow(
        event_id=event_id,
        wallet_id=wallet_id,
        member_id=member_id,
        feature=feature,
        category=category,
        quantity=1,
        credits=credits,
        pricing_version=1,
        occurred_at=occurred_at,
        settled_at=occurred_at + timedelta(seconds=1),
    )


def month_of_usage(wallet_id: str = "w1", days: int = 60) -> list[UsageRow]:
    """Every day before NOW: ai 100 (m1), api 30 (m2), storage 5 (no member); today too."""
    rows = []
    for d in range(days + 1):
        at = NOW - timedelta(days=d, hours=1)
        rows.append(row(f"{wallet_id}-ai-{d}", at, wallet_id=wallet_id, credits=100))
        rows.append(
            row(
                f"{wallet_id}-api-{d}",
                at,
                wallet_id=wallet_id,
                credits=30,
                feature="api.heavy_query",
                category="api",
                member_id="m2",
            )
        )
        rows.append(
            row(
                f"{wallet_id}-st-{d}",
                at,
                wallet_id=wallet_id,
                credits=5,
                feature="storage.mb100_month",
                category="storage",
                member_id=None,
            )
        )
    return rows
