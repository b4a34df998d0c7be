"""``credits bench ...``: benchmarks that print measured figures, JSON on the last line."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import psycopg

from cli.common import LOCAL_SERVER_URL, run, run_fast
from domain.errors import InvalidInput
from settlement.ledger import bench
from settlement.ledger.scratch import scratch_database


def register(subparsers: Any) -> None:
    group = subparsers.add_parser("bench", help="benchmarks (JSON on the last line)")
    commands = group.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    ledger = commands.add_parser(
        "ledger", help="one transaction per usage event vs batched settlement"
    )
    _server_url(ledger)
    ledger.add_argument("--events", type=int, default=10_000)
    ledger.add_argument("--batch-size", type=int, default=5_000)
    ledger.add_argument("--wallets", type=int, default=100)
    ledger.set_defaults(handler=_bench_ledger)

    pipeline = commands.add_parser(
        "pipeline", help="events produced -> ledger and ClickHouse, vs the Kafka ceiling"
    )
    _server_url(pipeline)
    _redis_url(pipeline)
    pipeline.add_argument("--events", type=int, default=50_000)
    pipeline.add_argument("--per-message-events", type=int, default=2_000)
    pipeline.add_argument("--wallets", type=int, default=1_000)
    pipeline.add_argument("--partitions", type=int, default=8)
    pipeline.add_argument(
        "--lag-events", type=int, default=10_000, help="events offered at --lag-rate for lag"
    )
    pipeline.add_argument(
        "--lag-rate", type=float, default=5_000.0, help="steady offered rate (events/s) for lag"
    )
    pipeline.set_defaults(handler=_bench_pipeline)

    api = commands.add_parser(
        "api",
        help="POST /wallet/consume vs a trivial endpoint: latency at an offered rate, then "
        "throughput at saturation",
    )
    _server_url(api)
    _redis_url(api)
    api.add_argument("--rate", type=float, default=1000.0, help="offered requests per second")
    api.add_argument("--seconds", type=float, default=10.0, help="duration of each phase")
    api.add_argument("--wallets", type=int, default=100, help="funded wallets (plus a tight one)")
    api.add_argument(
        "--api-processes", type=int, default=1, help="API processes sharing the port (1-8)"
    )
    api.add_argument(
        "--saturation-seconds",
        type=float,
        default=5.0,
        help="closed-loop (max throughput) time per endpoint, 0-120 seconds, in alternating "
        "1 s slices of each; 0 skips it",
    )
    api.add_argument(
        "--saturation-connections",
        type=int,
        default=32,
        help="connections of the saturation phase, each with one request in flight (1-512)",
    )
    api.set_defaults(handler=_bench_api)

    produce = commands.add_parser(
        "produce",
        help="single-record publishes at an offered rate: direct to the leader vs aiokafka",
    )
    produce.add_argument("--rate", type=float, default=1000.0, help="records per second")
    produce.add_argument(
        "--seconds", type=float, default=8.0, help="time per producer (alternating rounds)"
    )
    produce.add_argument("--rounds", type=int, default=4, help="alternating rounds (1-50)")
    produce.set_defaults(handler=_bench_produce)


def _server_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server-url",
        default=os.environ.get("CREDITS_BENCH_PG_URL", LOCAL_SERVER_URL),
        help="a PostgreSQL server where scratch databases may be created and dropped",
    )


def _redis_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("CREDITS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/8"),
        help="Redis for the wallet mirror (and idempotency records), keys under a run prefix",
    )


def _bench_ledger(args: argparse.Namespace) -> int:
    if not 1 <= args.events <= 1_000_000 or not 1 <= args.batch_size <= 50_000:
        raise InvalidInput("--events must be 1..1,000,000 and --batch-size 1..50,000")
    if not 1 <= args.wallets <= 10_000:
        raise InvalidInput("--wallets must be 1..10,000")
    events = bench.make_events(args.events, args.wallets)
    funding = 10 * sum(e.credits for e in events)  # every wallet can afford every event

    async def go() -> dict[str, Any]:
        with (
            scratch_database(args.server_url) as naive_url,
            scratch_database(args.server_url) as batched_url,
        ):
            for url in (naive_url, batched_url):
                await bench._fund(url, args.wallets, funding)
            async with await psycopg.AsyncConnection.connect(naive_url) as conn:
                cur = await conn.execute("SHOW synchronous_commit")
                row = await cur.fetchone()
            print(f"naive: {len(events)} events, one transaction each ...", flush=True)
            naive = await bench.run_naive(naive_url, events)
            print(f"batched: {len(events)} events in batches of {args.batch_size} ...", flush=True)
            batched = await bench.run_batched(batched_url, events, args.batch_size)
        return {
            "events": len(events),
            "batch_size": args.batch_size,
            "wallets": args.wallets,
            "synchronous_commit": row[0] if row else None,
            "naive_seconds": round(naive.seconds, 3),
            "batched_seconds": round(batched.seconds, 3),
            "naive_verified": naive.verified,
            "batched_verified": batched.verified,
            "naive_postings_per_s": round(naive.postings_per_s, 1),
            "batched_postings_per_s": round(batched.postings_per_s, 1),
            "ratio": round(batched.postings_per_s / naive.postings_per_s, 2),
        }

    result = run(go())
    print(json.dumps(result))
    return 0 if result["naive_verified"] and result["batched_verified"] else 1


def _bench_pipeline(args: argparse.Namespace) -> int:
    from stack import pipeline_bench  # noqa: PLC0415 -- the streaming stack, only when asked

    if not 1_000 <= args.events <= 1_000_000 or not 100 <= args.per_message_events <= 100_000:
        raise InvalidInput("--events must be 1,000..1,000,000, --per-message-events 100..100,000")
    if not 10 <= args.wallets <= 10_000 or not 1 <= args.partitions <= 64:
        raise InvalidInput("--wallets must be 10..10,000 and --partitions 1..64")
    if not 100 <= args.lag_events <= 1_000_000 or not 100 <= args.lag_rate <= 100_000:
        raise InvalidInput("--lag-events must be 100..1,000,000 and --lag-rate 100..100,000")
    plan = pipeline_bench.BenchPlan(
        events=args.events,
        per_message_events=args.per_message_events,
        wallets=args.wallets,
        partitions=args.partitions,
        server_url=args.server_url,
        redis_url=args.redis_url,
        lag_events=args.lag_events,
        lag_rate=args.lag_rate,
    )
    result = run(pipeline_bench.run(plan))
    print(json.dumps(result))
    return 0 if result["lost"] == 0 and result["duplicated"] == 0 else 1


def _bench_api(args: argparse.Namespace) -> int:
    from stack import api_bench  # noqa: PLC0415 -- starts an API process, only when asked

    if not 1 <= args.rate <= 20_000 or not 1 <= args.seconds <= 600:
        raise InvalidInput("--rate must be 1..20,000 and --seconds 1..600")
    if not 1 <= args.wallets <= 1_000 or not 1 <= args.api_processes <= 8:
        raise InvalidInput("--wallets must be 1..1,000 and --api-processes 1..8")
    if not 0 <= args.saturation_seconds <= 120 or not 1 <= args.saturation_connections <= 512:
        raise InvalidInput(
            "--saturation-seconds must be 0..120 (0 skips the saturation phase) "
            "and --saturation-connections 1..512"
        )
    plan = api_bench.ApiBenchPlan(
        rate=args.rate,
        seconds=args.seconds,
        wallets=args.wallets,
        server_url=args.server_url,
        redis_url=args.redis_url,
        api_processes=args.api_processes,
        saturation_s=args.saturation_seconds,
        saturation_connections=args.saturation_connections,
    )
    result = run_fast(api_bench.run_api_bench(plan))
    print(json.dumps(result))
    return 0 if result["over_authorized"] == 0 and result["balance_mismatches"] == 0 else 1


def _bench_produce(args: argparse.Namespace) -> int:
    from stack import produce_bench  # noqa: PLC0415 -- starts a broker, only when asked

    if not 1 <= args.rate <= 20_000 or not 0.1 <= args.seconds <= 600:
        raise InvalidInput("--rate must be 1..20,000 and --seconds 0.1..600")
    if not 1 <= args.rounds <= 50:
        raise InvalidInput("--rounds must be 1..50")
    plan = produce_bench.ProduceBenchPlan(args.rate, args.seconds, args.rounds)
    # Every record is acknowledged or the run fails (PublishFailed): nothing to check after.
    print(json.dumps(run_fast(produce_bench.run_produce_bench(plan))))
    return 0
