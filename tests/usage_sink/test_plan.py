"""The pure range planner and SQL builders shared by both backends."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from domain.errors import ConfigError
from settlement.usage_sink import schema
from settlement.usage_sink.store import (
    DaySpan,
    Span,
    aggregate_sql,
    dedup_token,
    load_zone,
    plan_range,
)
from tests.usage_sink.conftest import usage

IST = ZoneInfo("Asia/Kolkata")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_a_multi_day_range_uses_every_table() -> None:
    plan = plan_range(utc(2024, 3, 1, 10, 10), utc(2024, 3, 4, 5, 0), IST, use_daily=True)
    assert plan.raw == (
        Span(utc(2024, 3, 1, 10, 10), utc(2024, 3, 1, 10, 30)),
        Span(utc(2024, 3, 4, 4, 30), utc(2024, 3, 4, 5, 0)),
    )
    assert plan.hourly == (
        Span(utc(2024, 3, 1, 10, 30), utc(2024, 3, 1, 18, 30)),
        Span(utc(2024, 3, 3, 18, 30), utc(2024, 3, 4, 4, 30)),
    )
    assert plan.daily == DaySpan(date(2024, 3, 2), date(2024, 3, 4))


def test_aligned_ranges_read_no_raw_rows() -> None:
    plan = plan_range(utc(2024, 2, 29, 18, 30), utc(2024, 3, 2, 18, 30), IST, use_daily=True)
    assert (plan.raw, plan.hourly) == ((), ())
    assert plan.daily == DaySpan(date(2024, 3, 1), date(2024, 3, 3))


def test_hour_breakdowns_never_use_the_daily_rollup() -> None:
    plan = plan_range(utc(2024, 2, 29, 18, 30), utc(2024, 3, 2, 18, 30), IST, use_daily=False)
    assert plan.hourly == (Span(utc(2024, 2, 29, 18, 30), utc(2024, 3, 2, 18, 30)),)
    assert plan.daily is None


def test_ranges_inside_one_local_hour_read_only_raw_rows() -> None:
    start, end = utc(2024, 3, 1, 9, 31), utc(2024, 3, 1, 10, 29)
    plan = plan_range(start, end, IST, use_daily=True)
    assert plan.raw == (Span(start, end),)
    assert (plan.hourly, plan.daily) == ((), None)


def test_a_utc_hour_is_not_an_ist_hour() -> None:
    plan = plan_range(utc(2024, 3, 1, 10, 0), utc(2024, 3, 1, 11, 0), IST, use_daily=True)
    assert plan.hourly == ()
    assert len(plan.raw) == 1
    utc_plan = plan_range(
        utc(2024, 3, 1, 10, 0), utc(2024, 3, 1, 11, 0), ZoneInfo("UTC"), use_daily=True
    )
    assert utc_plan.raw == ()
    assert len(utc_plan.hourly) == 1


def test_empty_ranges_plan_nothing() -> None:
    assert plan_range(utc(2024, 3, 1), utc(2024, 3, 1), IST, use_daily=True).empty


def test_values_travel_as_parameters_not_sql() -> None:
    plan = plan_range(utc(2024, 3, 1, 10, 10), utc(2024, 3, 4, 5, 0), IST, use_daily=True)
    sql, params = aggregate_sql(plan, "feature", "Asia/Kolkata", 5)
    assert "{wallet_id:String}" in sql
    assert "2024" not in sql
    assert sum("UNION ALL" in part for part in sql.split("SELECT")) == 2
    assert params["d_lo0"] == "2024-03-02"
    assert params["r_lo0"] == "2024-03-01 10:10:00.000000"
    assert sql.endswith("ORDER BY credits DESC, k LIMIT 5")


def test_dedup_tokens_depend_only_on_the_event_ids() -> None:
    at = utc(2024, 3, 1)
    a, b = usage("a", at), usage("b", at)
    assert dedup_token([a, b]) == dedup_token([b, usage("a", at, credits=3)])
    assert dedup_token([a]) != dedup_token([a, b])


@pytest.mark.parametrize("name", ["Mars/Olympus", "Asia/Kolkata'; DROP TABLE x", ""])
def test_bad_day_timezones_are_config_errors(name: str) -> None:
    with pytest.raises(ConfigError):
        load_zone(name)


def test_timezone_is_part_of_the_views() -> None:
    views = schema.schema_statements("Asia/Kolkata")[3:]
    assert all("'Asia/Kolkata'" in view for view in views)
