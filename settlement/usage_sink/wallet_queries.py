"""The per-wallet reads analytics needs, over any :class:`UsageStore` (blocking calls).

Shared by the API's in-process reader and by the settlement worker's query service, so the
embedded and the server deployments answer from the same code. Day ranges are validated once,
here, by :class:`DayRange`: a dashboard asking for ten years of per-day buckets is a mistake
(or an attack on the engine), not a query.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Final

from domain.errors import InvalidInput
from settlement.usage_sink.model import (
    BREAKDOWN_DIMENSIONS,
    BreakdownBy,
    BreakdownRow,
    DailyCategoryCredits,
    UsageTotals,
    require_day,
)
from settlement.usage_sink.store import UsageStore, day_start, load_zone

MAX_RANGE_DAYS: Final = 366
RANGE_DIMENSIONS: Final = ("feature", "category", "member", "day")


@dataclass(frozen=True, slots=True)
class DayRange:
    """Local calendar days ``first .. last`` inclusive, at most :data:`MAX_RANGE_DAYS` long."""

    first: date
    last: date

    def __post_init__(self) -> None:
        require_day(self.first, field="start")
        require_day(self.last, field="end")
        if self.first > self.last:
            raise InvalidInput("start must not be after end", field="start")
        if self.days > MAX_RANGE_DAYS:
            raise InvalidInput(
                f"the range spans {self.days} days; at most {MAX_RANGE_DAYS} are allowed",
                field="end",
            )

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1

    def instants(self, day_timezone: str) -> tuple[datetime, datetime]:
        """The half-open UTC interval the days cover in ``day_timezone``."""
        zone = load_zone(day_timezone)
        return day_start(self.first, zone), day_start(self.last + timedelta(days=1), zone)


def require_dimension(by: object) -> BreakdownBy:
    """A breakdown dimension over day ranges (``hour`` is left to the store's own callers)."""
    if by not in RANGE_DIMENSIONS or by not in BREAKDOWN_DIMENSIONS:
        raise InvalidInput(f"by must be one of {', '.join(RANGE_DIMENSIONS)}", field="by")
    return by


def totals(store: UsageStore, wallet_id: str, start: datetime, end: datetime) -> UsageTotals:
    """Credits and events in ``[start, end)`` (the store validates ids and instants)."""
    return store.totals(wallet_id, start, end)


def breakdown(
    store: UsageStore, wallet_id: str, days: DayRange, by: BreakdownBy
) -> list[BreakdownRow]:
    """Usage over whole local ``days`` grouped by ``by`` (sorted as the store sorts)."""
    start, end = days.instants(store.day_timezone)
    return store.breakdown(wallet_id, start, end, require_dimension(by))


def daily_by_category(
    store: UsageStore, wallet_id: str, days: DayRange
) -> list[DailyCategoryCredits]:
    """Sparse credits per (day, category) over ``days`` (forecast input)."""
    return store.daily_by_category(wallet_id, days.first, days.last)
