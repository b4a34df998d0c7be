"""``credits forecast backtest``: how good the spend forecast is, measured on generated history.

Prints a human summary, then the figures as JSON on the last line (like ``credits bench``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from domain.forecast_backtest import MAX_HISTORIES, run_backtest


def register(subparsers: Any) -> None:
    group = subparsers.add_parser("forecast", help="spend forecast tools (JSON on the last line)")
    commands = group.add_subparsers(dest="forecast_command", required=True, metavar="FORECAST")
    backtest = commands.add_parser(
        "backtest", help="forecast generated wallets at many cut-offs and score the errors"
    )
    backtest.add_argument("--seed", type=int, default=7, help="generator seed (default 7)")
    backtest.add_argument(
        "--histories",
        type=int,
        default=200,
        help=f"generated wallets, each ~9 months of daily usage (1..{MAX_HISTORIES}, default 200)",
    )
    backtest.set_defaults(handler=_backtest)


def _backtest(args: argparse.Namespace) -> int:
    report = run_backtest(seed=args.seed, histories=args.histories)
    print(f"method              {report.method} ({report.interval_percent}% interval)")
    print(f"forecasts           {report.forecasts} over {report.histories} generated wallets")
    print(f"MAPE                {report.mape_percent}% (median {report.median_ape_percent}%)")
    print(f"naive MAPE          {report.naive_mape_percent}% (last 28 days scaled to the month)")
    print(f"interval coverage   {report.coverage_percent}% (target {report.interval_percent}%)")
    print(f"category coverage   {report.category_coverage_percent}%")
    print(f"mean interval width {report.mean_interval_width_percent}% of the actual spend")
    print(json.dumps(report.as_dict(), sort_keys=True))
    return 0
