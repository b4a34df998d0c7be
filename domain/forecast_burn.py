"""The burn-rate card (SPEC §8): burn per day, month to date, estimated monthly spend, and how
long the available credits last. Pure integer arithmetic over totals the caller read.

Definitions (chosen so the card is live and never needs a model):

* **burn rate** — credits spent in the trailing 7 x 24 hours divided by 7, half-up. A week
  smooths the weekday cycle; a trailing window (not "the last 7 complete days") means usage
  settled a minute ago moves the card.
* **estimated monthly spend** — month to date plus the trailing-week burn projected over the
  time left in the local calendar month. Early in a month this leans on last week's pace; at
  its end it converges to what was really spent.
* **days until depletion** — whole days the available balance lasts at the trailing-week burn
  (floored: a wallet with 2.9 days left has 2 full days). ``None`` when nothing was spent (the
  balance does not deplete). Reserved credits are already spoken for and pending ones are not
  yet spendable, so only ``available`` counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Final

from domain.errors import InvalidInput
from domain.money import div_round_half_up, require_int

BURN_WINDOW: Final = timedelta(days=7)
_WINDOW_SECONDS: Final = int(BURN_WINDOW.total_seconds())
MAX_DEPLETION_DATE_DAYS: Final = 36_500  # a century: later than that gets no date (overflow)


@dataclass(frozen=True, slots=True)
class BurnFigures:
    burn_rate_per_day: int
    month_to_date: int
    estimated_monthly_spend: int
    days_until_depletion: int | None
    depletion_date: date | None


def month_start(local_now: datetime) -> datetime:
    """Midnight of the first day of ``local_now``'s month, in ``local_now``'s zone."""
    return datetime.combine(local_now.date().replace(day=1), time(0), tzinfo=local_now.tzinfo)


def next_month_start(local_now: datetime) -> datetime:
    first = (local_now.date().replace(day=1) + timedelta(days=32)).replace(day=1)
    return datetime.combine(first, time(0), tzinfo=local_now.tzinfo)


def burn_figures(
    *, trailing_week_credits: int, month_to_date: int, available: int, local_now: datetime
) -> BurnFigures:
    """The card's figures. ``local_now`` is aware and in the wallet's day timezone."""
    require_int(trailing_week_credits, field="trailing_week_credits")
    require_int(month_to_date, field="month_to_date")
    require_int(available, field="available")
    if not isinstance(local_now, datetime) or local_now.utcoffset() is None:
        raise InvalidInput("local_now must be an aware datetime", field="local_now")
    left = next_month_start(local_now) - local_now
    left_seconds = left.days * 86_400 + left.seconds  # sub-second precision is noise here
    projected = div_round_half_up(trailing_week_credits * left_seconds, _WINDOW_SECONDS)
    days_left = None if trailing_week_credits == 0 else available * 7 // trailing_week_credits
    return BurnFigures(
        burn_rate_per_day=div_round_half_up(trailing_week_credits, 7),
        month_to_date=month_to_date,
        estimated_monthly_spend=month_to_date + projected,
        days_until_depletion=days_left,
        depletion_date=(
            None
            if days_left is None or days_left > MAX_DEPLETION_DATE_DAYS
            else local_now.date() + timedelta(days=days_left)
        ),
    )
