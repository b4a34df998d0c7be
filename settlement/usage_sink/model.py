"""Frozen, validated types of the ClickHouse usage sink: what goes in and what queries return.

A :class:`UsageRow` is one settled usage event as analytics sees it. Construction refuses anything
ClickHouse could not store faithfully (empty ids, negative or fractional amounts, naive or absurd
timestamps), so the adapters never have to second-guess their input.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Final, Literal, NamedTuple

from domain.errors import InvalidInput
from domain.money import require_int

# Per-event ceiling for credits and quantity. Rollups sum into Int64 (signed, so that
# reconciliation can append negative corrections); 10**12 per event leaves room for
# millions of maximal events in one rollup cell before Int64 could overflow.
MAX_UNITS_PER_EVENT: Final = 10**12
MAX_PRICING_VERSION: Final = 2**32 - 1  # stored as UInt32
MAX_ID_LENGTH: Final = 256

# Timestamps outside this window are typos (a year 20204) or clock bugs, not usage; the window
# also stays inside the ranges of ClickHouse's DateTime (rollup hours) and Date (rollup days).
EARLIEST_TIMESTAMP: Final = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_TIMESTAMP: Final = datetime(2100, 1, 1, tzinfo=UTC)

BreakdownBy = Literal["feature", "category", "member", "day", "hour"]
BREAKDOWN_DIMENSIONS: Final[frozenset[str]] = frozenset(
    {"feature", "category", "member", "day", "hour"}
)
TIME_DIMENSIONS: Final[frozenset[str]] = frozenset({"day", "hour"})

# feature/category: str; member: str, or None for usage not attributed to a member;
# day: the calendar date in the store's day timezone; hour: the UTC instant the local hour starts.
BreakdownKey = str | date | datetime | None


def require_id(value: object, *, field: str) -> str:
    """Return ``value`` if it is a usable identifier; raise :class:`InvalidInput` otherwise.

    Identifiers are non-empty, at most :data:`MAX_ID_LENGTH` characters, and free of control
    characters (they travel through ClickHouse's escaped parameter and TSV formats, where a tab
    or newline would change meaning).
    """
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{field} must be a non-empty string, got {value!r}", field=field)
    if len(value) > MAX_ID_LENGTH:
        raise InvalidInput(f"{field} is longer than {MAX_ID_LENGTH} characters", field=field)
    if not value.isprintable():
        raise InvalidInput(f"{field} contains control characters: {value!r}", field=field)
    return value


def require_utc(value: object, *, field: str) -> datetime:
    """Return ``value`` converted to UTC if it is a timezone-aware ``datetime`` in range.

    Naive datetimes are refused: guessing their zone is how day buckets drift by 5h30m.
    """
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise InvalidInput(f"{field} must be a timezone-aware datetime, got {value!r}", field=field)
    utc = value.astimezone(UTC)
    if not EARLIEST_TIMESTAMP <= utc < LATEST_TIMESTAMP:
        raise InvalidInput(
            f"{field} {utc.isoformat()} is outside [{EARLIEST_TIMESTAMP.year}, "
            f"{LATEST_TIMESTAMP.year})",
            field=field,
        )
    return utc


def require_day(value: object, *, field: str) -> date:
    """Return ``value`` if it is a plain ``date`` (a ``datetime`` is refused: which day is it?)."""
    if isinstance(value, datetime) or not isinstance(value, date):
        raise InvalidInput(f"{field} must be a date, got {value!r}", field=field)
    if not EARLIEST_TIMESTAMP.date() <= value < LATEST_TIMESTAMP.date():
        raise InvalidInput(f"{field} {value.isoformat()} is out of range", field=field)
    return value


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One settled usage event, as stored in the per-event table.

    ``event_id`` is globally unique and immutable: a redelivery carries the same ``wallet_id`` and
    ``occurred_at`` (the ledger enforces this upstream), which is what the sink's idempotency
    relies on. ``member_id`` is ``None`` for usage not attributed to a team member. Timestamps
    are normalised to UTC on construction; ``settled_at`` is informational and may differ between
    deliveries of the same event (the first stored delivery wins).
    """

    event_id: str
    wallet_id: str
    member_id: str | None
    feature: str
    category: str
    quantity: int
    credits: int
    pricing_version: int
    occurred_at: datetime
    settled_at: datetime

    def __post_init__(self) -> None:
        require_id(self.event_id, field="event_id")
        require_id(self.wallet_id, field="wallet_id")
        if self.member_id is not None:
            # '' is how the tables spell "no member", so it cannot also be a member id.
            require_id(self.member_id, field="member_id")
        require_id(self.feature, field="feature")
        require_id(self.category, field="category")
        require_int(self.quantity, field="quantity", maximum=MAX_UNITS_PER_EVENT)
        require_int(self.credits, field="credits", maximum=MAX_UNITS_PER_EVENT)
        require_int(self.pricing_version, field="pricing_version", maximum=MAX_PRICING_VERSION)
        # Frozen dataclass: normalising needs object.__setattr__, once, at construction.
        object.__setattr__(self, "occurred_at", require_utc(self.occurred_at, field="occurred_at"))
        object.__setattr__(self, "settled_at", require_utc(self.settled_at, field="settled_at"))


@dataclass(frozen=True, slots=True)
class BreakdownRow:
    """One bucket of a breakdown: total credits, event count and quantity for ``key``."""

    key: BreakdownKey
    credits: int
    events: int
    quantity: int


class UsageTotals(NamedTuple):
    """Credits spent and events settled in a range."""

    credits: int
    events: int


class DailyCredits(NamedTuple):
    """Credits spent on one calendar day (in the store's day timezone)."""

    day: date
    credits: int


class DailyCategoryCredits(NamedTuple):
    """Credits spent on one calendar day in one category (forecasting reads these)."""

    day: date
    category: str
    credits: int
