"""Expected query results computed in plain Python from the rows a test inserted."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from settlement.usage_sink import BreakdownKey, BreakdownRow, DailyCredits, UsageRow, UsageTotals


def distinct(rows: Iterable[UsageRow]) -> list[UsageRow]:
    """The rows as the store keeps them: the first delivery of each event id."""
    first: dict[str, UsageRow] = {}
    for row in rows:
        first.setdefault(row.event_id, row)
    return list(first.values())


def _in_range(
    rows: Iterable[UsageRow], wallet: str, start: datetime, end: datetime
) -> list[UsageRow]:
    return [r for r in rows if r.wallet_id == wallet and start <= r.occurred_at < end]


def totals(rows: Iterable[UsageRow], wallet: str, start: datetime, end: datetime) -> UsageTotals:
    selected = _in_range(distinct(rows), wallet, start, end)
    return UsageTotals(sum(r.credits for r in selected), len(selected))


def bucket(row: UsageRow, by: str, zone: ZoneInfo) -> BreakdownKey:
    local = row.occurred_at.astimezone(zone)
    if by == "day":
        return local.date()
    if by == "hour":
        return local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)
    if by == "member":
        return row.member_id
    return str(getattr(row, by))


def breakdown(
    rows: Iterable[UsageRow], wallet: str, start: datetime, end: datetime, by: str, zone: ZoneInfo
) -> list[BreakdownRow]:
    sums: dict[BreakdownKey, list[int]] = defaultdict(lambda: [0, 0, 0])
    for row in _in_range(distinct(rows), wallet, start, end):
        cell = sums[bucket(row, by, zone)]
        cell[0] += row.credits
        cell[1] += 1
        cell[2] += row.quantity
    result = [BreakdownRow(key, c, n, q) for key, (c, n, q) in sums.items()]
    if by in ("day", "hour"):
        return sorted(result, key=_time_order)
    return sorted(result, key=lambda r: (-r.credits, str(r.key or "")))


def _time_order(row: BreakdownRow) -> date:
    assert isinstance(row.key, date)  # a datetime (hour) is a date too
    return row.key


def daily(
    rows: Iterable[UsageRow], wallet: str, first: date, last: date, zone: ZoneInfo
) -> list[DailyCredits]:
    sums: dict[date, int] = defaultdict(int)
    for row in distinct(rows):
        if row.wallet_id == wallet:
            sums[row.occurred_at.astimezone(zone).date()] += row.credits
    days = (first + timedelta(days=i) for i in range((last - first).days + 1))
    return [DailyCredits(d, sums[d]) for d in days]
