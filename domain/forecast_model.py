"""The statistical core of the spend forecast: one daily series in, a fitted model out.

Method ("damped-trend level x weekday profile", pure Python, no I/O):

1. **Weekday profile.** For each weekday, the mean of that weekday's days over the last
   :data:`PROFILE_DAYS` days divided by the overall mean, shrunk towards 1 as far as its own
   scatter explains it (empirical Bayes, see :func:`weekday_profile`), then normalised to
   average 1. Fewer than two weeks: a flat profile.
2. **Recent level.** The series divided by the profile, winsorised at median + 4 MAD (a one-day
   burst is not the new normal; a burst that persists moves the median and passes through),
   then an exponentially weighted mean over the last :data:`LEVEL_DAYS` days with a
   :data:`LEVEL_HALF_LIFE_DAYS`-day half-life. Its weighted mean age is the *lag* the trend
   corrects for.
3. **Trend.** Theil-Sen slope (the median of pairwise slopes, robust to spikes) of weekly means
   of the deseasonalised series over the last :data:`TREND_WEEKS` weeks, per day; none with
   fewer than three weeks. It is extrapolated *damped* (Gardner & McKenzie): day ``h`` ahead
   adds ``slope * sum(phi**i, i=1..h)``, so growth is believed for about a month, not forever.
4. **Interval.** Three independent variance terms of the monthly total: daily noise (residual
   variance of the fit over the level window, times the days of the month), the error of the
   level estimate (noise over the EWMA's effective sample size, times days squared) and level
   drift (a random walk whose weekly step is the spread of detrended week-over-week changes,
   accumulated to the middle of the target month). The central 80% interval is
   ``point +- z80 * INTERVAL_SCALE * sd``, floored at 0. ``INTERVAL_SCALE`` was calibrated on
   generated history (seeds 1-4, see :mod:`domain.forecast_backtest`) and is reported on
   other seeds by ``credits forecast backtest``.

Floats are fine *inside* a statistical estimate; every figure that leaves this package as
credits is rounded to a whole credit by :func:`whole_credits` (SPEC §1: no decimal credits).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Final

PROFILE_DAYS: Final = 56
LEVEL_DAYS: Final = 28
LEVEL_HALF_LIFE_DAYS: Final = 7.0
TREND_WEEKS: Final = 8
DAMPING_PER_DAY: Final = 0.97
Z80: Final = 1.2816
INTERVAL_SCALE: Final = 0.85  # calibrated: backtest seeds 1-4 cover 81.1% at 0.85
DEFAULT_WEEKLY_DRIFT: Final = 0.15  # relative weekly level drift assumed with < 4 weeks of data
WINSOR_MADS: Final = 4.0
MAD_TO_SD: Final = 1.4826


def whole_credits(value: float) -> int:
    """A non-negative estimate rounded half-up to a whole credit (the forecast's one rounding)."""
    return max(0, math.floor(value + 0.5))


@dataclass(frozen=True, slots=True)
class SeriesFit:
    """A fitted daily series: forecast any future day, and the spread of a total over days."""

    last_day: date
    level: float  # deseasonalised level at ``last_day``
    slope_per_day: float
    profile: tuple[float, ...]  # by weekday (Monday = 0), mean 1
    sigma_daily: float  # residual standard deviation of one day
    level_n_eff: float  # effective sample size of the level estimate
    weekly_drift: float  # relative standard deviation of the level's weekly random walk

    def day_forecast(self, day: date) -> float:
        """Expected credits on a day after ``last_day`` (never negative)."""
        horizon = (day - self.last_day).days
        assert horizon >= 1, "forecasts are for days after the history"
        level = self.level + self.slope_per_day * damped_days(horizon)
        return max(0.0, level) * self.profile[day.weekday()]

    def range_forecast(self, first: date, last: date) -> tuple[float, float]:
        """(expected total, standard deviation of the total) over ``first..last`` inclusive."""
        days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
        point = sum(self.day_forecast(day) for day in days)
        count = len(days)
        noise = count * self.sigma_daily**2
        level_error = (count * self.sigma_daily) ** 2 / max(self.level_n_eff, 1.0)
        middle = ((first - self.last_day).days + (last - self.last_day).days) / 2
        drift = point**2 * self.weekly_drift**2 * (middle / 7)
        return point, math.sqrt(noise + level_error + drift)


def damped_days(horizon: int) -> float:
    """``sum(phi**i for i in 1..horizon)``: how many days of slope a damped trend adds."""
    phi = DAMPING_PER_DAY
    return phi * (1 - phi**horizon) / (1 - phi)


def fit_series(credits: Sequence[int], last_day: date) -> SeriesFit:
    """Fit a daily series whose final entry is ``last_day`` (see the module docstring)."""
    values = [float(v) for v in credits]
    n = len(values)
    if n == 0 or not any(values):
        return SeriesFit(last_day, 0.0, 0.0, (1.0,) * 7, 0.0, 1.0, 0.0)
    weekdays = [(last_day - timedelta(days=n - 1 - i)).weekday() for i in range(n)]
    profile = weekday_profile(values[-PROFILE_DAYS:], weekdays[-PROFILE_DAYS:])
    deseason = [v / profile[d] for v, d in zip(values, weekdays, strict=True)]
    window = winsorise(deseason[-LEVEL_DAYS:])
    weights = [0.5 ** ((len(window) - 1 - i) / LEVEL_HALF_LIFE_DAYS) for i in range(len(window))]
    total_weight = sum(weights)
    level = sum(w * v for w, v in zip(weights, window, strict=True)) / total_weight
    lag = sum(w * (len(window) - 1 - i) for i, w in enumerate(weights)) / total_weight
    weekly = weekly_means(deseason[-TREND_WEEKS * 7 :])
    slope = theil_sen(weekly) / 7 if len(weekly) >= 3 else 0.0
    level_now = max(0.0, level + slope * lag)
    fitted = [
        max(0.0, level_now - slope * (len(window) - 1 - i)) * profile[d]
        for i, d in enumerate(weekdays[-len(window) :])
    ]
    residuals = [v - f for v, f in zip(values[-len(window) :], fitted, strict=True)]
    dof = max(len(residuals) - 2, 1)
    sigma = math.sqrt(sum(r * r for r in residuals) / dof) if len(residuals) > 1 else level_now
    return SeriesFit(
        last_day=last_day,
        level=level_now,
        slope_per_day=slope,
        profile=profile,
        sigma_daily=sigma,
        level_n_eff=total_weight**2 / sum(w * w for w in weights),
        weekly_drift=weekly_drift(weekly, slope * 7),
    )


def weekday_profile(values: Sequence[float], weekdays: Sequence[int]) -> tuple[float, ...]:
    """Relative spend per weekday (mean 1), shrunk towards flat as far as noise explains it.

    Empirical Bayes: each weekday's ratio to the overall mean has a standard error from its own
    scatter; the real between-weekday variance is what the ratios vary by beyond those errors.
    A weekday is pulled towards 1 by ``se^2 / (se^2 + between)`` — a clean weekly rhythm is kept
    whole, a pattern of two noisy weeks mostly ignored.
    """
    overall = statistics.fmean(values) if values else 0.0
    if len(values) < 14 or overall <= 0:
        return (1.0,) * 7
    ratios: list[float] = []
    errors: list[float] = []
    for weekday in range(7):
        same = [v / overall for v, d in zip(values, weekdays, strict=True) if d == weekday]
        ratios.append(statistics.fmean(same))
        errors.append(statistics.variance(same) / len(same) if len(same) > 1 else 1.0)
    between = max(0.0, statistics.pvariance(ratios) - statistics.fmean(errors))
    raw = [
        max(1.0 + (between / (between + se) if between + se > 0 else 0.0) * (r - 1.0), 0.05)
        for r, se in zip(ratios, errors, strict=True)
    ]
    mean = statistics.fmean(raw)
    return tuple(r / mean for r in raw)


def winsorise(values: Sequence[float]) -> list[float]:
    """Clip values above median + 4 MAD (scaled to a standard deviation); keep the rest."""
    if len(values) < 7:
        return list(values)
    median = statistics.median(values)
    mad = statistics.median(abs(v - median) for v in values) * MAD_TO_SD
    ceiling = median + WINSOR_MADS * max(mad, 0.1 * median, 1.0)
    return [min(v, ceiling) for v in values]


def weekly_means(values: Sequence[float]) -> list[float]:
    """Means of whole weeks, aligned to the end of the series (a ragged start is dropped)."""
    weeks = len(values) // 7
    start = len(values) - weeks * 7
    return [statistics.fmean(values[start + 7 * w : start + 7 * w + 7]) for w in range(weeks)]


def theil_sen(points: Sequence[float]) -> float:
    """Median of the pairwise slopes of equally spaced points (0 for fewer than two)."""
    slopes = [
        (points[j] - points[i]) / (j - i)
        for i in range(len(points))
        for j in range(i + 1, len(points))
    ]
    return statistics.median(slopes) if slopes else 0.0


def weekly_drift(weekly: Sequence[float], weekly_slope: float) -> float:
    """Relative spread of detrended week-over-week changes of the level (a default if short)."""
    if len(weekly) < 4:
        return DEFAULT_WEEKLY_DRIFT
    changes = [(b - a - weekly_slope) / max(a, 1.0) for a, b in itertools.pairwise(weekly)]
    return min(statistics.pstdev(changes), 1.0)
