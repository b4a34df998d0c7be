"""``GET /usage/summary``, ``/usage/breakdown`` and ``/usage/forecast`` (SPEC §8, issue 4 §6).

Thin routes: the wallet comes from the key (scope ``wallet:read``), the work is
:class:`~api.analytics.service.AnalyticsService`'s. The service is built on first use, not in
the lifespan, so the API starts (and serves every other route) even while the settlement
worker's usage query service is still starting; until it answers, these routes reply with a
retryable ``unavailable`` error.
"""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from api.analytics.cache import MirrorUsageVersions
from api.analytics.factory import open_usage_reader
from api.analytics.models import (
    UsageBreakdownResponse,
    UsageForecastResponse,
    UsageSummaryResponse,
)
from api.analytics.service import AnalyticsService
from api.auth import Reader, Services, wallet_of
from api.routers.wallet import balances_of
from api.services import ApiServices

router = APIRouter(tags=["analytics"])


async def analytics(request: Request) -> AnalyticsService:
    """The app's analytics service, opened once (concurrent first requests wait for it)."""
    state = request.app.state
    found: AnalyticsService | None = getattr(state, "analytics", None)
    if found is not None:
        return found
    if getattr(state, "analytics_lock", None) is None:
        state.analytics_lock = asyncio.Lock()
    async with state.analytics_lock:
        if getattr(state, "analytics", None) is None:
            opened: ApiServices = request.app.state.services
            reader = await open_usage_reader(
                opened.exits,
                usage_query_url=opened.config.usage_query_url,
                clickhouse_url=opened.config.clickhouse_url,
            )
            versions = MirrorUsageVersions(opened.mirror)
            state.analytics = AnalyticsService(reader, versions, opened.clock)
    ready: AnalyticsService = state.analytics
    return ready


Analytics = Annotated[AnalyticsService, Depends(analytics)]


@router.get(
    "/usage/summary",
    response_model=UsageSummaryResponse,
    summary="Balances, burn rate, month to date, estimated monthly spend, days until depletion",
)
async def usage_summary(
    principal: Reader, opened: Services, service: Analytics
) -> UsageSummaryResponse:
    record = await opened.wallets.get(wallet_of(principal))
    balances, _ = await balances_of(opened, record)
    return await service.summary(record.id, balances)


@router.get(
    "/usage/breakdown",
    response_model=UsageBreakdownResponse,
    summary="Usage by feature, category, member and day over a range of local days",
)
async def usage_breakdown(
    principal: Reader,
    service: Analytics,
    start: Annotated[
        date | None, Query(description="First day (default: 1st of this month)")
    ] = None,
    end: Annotated[date | None, Query(description="Last day, inclusive (default: today)")] = None,
) -> UsageBreakdownResponse:
    return await service.breakdown(wallet_of(principal), start, end)


@router.get(
    "/usage/forecast",
    response_model=UsageForecastResponse,
    summary="Next month's spend with an 80% interval, AI-spike and storage-growth signals",
)
async def usage_forecast(principal: Reader, service: Analytics) -> UsageForecastResponse:
    return await service.forecast(wallet_of(principal))
