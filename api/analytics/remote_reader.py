"""The :class:`~api.analytics.reader.UsageReader` of the embedded stack: asks the settlement
worker's usage query service (:mod:`settlement.usage_sink.query_service`) over loopback HTTP.

One pooled ``httpx.AsyncClient`` with keep-alive; a short timeout, because a dashboard tile
that waits longer than a few seconds is worse than an ``unavailable`` error it can retry.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import httpx

from domain.errors import Unavailable
from settlement.usage_sink import query_wire as wire
from settlement.usage_sink.model import (
    BreakdownBy,
    BreakdownRow,
    DailyCategoryCredits,
    UsageTotals,
    require_id,
    require_utc,
)
from settlement.usage_sink.wallet_queries import DayRange, require_dimension

DEFAULT_TIMEOUT_S: Final = 5.0


class RemoteUsageReader:
    """Reads through the query service at ``base_url`` (e.g. ``http://127.0.0.1:8123``)."""

    def __init__(
        self, base_url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, day_timezone: str
    ) -> None:
        self._client = httpx.AsyncClient(base_url=base_url, timeout=timeout_s)
        self._day_timezone = day_timezone
        self.base_url = base_url

    @classmethod
    async def connect(
        cls, base_url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> RemoteUsageReader:
        """A reader whose day timezone is the service's own (asked once, at start-up)."""
        probe = cls(base_url, timeout_s=timeout_s, day_timezone="UTC")
        try:
            health = await probe._get(wire.PATH_HEALTH, {})
        finally:
            await probe.aclose()
        zone = health.get("day_timezone") if isinstance(health, dict) else None
        if not isinstance(zone, str):
            raise Unavailable(f"usage query service at {base_url} sent no day timezone")
        return cls(base_url, timeout_s=timeout_s, day_timezone=zone)

    @property
    def day_timezone(self) -> str:
        return self._day_timezone

    async def aclose(self) -> None:
        await self._client.aclose()

    async def totals(self, wallet_id: str, start: datetime, end: datetime) -> UsageTotals:
        params = {
            "wallet_id": require_id(wallet_id, field="wallet_id"),
            "start": require_utc(start, field="start").isoformat(),
            "end": require_utc(end, field="end").isoformat(),
        }
        return wire.decode_totals(await self._get(wire.PATH_TOTALS, params))

    async def breakdown(
        self, wallet_id: str, days: DayRange, by: BreakdownBy
    ) -> list[BreakdownRow]:
        params = {**_days(wallet_id, days), "by": require_dimension(by)}
        return wire.decode_breakdown(await self._get(wire.PATH_BREAKDOWN, params), by)

    async def daily_by_category(self, wallet_id: str, days: DayRange) -> list[DailyCategoryCredits]:
        return wire.decode_daily(await self._get(wire.PATH_DAILY, _days(wallet_id, days)))

    async def _get(self, path: str, params: dict[str, str]) -> Any:
        try:
            response = await self._client.get(path, params=params)
        except httpx.HTTPError as exc:
            raise Unavailable(
                f"usage query service at {self.base_url} is unreachable: {exc!r}. Is the "
                "settlement worker running with --query-port?"
            ) from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code != 200:
            raise wire.decode_error(response.status_code, body)
        return body


def _days(wallet_id: str, days: DayRange) -> dict[str, str]:
    if not isinstance(days, DayRange):
        raise TypeError("days must be a DayRange")
    return {
        "wallet_id": require_id(wallet_id, field="wallet_id"),
        "start": days.first.isoformat(),
        "end": days.last.isoformat(),
    }
