"""The usage-sink port: :class:`UsageStore`, its idempotent write path and its query planner.

Backends (chdb in-process, clickhouse-connect for a server) implement three I/O primitives
(execute, select to Arrow, insert Arrow) and name the batch-keys relation; the write algorithm,
range planning and every SQL statement live here, so both backends run the same statements and
one contract suite covers both.

Idempotency (settlement delivers at least once, possibly regrouped after a crash):

1. the batch is deduplicated by ``event_id`` in memory (first occurrence wins);
2. an anti-join reads which of its ``event_id``\\s the per-event table already holds, scoped to
   the batch's wallets and ``[min occurred_at, max occurred_at]`` (a primary-key range read);
3. only the remaining rows are inserted, as one Arrow block carrying an
   ``insert_deduplication_token`` derived from their ids, so a block re-sent verbatim (a
   racing duplicate writer, a retry after an ambiguous timeout) is dropped by ClickHouse too;
4. if any row was already stored, this is a redelivery after a failure, and the rollup cells of
   those rows are reconciled against the per-event table (see :meth:`reconcile_rollups`).

Nothing depends on background merges or ``FINAL``. Step 2 is check-then-act, hence the
single-writer assumption documented on :class:`UsageStore`.
"""

from __future__ import annotations

import hashlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from types import TracebackType
from typing import Any, Final, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pyarrow as pa

from domain.errors import ConfigError, InvalidInput
from settlement.usage_sink import schema
from settlement.usage_sink.model import (
    BREAKDOWN_DIMENSIONS,
    TIME_DIMENSIONS,
    BreakdownBy,
    BreakdownKey,
    BreakdownRow,
    DailyCategoryCredits,
    DailyCredits,
    UsageRow,
    UsageTotals,
    require_day,
    require_id,
    require_utc,
)

DEFAULT_DAY_TIMEZONE: Final = "Asia/Kolkata"
HOUR: Final = timedelta(hours=1)
DAY: Final = timedelta(days=1)
MAX_TOP_LIMIT: Final = 1000

# Name under which a backend exposes the batch's (wallet_id, event_id) pairs to a statement:
# chdb reads the local variable of that name through its Python() table function; the server
# backend ships it as external data of that name.
BATCH_KEYS: Final = "batch_keys"

DT64: Final = "DateTime64(6, 'UTC')"
DT: Final = "DateTime('UTC')"

Params = dict[str, str]

EVENTS_SCHEMA: Final = pa.schema(
    [
        ("event_id", pa.string()),
        ("wallet_id", pa.string()),
        ("member_id", pa.string()),
        ("feature", pa.string()),
        ("category", pa.string()),
        ("quantity", pa.uint64()),
        ("credits", pa.uint64()),
        ("pricing_version", pa.uint32()),
        ("occurred_at", pa.timestamp("us", tz="UTC")),
        ("settled_at", pa.timestamp("us", tz="UTC")),
    ]
)
KEYS_SCHEMA: Final = pa.schema([("wallet_id", pa.string()), ("event_id", pa.string())])


# --- range planning (pure) --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Span:
    """A half-open UTC interval ``[lo, hi)``."""

    lo: datetime
    hi: datetime


@dataclass(frozen=True, slots=True)
class DaySpan:
    """A half-open run of local calendar days ``[first, stop)``."""

    first: date
    stop: date


@dataclass(frozen=True, slots=True)
class RangePlan:
    """Which table answers which part of a query range.

    Whole local days come from the daily rollup, whole local hours from the hourly rollup and
    the ragged edges from the per-event table, so a query over any ``[start, end)`` is exact
    while reading as few rows as the rollups allow.
    """

    raw: tuple[Span, ...]
    hourly: tuple[Span, ...]
    daily: DaySpan | None

    @property
    def empty(self) -> bool:
        return not (self.raw or self.hourly or self.daily)


def floor_hour(t: datetime, tz: ZoneInfo) -> datetime:
    """The start of the local hour containing ``t`` (a UTC instant; :30 UTC for Asia/Kolkata)."""
    return t.astimezone(tz).replace(minute=0, second=0, microsecond=0).astimezone(UTC)


def ceil_hour(t: datetime, tz: ZoneInfo) -> datetime:
    floor = floor_hour(t, tz)
    return floor if floor == t else floor + HOUR


def day_start(d: date, tz: ZoneInfo) -> datetime:
    """The UTC instant at which local day ``d`` begins."""
    return datetime.combine(d, time(0), tzinfo=tz).astimezone(UTC)


def plan_range(start: datetime, end: datetime, tz: ZoneInfo, *, use_daily: bool) -> RangePlan:
    """Split ``[start, end)`` into per-event edges, whole local hours and whole local days.

    Assumes local midnights and hour starts exist (true for every zone whose offset changes by
    whole hours, away from midnight — Asia/Kolkata has no DST at all).
    """
    if start >= end:
        return RangePlan((), (), None)
    h_lo, h_hi = ceil_hour(start, tz), floor_hour(end, tz)
    if h_lo >= h_hi:
        return RangePlan((Span(start, end),), (), None)
    raw = _nonempty(Span(start, h_lo), Span(h_hi, end))
    first = h_lo.astimezone(tz).date()
    if day_start(first, tz) < h_lo:
        first += DAY
    stop = h_hi.astimezone(tz).date()
    if not use_daily or first >= stop:
        return RangePlan(raw, (Span(h_lo, h_hi),), None)
    hourly = _nonempty(Span(h_lo, day_start(first, tz)), Span(day_start(stop, tz), h_hi))
    return RangePlan(raw, hourly, DaySpan(first, stop))


def _nonempty(*spans: Span) -> tuple[Span, ...]:
    return tuple(span for span in spans if span.lo < span.hi)


# --- SQL builders (pure) ----------------------------------------------------------------------


def placeholder(name: str, ch_type: str) -> str:
    """A server-side query parameter, ``{name:Type}``, bound by both backends."""
    return "{" + name + ":" + ch_type + "}"


def format_dt64(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def format_dt(t: datetime) -> str:
    assert t.microsecond == 0, "DateTime parameters are whole seconds (hour boundaries)"
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True, slots=True)
class _Source:
    table: str
    time_column: str
    time_type: str
    events_expr: str


_RAW = _Source(schema.EVENTS_TABLE, "occurred_at", DT64, "count()")
_HOURLY = _Source(schema.HOURLY_TABLE, "hour", DT, "sum(events)")
_DAILY = _Source(schema.DAILY_TABLE, "day", "Date", "sum(events)")


def _key_expr(by: str, source: _Source, tz: str) -> str:
    """Grouping key of ``by`` on ``source``: a String, or the hour as a UInt32 Unix time.

    Days travel as ISO strings and hours as Unix seconds so that both backends' Arrow output
    decodes identically (ClickHouse's Arrow mapping of Date/DateTime is version dependent).
    """
    if by == "member":
        return "member_id"
    if by == "day":
        if source is _DAILY:
            return "toString(day)"
        return f"toString({schema.day_bucket_expr(source.time_column, tz)})"
    if by == "hour":
        assert source is not _DAILY, "hour breakdowns are never planned on the daily rollup"
        if source is _HOURLY:
            return "toUnixTimestamp(hour)"
        return f"toUnixTimestamp({schema.hour_bucket_expr(source.time_column, tz)})"
    return by  # feature, category: plain columns on every table


def _span_condition(
    source: _Source, spans: Sequence[tuple[str, str]], prefix: str
) -> tuple[str, Params]:
    conditions: list[str] = []
    params: Params = {}
    for i, (lo, hi) in enumerate(spans):
        lo_name, hi_name = f"{prefix}_lo{i}", f"{prefix}_hi{i}"
        col = source.time_column
        conditions.append(
            f"({col} >= {placeholder(lo_name, source.time_type)}"
            f" AND {col} < {placeholder(hi_name, source.time_type)})"
        )
        params[lo_name], params[hi_name] = lo, hi
    return " OR ".join(conditions), params


def _segments(plan: RangePlan) -> list[tuple[_Source, str, list[tuple[str, str]]]]:
    segments: list[tuple[_Source, str, list[tuple[str, str]]]] = []
    if plan.raw:
        segments.append((_RAW, "r", [(format_dt64(s.lo), format_dt64(s.hi)) for s in plan.raw]))
    if plan.hourly:
        segments.append((_HOURLY, "h", [(format_dt(s.lo), format_dt(s.hi)) for s in plan.hourly]))
    if plan.daily:
        days = [(plan.daily.first.isoformat(), plan.daily.stop.isoformat())]
        segments.append((_DAILY, "d", days))
    return segments


def aggregate_sql(
    plan: RangePlan, by: str | None, tz: str, limit: int | None
) -> tuple[str, Params]:
    """One statement summing a wallet's usage over ``plan``, grouped by ``by`` (or not at all).

    Each segment aggregates its own table; the outer query sums the segments, so unmerged
    rollup parts and the per-event edges add up exactly. Result columns: ``[k,] credits,
    events, quantity``; grouped results are ordered by time for day/hour, else by credits.
    """
    assert not plan.empty
    params: Params = {}
    parts: list[str] = []
    for source, prefix, spans in _segments(plan):
        condition, span_params = _span_condition(source, spans, prefix)
        params.update(span_params)
        key = f"{_key_expr(by, source, tz)} AS k, " if by else ""
        group = " GROUP BY k" if by else ""
        parts.append(
            f"SELECT {key}toInt64(sum(credits)) AS c, toInt64({source.events_expr}) AS n,"
            f" toInt64(sum(quantity)) AS q FROM {source.table}"
            f" WHERE wallet_id = {placeholder('wallet_id', 'String')} AND ({condition}){group}"
        )
    union = " UNION ALL ".join(parts)
    totals = "sum(c) AS credits, sum(n) AS events, sum(q) AS quantity"
    if by is None:
        return f"SELECT {totals} FROM ({union})", params
    order = "k" if by in TIME_DIMENSIONS else "credits DESC, k"
    limit_clause = f" LIMIT {int(limit)}" if limit is not None else ""
    sql = f"SELECT k, {totals} FROM ({union}) GROUP BY k ORDER BY {order}{limit_clause}"
    return sql, params


def stored_ids_sql(keys: str) -> str:
    """Which of the batch's event ids the per-event table already holds.

    Scoped by wallet and by the batch's ``occurred_at`` range so ClickHouse reads only the
    primary-key ranges the batch could collide with.
    """
    return (
        f"SELECT DISTINCT event_id FROM {schema.EVENTS_TABLE}"
        f" WHERE wallet_id IN (SELECT wallet_id FROM {keys})"
        f" AND occurred_at >= {placeholder('lo', DT64)}"
        f" AND occurred_at <= {placeholder('hi', DT64)}"
        f" AND event_id IN (SELECT event_id FROM {keys})"
    )


def rollup_drift_sql(
    table: str, days: DaySpan, zone: ZoneInfo, keys: str | None
) -> tuple[str, Params]:
    """Per-cell difference (per-event truth minus rollup) of ``table`` over local ``days``.

    Returns rollup-shaped rows whose sums are the corrections to append; cells that agree are
    filtered out. ``keys`` limits the check to the wallets in that relation (``None``: all).
    """
    lo, hi = day_start(days.first, zone), day_start(days.stop, zone)
    params: Params = {"lo": format_dt64(lo), "hi": format_dt64(hi)}
    if table == schema.HOURLY_TABLE:
        bucket, bucket_expr = "hour", schema.hour_bucket_expr("occurred_at", zone.key)
        bucket_lo, bucket_hi = placeholder("bucket_lo", DT), placeholder("bucket_hi", DT)
        params.update(bucket_lo=format_dt(lo), bucket_hi=format_dt(hi))
    else:
        bucket, bucket_expr = "day", schema.day_bucket_expr("occurred_at", zone.key)
        bucket_lo, bucket_hi = placeholder("bucket_lo", "Date"), placeholder("bucket_hi", "Date")
        params.update(bucket_lo=days.first.isoformat(), bucket_hi=days.stop.isoformat())
    wallets = f" AND wallet_id IN (SELECT wallet_id FROM {keys})" if keys else ""
    raw_where = (
        f"WHERE occurred_at >= {placeholder('lo', DT64)}"
        f" AND occurred_at < {placeholder('hi', DT64)}{wallets}"
    )
    dims = ", ".join(schema.ROLLUP_DIMENSIONS)
    sql = f"""
SELECT wallet_id, {bucket}, feature, category, member_id,
       sum(credits) AS dc, sum(events) AS de, sum(quantity) AS dq
FROM (
    {schema.rollup_select(bucket, bucket_expr, raw_where)}
    UNION ALL
    SELECT wallet_id, {bucket}, feature, category, member_id,
           -sum(credits), -sum(events), -sum(quantity)
    FROM {table}
    WHERE {bucket} >= {bucket_lo} AND {bucket} < {bucket_hi}{wallets}
    GROUP BY {dims}, {bucket}
)
GROUP BY {dims}, {bucket}
HAVING dc != 0 OR de != 0 OR dq != 0
"""
    return sql, params


# --- batch shaping (pure) ---------------------------------------------------------------------


def unique_by_event_id(rows: Iterable[UsageRow]) -> list[UsageRow]:
    """The batch without repeated event ids; the first delivery of each id wins."""
    seen: dict[str, UsageRow] = {}
    for row in rows:
        if not isinstance(row, UsageRow):
            raise InvalidInput(f"expected UsageRow, got {type(row).__name__}")
        seen.setdefault(row.event_id, row)
    return list(seen.values())


def events_table(rows: Sequence[UsageRow]) -> pa.Table:
    """Rows as an Arrow table in the per-event table's column order and sort order."""
    ordered = sorted(rows, key=lambda r: (r.wallet_id, r.occurred_at, r.event_id))
    columns = {
        "event_id": [r.event_id for r in ordered],
        "wallet_id": [r.wallet_id for r in ordered],
        "member_id": [r.member_id or "" for r in ordered],
        "feature": [r.feature for r in ordered],
        "category": [r.category for r in ordered],
        "quantity": [r.quantity for r in ordered],
        "credits": [r.credits for r in ordered],
        "pricing_version": [r.pricing_version for r in ordered],
        "occurred_at": [r.occurred_at for r in ordered],
        "settled_at": [r.settled_at for r in ordered],
    }
    return pa.table(columns, schema=EVENTS_SCHEMA)


def keys_table(pairs: Sequence[tuple[str, str]]) -> pa.Table:
    """(wallet_id, event_id) pairs as the Arrow relation statements know as ``batch_keys``."""
    columns = {"wallet_id": [w for w, _ in pairs], "event_id": [e for _, e in pairs]}
    return pa.table(columns, schema=KEYS_SCHEMA)


def dedup_token(rows: Sequence[UsageRow]) -> str:
    """Deterministic token of a block: equal only for blocks holding the same event ids."""
    digest = hashlib.sha256("\n".join(sorted(r.event_id for r in rows)).encode())
    return f"usage-{digest.hexdigest()}"


def insert_settings(rows: Sequence[UsageRow]) -> Params:
    # async_insert=0: the anti-join of the next batch must see this one (read-your-writes).
    return {
        "insert_deduplicate": "1",
        "insert_deduplication_token": dedup_token(rows),
        "async_insert": "0",
    }


def load_zone(day_timezone: str) -> ZoneInfo:
    schema.tz_literal(day_timezone)  # refuses names that are not safe to splice into SQL
    try:
        return ZoneInfo(day_timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"unknown day timezone {day_timezone!r}", field="day_timezone") from exc


# --- the port ---------------------------------------------------------------------------------


class UsageStore(ABC):
    """Settled usage in ClickHouse: an idempotent batch sink plus exact analytics queries.

    Contract shared by every backend (tests/usage_sink/test_contract.py):

    * :meth:`insert` is idempotent per ``event_id``: re-inserting rows, in the same or in
      differently grouped batches, never changes any query result.
    * Query ranges are half-open ``[start, end)`` over ``occurred_at``, given as aware datetimes
      (compared as instants). Day buckets are calendar days in ``day_timezone``.
    * Results never depend on ClickHouse's background merges.

    Concurrency: an instance may be shared by threads; :meth:`insert` and
    :meth:`reconcile_rollups` are serialised by an instance lock. Across processes the design
    assumes **one writer per wallet at a time** — the settlement consumer owning the wallet's
    Kafka partition — because the anti-join is check-then-act. Two writers inserting the same
    block concurrently are still caught by the block's deduplication token; two writers
    inserting *different* blocks holding the same event could both store it.

    Failures of ClickHouse surface as :class:`~domain.errors.Unavailable` (retryable: retrying
    an insert is always safe); bad arguments as :class:`~domain.errors.InvalidInput`.
    """

    def __init__(self, *, day_timezone: str = DEFAULT_DAY_TIMEZONE) -> None:
        self._zone = load_zone(day_timezone)
        self.day_timezone = day_timezone
        self._write_lock = threading.Lock()

    # -- I/O primitives, one set per backend --------------------------------------------------

    @abstractmethod
    def _execute(self, sql: str) -> None:
        """Run a statement without parameters or result (DDL)."""

    @abstractmethod
    def _select(self, sql: str, params: Params, batch_keys: pa.Table | None = None) -> pa.Table:
        """Run a query with ``{name:Type}`` parameters (raw, unescaped values) and return Arrow.

        ``batch_keys``, when given, is readable by the statement as the relation named
        :attr:`keys_relation`.
        """

    @abstractmethod
    def _insert_arrow(self, table: str, data: pa.Table, settings: Params) -> None:
        """Insert an Arrow table (columns named like the target's) as one block."""

    @property
    @abstractmethod
    def keys_relation(self) -> str:
        """How a statement names the ``batch_keys`` relation passed to :meth:`_select`."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection or session. Idempotent."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- schema --------------------------------------------------------------------------------

    def ensure_schema(self) -> None:
        """Create the tables and views if missing; refuse rollups built for another timezone.

        Raises :class:`~domain.errors.ConfigError` when the existing rollups were created with a
        different day timezone or schema version: the operator must either keep the original
        ``day_timezone`` or migrate (recreate the rollups and views, then run
        :meth:`reconcile_rollups` over the history).
        """
        for statement in schema.schema_statements(self.day_timezone):
            self._execute(statement)
        expected = schema.rollup_comment(self.day_timezone)
        for row in self._select(schema.rollup_comments_sql(), {}).to_pylist():
            if row["comment"] != expected:
                raise ConfigError(
                    f"rollup table {row['name']} was built as {row['comment']!r}, "
                    f"but this store expects {expected!r}",
                    field="day_timezone",
                )

    # -- writes ----------------------------------------------------------------------------------

    def insert(self, rows: Sequence[UsageRow]) -> int:
        """Store the rows not stored yet; return how many were newly stored.

        Idempotent per ``event_id`` (see the module docstring for the algorithm). On any error
        nothing is acknowledged and the same or a regrouped batch may be retried safely.
        """
        batch = unique_by_event_id(rows)
        if not batch:
            return 0
        with self._write_lock:
            stored = self._stored_event_ids(batch)
            fresh = [row for row in batch if row.event_id not in stored]
            if fresh:
                self._insert_arrow(schema.EVENTS_TABLE, events_table(fresh), insert_settings(fresh))
            if stored:
                # A redelivery: the earlier attempt stored these events, but ClickHouse does not
                # make a view's insert atomic with its source's, so their rollup rows may be
                # missing. Repair just their wallets and days (cheap, and only after failures).
                redelivered = [row for row in batch if row.event_id in stored]
                self._reconcile_rows(redelivered)
        return len(fresh)

    def _stored_event_ids(self, batch: Sequence[UsageRow]) -> set[str]:
        keys = keys_table([(row.wallet_id, row.event_id) for row in batch])
        params = {
            "lo": format_dt64(min(row.occurred_at for row in batch)),
            "hi": format_dt64(max(row.occurred_at for row in batch)),
        }
        found = self._select(stored_ids_sql(self.keys_relation), params, keys)
        return {str(event_id) for event_id in found.column("event_id").to_pylist()}

    def _reconcile_rows(self, rows: Sequence[UsageRow]) -> int:
        days = [row.occurred_at.astimezone(self._zone).date() for row in rows]
        wallets = sorted({row.wallet_id for row in rows})
        return self._reconcile(min(days), max(days) + DAY, wallets)

    def reconcile_rollups(
        self, start_day: date, end_day: date, wallet_id: str | None = None
    ) -> int:
        """Make the rollups agree with the per-event table for local days ``start_day..end_day``.

        Appends signed correction rows for every (wallet, bucket, feature, category, member)
        cell whose rollup sums differ from the per-event truth, and returns how many it
        appended (0 when the rollups were already right, so running it twice is harmless).
        Cells drift only when a crash splits an insert between the per-event table and its
        views; :meth:`insert` already repairs its own redeliveries, and operators run this over
        the days around a crash. Writer-side operation: same single-writer rule as insert.
        """
        first = require_day(start_day, field="start_day")
        last = require_day(end_day, field="end_day")
        if first > last:
            raise InvalidInput("start_day must not be after end_day", field="start_day")
        wallets = None if wallet_id is None else [require_id(wallet_id, field="wallet_id")]
        with self._write_lock:
            return self._reconcile(first, last + DAY, wallets)

    def _reconcile(self, first: date, stop: date, wallets: Sequence[str] | None) -> int:
        keys = None if wallets is None else keys_table([(w, "") for w in wallets])
        relation = None if wallets is None else self.keys_relation
        appended = 0
        for table in schema.ROLLUP_TABLES:
            sql, params = rollup_drift_sql(table, DaySpan(first, stop), self._zone, relation)
            corrections = self._select(sql, params, keys)
            if corrections.num_rows:
                bucket = corrections.column_names[1]
                names = ["wallet_id", bucket, "feature", "category", "member_id"]
                data = corrections.rename_columns([*names, "credits", "events", "quantity"])
                self._insert_arrow(table, data, {"async_insert": "0"})
                appended += int(corrections.num_rows)
        return appended

    # -- reads ------------------------------------------------------------------------------------

    def totals(self, wallet_id: str, start: datetime, end: datetime) -> UsageTotals:
        """Credits spent and events settled by ``wallet_id`` in ``[start, end)``."""
        wallet, plan = self._plan(wallet_id, start, end, use_daily=True)
        if plan.empty:
            return UsageTotals(0, 0)
        sql, params = aggregate_sql(plan, None, self.day_timezone, None)
        (row,) = self._select(sql, {**params, "wallet_id": wallet}).to_pylist()
        return UsageTotals(int(row["credits"] or 0), int(row["events"] or 0))

    def breakdown(
        self, wallet_id: str, start: datetime, end: datetime, by: BreakdownBy
    ) -> list[BreakdownRow]:
        """Usage of ``wallet_id`` in ``[start, end)`` grouped by ``by``.

        ``feature``/``category``/``member`` buckets are sorted by credits, descending (ties by
        key; the ``None`` member, usage not attributed to anyone, sorts first among ties);
        ``day`` (local dates) and ``hour`` (UTC instants of local hour starts) are sorted by
        time. Buckets without usage are omitted.
        """
        if by not in BREAKDOWN_DIMENSIONS:
            raise InvalidInput(f"cannot break usage down by {by!r}", field="by")
        return self._grouped(wallet_id, start, end, by, None)

    def top_features(
        self, wallet_id: str, start: datetime, end: datetime, limit: int = 10
    ) -> list[BreakdownRow]:
        """The ``limit`` features with the most credits in ``[start, end)``, most first."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_TOP_LIMIT:
            raise InvalidInput(f"limit must be an int in [1, {MAX_TOP_LIMIT}]", field="limit")
        return self._grouped(wallet_id, start, end, "feature", limit)

    def daily_series(self, wallet_id: str, start_day: date, end_day: date) -> list[DailyCredits]:
        """Credits per local day from ``start_day`` to ``end_day`` inclusive, zero-filled.

        One entry per day, in order, including days without usage — the shape forecasting
        needs. Read from the daily rollup alone.
        """
        wallet = require_id(wallet_id, field="wallet_id")
        first = require_day(start_day, field="start_day")
        last = require_day(end_day, field="end_day")
        if first > last:
            raise InvalidInput("start_day must not be after end_day", field="start_day")
        plan = RangePlan((), (), DaySpan(first, last + DAY))
        sql, params = aggregate_sql(plan, "day", self.day_timezone, None)
        found = {
            date.fromisoformat(str(row["k"])): int(row["credits"])
            for row in self._select(sql, {**params, "wallet_id": wallet}).to_pylist()
        }
        days = (first + timedelta(days=i) for i in range((last - first).days + 1))
        return [DailyCredits(day, found.get(day, 0)) for day in days]

    def daily_by_category(
        self, wallet_id: str, start_day: date, end_day: date
    ) -> list[DailyCategoryCredits]:
        """Credits per (local day, category) from ``start_day`` to ``end_day`` inclusive.

        Sparse (only cells with usage), ordered by day then category; read from the daily
        rollup alone, so a year of history is a few hundred rows whatever the event volume.
        """
        wallet = require_id(wallet_id, field="wallet_id")
        first = require_day(start_day, field="start_day")
        last = require_day(end_day, field="end_day")
        if first > last:
            raise InvalidInput("start_day must not be after end_day", field="start_day")
        sql = (
            f"SELECT toString(day) AS d, toString(category) AS c, toInt64(sum(credits)) AS credits"
            f" FROM {schema.DAILY_TABLE}"
            f" WHERE wallet_id = {placeholder('wallet_id', 'String')}"
            f" AND day >= {placeholder('lo', 'Date')} AND day <= {placeholder('hi', 'Date')}"
            " GROUP BY d, c HAVING credits != 0 ORDER BY d, c"
        )
        params = {"wallet_id": wallet, "lo": first.isoformat(), "hi": last.isoformat()}
        return [
            DailyCategoryCredits(
                date.fromisoformat(_text(row["d"])), _text(row["c"]), int(row["credits"])
            )
            for row in self._select(sql, params).to_pylist()
        ]

    def count_events(self, wallet_id: str | None = None) -> int:
        """Exact number of stored events (of one wallet, or of all): a plain ``count()``.

        Because the per-event table never holds an event twice, this is also the number of
        distinct events — benchmarks use it to prove nothing was lost or doubled.
        """
        if wallet_id is None:
            sql, params = f"SELECT count() AS n FROM {schema.EVENTS_TABLE}", {}
        else:
            where = f"wallet_id = {placeholder('wallet_id', 'String')}"
            sql = f"SELECT count() AS n FROM {schema.EVENTS_TABLE} WHERE {where}"
            params = {"wallet_id": require_id(wallet_id, field="wallet_id")}
        return int(self._select(sql, params).column("n")[0].as_py())

    def _plan(
        self, wallet_id: str, start: datetime, end: datetime, *, use_daily: bool
    ) -> tuple[str, RangePlan]:
        wallet = require_id(wallet_id, field="wallet_id")
        lo, hi = require_utc(start, field="start"), require_utc(end, field="end")
        if lo > hi:
            raise InvalidInput("start must not be after end", field="start")
        return wallet, plan_range(lo, hi, self._zone, use_daily=use_daily)

    def _grouped(
        self, wallet_id: str, start: datetime, end: datetime, by: str, limit: int | None
    ) -> list[BreakdownRow]:
        # Hour buckets cannot be read off the daily rollup.
        wallet, plan = self._plan(wallet_id, start, end, use_daily=by != "hour")
        if plan.empty:
            return []
        sql, params = aggregate_sql(plan, by, self.day_timezone, limit)
        rows = self._select(sql, {**params, "wallet_id": wallet}).to_pylist()
        return [
            BreakdownRow(
                key=_decode_key(by, row["k"]),
                credits=int(row["credits"]),
                events=int(row["events"]),
                quantity=int(row["quantity"]),
            )
            for row in rows
        ]


def _decode_key(by: str, raw: Any) -> BreakdownKey:
    value = raw.decode() if isinstance(raw, bytes) else raw
    if by == "member":
        return str(value) or None
    if by == "day":
        return date.fromisoformat(str(value))
    if by == "hour":
        return datetime.fromtimestamp(int(value), UTC)
    return str(value)


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)
