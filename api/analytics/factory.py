"""Choose how the API process reads usage, from its configuration."""

from __future__ import annotations

from contextlib import AsyncExitStack

from api.analytics.reader import StoreUsageReader, UsageReader
from api.analytics.remote_reader import RemoteUsageReader
from domain.errors import Unavailable


async def open_usage_reader(
    exits: AsyncExitStack, *, usage_query_url: str | None, clickhouse_url: str | None
) -> UsageReader:
    """The reader the settings point at; its cleanup is registered on ``exits``.

    ``clickhouse_url``: read the ClickHouse server directly (production). Otherwise
    ``usage_query_url``: the settlement worker's query service (embedded stack, where chdb is
    locked to that worker's process). Neither: :class:`~domain.errors.ConfigError`, because
    opening chdb here would fail (or, worse, steal the directory from the worker).
    """
    if clickhouse_url:
        from settlement.usage_sink.server_store import ServerUsageStore  # noqa: PLC0415

        store = ServerUsageStore.connect(clickhouse_url)
        exits.callback(store.close)
        return StoreUsageReader(store)
    if usage_query_url:
        remote = await RemoteUsageReader.connect(usage_query_url)
        exits.push_async_callback(remote.aclose)
        return remote
    raise Unavailable(
        "analytics is not configured: it needs CLICKHOUSE_URL (a ClickHouse server) or the "
        "settlement worker's usage query URL (CREDITS_USAGE_QUERY_URL)",
        field="usage_query_url",
    )
