"""The analytics service behind ``/usage/summary``, ``/usage/breakdown`` and ``/usage/forecast``.

Reads usage through a :class:`~api.analytics.reader.UsageReader`, computes with the pure
functions of :mod:`domain.forecast` / :mod:`domain.forecast_burn`, and caches per wallet in a
:class:`~api.analytics.cache.VersionedCache` keyed by the wallet's mirror version (a settle
invalidates; see that module). Balances are the caller's: they change on every spend and
purchase, come from the ledger/mirror the wallet routes already read, and are never cached
here — only the usage figures are.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Final, Protocol, TypeVar
from zoneinfo import ZoneInfo

from api.analytics import models
from api.analytics.cache import UsageVersions, VersionedCache
from api.analytics.reader import UsageReader
from domain.clock import Clock
from domain.errors import InvalidInput
from domain.forecast import SpendForecast, UsageHistory, forecast_next_month, share_bp
from domain.forecast_burn import BURN_WINDOW, burn_figures, month_start
from domain.money import require_int
from settlement.usage_sink.model import BreakdownRow, DailyCategoryCredits
from settlement.usage_sink.wallet_queries import DayRange

T = TypeVar("T")
HISTORY_DAYS: Final = 91  # 13 weeks: the model reads 8; the signals compare two 30-day windows


class Balances(Protocol):
    """What the summary needs of a wallet's balances (the wallet routes' object fits)."""

    @property
    def available(self) -> int: ...
    @property
    def reserved(self) -> int: ...
    @property
    def pending(self) -> int: ...


@dataclass(frozen=True, slots=True)
class _UsageFigures:
    trailing_week: int
    month_to_date: int


class AnalyticsService:
    """One per API process; safe to share between requests on its event loop."""

    def __init__(
        self,
        reader: UsageReader,
        versions: UsageVersions,
        clock: Clock,
        *,
        cache: VersionedCache[Any] | None = None,
        history_days: int = HISTORY_DAYS,
    ) -> None:
        self._reader = reader
        self._versions = versions
        self._clock = clock
        self._zone = ZoneInfo(reader.day_timezone)
        self.cache: VersionedCache[Any] = cache or VersionedCache()
        self._history_days = require_int(history_days, field="history_days", minimum=7)

    async def summary(self, wallet_id: str, balances: Balances) -> models.UsageSummaryResponse:
        now = self._clock.now()
        local = now.astimezone(self._zone)
        figures: _UsageFigures = await self._cached(
            wallet_id, ("summary", local.date()), lambda: self._usage_figures(wallet_id, now)
        )
        available = require_int(balances.available, field="available")
        burn = burn_figures(
            trailing_week_credits=figures.trailing_week,
            month_to_date=figures.month_to_date,
            available=available,
            local_now=local,
        )
        return models.UsageSummaryResponse(
            wallet_id=wallet_id,
            as_of=now,
            day_timezone=self._reader.day_timezone,
            month=local.date().replace(day=1),
            balances=models.SummaryBalances(
                available=available,
                reserved=require_int(balances.reserved, field="reserved"),
                pending=require_int(balances.pending, field="pending"),
            ),
            burn_rate_per_day=burn.burn_rate_per_day,
            spent_last_7_days=figures.trailing_week,
            month_to_date=burn.month_to_date,
            estimated_monthly_spend=burn.estimated_monthly_spend,
            days_until_depletion=burn.days_until_depletion,
            depletion_date=burn.depletion_date,
        )

    async def breakdown(
        self, wallet_id: str, start: date | None = None, end: date | None = None
    ) -> models.UsageBreakdownResponse:
        """Usage over local days ``start..end`` (default: this month so far)."""
        today = self._today()
        days = DayRange(start or today.replace(day=1), end or today)
        return await self._cached(
            wallet_id, ("breakdown", days), lambda: self._breakdown(wallet_id, days)
        )

    async def forecast(self, wallet_id: str) -> models.UsageForecastResponse:
        today = self._today()
        return await self._cached(
            wallet_id, ("forecast", today), lambda: self._forecast(wallet_id, today)
        )

    # -- computing ------------------------------------------------------------------------------

    def _today(self) -> date:
        return self._clock.now().astimezone(self._zone).date()

    async def _cached(
        self, wallet_id: str, what: tuple[Hashable, ...], compute: Callable[[], Awaitable[T]]
    ) -> T:
        version = await self._versions.version(wallet_id)
        key = None if version is None else (wallet_id, version, *what)
        value: T = await self.cache.get_or_compute(key, compute)
        return value

    async def _usage_figures(self, wallet_id: str, now: datetime) -> _UsageFigures:
        first = month_start(now.astimezone(self._zone))
        week, month = await asyncio.gather(
            self._reader.totals(wallet_id, now - BURN_WINDOW, now),
            self._reader.totals(wallet_id, first, now),
        )
        return _UsageFigures(week.credits, month.credits)

    async def _breakdown(self, wallet_id: str, days: DayRange) -> models.UsageBreakdownResponse:
        features, categories, members, by_day = await asyncio.gather(
            self._reader.breakdown(wallet_id, days, "feature"),
            self._reader.breakdown(wallet_id, days, "category"),
            self._reader.breakdown(wallet_id, days, "member"),
            self._reader.breakdown(wallet_id, days, "day"),
        )
        total = sum(row.credits for row in categories)
        per_day = {row.key: row for row in by_day}
        return models.UsageBreakdownResponse(
            wallet_id=wallet_id,
            start=days.first,
            end=days.last,
            day_timezone=self._reader.day_timezone,
            total_credits=total,
            total_events=sum(row.events for row in categories),
            by_feature=[_item(row, total) for row in features],
            by_category=[_item(row, total) for row in categories],
            by_member=[
                models.MemberItem(
                    member_id=None if row.key is None else str(row.key),
                    credits=row.credits,
                    events=row.events,
                    share_bp=share_bp(row.credits, total),
                )
                for row in members
            ],
            by_day=[_day_item(day, per_day.get(day)) for day in _each_day(days)],
        )

    async def _forecast(self, wallet_id: str, today: date) -> models.UsageForecastResponse:
        days = DayRange(today - timedelta(days=self._history_days), today - timedelta(days=1))
        rows = await self._reader.daily_by_category(wallet_id, days)
        result = forecast_next_month(history_of(rows, days), today)
        return forecast_response(wallet_id, today, self._reader.day_timezone, result)


def history_of(rows: list[DailyCategoryCredits], days: DayRange) -> UsageHistory:
    """Dense per-category series over ``days`` from sparse (day, category) rows."""
    index = {day: i for i, day in enumerate(_each_day(days))}
    series: dict[str, list[int]] = defaultdict(lambda: [0] * days.days)
    for row in rows:
        if row.day not in index:
            raise InvalidInput(f"usage row for {row.day} is outside the range", field="day")
        series[row.category][index[row.day]] += max(row.credits, 0)
    categories = tuple((name, tuple(series[name])) for name in sorted(series))
    total = tuple(sum(values) for values in zip(*(s for _, s in categories), strict=True))
    return UsageHistory(days.first, total or (0,) * days.days, categories)


def forecast_response(
    wallet_id: str, today: date, day_timezone: str, result: SpendForecast
) -> models.UsageForecastResponse:
    ai, storage = result.ai_spike, result.storage_growth
    return models.UsageForecastResponse(
        wallet_id=wallet_id,
        as_of=today,
        day_timezone=day_timezone,
        month=result.month,
        method=result.method,
        interval_percent=result.interval_percent,
        history_days=result.history_days,
        forecast=models.ForecastRange(
            credits=result.total.credits, low=result.total.low, high=result.total.high
        ),
        categories=[
            models.CategoryForecast(category=name, credits=f.credits, low=f.low, high=f.high)
            for name, f in result.categories
        ],
        ai_spike=models.AiSpikeOut(
            expected=ai.expected,
            reason=ai.reason,
            recent_per_day=ai.recent_per_day,
            baseline_per_day=ai.baseline_per_day,
            recent_share_bp=ai.recent_share_bp,
            forecast_share_bp=ai.forecast_share_bp,
        ),
        storage_growth=models.StorageGrowthOut(
            expanding=storage.expanding,
            last_30_days=storage.last_30_days,
            previous_30_days=storage.previous_30_days,
            growth_bp=storage.growth_bp,
            forecast_next_month=storage.forecast_next_month,
        ),
    )


def _item(row: BreakdownRow, total: int) -> models.BreakdownItem:
    return models.BreakdownItem(
        key=str(row.key),
        credits=row.credits,
        events=row.events,
        quantity=row.quantity,
        share_bp=share_bp(row.credits, total),
    )


def _day_item(day: date, row: BreakdownRow | None) -> models.DayItem:
    return models.DayItem(
        day=day, credits=row.credits if row else 0, events=row.events if row else 0
    )


def _each_day(days: DayRange) -> list[date]:
    return [days.first + timedelta(days=i) for i in range(days.days)]
