"""The analytics routes over real HTTP, reading the usage store through the query service
(as under ``credits up``), with the wallet taken from the key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from settlement.usage_sink import UsageRow, UsageStore
from tests.api.conftest import ApiHarness

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.kafka, pytest.mark.clickhouse]


def _rows(wallet_id: str, days: int, now: datetime) -> list[UsageRow]:
    rows = []
    for day in range(days):
        at = now - timedelta(days=day, hours=1)
        for n, (feature, category, credits) in enumerate(
            (("ai.summary", "ai", 15), ("api.basic_request", "api", 1), ("ai.search", "ai", 12))
        ):
            rows.append(
                UsageRow(
                    event_id=f"{wallet_id}-{day}-{n}",
                    wallet_id=wallet_id,
                    member_id="asha" if n else "ravi",
                    feature=feature,
                    category=category,
                    quantity=1,
                    credits=credits,
                    pricing_version=1,
                    occurred_at=at,
                    settled_at=at + timedelta(seconds=1),
                )
            )
    return rows


async def test_summary_breakdown_and_forecast_of_the_callers_wallet(
    api: ApiHarness, usage_store: UsageStore
) -> None:
    tenant = await api.tenant(credits=5000)
    other = await api.tenant(credits=5000)
    now = datetime.now(UTC)
    usage_store.insert(_rows(tenant.wallet_id, 40, now))
    usage_store.insert(_rows(other.wallet_id, 40, now)[:5])

    summary = await api.client.get("/usage/summary", headers=tenant.headers)
    assert summary.status_code == 200, summary.text
    body = summary.json()
    assert body["wallet_id"] == tenant.wallet_id
    assert body["balances"]["available"] == 5000
    assert body["burn_rate_per_day"] == 28  # 15 + 1 + 12 credits a day
    assert body["days_until_depletion"] == 5000 // 28

    start = (now - timedelta(days=6)).date().isoformat()
    breakdown = await api.client.get(
        "/usage/breakdown", params={"start": start}, headers=tenant.headers
    )
    assert breakdown.status_code == 200, breakdown.text
    got = breakdown.json()
    categories = {item["key"]: item["credits"] for item in got["by_category"]}
    assert categories["ai"] == 27 * sum(1 for d in got["by_day"] if d["credits"])
    assert {m["member_id"] for m in got["by_member"]} == {"asha", "ravi"}

    backwards = await api.client.get(
        "/usage/breakdown", params={"start": "2026-02-01", "end": "2026-01-01"},
        headers=tenant.headers,
    )  # fmt: skip
    assert backwards.status_code == 422

    forecast = await api.client.get("/usage/forecast", headers=tenant.headers)
    assert forecast.status_code == 200, forecast.text
    predicted = forecast.json()["forecast"]
    assert predicted["low"] <= predicted["credits"] <= predicted["high"]
    assert predicted["credits"] > 0

    empty = await api.client.get("/usage/summary", headers=other.headers)
    assert empty.json()["burn_rate_per_day"] < 28
