"""AnalyticsService on a real chdb store and the real Redis mirror: figures, cache, invalidation."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import pytest

from aggregator.authorize import settle
from aggregator.mirror import load_wallet, snapshot
from aggregator.wallet_store import WalletStore
from api.analytics.cache import MirrorUsageVersions, VersionedCache
from api.analytics.reader import StoreUsageReader
from api.analytics.service import AnalyticsService
from domain.clock import FrozenClock
from domain.errors import InvalidInput
from settlement.usage_sink import UsageStore
from tests.api.analytics.conftest import NOW, month_of_usage, row

pytestmark = [pytest.mark.clickhouse, pytest.mark.redis]

TODAY = date(2024, 5, 15)


@dataclass(frozen=True)
class Balances:
    available: int
    reserved: int = 0
    pending: int = 0


def service_for(store: UsageStore, mirror: WalletStore, **kwargs: object) -> AnalyticsService:
    return AnalyticsService(
        StoreUsageReader(store),
        MirrorUsageVersions(mirror),
        FrozenClock(NOW),
        **kwargs,  # type: ignore[arg-type]
    )


async def test_summary_figures(usage_store: UsageStore, mirror: WalletStore) -> None:
    usage_store.insert(month_of_usage())
    summary = await service_for(usage_store, mirror).summary("w1", Balances(2_700, 40, 1_500))
    # 135 credits a day, every day; the trailing 7 x 24 h hold exactly 7 of them.
    assert summary.burn_rate_per_day == 135
    assert summary.spent_last_7_days == 945
    assert summary.month_to_date == 15 * 135  # May 1..15, today's usage included
    assert summary.days_until_depletion == 20
    assert summary.depletion_date == date(2024, 6, 4)
    # 16.5 days of May left at 135/day, on top of the month so far.
    assert summary.estimated_monthly_spend == 15 * 135 + round(16.5 * 135)
    assert summary.balances.model_dump() == {"available": 2_700, "reserved": 40, "pending": 1_500}
    assert summary.month == date(2024, 5, 1)


async def test_breakdown_by_every_dimension(usage_store: UsageStore, mirror: WalletStore) -> None:
    usage_store.insert(month_of_usage())
    result = await service_for(usage_store, mirror).breakdown(
        "w1", TODAY - timedelta(days=9), TODAY
    )
    assert result.total_credits == 1_350
    assert [(i.key, i.credits, i.share_bp) for i in result.by_category] == [
        ("ai", 1_000, 7_407),
        ("api", 300, 2_222),
        ("storage", 50, 370),
    ]
    assert [m.member_id for m in result.by_member] == ["m1", "m2", None]
    assert len(result.by_day) == 10
    assert {d.credits for d in result.by_day} == {135}
    default = await service_for(usage_store, mirror).breakdown("w1")
    assert (default.start, default.end) == (date(2024, 5, 1), TODAY)
    with pytest.raises(InvalidInput):
        await service_for(usage_store, mirror).breakdown("w1", TODAY, TODAY - timedelta(days=1))
    with pytest.raises(InvalidInput):
        await service_for(usage_store, mirror).breakdown("w1", date(2022, 1, 1), TODAY)


async def test_forecast_of_a_steady_wallet(usage_store: UsageStore, mirror: WalletStore) -> None:
    usage_store.insert(month_of_usage(days=90))
    result = await service_for(usage_store, mirror).forecast("w1")
    assert result.month == date(2024, 6, 1)
    assert result.forecast.credits == 30 * 135
    assert result.forecast.low <= 30 * 135 <= result.forecast.high
    assert [(c.category, c.credits) for c in result.categories] == [
        ("ai", 3_000),
        ("api", 900),
        ("storage", 150),
    ]
    assert not result.ai_spike.expected
    assert not result.storage_growth.expanding
    assert result.history_days == 91
    assert result.model_dump(mode="json")["as_of"] == "2024-05-15"


async def test_a_settle_invalidates_the_cache(usage_store: UsageStore, mirror: WalletStore) -> None:
    usage_store.insert(month_of_usage())
    await load_wallet(mirror, "w1", ledger_available=10_000, ledger_version=5)
    service = service_for(usage_store, mirror)
    before = await service.summary("w1", Balances(10_000))
    # Usage lands in ClickHouse; the mirror's version has not moved: the cached answer stands.
    usage_store.insert([row("late-1", NOW - timedelta(minutes=5), credits=700)])
    assert (await service.summary("w1", Balances(10_000))).month_to_date == before.month_to_date
    assert service.cache.hits == 1
    # Settlement settles the wallet at a newer ledger version: the next read recomputes.
    await settle(mirror, "w1", ["late-1"], ledger_version=6)
    loaded = await snapshot(mirror, "w1")
    assert loaded is not None
    assert loaded.applied_version == 6
    after = await service.summary("w1", Balances(10_000))
    assert after.month_to_date == before.month_to_date + 700
    assert after.burn_rate_per_day == before.burn_rate_per_day + 100


async def test_breakdown_and_forecast_are_cached_per_version(
    usage_store: UsageStore, mirror: WalletStore
) -> None:
    usage_store.insert(month_of_usage())
    await load_wallet(mirror, "w1", ledger_available=10_000, ledger_version=1)
    service = service_for(usage_store, mirror)
    first = await service.forecast("w1")
    assert await service.forecast("w1") is first
    days = (TODAY - timedelta(days=3), TODAY)
    assert await service.breakdown("w1", *days) is await service.breakdown("w1", *days)
    await settle(mirror, "w1", ["x"], ledger_version=2)
    assert await service.forecast("w1") is not first


async def test_an_unloaded_wallet_is_never_cached(
    usage_store: UsageStore, mirror: WalletStore
) -> None:
    usage_store.insert(month_of_usage())
    service = service_for(usage_store, mirror)
    await service.summary("w1", Balances(0))
    usage_store.insert([row("late-2", NOW - timedelta(minutes=1), credits=70)])
    summary = await service.summary("w1", Balances(0))
    assert summary.spent_last_7_days == 945 + 70
    assert len(service.cache) == 0


def test_the_cache_is_a_bounded_lru_with_a_ttl() -> None:
    now = [0.0]
    cache: VersionedCache[int] = VersionedCache(2, ttl_s=10, monotonic=lambda: now[0])
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)  # evicts b, the least recently used
    assert (cache.get("b"), cache.get("a"), cache.get("c")) == (None, 1, 3)
    now[0] = 10.0
    assert cache.get("a") is None
    assert len(cache) == 1
    with pytest.raises(InvalidInput):
        VersionedCache(0)
