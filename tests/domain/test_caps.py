"""Daily caps, rate limits and the cap day boundary in Asia/Kolkata."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.caps import (
    DEFAULT_CAPS_PATH,
    CapsConfig,
    RateLimit,
    RateScope,
    WalletCapOverrides,
    day_key,
    load_caps,
    parse_caps,
    require_within_cap,
    seconds_until_day_end,
)
from domain.errors import CapExceeded, ConfigError, InvalidAmount, InvalidInput
from domain.pricing import CapClass, Category

IST = "Asia/Kolkata"


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def raw_file() -> dict[str, Any]:
    with DEFAULT_CAPS_PATH.open("rb") as handle:
        return tomllib.load(handle)


@pytest.fixture(scope="module")
def caps() -> CapsConfig:
    return load_caps()


def test_checked_in_caps_match_spec(caps: CapsConfig) -> None:
    assert caps.timezone == IST
    assert caps.daily_caps.limit_for(CapClass.AI) == 200
    assert caps.daily_caps.limit_for(CapClass.WEBHOOKS) == 10_000
    assert caps.daily_caps.limit_for(CapClass.EMAILS) == 5_000
    assert caps.retry_limits.webhook_delivery_attempts >= 1


def test_every_scope_and_category_has_a_rate_limit(caps: CapsConfig) -> None:
    for category in Category:
        wallet = caps.rate_limit(RateScope.WALLET, category)
        member = caps.rate_limit(RateScope.MEMBER, category)
        assert member.allows_at_most(wallet)
    assert caps.rate_limit(RateScope.WALLET, Category.AI) == RateLimit(5, 60)


def test_overrides_apply_on_top_of_defaults(caps: CapsConfig) -> None:
    overrides = WalletCapOverrides.from_mapping({"ai": 2_000, "emails": 0})
    effective = caps.caps_for(overrides)
    assert effective.limit_for(CapClass.AI) == 2_000
    assert effective.limit_for(CapClass.EMAILS) == 0
    assert effective.limit_for(CapClass.WEBHOOKS) == 10_000
    assert caps.caps_for(None) == caps.daily_caps


@pytest.mark.parametrize(
    ("raw", "error", "message"),
    [
        ({"sms": 10}, InvalidInput, "daily caps override 'sms' is not a cap class"),
        ({"ai": -1}, InvalidAmount, "daily_caps_overrides.ai must be >= 0"),
        ({"ai": 2.5}, InvalidAmount, "daily_caps_overrides.ai must be a whole number"),
    ],
)
def test_bad_overrides_are_refused(
    raw: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        WalletCapOverrides.from_mapping(raw)


def test_cap_check_refuses_only_past_the_limit() -> None:
    require_within_cap(CapClass.AI, used_today=199, requested=1, limit=200)
    with pytest.raises(CapExceeded, match="daily ai cap reached: 200 of 200 used today") as caught:
        require_within_cap(CapClass.AI, used_today=200, requested=1, limit=200)
    assert caught.value.code == "daily_cap_reached"
    with pytest.raises(CapExceeded):
        require_within_cap(CapClass.EMAILS, used_today=4_990, requested=11, limit=5_000)


@pytest.mark.parametrize(
    ("instant", "expected"),
    [
        ("2026-01-01T18:29:59", "2026-01-01"),  # 23:59:59 IST
        ("2026-01-01T18:30:00", "2026-01-02"),  # 00:00:00 IST the next day
        ("2025-12-31T18:29:59.999999", "2025-12-31"),
        ("2025-12-31T18:30:00", "2026-01-01"),
        ("2026-01-01T00:00:00", "2026-01-01"),  # 05:30 IST
    ],
)
def test_day_key_follows_ist_midnight(instant: str, expected: str) -> None:
    assert day_key(utc(instant), IST) == expected


def test_day_key_accepts_any_aware_offset(caps: CapsConfig) -> None:
    new_york = datetime(2026, 1, 1, 13, 30, tzinfo=timezone(timedelta(hours=-5)))  # 18:30Z
    assert day_key(new_york, IST) == "2026-01-02"
    assert caps.day_key(new_york) == "2026-01-02"


def test_naive_datetimes_and_unknown_zones_are_refused() -> None:
    with pytest.raises(InvalidInput, match="timezone-aware"):
        day_key(datetime(2026, 1, 1, 12), IST)
    with pytest.raises(InvalidInput, match="timezone-aware"):
        seconds_until_day_end(datetime(2026, 1, 1, 12), IST)
    with pytest.raises(InvalidInput, match="unknown timezone 'Mars/Olympus'"):
        day_key(utc("2026-01-01T00:00:00"), "Mars/Olympus")


@pytest.mark.parametrize(
    ("instant", "tz_name", "seconds"),
    [
        ("2026-01-01T18:29:59", IST, 1),
        ("2026-01-01T18:29:59.500000", IST, 1),  # rounded up: the TTL never ends early
        ("2026-01-01T18:30:00", IST, 86_400),
        ("2026-01-01T12:00:00", IST, 23_400),  # 17:30 IST
        ("2026-03-29T00:00:00", "Europe/London", 82_800),  # spring forward: a 23-hour day
        ("2026-10-24T23:00:00", "Europe/London", 90_000),  # fall back: a 25-hour day
    ],
)
def test_seconds_until_day_end(instant: str, tz_name: str, seconds: int) -> None:
    assert seconds_until_day_end(utc(instant), tz_name) == seconds


@settings(max_examples=200)
@given(
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
    st.sampled_from([IST, "Europe/London", "America/New_York"]),
)
def test_day_end_is_exactly_where_the_day_key_changes(naive: datetime, tz_name: str) -> None:
    instant = naive.replace(tzinfo=UTC)
    seconds = seconds_until_day_end(instant, tz_name)
    assert 1 <= seconds <= 25 * 3_600
    assert day_key(instant + timedelta(seconds=seconds), tz_name) != day_key(instant, tz_name)
    just_before = instant + timedelta(seconds=seconds - 1)
    assert day_key(just_before, tz_name) == day_key(instant, tz_name)


Mutation = Callable[[dict[str, Any]], None]

BAD_FILES: list[tuple[str, Mutation, str]] = [
    (
        "negative cap",
        lambda raw: raw["daily_caps"].__setitem__("ai", -1),
        "caps.toml: daily_caps: field 'ai' must be a whole number >= 0, got -1",
    ),
    (
        "missing cap",
        lambda raw: raw["daily_caps"].pop("webhooks"),
        "caps.toml: daily_caps: field 'webhooks' is missing",
    ),
    (
        "unknown cap class",
        lambda raw: raw["daily_caps"].__setitem__("sms", 10),
        "caps.toml: daily_caps: field 'sms' is not a known field",
    ),
    (
        "unknown timezone",
        lambda raw: raw.__setitem__("timezone", "Mars/Olympus"),
        "caps.toml: field 'timezone' must be an IANA timezone name, got 'Mars/Olympus'",
    ),
    (
        "zero rate",
        lambda raw: raw["rate_limits"]["member"]["ai"].__setitem__("per_second", 0),
        "caps.toml: rate_limits.member.ai: field 'per_second' must be a whole number >= 1, got 0",
    ),
    (
        "unreachable minute limit",
        lambda raw: raw["rate_limits"]["wallet"]["ai"].__setitem__("per_minute", 301),
        "caps.toml: rate_limits.wallet.ai: field 'per_minute' 301 can never be reached",
    ),
    (
        "minute below second",
        lambda raw: raw["rate_limits"]["wallet"]["ai"].__setitem__("per_minute", 4),
        "caps.toml: rate_limits.wallet.ai: field 'per_minute' must be a whole number >= 5",
    ),
    (
        "member above wallet",
        lambda raw: raw["rate_limits"]["member"].__setitem__(
            "api", {"per_second": 200, "per_minute": 6_000}
        ),
        "caps.toml: rate_limits.member.api: field 'per_second' and per_minute may not exceed",
    ),
    (
        "missing category",
        lambda raw: raw["rate_limits"]["member"].pop("storage"),
        "caps.toml: rate_limits.member: field 'storage' is missing",
    ),
    (
        "unknown category",
        lambda raw: raw["rate_limits"]["wallet"].__setitem__("video", {}),
        "caps.toml: rate_limits.wallet: field 'video' is not a known field",
    ),
    (
        "unknown scope",
        lambda raw: raw["rate_limits"].__setitem__("ip", {}),
        "caps.toml: rate_limits: field 'ip' is not a known field",
    ),
    (
        "retry limit zero",
        lambda raw: raw["retry_limits"].__setitem__("webhook_delivery_attempts", 0),
        "caps.toml: retry_limits: field 'webhook_delivery_attempts' must be a whole number >= 1",
    ),
    (
        "caps not a table",
        lambda raw: raw.__setitem__("daily_caps", 200),
        "caps.toml: field 'daily_caps' must be a table, got 200",
    ),
    (
        "unknown top-level field",
        lambda raw: raw.__setitem__("burst", 3),
        "caps.toml: field 'burst' is not a known field",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "message"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES]
)
def test_bad_caps_name_entry_and_field(mutate: Mutation, message: str) -> None:
    raw = raw_file()
    mutate(raw)
    with pytest.raises(ConfigError) as caught:
        parse_caps(raw)
    assert message in caught.value.message


def test_bad_caps_file_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "caps.toml"
    path.write_text(DEFAULT_CAPS_PATH.read_text().replace("ai = 200", "ai = 200.5"))
    with pytest.raises(ConfigError, match=re.escape("caps.toml: daily_caps: field 'ai'")):
        load_caps(path)


def test_timezone_is_configurable() -> None:
    raw = raw_file()
    raw["timezone"] = "UTC"
    caps = parse_caps(raw)
    assert caps.day_key(utc("2026-01-01T23:59:59")) == "2026-01-01"
