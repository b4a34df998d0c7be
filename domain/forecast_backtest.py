"""Backtest of :func:`domain.forecast.forecast_next_month` on generated, seeded usage history.

Each history is ~9 months of daily credits per category for one made-up wallet, built from the
things that move real spend: a starting level spread over two orders of magnitude, monthly
growth between -5% and +25%, an occasional level shift (a team joins or leaves), a weekend dip
of varying depth, multiplicative day-to-day noise, AI bursts of 1-5 days at 3-8x the usual AI
spend, and storage growing smoothly on its own. The forecast runs at a random day of every
month once eight weeks of history exist, and is scored against the next calendar month:

* ``mape_percent`` / ``median_ape_percent`` — absolute percentage error of the monthly total;
* ``coverage_percent`` — how often the actual total fell inside the 80% interval (a calibrated
  interval covers ~80%; much more means it is uselessly wide, much less that it lies);
* ``naive_mape_percent`` — the same error for "last 28 days, scaled to the month", the
  baseline a forecast has to beat to be worth its complexity;
* ``category_coverage_percent`` — interval coverage of the per-category forecasts.

Deterministic for a seed: the generator uses its own ``random.Random``.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from typing import Final

from domain.errors import InvalidInput
from domain.forecast import UsageHistory, forecast_next_month, next_month
from domain.money import require_int

CATEGORIES: Final = ("ai", "api", "community", "queue", "storage", "webhooks")
HISTORY_DAYS: Final = 280
MIN_TRAINING_DAYS: Final = 56
MAX_HISTORIES: Final = 10_000


@dataclass(frozen=True, slots=True)
class SyntheticHistory:
    first_day: date
    categories: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def total(self) -> tuple[int, ...]:
        columns = [series for _, series in self.categories]
        return tuple(sum(day) for day in zip(*columns, strict=True))


def generate_history(rng: random.Random, days: int = HISTORY_DAYS) -> SyntheticHistory:
    """One wallet's daily credits per category (see the module docstring for the ingredients)."""
    first_day = date(2023, 1, 1) + timedelta(days=rng.randrange(730))
    level = math.exp(rng.uniform(math.log(50), math.log(5000)))
    daily_growth = (1 + rng.uniform(-0.05, 0.25)) ** (1 / 30)
    shift_day = rng.randrange(days) if rng.random() < 0.3 else -1
    shift = rng.uniform(0.6, 1.6)
    weekend = rng.uniform(0.5, 1.0)
    weekday_factor = [rng.uniform(0.9, 1.1) for _ in range(5)] + [weekend, weekend * 0.95]
    weights = [rng.uniform(0.2, 1.0) for _ in CATEGORIES]
    shares = {name: w / sum(weights) for name, w in zip(CATEGORIES, weights, strict=True)}
    noise = rng.uniform(0.1, 0.35)
    spikes = _ai_spikes(rng, days)
    storage_growth = (1 + rng.uniform(0.0, 0.15)) ** (1 / 30)
    columns: dict[str, list[int]] = {name: [] for name in CATEGORIES}
    for i in range(days):
        day = first_day + timedelta(days=i)
        base = level * daily_growth**i * (shift if 0 <= shift_day <= i else 1.0)
        base *= weekday_factor[day.weekday()]
        for name in CATEGORIES:
            expected = base * shares[name]
            if name == "storage":
                expected = level * shares[name] * storage_growth**i
            elif name == "ai":
                expected *= spikes[i]
            sigma = noise / 3 if name == "storage" else noise
            value = expected * math.exp(rng.gauss(-sigma * sigma / 2, sigma))
            columns[name].append(max(0, round(value)))
    return SyntheticHistory(first_day, tuple((n, tuple(columns[n])) for n in CATEGORIES))


def _ai_spikes(rng: random.Random, days: int) -> list[float]:
    factors = [1.0] * days
    day = 0
    while True:
        day += max(1, round(rng.expovariate(1 / 45)))
        if day >= days:
            return factors
        magnitude = rng.uniform(3.0, 8.0)
        for i in range(day, min(days, day + rng.randint(1, 5))):
            factors[i] = magnitude


@dataclass(frozen=True, slots=True)
class BacktestReport:
    seed: int
    histories: int
    forecasts: int
    mape_percent: float
    median_ape_percent: float
    coverage_percent: float
    mean_interval_width_percent: float
    naive_mape_percent: float
    category_coverage_percent: float
    interval_percent: int
    method: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def cutoff_days(history: SyntheticHistory, rng: random.Random) -> list[date]:
    """A random "today" in every month with eight weeks of history and a full month after it."""
    last = history.first_day + timedelta(days=len(history.total) - 1)
    earliest = history.first_day + timedelta(days=MIN_TRAINING_DAYS)
    month = earliest.replace(day=1)
    found: list[date] = []
    while True:
        days_in = (next_month(month)[0] - month).days
        today = month + timedelta(days=rng.randrange(days_in))
        if next_month(today)[1] > last:
            return found
        if today >= earliest:
            found.append(today)
        month = next_month(month)[0]


def run_backtest(seed: int = 7, histories: int = 200) -> BacktestReport:
    """Forecast every cut-off of ``histories`` generated wallets; aggregate the errors."""
    require_int(seed, field="seed")
    require_int(histories, field="histories", minimum=1, maximum=MAX_HISTORIES)
    rng = random.Random(seed)
    apes: list[float] = []
    naive: list[float] = []
    widths: list[float] = []
    covered = category_covered = category_total = 0
    method = ""
    for _ in range(histories):
        history = generate_history(rng)
        for today in cutoff_days(history, rng):
            cut = (today - history.first_day).days
            training = UsageHistory(
                first_day=history.first_day,
                total=history.total[:cut],
                categories=tuple((n, s[:cut]) for n, s in history.categories),
            )
            forecast = forecast_next_month(training, today)
            method = forecast.method
            first, last = next_month(today)
            lo, hi = (first - history.first_day).days, (last - history.first_day).days + 1
            actual = sum(history.total[lo:hi])
            if actual == 0:
                continue
            total = forecast.total
            apes.append(abs(total.credits - actual) / actual)
            widths.append((total.high - total.low) / actual)
            covered += total.low <= actual <= total.high
            naive_point = sum(history.total[cut - 28 : cut]) / 28 * (hi - lo)
            naive.append(abs(naive_point - actual) / actual)
            for (name, series), (_, predicted) in zip(
                history.categories, forecast.categories, strict=True
            ):
                assert name == _
                category_total += 1
                category_covered += predicted.low <= sum(series[lo:hi]) <= predicted.high
    if not apes:
        raise InvalidInput("the generated histories produced no cut-offs", field="histories")
    return BacktestReport(
        seed=seed,
        histories=histories,
        forecasts=len(apes),
        mape_percent=_pct(statistics.fmean(apes)),
        median_ape_percent=_pct(statistics.median(apes)),
        coverage_percent=_pct(covered / len(apes)),
        mean_interval_width_percent=_pct(statistics.fmean(widths)),
        naive_mape_percent=_pct(statistics.fmean(naive)),
        category_coverage_percent=_pct(category_covered / max(category_total, 1)),
        interval_percent=80,
        method=method,
    )


def _pct(fraction: float) -> float:
    return round(100 * fraction, 2)
