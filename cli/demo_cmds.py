"""``credits demo``: realistic live traffic for the demo community (see ``stack.demo_traffic``).

Needs a running pipeline: ``credits up`` starts one and prints its ``KAFKA_BOOTSTRAP``. The run
is bounded by ``--duration`` and/or ``--count`` and stops early on Ctrl-C or SIGTERM; it prints
one summary line (and writes it as JSON to ``--report-file`` when asked).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from typing import Any

from cli.common import run
from domain.errors import InvalidInput
from stack.demo_history import DEMO_WALLET
from stack.demo_traffic import TrafficConfig, TrafficReport, new_run_id, run_traffic
from stack.metrics import RoleMetrics
from stack.role_process import run_role
from stack.settings import load_settings


def register(subparsers: Any) -> None:
    demo = subparsers.add_parser(
        "demo", help="drive realistic usage traffic for the demo community (needs a stack)"
    )
    demo.add_argument("--wallet", default=DEMO_WALLET, help=f"wallet id (default {DEMO_WALLET})")
    demo.add_argument(
        "--rate", type=float, default=5.0, help="mean events per second over a demo day (5)"
    )
    demo.add_argument(
        "--duration", type=float, default=60.0, help="stop after this many seconds (60)"
    )
    demo.add_argument("--count", type=int, default=None, help="stop after this many messages")
    demo.add_argument("--bootstrap", default=None, help="Kafka (default: $KAFKA_BOOTSTRAP)")
    demo.add_argument("--seed", type=int, default=None, help="random seed (repeatable traffic)")
    demo.add_argument(
        "--day-seconds",
        type=float,
        default=240.0,
        help="length of one compressed demo day, for the diurnal curve (240)",
    )
    demo.add_argument("--run-id", default=None, help="id put in every event id (default: fresh)")
    demo.add_argument(
        "--metrics-port", type=int, default=0, help="Prometheus port (default 0: a free port)"
    )
    demo.add_argument("--ready-file", type=Path, default=None, help=argparse.SUPPRESS)
    demo.add_argument(
        "--report-file", type=Path, default=None, help="also write the summary here as JSON"
    )
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    settings = load_settings()
    bootstrap = args.bootstrap or settings.kafka_bootstrap
    if not bootstrap:
        raise InvalidInput(
            "no Kafka: pass --bootstrap or set KAFKA_BOOTSTRAP (credits up prints it)"
        )
    config = TrafficConfig(
        wallet_id=args.wallet,
        rate=args.rate,
        duration_s=args.duration if args.duration > 0 else None,
        count=args.count,
        run_id=args.run_id or new_run_id(),
        seed=args.seed,
        day_s=args.day_seconds,
        timezone=settings.timezone,
    )
    reports: list[TrafficReport] = []

    async def main(stop: asyncio.Event, metrics: RoleMetrics) -> None:
        reports.append(await run_traffic(config, bootstrap, stop=stop, metrics=metrics))

    code = run(run_role("demo", main, metrics_port=args.metrics_port, ready_file=args.ready_file))
    for report in reports:
        print(report.summary(), flush=True)
        if args.report_file is not None:
            args.report_file.write_text(report.to_json())
    return code
