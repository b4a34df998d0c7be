"""The server backend: a ClickHouse server reached over HTTP(S) through clickhouse-connect.

Inserts go as Arrow (``insert_arrow``), queries come back as Arrow (``query_arrow``), and the
batch's keys travel as external data, so no statement ever embeds a batch as SQL text.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit

import pyarrow as pa
from clickhouse_connect import get_client
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import Error as ClickHouseDriverError
from clickhouse_connect.driver.external import ExternalData

from domain.errors import ConfigError, StateConflict, Unavailable
from settlement.usage_sink.store import BATCH_KEYS, DEFAULT_DAY_TIMEZONE, Params, UsageStore

SERVER_SCHEMES: Final = frozenset({"clickhouse", "http", "https"})
_KEYS_STRUCTURE: Final = "wallet_id String, event_id String"
_TSV_ESCAPES: Final = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def keys_as_external_data(batch_keys: pa.Table) -> ExternalData:
    """The batch's (wallet_id, event_id) pairs as a TabSeparated external table."""
    lines = (
        f"{wallet.translate(_TSV_ESCAPES)}\t{event.translate(_TSV_ESCAPES)}\n"
        for wallet, event in zip(
            batch_keys.column("wallet_id").to_pylist(),
            batch_keys.column("event_id").to_pylist(),
            strict=True,
        )
    )
    return ExternalData(
        data="".join(lines).encode(),
        file_name=BATCH_KEYS,
        fmt="TabSeparated",
        structure=_KEYS_STRUCTURE,
    )


def connect_client(url: str) -> Client:
    """A clickhouse-connect client for ``clickhouse://``, ``http://`` or ``https://`` URLs.

    ``clickhouse://`` speaks plain HTTP (port 8123 unless given). User, password, port and
    database (the URL path) come from the URL. No session id is generated, so one client can
    serve several threads (ClickHouse refuses concurrent queries within one HTTP session).
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme not in SERVER_SCHEMES:
        raise ConfigError(
            f"unsupported ClickHouse URL scheme {scheme!r}; use clickhouse://, http:// or https://",
            field="clickhouse_url",
        )
    interface = "https" if scheme == "https" else "http"
    try:
        return get_client(dsn=url, interface=interface, autogenerate_session_id=False)
    except ClickHouseDriverError as exc:
        raise Unavailable(
            f"cannot reach ClickHouse at {_redacted(url)}: {exc}. Check the URL, credentials "
            "and that the server is up; the settlement worker retries with backoff.",
        ) from exc


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class ServerUsageStore(UsageStore):
    """A :class:`UsageStore` on a ClickHouse server (tables in the client's database).

    Thread-safety: clickhouse-connect's HTTP client is safe to share when it has no session id,
    which :func:`connect_client` guarantees. The single-writer-per-wallet rule of
    :class:`UsageStore` still applies across processes. On a replicated cluster the anti-join
    must read the writer's own inserts: keep each writer on one replica (or set
    ``insert_quorum`` with ``select_sequential_consistency``); the deduplication tokens then
    also protect ReplicatedMergeTree tables natively.
    """

    def __init__(self, client: Client, *, day_timezone: str = DEFAULT_DAY_TIMEZONE) -> None:
        super().__init__(day_timezone=day_timezone)
        self._client: Client | None = client

    @classmethod
    def connect(cls, url: str, *, day_timezone: str = DEFAULT_DAY_TIMEZONE) -> ServerUsageStore:
        return cls(connect_client(url), day_timezone=day_timezone)

    @property
    def keys_relation(self) -> str:
        return BATCH_KEYS  # the external table's name

    def _live(self) -> Client:
        if self._client is None:
            raise StateConflict("the ClickHouse usage store is closed")
        return self._client

    def _execute(self, sql: str) -> None:
        try:
            self._live().command(sql)
        except ClickHouseDriverError as exc:
            raise _unavailable(exc) from exc

    def _select(self, sql: str, params: Params, batch_keys: pa.Table | None = None) -> pa.Table:
        external = None if batch_keys is None else keys_as_external_data(batch_keys)
        try:
            return self._live().query_arrow(
                sql, parameters=dict(params), use_strings=True, external_data=external
            )
        except ClickHouseDriverError as exc:
            raise _unavailable(exc) from exc

    def _insert_arrow(self, table: str, data: pa.Table, settings: Params) -> None:
        try:
            self._live().insert_arrow(table, data, settings=dict(settings))
        except ClickHouseDriverError as exc:
            raise _unavailable(exc) from exc

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


def _unavailable(exc: BaseException) -> Unavailable:
    return Unavailable(
        f"ClickHouse usage store failed: {exc}. Nothing was acknowledged; the operation may be "
        "retried (inserts are idempotent). If it persists, check the server's health and logs.",
    )
