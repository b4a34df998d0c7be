"""``credits up``: the whole stack on embedded defaults, one command.

At this stage the stack is the ledger: PostgreSQL (embedded unless ``DATABASE_URL`` is set),
migrations, and a demo community wallet with a month of history. It prints what runs where and
keeps the embedded services up until Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from typing import Any

import psycopg

from cli.common import run
from domain.clock import SystemClock
from domain.pricing import load_catalogue
from settlement.ledger.db import open_pool
from settlement.ledger.migrate import upgrade
from settlement.ledger.verify import verify_ledger
from stack.demo_history import DemoSummary, seed_demo
from stack.embedded_postgres import EmbeddedPostgres
from stack.settings import load_settings

log = logging.getLogger("credits.up")


def register(subparsers: Any) -> None:
    up = subparsers.add_parser("up", help="run the stack on embedded defaults (Ctrl-C stops it)")
    up.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where embedded services keep their files (default: $CREDITS_DATA_DIR or ./.credits)",
    )
    up.add_argument("--port", type=int, default=8000, help="the API's port (once the API exists)")
    up.add_argument("--no-demo", action="store_true", help="skip the demo community wallet")
    up.add_argument("--once", action="store_true", help="set everything up, verify, then exit")
    up.set_defaults(handler=_up)


def _up(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = load_settings()
    data_dir: Path = (args.data_dir or settings.data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    embedded = None
    if settings.database_url:
        database_url = settings.database_url
        log.info("PostgreSQL: using DATABASE_URL")
    else:
        embedded = EmbeddedPostgres(data_dir)
        database_url = embedded.start()
    try:
        upgrade(database_url)
        demo = None if args.no_demo else run(_seed(database_url))
        verified = run(_verify(database_url))
        _banner(database_url, data_dir, demo, verified)
        if not args.once:
            _wait_for_interrupt()
    finally:
        if embedded is not None:
            embedded.stop()
            log.info("embedded PostgreSQL stopped")
    return 0 if verified else 1


async def _seed(database_url: str) -> DemoSummary:
    pool = await open_pool(database_url, max_size=2)
    try:
        return await seed_demo(pool, load_catalogue(), SystemClock().now())
    finally:
        await pool.close()


async def _verify(database_url: str) -> bool:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        report = await verify_ledger(conn)
    log.info(report.summary())
    return report.ok


def _banner(url: str, data_dir: Path, demo: DemoSummary | None, verified: bool) -> None:
    lines = [
        "",
        "CommDesk Credits is up",
        f"  PostgreSQL   {url}",
        f"  data dir     {data_dir}",
        f"  ledger       {'verified' if verified else 'VERIFY FAILED'}",
    ]
    if demo:
        lines += [
            f"  demo wallet  {demo.wallet_id} ({demo.transactions} transactions, "
            f"members: {', '.join(demo.members)})",
            "",
            "Try:",
            f"  export DATABASE_URL='{url}'",
            f"  credits wallet show {demo.wallet_id}",
            f"  credits wallet transactions {demo.wallet_id} --limit 10",
            "  credits ledger verify",
        ]
    print("\n".join(lines), flush=True)


def _wait_for_interrupt() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print("Press Ctrl-C to stop.", flush=True)
    stop.wait()
