"""``credits up``: the whole stack on embedded defaults, one command (see ``stack.stack_runner``).

PostgreSQL, Redis, the Kafka-compatible broker (Tansu) and ClickHouse (chdb) are embedded unless
``DATABASE_URL``, ``REDIS_URL``, ``KAFKA_BOOTSTRAP`` or ``CLICKHOUSE_URL`` point elsewhere; the
aggregator and settlement workers (and the demo traffic generator) run as supervised children.
It prints what runs where and keeps running until Ctrl-C, which drains the pipeline and then
stops everything in reverse order. ``--once`` is the self-check the tests use.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from cli.common import run
from domain.errors import InvalidInput
from stack.settings import load_settings
from stack.stack_runner import StackOptions, StackRunner


def register(subparsers: Any) -> None:
    up = subparsers.add_parser(
        "up", help="run the whole stack on embedded defaults (Ctrl-C drains, then stops it)"
    )
    up.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where embedded services keep their files (default: $CREDITS_DATA_DIR or ./.credits)",
    )
    up.add_argument(
        "--port", type=int, default=8000, help="the API's port (default 8000; 0: a free port)"
    )
    up.add_argument("--no-demo", action="store_true", help="skip the demo community wallet")
    up.add_argument(
        "--demo-traffic",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="drive live demo traffic (default: on; needs the demo wallet)",
    )
    up.add_argument(
        "--traffic-rate",
        type=float,
        default=2.0,
        help="mean events per second of the demo traffic (default 2)",
    )
    up.add_argument(
        "--once",
        action="store_true",
        help="start everything, settle a burst of demo traffic, verify, print, then stop",
    )
    up.set_defaults(handler=_up)


def _up(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.WARNING)  # group-join chatter
    if not 0 <= args.port <= 65535:
        raise InvalidInput(f"--port must be 0..65535, got {args.port}", field="port")
    if args.traffic_rate <= 0:
        raise InvalidInput("--traffic-rate must be > 0 events per second", field="traffic_rate")
    settings = load_settings()
    options = StackOptions(
        data_dir=args.data_dir or settings.data_dir,
        api_port=args.port,
        demo_history=not args.no_demo,
        demo_traffic=args.demo_traffic and not args.no_demo,
        once=args.once,
        traffic_rate=args.traffic_rate,
    )
    return run(StackRunner(settings, options).run())
