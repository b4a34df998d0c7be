"""Time is passed in: a ``Clock`` you can freeze makes caps, day boundaries and holds testable."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware (UTC)."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass(slots=True)
class FrozenClock:
    """A clock that only moves when told to (tests and scenario replays)."""

    instant: datetime

    def __post_init__(self) -> None:
        assert self.instant.tzinfo is not None, "clocks are timezone-aware"

    def now(self) -> datetime:
        return self.instant

    def advance(self, delta: timedelta) -> None:
        self.instant += delta
