"""Choose the usage-sink backend from configuration: chdb unless a ClickHouse URL is set."""

from __future__ import annotations

from pathlib import Path

from settlement.usage_sink.store import DEFAULT_DAY_TIMEZONE, UsageStore


def open_usage_store(
    url: str | None, data_dir: Path, *, day_timezone: str = DEFAULT_DAY_TIMEZONE
) -> UsageStore:
    """Open (not yet schema-checked) the usage store the settings point at.

    ``url`` ``None`` or empty: the embedded chdb engine persisting under ``data_dir`` (one data
    directory per process). ``clickhouse://``, ``http://`` or ``https://``: a ClickHouse server
    through clickhouse-connect, ``data_dir`` unused. Anything else raises
    :class:`~domain.errors.ConfigError`. Call :meth:`UsageStore.ensure_schema` before use.
    """
    # Backends are imported on demand: the embedded one boots an engine when opened, and a
    # server deployment should not pay for (or need) chdb at all.
    if not url:
        from settlement.usage_sink.chdb_store import ChdbUsageStore  # noqa: PLC0415

        return ChdbUsageStore(data_dir, day_timezone=day_timezone)
    from settlement.usage_sink.server_store import ServerUsageStore  # noqa: PLC0415

    return ServerUsageStore.connect(url, day_timezone=day_timezone)
