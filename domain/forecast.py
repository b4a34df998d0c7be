"""Spend forecasting for a wallet (SPEC §8): next month's spend with an interval, per category,
the AI-spike and storage-growth signals, and the burn-rate figures of the summary card.

Pure functions over frozen types; time is passed in (``today``, in the wallet's day timezone).
The statistical method is documented in :mod:`domain.forecast_model`; backtested on generated
history by :mod:`domain.forecast_backtest` (``credits forecast backtest``).

Inputs are complete local days: the history ends *yesterday*, since today's partial day would
read as a drop. Every credit figure out of here is a whole number (SPEC §1).

Signals:

* **AI spike** — the AI category's last :data:`SPIKE_RECENT_DAYS` days average at least
  :data:`SPIKE_RATIO`x its baseline (the median day of the four weeks before), and at least
  :data:`SPIKE_MIN_CREDITS_PER_DAY` credits a day (tiny wallets double on noise); or the
  forecast AI share of next month's spend is :data:`SHARE_RISE_BP` basis points above its share
  of the last four weeks (AI is taking over the bill even without a burst).
* **Storage growth** — storage spend of the last 30 days against the 30 before, and the
  forecast storage spend of next month; "expanding" when either grows by
  :data:`STORAGE_GROWTH_BP` or more. Storage is billed per month (``storage.gb_month``), so
  30-day windows, not days, are the unit that means something.
"""

from __future__ import annotations

import calendar
import statistics
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Final

from domain.errors import InvalidInput
from domain.forecast_model import INTERVAL_SCALE, Z80, fit_series, whole_credits
from domain.money import BASIS_POINTS, require_int

METHOD: Final = "damped-trend-weekday-profile/v1"
INTERVAL_PERCENT: Final = 80
MAX_HISTORY_DAYS: Final = 3660
AI_CATEGORY: Final = "ai"
STORAGE_CATEGORY: Final = "storage"
SPIKE_RECENT_DAYS: Final = 7
SPIKE_BASELINE_DAYS: Final = 28
SPIKE_RATIO: Final = 2.0
SPIKE_MIN_CREDITS_PER_DAY: Final = 50
SHARE_RISE_BP: Final = 500
STORAGE_GROWTH_BP: Final = 1000
WINDOW_DAYS: Final = 30


def _require_series(values: object, *, field: str) -> tuple[int, ...]:
    if not isinstance(values, tuple):
        raise InvalidInput(f"{field} must be a tuple of whole credits", field=field)
    for value in values:
        require_int(value, field=field)
    return values


@dataclass(frozen=True, slots=True)
class UsageHistory:
    """Credits per complete local day ``first_day .. last_day``, in total and per category.

    ``categories`` is ``((name, series), ...)`` sorted by name, each series as long as
    ``total``. Categories need not add up to the total (a caller may pass only some).
    """

    first_day: date
    total: tuple[int, ...]
    categories: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.first_day, date):
            raise InvalidInput("first_day must be a date", field="first_day")
        _require_series(self.total, field="total")
        if len(self.total) > MAX_HISTORY_DAYS:
            raise InvalidInput(f"history is longer than {MAX_HISTORY_DAYS} days", field="total")
        names = [name for name, _ in self.categories]
        if names != sorted(set(names)):
            raise InvalidInput("categories must be unique and sorted", field="categories")
        for name, series in self.categories:
            _require_series(series, field=f"categories.{name}")
            if len(series) != len(self.total):
                raise InvalidInput(f"category {name} has a different length", field="categories")

    @property
    def last_day(self) -> date:
        """The last day covered (the day before ``first_day`` for an empty history)."""
        return self.first_day + timedelta(days=len(self.total) - 1)

    def category(self, name: str) -> tuple[int, ...]:
        """A category's series, or zeros when the wallet never spent in it."""
        return dict(self.categories).get(name, (0,) * len(self.total))


@dataclass(frozen=True, slots=True)
class RangeForecast:
    """Expected credits over a period, with the central ``INTERVAL_PERCENT``% interval."""

    credits: int
    low: int
    high: int


@dataclass(frozen=True, slots=True)
class AiSpikeSignal:
    expected: bool
    reason: str | None  # "burst" | "share_rising" | None
    recent_per_day: int
    baseline_per_day: int
    recent_share_bp: int  # AI share of the last 4 weeks' spend, basis points
    forecast_share_bp: int  # AI share of next month's forecast spend


@dataclass(frozen=True, slots=True)
class StorageGrowthSignal:
    expanding: bool
    last_30_days: int
    previous_30_days: int
    growth_bp: int | None  # None when the previous window had no storage spend
    forecast_next_month: int


@dataclass(frozen=True, slots=True)
class SpendForecast:
    month: date  # first day of the forecast month
    total: RangeForecast
    categories: tuple[tuple[str, RangeForecast], ...]
    ai_spike: AiSpikeSignal
    storage_growth: StorageGrowthSignal
    history_days: int
    method: str = METHOD
    interval_percent: int = INTERVAL_PERCENT


def next_month(today: date) -> tuple[date, date]:
    """(first, last) day of the calendar month after ``today``'s."""
    first = (today.replace(day=1) + timedelta(days=32)).replace(day=1)
    return first, first.replace(day=calendar.monthrange(first.year, first.month)[1])


def forecast_range(
    series: tuple[int, ...], last_day: date, first: date, last: date
) -> RangeForecast:
    """Expected credits of ``first..last`` (both after ``last_day``) from one daily series."""
    if first <= last_day or last < first:
        raise InvalidInput("the forecast range must follow the history", field="first")
    point, sd = fit_series(series, last_day).range_forecast(first, last)
    spread = Z80 * INTERVAL_SCALE * sd
    return RangeForecast(
        credits=whole_credits(point),
        low=min(whole_credits(point - spread), whole_credits(point)),
        high=max(whole_credits(point + spread), whole_credits(point)),
    )


def forecast_next_month(history: UsageHistory, today: date) -> SpendForecast:
    """Next calendar month's spend, per category, with the AI and storage signals.

    ``history`` must end on ``today - 1`` (complete days only), which keeps the horizon honest.
    """
    if history.last_day != today - timedelta(days=1):
        raise InvalidInput("history must end the day before today", field="history")
    first, last = next_month(today)
    total = forecast_range(history.total, history.last_day, first, last)
    categories = tuple(
        (name, forecast_range(series, history.last_day, first, last))
        for name, series in history.categories
    )
    by_name = dict(categories)
    return SpendForecast(
        month=first,
        total=total,
        categories=categories,
        ai_spike=ai_spike_signal(history, total, by_name.get(AI_CATEGORY)),
        storage_growth=storage_growth_signal(history, by_name.get(STORAGE_CATEGORY)),
        history_days=len(history.total),
    )


def share_bp(part: int, whole: int) -> int:
    """``part / whole`` in basis points, half-up (0 when ``whole`` is 0)."""
    return 0 if whole <= 0 else (2 * part * BASIS_POINTS + whole) // (2 * whole)


def ai_spike_signal(
    history: UsageHistory, total: RangeForecast, ai: RangeForecast | None
) -> AiSpikeSignal:
    series = history.category(AI_CATEGORY)
    recent = series[-SPIKE_RECENT_DAYS:]
    baseline_days = series[-(SPIKE_RECENT_DAYS + SPIKE_BASELINE_DAYS) : -SPIKE_RECENT_DAYS]
    recent_per_day = statistics.fmean(recent) if recent else 0.0
    baseline = float(statistics.median(baseline_days)) if baseline_days else 0.0
    burst = (
        len(baseline_days) >= SPIKE_RECENT_DAYS
        and recent_per_day >= SPIKE_MIN_CREDITS_PER_DAY
        and recent_per_day >= SPIKE_RATIO * baseline
    )
    window = SPIKE_BASELINE_DAYS
    recent_share = share_bp(sum(series[-window:]), sum(history.total[-window:]))
    forecast_share = share_bp(ai.credits if ai else 0, total.credits)
    rising = ai is not None and forecast_share - recent_share >= SHARE_RISE_BP
    return AiSpikeSignal(
        expected=burst or rising,
        reason="burst" if burst else ("share_rising" if rising else None),
        recent_per_day=whole_credits(recent_per_day),
        baseline_per_day=whole_credits(baseline),
        recent_share_bp=recent_share,
        forecast_share_bp=forecast_share,
    )


def storage_growth_signal(
    history: UsageHistory, storage: RangeForecast | None
) -> StorageGrowthSignal:
    series = history.category(STORAGE_CATEGORY)
    last_30 = sum(series[-WINDOW_DAYS:])
    previous_30 = sum(series[-2 * WINDOW_DAYS : -WINDOW_DAYS])
    growth = None if previous_30 == 0 else share_bp(last_30, previous_30) - BASIS_POINTS
    projected = storage.credits if storage else 0
    forecast_growth = share_bp(projected, last_30) - BASIS_POINTS if last_30 else 0
    expanding = (growth is not None and growth >= STORAGE_GROWTH_BP) or (
        forecast_growth >= STORAGE_GROWTH_BP
    )
    return StorageGrowthSignal(
        expanding=expanding,
        last_30_days=last_30,
        previous_30_days=previous_30,
        growth_bp=growth,
        forecast_next_month=projected,
    )
