"""How the API reads one wallet's usage: the :class:`UsageReader` port and its in-process adapter.

Two adapters, one contract (tests/api/analytics/test_readers.py runs both):

* :class:`StoreUsageReader` — over a :class:`UsageStore` the API process opened itself: a
  ClickHouse server (production), or chdb when the API shares the settlement worker's
  process (tests). Blocking store calls run in a worker thread.
* :class:`~api.analytics.remote_reader.RemoteUsageReader` — the embedded stack: chdb locks its
  data directory to one process, the settlement worker's, which serves the same three reads
  over loopback HTTP (:mod:`settlement.usage_sink.query_service`).

Bad arguments raise :class:`~domain.errors.InvalidInput`; an unreachable or failing engine
:class:`~domain.errors.Unavailable` (retryable).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Protocol

from settlement.usage_sink import wallet_queries as queries
from settlement.usage_sink.model import BreakdownBy, BreakdownRow, DailyCategoryCredits, UsageTotals
from settlement.usage_sink.store import UsageStore
from settlement.usage_sink.wallet_queries import DayRange


class UsageReader(Protocol):
    """The reads analytics needs for one wallet. Implementations are safe to share."""

    @property
    def day_timezone(self) -> str:
        """The zone whose calendar days the rollups (and so every day range) use."""
        ...

    async def totals(self, wallet_id: str, start: datetime, end: datetime) -> UsageTotals:
        """Credits and events in ``[start, end)`` (aware instants; exact at any boundary)."""
        ...

    async def breakdown(
        self, wallet_id: str, days: DayRange, by: BreakdownBy
    ) -> list[BreakdownRow]:
        """Usage over whole local ``days`` by feature, category, member or day."""
        ...

    async def daily_by_category(self, wallet_id: str, days: DayRange) -> list[DailyCategoryCredits]:
        """Sparse credits per (local day, category) over ``days``: the forecast's input."""
        ...


class StoreUsageReader:
    """A :class:`UsageReader` over a store this process owns (it does not close it)."""

    def __init__(self, store: UsageStore) -> None:
        self._store = store

    @property
    def day_timezone(self) -> str:
        return self._store.day_timezone

    async def totals(self, wallet_id: str, start: datetime, end: datetime) -> UsageTotals:
        return await asyncio.to_thread(queries.totals, self._store, wallet_id, start, end)

    async def breakdown(
        self, wallet_id: str, days: DayRange, by: BreakdownBy
    ) -> list[BreakdownRow]:
        by = queries.require_dimension(by)
        return await asyncio.to_thread(queries.breakdown, self._store, wallet_id, days, by)

    async def daily_by_category(self, wallet_id: str, days: DayRange) -> list[DailyCategoryCredits]:
        return await asyncio.to_thread(queries.daily_by_category, self._store, wallet_id, days)
