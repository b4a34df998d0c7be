"""The UsageReader contract, run on the in-process reader and through the query service."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import date, timedelta

import httpx
import pytest

from api.analytics.reader import UsageReader
from domain.errors import InvalidInput
from settlement.usage_sink import UsageStore
from settlement.usage_sink.query_service import UsageQueryService
from settlement.usage_sink.wallet_queries import MAX_RANGE_DAYS, DayRange
from tests.api.analytics.conftest import NOW, month_of_usage, row

pytestmark = pytest.mark.clickhouse

TODAY = date(2024, 5, 15)


async def test_totals_breakdowns_and_daily_series_match_the_store(
    reader: UsageReader, usage_store: UsageStore
) -> None:
    usage_store.insert(month_of_usage("w1") + month_of_usage("w2", days=3))
    week = await reader.totals("w1", NOW - timedelta(days=7), NOW)
    assert week == usage_store.totals("w1", NOW - timedelta(days=7), NOW)
    assert week.credits == 7 * 135
    days = DayRange(TODAY - timedelta(days=6), TODAY)
    by_category = await reader.breakdown("w1", days, "category")
    assert [(r.key, r.credits) for r in by_category] == [("ai", 700), ("api", 210), ("storage", 35)]
    by_member = await reader.breakdown("w1", days, "member")
    assert [(r.key, r.credits) for r in by_member] == [("m1", 700), ("m2", 210), (None, 35)]
    by_day = await reader.breakdown("w1", days, "day")
    assert [r.key for r in by_day] == [TODAY - timedelta(days=6 - i) for i in range(7)]
    assert {r.credits for r in by_day} == {135}
    by_feature = await reader.breakdown("w1", days, "feature")
    assert by_feature[0].key == "ai.summary"
    daily = await reader.daily_by_category("w1", DayRange(TODAY - timedelta(days=2), TODAY))
    assert [(r.day, r.category, r.credits) for r in daily][:3] == [
        (TODAY - timedelta(days=2), "ai", 100),
        (TODAY - timedelta(days=2), "api", 30),
        (TODAY - timedelta(days=2), "storage", 5),
    ]
    assert await reader.breakdown("nobody", days, "feature") == []


def test_day_ranges_are_validated() -> None:
    with pytest.raises(InvalidInput, match="after"):
        DayRange(TODAY, TODAY - timedelta(days=1))
    with pytest.raises(InvalidInput, match="at most"):
        DayRange(TODAY - timedelta(days=MAX_RANGE_DAYS), TODAY)
    assert DayRange(TODAY - timedelta(days=MAX_RANGE_DAYS - 1), TODAY).days == MAX_RANGE_DAYS
    with pytest.raises(InvalidInput):
        DayRange("2024-01-01", TODAY)  # type: ignore[arg-type]


async def test_bad_arguments_are_typed_errors_on_both_readers(reader: UsageReader) -> None:
    days = DayRange(TODAY, TODAY)
    with pytest.raises(InvalidInput):
        await reader.breakdown("w1", days, "hour")
    with pytest.raises(InvalidInput):
        await reader.breakdown("", days, "feature")
    with pytest.raises(InvalidInput):
        await reader.totals("w1", NOW, NOW - timedelta(seconds=1))
    with pytest.raises(InvalidInput):
        await reader.totals("w1", NOW.replace(tzinfo=None), NOW)


async def test_the_query_service_refuses_what_it_does_not_serve(
    usage_queries: UsageQueryService,
) -> None:
    async with httpx.AsyncClient(base_url=usage_queries.url) as client:
        assert (await client.get("/health")).json()["day_timezone"] == "Asia/Kolkata"
        assert (await client.get("/v1/nothing")).status_code == 404
        assert (await client.post("/v1/totals", content=b"x")).status_code == 405
        bad = await client.get("/v1/breakdown", params={"wallet_id": "w1", "start": "soon"})
        assert bad.status_code == 400
        assert bad.json()["code"] == "invalid_request"
        too_long = {"wallet_id": "w1", "start": "2020-01-01", "end": "2024-01-01", "by": "day"}
        assert (await client.get("/v1/breakdown", params=too_long)).status_code == 400


async def test_queries_during_concurrent_settlement_inserts_stay_exact(
    usage_queries: UsageQueryService, usage_store: UsageStore
) -> None:
    """The worker inserts from its own thread while the API reads: the store's lock keeps the
    chdb session to one statement at a time; reads see whole batches and never fail."""
    batches = [
        [row(f"b{b}-{i}", NOW - timedelta(minutes=i + 1), credits=1) for i in range(200)]
        for b in range(20)
    ]
    insert_ms: list[float] = []

    def settle_batches() -> None:
        for batch in batches:
            started = time.perf_counter()
            usage_store.insert(batch)
            insert_ms.append((time.perf_counter() - started) * 1000)

    writer = threading.Thread(target=settle_batches)
    seen: list[int] = []
    query_ms: list[float] = []
    async with httpx.AsyncClient(base_url=usage_queries.url) as client:
        writer.start()
        while writer.is_alive() or not seen:
            started = time.perf_counter()
            reply = await client.get(
                "/v1/totals",
                params={
                    "wallet_id": "w1",
                    "start": (NOW - timedelta(days=1)).isoformat(),
                    "end": NOW.isoformat(),
                },
            )
            query_ms.append((time.perf_counter() - started) * 1000)
            assert reply.status_code == 200
            seen.append(reply.json()["credits"])
            await asyncio.sleep(0)
        await asyncio.to_thread(writer.join)
    assert seen == sorted(seen)  # monotonic: no read saw a half-written state go backwards
    assert all(credits % 200 == 0 for credits in seen)  # whole batches only
    assert usage_store.totals("w1", NOW - timedelta(days=1), NOW).credits == 4000
    print(  # the measurement quoted in the design note (run with -s)
        f"queries={len(query_ms)} p50={sorted(query_ms)[len(query_ms) // 2]:.1f}ms "
        f"max={max(query_ms):.1f}ms; inserts max={max(insert_ms):.1f}ms"
    )
