"""``credits worker aggregator|settlement``: one pipeline role as its own process.

These are the children ``credits up`` supervises; in production each runs (and scales) on its
own. Every URL comes from the environment (``DATABASE_URL``, ``REDIS_URL``,
``KAFKA_BOOTSTRAP``, ``CLICKHOUSE_URL``; see ``stack.settings``) or the matching flag. A worker
never starts embedded services: without a URL it refuses to run and says which one is missing.

SIGINT/SIGTERM finish the batch in flight and exit 0. Metrics are served on
``--metrics-port`` (0: a free port, logged).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from typing import Any

from cli.common import run
from domain.errors import InvalidInput
from stack.metrics import RoleMetrics
from stack.role_process import run_role
from stack.settings import Settings, load_settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def register(subparsers: Any) -> None:
    worker = subparsers.add_parser(
        "worker", help="run one pipeline role in the foreground (credits up supervises these)"
    )
    roles = worker.add_subparsers(dest="role", required=True, metavar="ROLE")
    aggregator = roles.add_parser(
        "aggregator", help="usage.events -> authorise in Redis -> usage.authorized/rejected"
    )
    _add_common_options(aggregator)
    aggregator.set_defaults(handler=_aggregator)
    settlement = roles.add_parser(
        "settlement", help="usage.authorized -> ledger -> Redis settle -> ClickHouse"
    )
    _add_common_options(settlement)
    settlement.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="stack data dir; chdb keeps its files in <data dir>/chdb unless CLICKHOUSE_URL "
        "is set (default: $CREDITS_DATA_DIR or ./.credits)",
    )
    settlement.add_argument(
        "--clickhouse-url", default=None, help="ClickHouse server (default: $CLICKHOUSE_URL)"
    )
    settlement.add_argument(
        "--query-port",
        type=int,
        default=None,
        help="serve read-only usage queries for the API on 127.0.0.1:PORT (0: a free port; "
        "default: off). The embedded stack needs it: only this process can open chdb",
    )
    settlement.set_defaults(handler=_settlement)


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap", default=None, help="Kafka (default: $KAFKA_BOOTSTRAP)")
    parser.add_argument("--redis-url", default=None, help="Redis (default: $REDIS_URL)")
    parser.add_argument("--database-url", default=None, help="PostgreSQL (default: $DATABASE_URL)")
    parser.add_argument(
        "--metrics-port", type=int, default=0, help="Prometheus port (default 0: a free port)"
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        default=None,
        help="write {role, pid, metrics_port} here once serving (used by credits up)",
    )


def _urls(args: argparse.Namespace, settings: Settings) -> tuple[str, str, str]:
    """(bootstrap, redis_url, database_url): flags first, then the environment."""
    chosen: dict[str, str] = {
        "KAFKA_BOOTSTRAP": args.bootstrap or settings.kafka_bootstrap or "",
        "REDIS_URL": args.redis_url or settings.redis_url or "",
        "DATABASE_URL": args.database_url or settings.database_url or "",
    }
    missing = [name for name, value in chosen.items() if not value]
    if missing:
        raise InvalidInput(
            f"the {args.role} worker needs {', '.join(missing)}: set the variable(s) or pass "
            "the matching flag (credits up starts embedded services and passes their URLs)",
            missing=missing,
        )
    return chosen["KAFKA_BOOTSTRAP"], chosen["REDIS_URL"], chosen["DATABASE_URL"]


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    # aiokafka narrates every group join at INFO; keep its warnings, drop the chatter.
    logging.getLogger("aiokafka").setLevel(logging.WARNING)


def _aggregator(args: argparse.Namespace) -> int:
    _setup_logging()
    settings = load_settings()
    bootstrap, redis_url, database_url = _urls(args, settings)
    # Imported here, not at the top: it pulls in the streaming stack, which every other
    # command (and `credits --help`) should not pay for.
    from aggregator.worker import AggregatorConfig, run_aggregator  # noqa: PLC0415

    config = AggregatorConfig(
        bootstrap=bootstrap,
        redis_url=redis_url,
        database_url=database_url,
        group_id=settings.aggregator_group,
        key_prefix=settings.key_prefix,
        batch_max=settings.aggregator_batch,
    )

    async def main(stop: asyncio.Event, metrics: RoleMetrics) -> None:
        await run_aggregator(config, stop=stop, metrics=metrics)

    return run(
        run_role("aggregator", main, metrics_port=args.metrics_port, ready_file=args.ready_file)
    )


def _settlement(args: argparse.Namespace) -> int:
    _setup_logging()
    settings = load_settings()
    bootstrap, redis_url, database_url = _urls(args, settings)
    from settlement.worker import SettlementConfig, run_settlement  # noqa: PLC0415 -- see above

    config = SettlementConfig(
        bootstrap=bootstrap,
        redis_url=redis_url,
        database_url=database_url,
        clickhouse_url=args.clickhouse_url or settings.clickhouse_url or None,
        data_dir=settings.chdb_dir(args.data_dir),
        group_id=settings.settlement_group,
        key_prefix=settings.key_prefix,
        batch_max=settings.settlement_batch,
        query_port=args.query_port,
    )

    async def main(stop: asyncio.Event, metrics: RoleMetrics) -> None:
        await run_settlement(config, stop=stop, metrics=metrics)

    return run(
        run_role("settlement", main, metrics_port=args.metrics_port, ready_file=args.ready_file)
    )
