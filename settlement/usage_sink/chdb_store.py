"""The embedded backend: chdb (ClickHouse in-process) persisting to a local directory.

chdb holds one embedded engine per process, bound to one data directory: opening a second
directory while a session is open fails, so a process runs at most one chdb usage store (several
sessions on the *same* directory share the engine). Importing chdb boots that engine, which is
why the import happens in the constructor and never at module import time.
"""

from __future__ import annotations

import importlib
import threading
from pathlib import Path
from typing import Any, Final, Protocol

import pyarrow as pa
import pyarrow.ipc

from domain.errors import StateConflict, Unavailable
from settlement.usage_sink.store import BATCH_KEYS, DEFAULT_DAY_TIMEZONE, Params, UsageStore

# chdb binds query parameters from ClickHouse's escaped text format, like the HTTP interface
# does; clickhouse-connect escapes for the server backend, here it is done by hand.
_ESCAPES: Final = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0"})


class _Session(Protocol):
    """The slice of ``chdb.session.Session`` this backend uses (chdb ships no annotations)."""

    def query(self, sql: str, fmt: str = ..., udf_path: str = ..., params: Any = ...) -> Any: ...

    def send_insert(self, query: str, fmt: str = ...) -> Any: ...

    def close(self) -> None: ...


def escape_param(value: str) -> str:
    """``value`` in ClickHouse's escaped format, as chdb's parameter binding expects it."""
    return value.translate(_ESCAPES)


def arrow_stream_bytes(data: pa.Table) -> bytes:
    """``data`` serialised in the Arrow IPC stream format (ClickHouse's ``ArrowStream``)."""
    sink = pa.BufferOutputStream()
    with pyarrow.ipc.new_stream(sink, data.schema) as writer:
        writer.write_table(data)
    return bytes(sink.getvalue().to_pybytes())


class ChdbUsageStore(UsageStore):
    """A :class:`UsageStore` on an on-disk chdb session at ``data_dir``.

    Every call into the session is serialised by an instance lock: chdb documents sessions as
    thread-safe, but concurrent statements on one connection have deadlocked the engine in the
    past (clickhouse-connect's chdb backend serialises them for the same reason). Reads of a
    single process are cheap enough that the lock costs nothing measurable.
    """

    def __init__(self, data_dir: Path, *, day_timezone: str = DEFAULT_DAY_TIMEZONE) -> None:
        super().__init__(day_timezone=day_timezone)
        self.data_dir = data_dir
        self._lock = threading.RLock()
        data_dir.mkdir(parents=True, exist_ok=True)
        session_module = importlib.import_module("chdb.session")
        try:
            self._session: _Session | None = session_module.Session(str(data_dir))
        except RuntimeError as exc:
            if "already initialized" not in str(exc):
                raise _unavailable(exc) from exc
            raise StateConflict(
                f"cannot open chdb at {data_dir}: {exc}. chdb runs one data directory per "
                "process; close the other usage store or point both at the same directory",
                data_dir=str(data_dir),
            ) from exc

    @property
    def keys_relation(self) -> str:
        # chdb's Python() table function resolves this name in the calling frames; _select
        # holds the Arrow table in a parameter of exactly this name.
        return f"Python({BATCH_KEYS})"

    def _live(self) -> _Session:
        if self._session is None:
            raise StateConflict("the chdb usage store is closed")
        return self._session

    def _execute(self, sql: str) -> None:
        with self._lock:
            try:
                self._live().query(sql, "CSV")
            except RuntimeError as exc:
                raise _unavailable(exc) from exc

    def _select(self, sql: str, params: Params, batch_keys: pa.Table | None = None) -> pa.Table:
        # ``batch_keys`` is not referenced here on purpose: the statement's Python(batch_keys)
        # reads it by name from this frame while the query runs.
        escaped = {name: escape_param(value) for name, value in params.items()}
        with self._lock:
            try:
                return self._live().query(sql, "ArrowTable", params=escaped)
            except RuntimeError as exc:
                raise _unavailable(exc) from exc

    def _insert_arrow(self, table: str, data: pa.Table, settings: Params) -> None:
        columns = ", ".join(data.column_names)
        clause = ", ".join(f"{name} = '{escape_sql(value)}'" for name, value in settings.items())
        statement = f"INSERT INTO {table} ({columns})" + (f" SETTINGS {clause}" if clause else "")
        payload = arrow_stream_bytes(data)
        with self._lock:
            try:
                with self._live().send_insert(statement, "ArrowStream") as inserter:
                    inserter.append(payload)
                    inserter.finish()
            except RuntimeError as exc:
                raise _unavailable(exc) from exc

    def close(self) -> None:
        with self._lock:
            session, self._session = self._session, None
            if session is not None:
                session.close()


def escape_sql(value: str) -> str:
    """``value`` for use inside a single-quoted SQL string literal."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _unavailable(exc: BaseException) -> Unavailable:
    return Unavailable(
        f"chdb usage store failed: {exc}. Nothing was acknowledged; the operation may be "
        "retried (inserts are idempotent). If it persists, check disk space and permissions "
        "of the data directory.",
    )
