"""Throw-away databases on a PostgreSQL server (benchmarks and tests), dropped afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from settlement.ledger.migrate import upgrade


def sibling_url(server_url: str, database: str) -> str:
    """``server_url`` pointing at ``database`` instead (query parameters kept)."""
    base, _, rest = server_url.rpartition("/")
    _, question, query = rest.partition("?")
    return f"{base}/{database}{question}{query}"


@contextmanager
def scratch_database(
    server_url: str, *, template: str | None = None, migrate: bool = True
) -> Iterator[str]:
    """Create a uniquely named database (migrated, or cloned from ``template``); yield its URL."""
    name = f"credits_scratch_{uuid.uuid4().hex[:12]}"
    clone = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{clone}')
    try:
        url = sibling_url(server_url, name)
        if migrate and not template:
            upgrade(url)
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
