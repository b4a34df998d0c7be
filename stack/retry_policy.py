"""How a pipeline worker retries an outage before it gives up (shared by every role)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``attempts`` tries, sleeping ``first_delay_s`` doubling up to ``max_delay_s``."""

    attempts: int = 6
    first_delay_s: float = 0.2
    max_delay_s: float = 5.0

    def delay_s(self, attempt: int) -> float:
        """The sleep after failed attempt number ``attempt`` (1-based)."""
        return min(self.first_delay_s * 2.0 ** (attempt - 1), self.max_delay_s)
