"""``credits bench pipeline``: usage events produced -> authorised -> in the ledger and ClickHouse.

One run, one Tansu broker, one scratch database, one Redis key space:

1. the Kafka ceiling: a bare aiokafka produce -> consume loop over the same payloads;
2. the pipeline, batched: the real ``credits worker aggregator`` and ``credits worker
   settlement`` processes (one per core), warmed up, then ``events`` produced; the clock
   stops when the settlement worker reports every event settled (ledger and ClickHouse);
   then, on the same workers, ``lag_events`` offered at a steady ``lag_rate`` (below
   saturation) for the steady-state lag;
3. the same pipeline per-message (batch size 1), restarted on the same consumer groups.

Events spread over many wallets and members with uncapped features, so rate limits and daily
caps refuse nothing and every event must come out the other end: ``lost`` and ``duplicated``
are counted exactly from the ledger and ClickHouse afterwards. Lag is per event, from its
production (``produced_ms`` in its metadata) to its ledger row: ``lag_*`` at the steady
offered rate, ``burst_lag_*`` for the saturating burst (there it is mostly queueing: the
burst is produced far faster than any pipeline drains it, so it grows with ``events``).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import psutil
import psycopg
import redis

from aggregator.gc_tuning import tuned_for_batches
from meter.producer import UsageProducer
from meter.schema import UsageEvent, encode, make_usage_event
from meter.topics import TopicNames, wallet_key
from settlement.ledger.scratch import scratch_database
from settlement.usage_sink.factory import open_usage_store
from stack.kafka_ceiling import kafka_ceiling
from stack.ledger_funding import fund_wallets
from stack.redis_cleanup import drop_key_space
from stack.role_process import read_ready_file
from stack.tansu import TansuBroker, ensure_topics

FEATURES = ("api.basic_request", "queue.email_send", "webhooks.trigger", "api.heavy_query")
SETTLED = re.compile(r'^credits_settled_events_total\{[^}]*result="posted"[^}]*\} ([0-9.e+]+)$')


@dataclass(frozen=True, slots=True)
class BenchPlan:
    events: int
    per_message_events: int
    wallets: int
    partitions: int
    server_url: str
    redis_url: str
    lag_events: int = 10_000
    lag_rate: float = 5_000.0


@dataclass(frozen=True, slots=True)
class SideResult:
    events: int
    seconds: float
    produce_seconds: float  # of ``seconds``, until the last event was acknowledged
    cpu_seconds: dict[str, float]  # per process (or service) over the timed window

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds

    def cpu_us_per_event(self) -> dict[str, float]:
        return {name: round(s * 1e6 / self.events, 1) for name, s in self.cpu_seconds.items()}


def make_events(prefix: str, count: int, wallets: int) -> list[UsageEvent]:
    now = datetime.now(UTC)
    return [
        make_usage_event(
            event_id=f"{prefix}-{i:08d}",
            wallet_id=f"bench_w{i % wallets:04d}",
            member_id=f"m{(i // wallets) % 50}",
            feature=FEATURES[i % len(FEATURES)],
            quantity=1,
            occurred_at=now,
        )
        for i in range(count)
    ]


class CpuMeter:
    """CPU seconds (user + system) each part of the pipeline spends over the timed window.

    Robust to other load on the machine, unlike wall-clock throughput: a stage's CPU per event
    is what it costs wherever it runs. ``postgres`` sums the backends of the scratch database;
    ``redis`` is the whole server's, shared with anything else using it.
    """

    def __init__(self, workers: dict[str, int], db_name: str, redis_url: str) -> None:
        me = psutil.Process()
        self._processes = {name: psutil.Process(pid) for name, pid in workers.items()}
        self._processes["bench"] = me
        for child in me.children():
            if "tansu" in child.name():
                self._processes["tansu"] = child
        self._db_name = db_name
        self._redis_url = redis_url
        self._start: dict[str, float] = {}
        self._start_backends: dict[int, float] = {}

    def start(self) -> None:
        self._start, self._start_backends = self._sample(), self._backends()

    def stop(self) -> dict[str, float]:
        end, backends = self._sample(), self._backends()
        spent = {name: end[name] - self._start.get(name, 0.0) for name in end}
        before = self._start_backends
        spent["postgres"] = sum(s - before.get(pid, 0.0) for pid, s in backends.items())
        return {name: round(s, 3) for name, s in spent.items()}

    def _sample(self) -> dict[str, float]:
        seconds = {name: _cpu(p) for name, p in self._processes.items()}
        with redis.Redis.from_url(self._redis_url) as client:
            info = client.info("cpu")
        seconds["redis"] = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        return seconds

    def _backends(self) -> dict[int, float]:
        found: dict[int, float] = {}
        for process in psutil.process_iter(["cmdline"]):
            cmdline = process.info["cmdline"] or []
            if cmdline and cmdline[0].startswith("postgres:") and self._db_name in cmdline[0]:
                found[process.pid] = _cpu(process)
        return found


def _cpu(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


async def run(plan: BenchPlan) -> dict[str, Any]:
    topics = TopicNames()
    with tempfile.TemporaryDirectory(prefix="credits-bench-") as tmp:
        data = Path(tmp)
        async with TansuBroker(data / "tansu") as broker:
            await ensure_topics(broker.bootstrap, topics.all(), plan.partitions)
            with scratch_database(plan.server_url) as db_url:
                await fund_wallets(db_url, plan.wallets, 10**9)
                ceiling_events = make_events("ceiling", plan.events, plan.wallets)
                ceiling = await kafka_ceiling(
                    broker.bootstrap,
                    [(wallet_key(e.wallet_id), encode(e)) for e in ceiling_events],
                    plan.partitions,
                )
                env = _worker_env(broker.bootstrap, db_url, plan.redis_url, data)
                try:
                    batched = await _side(
                        env, data, "batched", plan.events, plan.wallets, 0,
                        paced=(plan.lag_events, plan.lag_rate),
                    )  # fmt: skip
                    per_message = await _side(
                        env, data, "single", plan.per_message_events, plan.wallets, 1
                    )
                finally:
                    await drop_key_space(plan.redis_url, env["CREDITS_KEY_PREFIX"])
                counts = await _ledger_counts(db_url)
                burst_p50, burst_p99 = await _lag_ms(db_url, "batched-")
                lag_p50, lag_p99 = await _lag_ms(db_url, "paced-")
                stored = await asyncio.to_thread(_clickhouse_count, data / "chdb")
    expected = plan.events + plan.per_message_events + plan.lag_events + 2 * WARMUP
    return {
        "events": plan.events,
        "events_per_s": round(batched.events_per_s, 1),
        "lost": expected - counts[0],
        "duplicated": counts[1] - counts[0] + max(0, stored - expected),
        "clickhouse_events": stored,
        "ledger_events": counts[0],
        "lag_p50_ms": lag_p50,
        "lag_p99_ms": lag_p99,
        "lag_offered_events_per_s": plan.lag_rate,
        "lag_events": plan.lag_events,
        "burst_lag_p50_ms": burst_p50,
        "burst_lag_p99_ms": burst_p99,
        "produce_seconds": batched.produce_seconds,
        "pipeline_seconds": round(batched.seconds, 3),
        "kafka_ceiling_events_per_s": round(ceiling, 1),
        "ratio_to_ceiling": round(batched.events_per_s / ceiling, 3),
        "per_message_events": plan.per_message_events,
        "per_message_events_per_s": round(per_message.events_per_s, 1),
        "batched_vs_per_message": round(batched.events_per_s / per_message.events_per_s, 2),
        "wallets": plan.wallets,
        "partitions": plan.partitions,
        "cpu_us_per_event": batched.cpu_us_per_event(),
        "per_message_cpu_us_per_event": per_message.cpu_us_per_event(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


WARMUP = 200


async def _side(
    env: dict[str, str],
    data: Path,
    name: str,
    count: int,
    wallets: int,
    batch: int,
    *,
    paced: tuple[int, float] | None = None,
) -> SideResult:
    """Start both workers, warm them up, then time ``count`` events through the pipeline.

    ``paced`` (events, rate): afterwards, on the same workers, offer that many events at that
    steady rate (ids ``paced-…``) so lag is measured below saturation as well as in the burst.
    """
    side_env = dict(env)
    if batch:
        side_env["CREDITS_AGGREGATOR_BATCH"] = side_env["CREDITS_SETTLEMENT_BATCH"] = str(batch)
    workers = [_start_worker(role, side_env, data, name) for role in ("aggregator", "settlement")]
    try:
        metrics_url = await _metrics_url(data / f"{name}-settlement.ready", workers[1])
        producer = UsageProducer(bootstrap=env["KAFKA_BOOTSTRAP"])
        await producer.start()
        try:
            base = await _settled(metrics_url)
            await producer.record_many(make_events(f"{name}-warmup", WARMUP, wallets))
            await _wait_settled(metrics_url, base + WARMUP, timeout_s=120)
            base += WARMUP
            cpu = CpuMeter(
                {"aggregator": workers[0].pid, "settlement": workers[1].pid},
                db_name=env["DATABASE_URL"].rsplit("/", 1)[-1],
                redis_url=env["REDIS_URL"],
            )
            events = make_events(name, count, wallets)
            with tuned_for_batches():  # the load generator's own GC stays out of the way
                cpu.start()
                started = time.perf_counter()
                await _produce(producer, events)
                produced = time.perf_counter() - started
                await _wait_settled(metrics_url, base + count, timeout_s=600)
                elapsed = time.perf_counter() - started
                spent = cpu.stop()
            if paced is not None:
                paced_count, rate = paced
                await _produce_paced(producer, make_events("paced", paced_count, wallets), rate)
                await _wait_settled(metrics_url, base + count + paced_count, timeout_s=600)
        finally:
            await producer.stop()
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=60)
    return SideResult(count, elapsed, round(produced, 3), spent)


async def _produce(producer: UsageProducer, events: Sequence[UsageEvent]) -> None:
    """Produce like a busy service would: chunks stamped with ``produced_ms`` when they are
    sent (the lag clock starts there), encoded, checked and acknowledged (acks=all) one after
    another. The events themselves were built before the clock started."""
    chunk = 2_000
    for start in range(0, len(events), chunk):
        stamp = MappingProxyType({"produced_ms": int(time.time() * 1000)})
        await producer.record_many(
            e.model_copy(update={"metadata": stamp}) for e in events[start : start + chunk]
        )


async def _produce_paced(
    producer: UsageProducer, events: Sequence[UsageEvent], rate: float
) -> None:
    """Offer ``events`` at ``rate`` per second: a chunk every 20 ms, each stamped when sent."""
    tick = 0.02
    chunk = max(1, round(rate * tick))
    start = time.perf_counter()
    for n, first in enumerate(range(0, len(events), chunk)):
        delay = start + n * tick - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        stamp = MappingProxyType({"produced_ms": int(time.time() * 1000)})
        await producer.record_many(
            e.model_copy(update={"metadata": stamp}) for e in events[first : first + chunk]
        )


def _worker_env(bootstrap: str, db_url: str, redis_url: str, data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CLICKHOUSE_URL"}
    env.update(
        KAFKA_BOOTSTRAP=bootstrap,
        DATABASE_URL=db_url,
        REDIS_URL=redis_url,
        CREDITS_DATA_DIR=str(data),
        CREDITS_KEY_PREFIX=f"bench{os.getpid()}",
    )
    return env


def _start_worker(role: str, env: dict[str, str], data: Path, name: str) -> subprocess.Popen[bytes]:
    ready = data / f"{name}-{role}.ready"
    ready.unlink(missing_ok=True)
    log = (data / f"{name}-{role}.log").open("ab")
    return subprocess.Popen(  # noqa: S603 -- our own interpreter and CLI, fixed arguments
        [sys.executable, "-m", "cli.main", "worker", role, "--ready-file", str(ready)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


async def _metrics_url(ready: Path, worker: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"settlement worker exited with {worker.returncode}; see its log")
        announced = await asyncio.to_thread(read_ready_file, ready)
        if announced is not None:
            return announced.metrics_url
        await asyncio.sleep(0.1)
    raise TimeoutError("settlement worker did not become ready")


async def _settled(metrics_url: str) -> int:
    def scrape() -> int:
        with urllib.request.urlopen(metrics_url, timeout=5) as response:  # noqa: S310 (loopback)
            text = response.read().decode()
        return sum(int(float(m.group(1))) for m in map(SETTLED.match, text.splitlines()) if m)

    return await asyncio.to_thread(scrape)


async def _wait_settled(metrics_url: str, target: int, *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while await _settled(metrics_url) < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {await _settled(metrics_url)} of {target} events settled")
        await asyncio.sleep(0.05)  # each scrape costs the settlement worker CPU


async def _ledger_counts(db_url: str) -> tuple[int, int]:
    """(distinct usage event ids, usage rows) in the ledger."""
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        cur = await conn.execute(
            "SELECT count(DISTINCT source_id), count(*) FROM ledger_transactions "
            "WHERE source = 'usage'"
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def _lag_ms(db_url: str, prefix: str) -> tuple[float, float]:
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        cur = await conn.execute(
            "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY "
            "extract(epoch FROM created_at) * 1000 - (metadata->>'produced_ms')::bigint) "
            "FROM ledger_transactions WHERE source = 'usage' AND source_id LIKE %s "
            "AND metadata ? 'produced_ms'",
            (f"{prefix}%",),
        )
        row = await cur.fetchone()
    assert row is not None
    assert row[0] is not None
    p50, p99 = row[0]
    return round(float(p50), 1), round(float(p99), 1)


def _clickhouse_count(chdb_dir: Path) -> int:
    with open_usage_store(None, chdb_dir) as store:
        return store.count_events()
