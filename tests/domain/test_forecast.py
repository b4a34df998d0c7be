"""Spend forecast, signals and burn-rate card: unit tests, properties and a backtest smoke run."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.errors import InvalidAmount, InvalidInput
from domain.forecast import (
    RangeForecast,
    UsageHistory,
    ai_spike_signal,
    forecast_next_month,
    forecast_range,
    next_month,
    storage_growth_signal,
)
from domain.forecast_backtest import run_backtest
from domain.forecast_burn import burn_figures
from domain.forecast_model import damped_days, fit_series, theil_sen, whole_credits

IST = ZoneInfo("Asia/Kolkata")
TODAY = date(2024, 5, 15)  # a Wednesday; next month is June (30 days)


def history(total: list[int], **categories: list[int]) -> UsageHistory:
    """A history ending the day before TODAY."""
    first = TODAY - timedelta(days=len(total))
    named = tuple((name, tuple(series)) for name, series in sorted(categories.items()))
    return UsageHistory(first, tuple(total), named)


def weekly(days: int, weekday: int, weekend: int) -> list[int]:
    first = TODAY - timedelta(days=days)
    return [weekend if (first + timedelta(days=i)).weekday() >= 5 else weekday for i in range(days)]


# --- the forecast ---


def test_a_flat_history_forecasts_its_level_for_every_day_of_next_month() -> None:
    result = forecast_next_month(history([400] * 84), TODAY)
    assert result.month == date(2024, 6, 1)
    assert result.total.credits == 400 * 30
    assert result.total.low <= 12_000 <= result.total.high
    assert result.method == "damped-trend-weekday-profile/v1"
    assert result.interval_percent == 80


def test_the_weekday_profile_carries_into_the_month() -> None:
    result = forecast_next_month(history(weekly(84, 500, 100)), TODAY)
    june = [date(2024, 6, d) for d in range(1, 31)]
    expected = sum(100 if d.weekday() >= 5 else 500 for d in june)
    assert abs(result.total.credits - expected) <= expected * 0.03


def test_growth_is_extrapolated_but_damped() -> None:
    growing = [round(100 + 5 * i) for i in range(84)]  # ends near 515/day, +5 a day
    result = forecast_next_month(history(growing), TODAY)
    flat_projection = growing[-1] * 30
    undamped = sum(growing[-1] + 5 * (16 + d) for d in range(1, 31))
    assert flat_projection < result.total.credits < undamped


def test_a_one_day_burst_does_not_become_the_new_level() -> None:
    spiky = [300] * 83 + [30_000]
    result = forecast_next_month(history(spiky), TODAY)
    assert result.total.credits < 300 * 30 * 1.2


def test_an_empty_or_idle_history_forecasts_nothing() -> None:
    for series in ([], [0] * 60):
        result = forecast_next_month(history(series), TODAY)
        assert (result.total.credits, result.total.low, result.total.high) == (0, 0, 0)


def test_a_short_history_still_forecasts_with_a_wide_interval() -> None:
    result = forecast_next_month(history([100, 120, 80]), TODAY)
    assert 2_000 <= result.total.credits <= 4_000
    assert result.total.high - result.total.low > result.total.credits * 0.3


def test_categories_are_forecast_each() -> None:
    ai, api = [100] * 56, [50] * 56
    result = forecast_next_month(history([150] * 56, ai=ai, api=api), TODAY)
    assert [name for name, _ in result.categories] == ["ai", "api"]
    assert dict(result.categories)["ai"].credits == 3_000
    assert dict(result.categories)["api"].credits == 1_500


def test_the_history_must_end_yesterday() -> None:
    stale = UsageHistory(date(2024, 1, 1), (1, 2, 3))
    with pytest.raises(InvalidInput):
        forecast_next_month(stale, TODAY)
    with pytest.raises(InvalidInput):
        forecast_range((1, 2), date(2024, 1, 2), date(2024, 1, 2), date(2024, 1, 5))


@pytest.mark.parametrize(
    ("total", "categories"),
    [
        ((1, -1), ()),
        ((1, 2.5), ()),
        ([1, 2], ()),
        ((1, 2), (("ai", (1,)),)),
        ((1, 2), (("b", (1, 1)), ("a", (1, 1)))),
        ((1, 2), (("a", (1, 1)), ("a", (1, 1)))),
    ],
)
def test_bad_histories_are_refused(total: object, categories: object) -> None:
    with pytest.raises((InvalidInput, InvalidAmount)):
        UsageHistory(date(2024, 1, 1), total, categories)  # type: ignore[arg-type]


def test_next_month_crosses_years_and_leap_februaries() -> None:
    assert next_month(date(2024, 12, 31)) == (date(2025, 1, 1), date(2025, 1, 31))
    assert next_month(date(2024, 1, 31)) == (date(2024, 2, 1), date(2024, 2, 29))
    assert next_month(date(2023, 1, 1)) == (date(2023, 2, 1), date(2023, 2, 28))


def test_model_helpers() -> None:
    assert theil_sen([1.0, 2.0, 3.0, 4.0, 100.0]) == 1.0  # robust to the outlier
    assert theil_sen([5.0]) == 0.0
    assert damped_days(1) == pytest.approx(0.97)
    assert damped_days(10_000) == pytest.approx(0.97 / 0.03)
    assert whole_credits(2.5) == 3
    assert whole_credits(-4.0) == 0
    assert fit_series([], date(2024, 1, 1)).level == 0.0


# --- signals ---


def test_an_ai_burst_is_flagged() -> None:
    ai = [100] * 49 + [450] * 7
    result = forecast_next_month(history([a + 200 for a in ai], ai=ai), TODAY)
    assert result.ai_spike.expected
    assert result.ai_spike.reason == "burst"
    assert result.ai_spike.baseline_per_day == 100
    assert result.ai_spike.recent_per_day == 450


def test_a_burst_of_a_tiny_wallet_is_noise() -> None:
    ai = [5] * 49 + [20] * 7
    result = forecast_next_month(history(ai, ai=ai), TODAY)
    assert result.ai_spike.recent_per_day < 50
    assert result.ai_spike.reason != "burst"


def test_a_rising_ai_share_is_flagged() -> None:
    h = history([1_000] * 56, ai=[100] * 56)
    signal = ai_spike_signal(h, RangeForecast(30_000, 0, 0), RangeForecast(9_000, 0, 0))
    assert signal.recent_share_bp == 1_000
    assert signal.forecast_share_bp == 3_000
    assert (signal.expected, signal.reason) == (True, "share_rising")
    steady = ai_spike_signal(h, RangeForecast(30_000, 0, 0), RangeForecast(3_000, 0, 0))
    assert not steady.expected


def test_storage_growth_compares_30_day_windows() -> None:
    storage = [100] * 30 + [120] * 30
    signal = storage_growth_signal(history(storage, storage=storage), RangeForecast(3_700, 0, 0))
    assert (signal.previous_30_days, signal.last_30_days) == (3_000, 3_600)
    assert signal.growth_bp == 2_000
    assert signal.expanding
    none_before = storage_growth_signal(history([0] * 30 + [10] * 30), None)
    assert none_before.growth_bp is None
    assert not none_before.expanding


# --- burn-rate card ---


def test_burn_figures_on_a_known_day() -> None:
    now = datetime(2024, 5, 16, 12, 0, tzinfo=IST)  # 15.5 days of May left
    figures = burn_figures(
        trailing_week_credits=7_000, month_to_date=15_000, available=3_500, local_now=now
    )
    assert figures.burn_rate_per_day == 1_000
    assert figures.estimated_monthly_spend == 15_000 + 15_500
    assert figures.days_until_depletion == 3
    assert figures.depletion_date == date(2024, 5, 19)


def test_no_burn_means_no_depletion() -> None:
    now = datetime(2024, 5, 1, tzinfo=IST)
    figures = burn_figures(trailing_week_credits=0, month_to_date=0, available=10, local_now=now)
    assert (figures.days_until_depletion, figures.depletion_date) == (None, None)
    assert figures.estimated_monthly_spend == 0


def test_burn_figures_refuse_bad_input() -> None:
    now = datetime(2024, 5, 1, tzinfo=IST)
    with pytest.raises(InvalidAmount):
        burn_figures(trailing_week_credits=-1, month_to_date=0, available=0, local_now=now)
    with pytest.raises(InvalidInput):
        burn_figures(
            trailing_week_credits=1, month_to_date=0, available=0, local_now=datetime(2024, 5, 1)
        )


# --- properties ---

series = st.lists(st.integers(min_value=0, max_value=10**7), max_size=120)


@settings(max_examples=150, deadline=None)
@given(total=series, ai_scale=st.integers(min_value=0, max_value=3))
def test_forecasts_are_whole_ordered_and_non_negative(total: list[int], ai_scale: int) -> None:
    ai = [v * ai_scale // 4 for v in total]
    result = forecast_next_month(history(total, ai=ai), TODAY)
    for _, forecast in ((None, result.total), *result.categories):
        for value in (forecast.credits, forecast.low, forecast.high):
            assert isinstance(value, int)
            assert value >= 0
        assert forecast.low <= forecast.credits <= forecast.high
    assert 0 <= result.ai_spike.recent_share_bp <= 10_000
    if not any(total):
        assert result.total.credits == 0


@settings(max_examples=100, deadline=None)
@given(
    level=st.integers(min_value=1, max_value=10**6), days=st.integers(min_value=14, max_value=120)
)
def test_a_constant_series_forecasts_its_constant(level: int, days: int) -> None:
    result = forecast_next_month(history([level] * days), TODAY)
    assert result.total.credits == level * 30
    assert result.total.low <= level * 30 <= result.total.high


@settings(max_examples=200)
@given(
    week=st.integers(min_value=0, max_value=10**9),
    mtd=st.integers(min_value=0, max_value=10**9),
    available=st.integers(min_value=0, max_value=10**9),
    minutes=st.integers(min_value=0, max_value=60 * 24 * 365 * 3),
)
def test_burn_figures_properties(week: int, mtd: int, available: int, minutes: int) -> None:
    now = (datetime(2024, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes)).astimezone(IST)
    figures = burn_figures(
        trailing_week_credits=week, month_to_date=mtd, available=available, local_now=now
    )
    assert figures.estimated_monthly_spend >= mtd
    assert figures.estimated_monthly_spend <= mtd + week * 31 // 7 + 1
    if figures.days_until_depletion is not None:
        assert figures.days_until_depletion * week <= available * 7
        assert (figures.days_until_depletion + 1) * week > available * 7


# --- backtest ---


def test_backtest_is_deterministic_and_beats_the_naive_baseline() -> None:
    first, again = run_backtest(seed=11, histories=30), run_backtest(seed=11, histories=30)
    assert first == again
    assert first.forecasts > 100
    assert first.mape_percent < first.naive_mape_percent
    assert 65 <= first.coverage_percent <= 95


def test_backtest_refuses_bad_arguments() -> None:
    with pytest.raises(InvalidAmount):
        run_backtest(seed=1, histories=0)
