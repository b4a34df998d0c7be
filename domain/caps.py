"""Cost protection settings (SPEC §5): daily caps, rate limits, retry limits; and the cap day.

Daily caps count per wallet per calendar day in a configured timezone (Asia/Kolkata by default),
so "today" is a pure function of an instant: :func:`day_key`. Enterprise wallets may override
caps; :meth:`DailyCaps.with_overrides` applies a wallet's overrides on top of the defaults.
``parse_caps`` is pure and names the entry and field of anything it refuses; ``load_caps`` reads
the checked-in ``domain/config/caps.toml``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time, timedelta
from enum import StrEnum
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from domain.errors import CapExceeded, ConfigError, InvalidInput
from domain.money import require_int
from domain.pricing import CapClass, Category, ConfigEntry, read_toml

DEFAULT_CAPS_PATH = Path(__file__).parent / "config" / "caps.toml"
_MICROSECONDS_PER_SECOND = 1_000_000


class RateScope(StrEnum):
    WALLET = "wallet"
    MEMBER = "member"


@dataclass(frozen=True, slots=True)
class DailyCaps:
    """Requests allowed per wallet per cap day, by cap class."""

    ai: int
    webhooks: int
    emails: int

    def __post_init__(self) -> None:
        for cap_class in CapClass:
            require_int(getattr(self, cap_class.value), field=f"daily_caps.{cap_class.value}")

    def limit_for(self, cap_class: CapClass) -> int:
        limit: int = getattr(self, cap_class.value)
        return limit

    def with_overrides(self, overrides: WalletCapOverrides) -> DailyCaps:
        """These caps with a wallet's overrides applied (an override may raise or lower a cap)."""
        changes = {c.value: v for c in CapClass if (v := overrides.limit_for(c)) is not None}
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class WalletCapOverrides:
    """A wallet's cap overrides (enterprise); ``None`` keeps the default for that class."""

    ai: int | None = None
    webhooks: int | None = None
    emails: int | None = None

    def __post_init__(self) -> None:
        for cap_class in CapClass:
            value = getattr(self, cap_class.value)
            if value is not None:
                require_int(value, field=f"daily_caps_overrides.{cap_class.value}")

    def limit_for(self, cap_class: CapClass) -> int | None:
        limit: int | None = getattr(self, cap_class.value)
        return limit

    @classmethod
    def from_mapping(cls, raw: Mapping[str, object]) -> WalletCapOverrides:
        """Parse stored wallet settings, e.g. ``{"ai": 2000}``; raises :class:`InvalidInput`."""
        known = {cap_class.value for cap_class in CapClass}
        for name in raw:
            if name not in known:
                raise InvalidInput(
                    f"daily caps override {name!r} is not a cap class "
                    f"(known: {', '.join(sorted(known))})",
                    field=f"daily_caps_overrides.{name}",
                )
        limits = {
            name: require_int(value, field=f"daily_caps_overrides.{name}")
            for name, value in raw.items()
        }
        return cls(**limits)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Requests per second and per minute; the minute limit must be reachable."""

    per_second: int
    per_minute: int

    def __post_init__(self) -> None:
        require_int(self.per_second, field="per_second", minimum=1)
        require_int(self.per_minute, field="per_minute", minimum=self.per_second)
        require_int(self.per_minute, field="per_minute", maximum=60 * self.per_second)

    def allows_at_most(self, other: RateLimit) -> bool:
        return self.per_second <= other.per_second and self.per_minute <= other.per_minute


@dataclass(frozen=True, slots=True)
class ScopedRateLimit:
    scope: RateScope
    category: Category
    limit: RateLimit


@dataclass(frozen=True, slots=True)
class RetryLimits:
    """Attempts (first try included) after which a delivery or job stops for good."""

    webhook_delivery_attempts: int
    queue_job_attempts: int

    def __post_init__(self) -> None:
        require_int(self.webhook_delivery_attempts, field="webhook_delivery_attempts", minimum=1)
        require_int(self.queue_job_attempts, field="queue_job_attempts", minimum=1)


@dataclass(frozen=True, slots=True)
class CapsConfig:
    """The whole of caps.toml. Every (scope, category) pair has exactly one rate limit."""

    timezone: str
    daily_caps: DailyCaps
    retry_limits: RetryLimits
    rate_limits: tuple[ScopedRateLimit, ...]

    def __post_init__(self) -> None:
        require_zone(self.timezone)
        pairs = [(entry.scope, entry.category) for entry in self.rate_limits]
        expected = {(scope, category) for scope in RateScope for category in Category}
        if len(pairs) != len(set(pairs)) or set(pairs) != expected:
            raise ConfigError("caps: rate_limits must list every scope x category exactly once")

    def rate_limit(self, scope: RateScope, category: Category) -> RateLimit:
        for entry in self.rate_limits:
            if entry.scope is scope and entry.category is category:
                return entry.limit
        raise AssertionError("unreachable: completeness is checked on construction")

    def caps_for(self, overrides: WalletCapOverrides | None = None) -> DailyCaps:
        return self.daily_caps if overrides is None else self.daily_caps.with_overrides(overrides)

    def day_key(self, instant: datetime) -> str:
        return day_key(instant, self.timezone)


def require_within_cap(cap_class: CapClass, used_today: int, requested: int, limit: int) -> None:
    """Raise :class:`CapExceeded` when ``requested`` more would take the day past ``limit``."""
    if used_today + requested > limit:
        raise CapExceeded(
            f"daily {cap_class.value} cap reached: {used_today:,} of {limit:,} used today, "
            f"{requested:,} more requested; it resets at midnight",
            cap_class=cap_class.value,
            used_today=used_today,
            limit=limit,
        )


def require_zone(tz_name: str) -> ZoneInfo:
    """The zone called ``tz_name``; :class:`InvalidInput` if there is none."""
    try:
        return ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise InvalidInput(f"unknown timezone {tz_name!r}", field="timezone") from exc


def day_key(instant: datetime, tz_name: str) -> str:
    """The cap day of ``instant`` in ``tz_name`` as 'YYYY-MM-DD'; refuses naive datetimes."""
    return _local(instant, tz_name).date().isoformat()


def seconds_until_day_end(instant: datetime, tz_name: str) -> int:
    """Whole seconds (rounded up, so >= 1) from ``instant`` to the next local midnight.

    Suits a counter's TTL: the key outlives its day by under a second, never expires early.
    """
    local = _local(instant, tz_name)
    midnight = datetime.combine(local.date() + timedelta(days=1), time(0), tzinfo=local.tzinfo)
    # Subtract in UTC: subtracting two datetimes sharing a tzinfo uses wall-clock time.
    remaining = midnight.astimezone(UTC) - instant.astimezone(UTC)
    microseconds = remaining // timedelta(microseconds=1)
    return -(-microseconds // _MICROSECONDS_PER_SECOND)


def _local(instant: datetime, tz_name: str) -> datetime:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise InvalidInput("instant must be timezone-aware (got a naive datetime)", field="instant")
    return instant.astimezone(require_zone(tz_name))


_TOP_FIELDS = frozenset({"timezone", "daily_caps", "retry_limits", "rate_limits"})
_CAP_FIELDS = frozenset(cap_class.value for cap_class in CapClass)
_RETRY_FIELDS = frozenset({"webhook_delivery_attempts", "queue_job_attempts"})
_SCOPE_FIELDS = frozenset(scope.value for scope in RateScope)
_CATEGORY_FIELDS = frozenset(category.value for category in Category)
_RATE_FIELDS = frozenset({"per_second", "per_minute"})


def parse_caps(raw: Mapping[str, object], source: str = "caps.toml") -> CapsConfig:
    """Build the caps settings from parsed TOML (or any mapping). Pure.

    Raises :class:`ConfigError` naming the file, the entry and the field, e.g.
    ``caps.toml: rate_limits.member.ai: field 'per_second' must be a whole number >= 1, got 0``.
    """
    top = ConfigEntry(source)
    top.only_fields(raw, _TOP_FIELDS)
    timezone = top.text(top.required(raw, "timezone"), "timezone")
    try:
        require_zone(timezone)
    except InvalidInput as exc:
        raise top.fail("timezone", f"must be an IANA timezone name, got {timezone!r}") from exc
    return CapsConfig(
        timezone=timezone,
        daily_caps=_parse_daily_caps(source, top.required(raw, "daily_caps")),
        retry_limits=_parse_retry_limits(source, top.required(raw, "retry_limits")),
        rate_limits=_parse_rate_limits(source, top.required(raw, "rate_limits")),
    )


def load_caps(path: Path | None = None) -> CapsConfig:
    """Read and parse a caps file (default: the checked-in ``domain/config/caps.toml``)."""
    chosen = path or DEFAULT_CAPS_PATH
    return parse_caps(read_toml(chosen), source=chosen.name)


def _parse_daily_caps(source: str, raw: object) -> DailyCaps:
    table = ConfigEntry(source).table(raw, "daily_caps")
    entry = ConfigEntry(f"{source}: daily_caps")
    entry.only_fields(table, _CAP_FIELDS)
    limits = {name: entry.whole(entry.required(table, name), name) for name in sorted(_CAP_FIELDS)}
    return DailyCaps(**limits)


def _parse_retry_limits(source: str, raw: object) -> RetryLimits:
    table = ConfigEntry(source).table(raw, "retry_limits")
    entry = ConfigEntry(f"{source}: retry_limits")
    entry.only_fields(table, _RETRY_FIELDS)
    limits = {
        name: entry.whole(entry.required(table, name), name, minimum=1)
        for name in sorted(_RETRY_FIELDS)
    }
    return RetryLimits(**limits)


def _parse_rate_limits(source: str, raw: object) -> tuple[ScopedRateLimit, ...]:
    table = ConfigEntry(source).table(raw, "rate_limits")
    entry = ConfigEntry(f"{source}: rate_limits")
    entry.only_fields(table, _SCOPE_FIELDS)
    parsed: list[ScopedRateLimit] = []
    for scope in RateScope:
        scope_table = entry.table(entry.required(table, scope.value), scope.value)
        scope_entry = ConfigEntry(f"{source}: rate_limits.{scope.value}")
        scope_entry.only_fields(scope_table, _CATEGORY_FIELDS)
        for category in Category:
            cell = scope_entry.required(scope_table, category.value)
            limit = _parse_rate_limit(f"{source}: rate_limits.{scope.value}", category, cell)
            parsed.append(ScopedRateLimit(scope, category, limit))
    _require_members_within_wallet(source, parsed)
    return tuple(parsed)


def _parse_rate_limit(label: str, category: Category, raw: object) -> RateLimit:
    table = ConfigEntry(label).table(raw, category.value)
    entry = ConfigEntry(f"{label}.{category.value}")
    entry.only_fields(table, _RATE_FIELDS)
    per_second = entry.whole(entry.required(table, "per_second"), "per_second", minimum=1)
    per_minute = entry.whole(entry.required(table, "per_minute"), "per_minute", minimum=per_second)
    if per_minute > 60 * per_second:
        raise entry.fail(
            "per_minute", f"{per_minute} can never be reached at {per_second} per second"
        )
    return RateLimit(per_second=per_second, per_minute=per_minute)


def _require_members_within_wallet(source: str, limits: list[ScopedRateLimit]) -> None:
    wallet = {e.category: e.limit for e in limits if e.scope is RateScope.WALLET}
    for entry in limits:
        if entry.scope is RateScope.MEMBER and not entry.limit.allows_at_most(
            wallet[entry.category]
        ):
            raise ConfigEntry(f"{source}: rate_limits.member.{entry.category.value}").fail(
                "per_second", "and per_minute may not exceed the wallet's limit for the category"
            )
