"""The ClickHouse usage sink of the settlement role: settled usage for analytics and forecasts.

One port (:class:`UsageStore`), two backends (embedded chdb, a ClickHouse server), chosen by
:func:`open_usage_store`. Backend modules are not imported here, so importing this package
neither boots chdb nor needs a server.
"""

from __future__ import annotations

from settlement.usage_sink.factory import open_usage_store
from settlement.usage_sink.model import (
    BreakdownBy,
    BreakdownKey,
    BreakdownRow,
    DailyCategoryCredits,
    DailyCredits,
    UsageRow,
    UsageTotals,
)
from settlement.usage_sink.store import DEFAULT_DAY_TIMEZONE, UsageStore

__all__ = [
    "DEFAULT_DAY_TIMEZONE",
    "BreakdownBy",
    "BreakdownKey",
    "BreakdownRow",
    "DailyCategoryCredits",
    "DailyCredits",
    "UsageRow",
    "UsageStore",
    "UsageTotals",
    "open_usage_store",
]
