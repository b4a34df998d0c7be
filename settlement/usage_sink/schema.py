"""DDL of the usage sink: one per-event table and two rollups fed by materialized views.

* ``usage_events`` — one row per settled event, the source of truth. The sink's anti-join keeps
  it free of duplicates, so plain ``count()``/``sum()`` over it are exact.
* ``usage_hourly`` / ``usage_daily`` — per wallet, feature, category and member, summed per
  local hour / local calendar day of the *day timezone*. SummingMergeTree only shrinks them in
  the background; every query still aggregates with ``sum() … GROUP BY``, so results never depend
  on merges having run.

The day timezone is baked into the materialized views, so it is part of the schema: it is
recorded in the rollup tables' comments and :meth:`UsageStore.ensure_schema` refuses to run
against rollups built for another zone. Hourly buckets start at local hour boundaries (for
Asia/Kolkata, at :30 UTC), so whole local days are made of whole hourly buckets.

Rollup sums are signed (Int64) so that reconciliation can append negative correction rows.
"""

from __future__ import annotations

import re
from typing import Final

from domain.errors import ConfigError

SCHEMA_VERSION: Final = 1
EVENTS_TABLE: Final = "usage_events"
HOURLY_TABLE: Final = "usage_hourly"
DAILY_TABLE: Final = "usage_daily"
ROLLUP_TABLES: Final = (HOURLY_TABLE, DAILY_TABLE)

# Column order of the per-event table; inserts name their columns in this order.
EVENT_COLUMNS: Final = (
    "event_id",
    "wallet_id",
    "member_id",
    "feature",
    "category",
    "quantity",
    "credits",
    "pricing_version",
    "occurred_at",
    "settled_at",
)
ROLLUP_DIMENSIONS: Final = ("wallet_id", "feature", "category", "member_id")

# Timezone names are spliced into DDL and queries (ClickHouse wants them as constants), so only
# IANA-shaped names get through.
_TZ_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*$")

# Blocks are deduplicated by insert_deduplication_token within this many recent inserts.
DEDUP_WINDOW_BLOCKS: Final = 1000


def tz_literal(day_timezone: str) -> str:
    """``day_timezone`` as a quoted SQL literal; refuses anything that is not an IANA-style name."""
    if not _TZ_NAME.match(day_timezone):
        raise ConfigError(f"invalid day timezone name {day_timezone!r}", field="day_timezone")
    return f"'{day_timezone}'"


def rollup_comment(day_timezone: str) -> str:
    """The comment stamped on rollup tables; :meth:`ensure_schema` compares it on every start."""
    return f"commdesk usage_sink v{SCHEMA_VERSION}; day_timezone={day_timezone}"


def hour_bucket_expr(time_column: str, day_timezone: str) -> str:
    """SQL for the UTC instant at which the local hour containing ``time_column`` starts."""
    return f"toDateTime(toStartOfHour({time_column}, {tz_literal(day_timezone)}), 'UTC')"


def day_bucket_expr(time_column: str, day_timezone: str) -> str:
    """SQL for the local calendar date of ``time_column`` in the day timezone."""
    return f"toDate({time_column}, {tz_literal(day_timezone)})"


def _events_ddl() -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {EVENTS_TABLE} (
    event_id String,
    wallet_id String,
    member_id String,
    feature LowCardinality(String),
    category LowCardinality(String),
    quantity UInt64,
    credits UInt64,
    pricing_version UInt32,
    occurred_at DateTime64(6, 'UTC'),
    settled_at DateTime64(6, 'UTC')
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (wallet_id, occurred_at, event_id)
SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW_BLOCKS}
COMMENT 'commdesk usage_sink v{SCHEMA_VERSION}: one row per event; empty member_id = none'
"""


def _rollup_ddl(table: str, bucket_column: str, bucket_type: str, day_timezone: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {table} (
    wallet_id String,
    {bucket_column} {bucket_type},
    feature LowCardinality(String),
    category LowCardinality(String),
    member_id String,
    credits Int64,
    events Int64,
    quantity Int64
)
ENGINE = SummingMergeTree((credits, events, quantity))
PARTITION BY toYYYYMM({bucket_column})
ORDER BY (wallet_id, {bucket_column}, feature, category, member_id)
COMMENT '{rollup_comment(day_timezone)}'
"""


def rollup_select(bucket_column: str, bucket_expr: str, where: str = "") -> str:
    """SELECT aggregating per-event rows into rollup rows (used by the views and by repairs)."""
    dims = ", ".join(ROLLUP_DIMENSIONS)
    return f"""
SELECT wallet_id, {bucket_expr} AS {bucket_column}, feature, category, member_id,
       toInt64(sum(credits)) AS credits, toInt64(count()) AS events,
       toInt64(sum(quantity)) AS quantity
FROM {EVENTS_TABLE}
{where}
GROUP BY {dims}, {bucket_column}
"""


def _view_ddl(table: str, bucket_column: str, bucket_expr: str) -> str:
    return (
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {table}_mv TO {table} AS"
        f"{rollup_select(bucket_column, bucket_expr)}"
    )


def schema_statements(day_timezone: str) -> tuple[str, ...]:
    """Every DDL statement, in order: tables first, then the views that feed the rollups.

    All are ``IF NOT EXISTS``, so running them again is harmless. Views see only rows inserted
    after they exist, which is why they are created before the sink accepts any insert.
    """
    hour = hour_bucket_expr("occurred_at", day_timezone)
    day = day_bucket_expr("occurred_at", day_timezone)
    return (
        _events_ddl(),
        _rollup_ddl(HOURLY_TABLE, "hour", "DateTime('UTC')", day_timezone),
        _rollup_ddl(DAILY_TABLE, "day", "Date", day_timezone),
        _view_ddl(HOURLY_TABLE, "hour", hour),
        _view_ddl(DAILY_TABLE, "day", day),
    )


def rollup_comments_sql() -> str:
    """Query returning (name, comment) of the rollup tables in the current database."""
    names = ", ".join(f"'{name}'" for name in ROLLUP_TABLES)
    return (
        "SELECT name, comment FROM system.tables "
        f"WHERE database = currentDatabase() AND name IN ({names}) ORDER BY name"
    )
