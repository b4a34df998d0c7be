"""Response bodies of ``GET /usage/summary``, ``/usage/breakdown`` and ``/usage/forecast``.

snake_case, whole credits only (SPEC §1), dates as ISO ``YYYY-MM-DD`` in the wallet's day
timezone (Asia/Kolkata by default, named in every response), instants as ISO 8601 UTC.
Shares are basis points (1% = 100) so no response carries a fraction.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Credits = Annotated[int, Field(ge=0, description="Whole credits")]
BasisPoints = Annotated[int, Field(description="Basis points: 10000 = 100%")]


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SummaryBalances(_Out):
    available: Credits = Field(description="Spendable now")
    reserved: Credits = Field(description="Authorised for operations in flight")
    pending: Credits = Field(description="Bought, payment not yet confirmed")


class UsageSummaryResponse(_Out):
    wallet_id: str
    as_of: datetime = Field(description="When the figures were computed (UTC)")
    day_timezone: str
    month: date = Field(description="First day of the current local month")
    balances: SummaryBalances
    burn_rate_per_day: Credits = Field(description="Credits spent in the trailing 7 days / 7")
    spent_last_7_days: Credits
    month_to_date: Credits
    estimated_monthly_spend: Credits = Field(
        description="Month to date plus the burn rate over the rest of the month"
    )
    days_until_depletion: Annotated[int, Field(ge=0)] | None = Field(
        description="Whole days the available credits last at the burn rate; null: no burn"
    )
    depletion_date: date | None


class BreakdownItem(_Out):
    key: str = Field(description="Feature or category")
    credits: Credits
    events: Annotated[int, Field(ge=0)]
    quantity: Annotated[int, Field(ge=0)]
    share_bp: BasisPoints = Field(description="Share of the range's credits")


class MemberItem(_Out):
    member_id: str | None = Field(description="null: usage not attributed to a member")
    credits: Credits
    events: Annotated[int, Field(ge=0)]
    share_bp: BasisPoints


class DayItem(_Out):
    day: date
    credits: Credits
    events: Annotated[int, Field(ge=0)]


class UsageBreakdownResponse(_Out):
    wallet_id: str
    start: date = Field(description="First local day of the range (inclusive)")
    end: date = Field(description="Last local day of the range (inclusive)")
    day_timezone: str
    total_credits: Credits
    total_events: Annotated[int, Field(ge=0)]
    by_feature: list[BreakdownItem] = Field(description="Most credits first")
    by_category: list[BreakdownItem] = Field(description="Most credits first")
    by_member: list[MemberItem] = Field(description="Most credits first")
    by_day: list[DayItem] = Field(description="Every day of the range, in order, zero-filled")


class ForecastRange(_Out):
    credits: Credits = Field(description="Expected credits")
    low: Credits = Field(description="Lower end of the interval")
    high: Credits = Field(description="Upper end of the interval")


class CategoryForecast(ForecastRange):
    category: str


class AiSpikeOut(_Out):
    expected: bool
    reason: str | None = Field(description="burst | share_rising | null")
    recent_per_day: Credits = Field(description="AI credits per day, last 7 days")
    baseline_per_day: Credits = Field(description="Median AI day of the 4 weeks before")
    recent_share_bp: BasisPoints
    forecast_share_bp: BasisPoints


class StorageGrowthOut(_Out):
    expanding: bool
    last_30_days: Credits
    previous_30_days: Credits
    growth_bp: BasisPoints | None = Field(description="null: no storage spend before")
    forecast_next_month: Credits


class UsageForecastResponse(_Out):
    wallet_id: str
    as_of: date = Field(description="Local day of the forecast; history ends the day before")
    day_timezone: str
    month: date = Field(description="First day of the forecast month")
    method: str
    interval_percent: int
    history_days: int
    forecast: ForecastRange
    categories: list[CategoryForecast]
    ai_spike: AiSpikeOut
    storage_growth: StorageGrowthOut
