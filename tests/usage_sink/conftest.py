"""Backends for the usage-sink contract suite.

The parameter list is built from the environment, so a run reports only tests that really ran:
chdb always, a ClickHouse server as well when ``CLICKHOUSE_URL`` is set (each test then works
in a database of its own, dropped afterwards).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from settlement.usage_sink import UsageRow, UsageStore, open_usage_store
from settlement.usage_sink.server_store import connect_client

SERVER_URL = os.environ.get("CLICKHOUSE_URL", "")
BACKENDS = ("chdb", "server") if SERVER_URL else ("chdb",)

# 2024-03-01 00:00 IST; the IST day boundary sits at 18:30 UTC.
IST_MIDNIGHT = datetime(2024, 2, 29, 18, 30, tzinfo=UTC)


@dataclass
class Backend:
    """Opens stores on one test's private location (a chdb directory or a server database)."""

    name: str
    data_dir: Path
    url: str | None
    opened: list[UsageStore] = field(default_factory=list)

    def open(self, *, day_timezone: str = "Asia/Kolkata", schema: bool = True) -> UsageStore:
        store = open_usage_store(self.url, self.data_dir, day_timezone=day_timezone)
        self.opened.append(store)
        if schema:
            store.ensure_schema()
        return store

    def close_all(self) -> None:
        for store in self.opened:
            store.close()


def _with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "chdb":
        chdb_backend = Backend("chdb", tmp_path / "chdb", None)
        yield chdb_backend
        chdb_backend.close_all()
        return
    database = f"usage_sink_test_{uuid.uuid4().hex[:12]}"
    admin = connect_client(SERVER_URL)
    admin.command(f"CREATE DATABASE {database}")
    server_backend = Backend("server", tmp_path, _with_database(SERVER_URL, database))
    try:
        yield server_backend
    finally:
        server_backend.close_all()
        admin.command(f"DROP DATABASE IF EXISTS {database}")
        admin.close()


@pytest.fixture
def store(backend: Backend) -> UsageStore:
    return backend.open()


def usage(
    event_id: str,
    occurred_at: datetime,
    *,
    wallet_id: str = "w1",
    credits: int = 10,
    quantity: int = 1,
    feature: str = "ai.summary",
    category: str = "ai",
    member_id: str | None = "m1",
    settled_at: datetime | None = None,
) -> UsageRow:
    """A valid row with overridable fields (settled two seconds after it occurred)."""
    return UsageRow(
        event_id=event_id,
        wallet_id=wallet_id,
        member_id=member_id,
        feature=feature,
        category=category,
        quantity=quantity,
        credits=credits,
        pricing_version=1,
        occurred_at=occurred_at,
        settled_at=settled_at or occurred_at + timedelta(seconds=2),
    )
