"""``python -m settlement``: run one settlement worker until SIGTERM or SIGINT.

Service URLs come from the arguments, else from the environment (``stack.settings``:
``DATABASE_URL``, ``REDIS_URL``, ``KAFKA_BOOTSTRAP``, ``CLICKHOUSE_URL``, ``CREDITS_DATA_DIR``).
Exit status: 0 after a clean stop, 1 when a dependency stayed down (the batch in hand was not
committed; restart the worker), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from domain.errors import CreditsError
from meter.topics import TopicNames
from settlement.worker import SettlementConfig, run_settlement
from stack.metrics import RoleMetrics
from stack.settings import load_settings

_log = logging.getLogger("settlement")


def parse_config(argv: Sequence[str] | None = None) -> tuple[SettlementConfig, int | None]:
    """The worker's config and optional metrics port; exits with status 2 when incomplete."""
    env = load_settings()
    parser = argparse.ArgumentParser(prog="python -m settlement", description=__doc__)
    parser.add_argument("--bootstrap", default=env.kafka_bootstrap)
    parser.add_argument("--redis-url", default=env.redis_url)
    parser.add_argument("--database-url", default=env.database_url)
    parser.add_argument("--clickhouse-url", default=env.clickhouse_url, help="unset: chdb")
    # <data dir>/chdb: where the rest of the stack expects chdb (only settlement opens it).
    parser.add_argument("--data-dir", type=Path, default=env.data_dir / "chdb", help="chdb dir")
    parser.add_argument("--topic-prefix", default="", help="prefix of every topic name")
    parser.add_argument("--group-id", default="settlement")
    parser.add_argument("--key-prefix", default="cdc", help="Redis key prefix of the mirror")
    parser.add_argument("--batch-max", type=int, default=5000)
    parser.add_argument("--batch-ms", type=int, default=200)
    parser.add_argument("--session-timeout-ms", type=int, default=10_000)
    parser.add_argument("--metrics-port", type=int, default=None)
    args = parser.parse_args(argv)
    missing = [
        name for name in ("bootstrap", "redis_url", "database_url") if not getattr(args, name)
    ]
    if missing:
        parser.error(f"missing {', '.join(missing)} (argument or environment)")
    config = SettlementConfig(
        bootstrap=args.bootstrap,
        redis_url=args.redis_url,
        database_url=args.database_url,
        clickhouse_url=args.clickhouse_url or None,
        data_dir=args.data_dir,
        topics=TopicNames.prefixed(args.topic_prefix) if args.topic_prefix else TopicNames(),
        group_id=args.group_id,
        key_prefix=args.key_prefix,
        batch_max=args.batch_max,
        batch_ms=args.batch_ms,
        session_timeout_ms=args.session_timeout_ms,
    )
    return config, args.metrics_port


async def _serve(config: SettlementConfig, metrics_port: int | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    metrics = RoleMetrics("settlement")
    if metrics_port is not None:
        metrics.serve(metrics_port)
    try:
        await run_settlement(config, stop=stop, metrics=metrics)
    except CreditsError as exc:
        _log.error("settlement stopped without committing the batch in hand: %s", exc)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    config, metrics_port = parse_config(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return asyncio.run(_serve(config, metrics_port))


if __name__ == "__main__":
    sys.exit(main())
