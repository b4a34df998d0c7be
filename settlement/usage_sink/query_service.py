"""A read-only HTTP query service over the settlement worker's own :class:`UsageStore`.

Why it exists: chdb runs one data directory per process and locks it (a second process fails
with "Cannot lock file .../status. Another server instance in same directory is already
running", read-only or not — checked with chdb 4.4), and in the embedded stack only the
settlement worker opens it. So the API cannot read chdb itself; it asks this service
(``api.analytics.remote_reader.RemoteUsageReader``). With a ClickHouse server the API reads
the server directly and this service is not started.

Design:

* plain ``asyncio.start_server`` and a minimal HTTP/1.1 (GET only, keep-alive, no bodies):
  no web framework inside the settlement process, nothing that competes with its loop;
* queries run on ONE dedicated thread, so analytics load can queue but never occupies more
  than one core's worth of chdb next to settlement; the store's own lock serialises each query
  with the worker's inserts (chdb sessions are not safe for concurrent statements);
* loopback only, read-only by construction (it can call nothing but the three reads in
  :mod:`settlement.usage_sink.wallet_queries`), typed errors as JSON with a status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from datetime import date, datetime
from typing import Final, TypeVar
from urllib.parse import parse_qs, urlsplit

from domain.errors import CreditsError, InvalidInput
from settlement.usage_sink import query_wire as wire
from settlement.usage_sink import wallet_queries as queries
from settlement.usage_sink.store import UsageStore

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

LOOPBACK: Final = "127.0.0.1"
MAX_HEAD_BYTES: Final = 16 * 1024
IDLE_TIMEOUT_S: Final = 60.0
_REASONS: Final = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


class UsageQueryService:
    """Serves the per-wallet reads of ``store`` over HTTP on loopback (see the module doc)."""

    def __init__(self, store: UsageStore) -> None:
        self._store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-query")
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, port: int = 0, host: str = LOOPBACK) -> int:
        """Listen on ``host:port`` (0: a free port); return the port bound."""
        self._server = await asyncio.start_server(self._connection, host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._executor.shutdown(wait=True, cancel_futures=True)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await asyncio.wait_for(
                        reader.readuntil(b"\r\n\r\n"), timeout=IDLE_TIMEOUT_S
                    )
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                    return
                status, body, keep_alive = await self._respond(head)
                writer.write(_response(status, body, keep_alive))
                await writer.drain()
                if not keep_alive:
                    return
        except ConnectionError:
            return
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _respond(self, head: bytes) -> tuple[int, wire.Json, bool]:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        headers = dict(_header(line) for line in lines[1:] if ":" in line)
        keep_alive = headers.get("connection", "").lower() != "close"
        if len(parts) != 3 or len(head) > MAX_HEAD_BYTES:
            return 400, {"code": "invalid_request", "message": "malformed request"}, False
        method, target, _ = parts
        if method != "GET" or headers.get("content-length", "0") != "0":
            return 405, {"code": "method_not_allowed", "message": "GET only, no body"}, False
        url = urlsplit(target)
        handler = self._routes().get(url.path)
        if handler is None:
            return 404, {"code": "not_found", "message": f"no route {url.path}"}, keep_alive
        params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        loop = asyncio.get_running_loop()
        try:
            body = await loop.run_in_executor(self._executor, handler, params)
        except CreditsError as exc:
            return wire.error_status(exc), wire.encode_error(exc), keep_alive
        except Exception:  # a bug: answer 500 rather than drop the connection silently
            _log.exception("usage query %s failed", url.path)
            return 500, {"code": "internal_error", "message": "query failed"}, False
        return 200, body, keep_alive

    def _routes(self) -> dict[str, Callable[[dict[str, str]], wire.Json]]:
        return {
            wire.PATH_HEALTH: lambda _: {"status": "ok", "day_timezone": self._store.day_timezone},
            wire.PATH_TOTALS: self._totals,
            wire.PATH_BREAKDOWN: self._breakdown,
            wire.PATH_DAILY: self._daily,
        }

    def _totals(self, params: dict[str, str]) -> wire.Json:
        start, end = _instant(params, "start"), _instant(params, "end")
        return wire.encode_totals(
            queries.totals(self._store, _arg(params, "wallet_id"), start, end)
        )

    def _breakdown(self, params: dict[str, str]) -> wire.Json:
        days = queries.DayRange(_day(params, "start"), _day(params, "end"))
        by = queries.require_dimension(_arg(params, "by"))
        rows = queries.breakdown(self._store, _arg(params, "wallet_id"), days, by)
        return wire.encode_breakdown(rows)

    def _daily(self, params: dict[str, str]) -> wire.Json:
        days = queries.DayRange(_day(params, "start"), _day(params, "end"))
        rows = queries.daily_by_category(self._store, _arg(params, "wallet_id"), days)
        return wire.encode_daily(rows)


async def serve_usage_queries(
    exits: AsyncExitStack, store: UsageStore, port: int | None
) -> UsageQueryService | None:
    """Start the service on ``port`` (0: free; None: not at all) and close it with ``exits``.

    The hook the settlement worker calls right after opening its usage store; closing through
    ``exits`` stops the service before the store it reads is closed.
    """
    if port is None:
        return None
    service = UsageQueryService(store)
    await service.start(port)
    exits.push_async_callback(service.close)
    _log.info("usage queries served on %s", service.url)
    return service


def _header(line: str) -> tuple[str, str]:
    name, _, value = line.partition(":")
    return name.strip().lower(), value.strip()


def _arg(params: dict[str, str], name: str) -> str:
    value = params.get(name)
    if not value:
        raise InvalidInput(f"missing query parameter {name}", field=name)
    return value


def _day(params: dict[str, str], name: str) -> date:
    return _parsed(params, name, date.fromisoformat)


def _instant(params: dict[str, str], name: str) -> datetime:
    return _parsed(params, name, datetime.fromisoformat)


def _parsed(params: dict[str, str], name: str, parse: Callable[[str], _T]) -> _T:
    raw = _arg(params, name)
    try:
        return parse(raw)
    except ValueError as exc:
        raise InvalidInput(f"{name} is not an ISO date/time: {raw!r}", field=name) from exc


def _response(status: int, body: wire.Json, keep_alive: bool) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode()
    reason = _REASONS.get(status, "Service Unavailable" if status == 503 else "Error")
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode("latin-1") + payload
