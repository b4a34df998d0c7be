"""Shared CLI plumbing: resolving the database URL and running coroutines."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

from domain.errors import InvalidInput

T = TypeVar("T")

LOCAL_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def add_database_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help="PostgreSQL URL (default: $DATABASE_URL)",
    )


def require_database_url(args: argparse.Namespace) -> str:
    url: str | None = args.database_url
    if not url:
        raise InvalidInput(
            "no database: pass --database-url or set DATABASE_URL "
            "(`credits up` prints the URL of the embedded one)"
        )
    return url


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def run_fast(coro: Coroutine[Any, Any, T]) -> T:
    """:func:`run` on uvloop when it is installed (a measurably cheaper event loop per request:
    the API server, and the benchmark's load generator that shares its cores)."""
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return run(coro)
    return uvloop.run(coro)
