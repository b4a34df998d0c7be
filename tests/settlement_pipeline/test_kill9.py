"""kill -9 of the settlement worker mid-stream, then a restart: nothing lost, nothing doubled.

The worker runs as ``python -m settlement`` in a child process against the session's Tansu
broker, the test's ledger database, its Redis key prefix and a chdb directory of its own.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import psycopg
import pytest
from aiokafka import AIOKafkaProducer
from psycopg_pool import AsyncConnectionPool

from aggregator.mirror import snapshot
from aggregator.wallet_store import WalletStore
from meter.topics import USAGE_AUTHORIZED, TopicNames
from settlement.ledger.operations import Ledger
from settlement.ledger.wallets import Wallets
from settlement.ledger.writer import Conn
from settlement.reconciler import reconcile_all
from settlement.worker import open_usage
from stack.tansu import TansuBroker, free_port
from tests.ledger.helpers import assert_consistent
from tests.meter.kafka_helpers import committed_offsets, wait_for
from tests.redis_support import REDIS_URL
from tests.settlement_pipeline.conftest import TEST_PARTITIONS
from tests.settlement_pipeline.support import (
    fund,
    in_flight,
    ledger_available,
    payloads,
    produce,
    reserve,
    usage_authorized,
    usage_ids,
)

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.kafka,
    pytest.mark.clickhouse,
    pytest.mark.slow,
]

EVENTS = 20_000
WALLETS = 50
KILL_POINTS = (2_500, 8_000, 14_000)  # usage events in the ledger when each kill -9 lands
REPO = Path(__file__).resolve().parents[2]


def _worker_argv(
    tansu: TansuBroker, url: str, topics: TopicNames, key_prefix: str, data_dir: Path, group: str
) -> list[str]:
    prefix = topics.usage_authorized.removesuffix(USAGE_AUTHORIZED)
    return [
        sys.executable,
        "-m",
        "settlement",
        f"--bootstrap={tansu.bootstrap}",
        f"--redis-url={REDIS_URL}",
        f"--database-url={url}",
        f"--data-dir={data_dir}",
        f"--topic-prefix={prefix}",
        f"--group-id={group}",
        f"--key-prefix={key_prefix}",
        "--batch-max=500",
        "--batch-ms=100",
        "--session-timeout-ms=2000",
    ]


def _tail(log: Path, chars: int = 3000) -> str:
    """The worker's log (its last ``chars`` characters; 0: all of it) for failure messages."""
    return log.read_text()[-chars:]


def _spawn(argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


async def _posted(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> int:
    cur = await conn.execute("SELECT count(*) FROM ledger_transactions WHERE source = 'usage'")
    row = await cur.fetchone()
    assert row is not None
    return int(str(row[0]))


async def _kill_once_posted(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    worker: subprocess.Popen[bytes],
    threshold: int,
    log: Path,
) -> None:
    """SIGKILL ``worker`` as soon as the ledger holds ``threshold`` usage events: right after
    a batch's commit, while it settles Redis, writes ClickHouse or has not committed offsets."""
    try:
        deadline = time.monotonic() + 60
        while await _posted(conn) < threshold:
            assert worker.poll() is None, _tail(log)
            assert time.monotonic() < deadline, _tail(log)
            await asyncio.sleep(0.001)
        os.kill(worker.pid, signal.SIGKILL)
        assert worker.wait(10) == -signal.SIGKILL
    finally:
        if worker.poll() is None:
            worker.kill()
    assert await _posted(conn) < EVENTS, "killed mid-stream, not after the end"


async def test_kill_9_mid_stream_loses_nothing_and_posts_nothing_twice(
    tansu: TansuBroker,
    topics: TopicNames,
    producer: AIOKafkaProducer,
    wallets: Wallets,
    ledger: Ledger,
    ledger_pool: AsyncConnectionPool[Conn],
    ledger_db_url: str,
    mirror: WalletStore,
    tmp_path: Path,
) -> None:
    rng = random.Random(9)
    wallet_ids = [f"wal_k{i:03d}" for i in range(WALLETS)]
    for wallet_id in wallet_ids:
        await fund(wallets, ledger, wallet_id, 1_000_000)
    await reconcile_all(ledger_pool, mirror)
    events = [
        usage_authorized(f"ev-{i:06d}", rng.choice(wallet_ids), rng.choice((1, 1, 5, 15)))
        for i in range(EVENTS)
    ]
    for start in range(0, EVENTS, 50):  # the aggregator's reservations, then its produce
        await asyncio.gather(*(reserve(mirror, e) for e in events[start : start + 50]))
    ends = await produce(producer, topics.usage_authorized, payloads(events))

    group = f"settle-{uuid.uuid4().hex[:8]}"
    data_dir, log = tmp_path / "chdb", tmp_path / "worker.log"
    argv = _worker_argv(tansu, ledger_db_url, topics, mirror.keys.prefix, data_dir, group)

    async with await psycopg.AsyncConnection.connect(ledger_db_url, autocommit=True) as conn:
        for threshold in KILL_POINTS:  # three crashes, each somewhere inside a batch
            await _kill_once_posted(conn, _spawn(argv, log), threshold, log)

    final = _spawn(argv, log)
    try:

        async def drained() -> bool:
            assert final.poll() is None, _tail(log)
            topic = topics.usage_authorized
            done = await committed_offsets(tansu.bootstrap, group, topic, TEST_PARTITIONS)
            return all(done.get(p) == end for p, end in ends.items())

        await wait_for(drained, timeout_s=60, interval_s=0.25)
        final.send_signal(signal.SIGTERM)
        assert final.wait(30) == 0, _tail(log)
    finally:
        if final.poll() is None:
            final.kill()
    print(*(line for line in _tail(log, 0).splitlines() if "start-up" in line), sep="\n")

    # Zero lost, zero double-posted: every produced id exactly once, in every sink.
    assert await usage_ids(ledger_db_url) == sorted(e.event.event_id for e in events)
    await assert_consistent(ledger_db_url)
    with open_usage(None, data_dir) as usage:
        assert usage.count_events() == EVENTS
    # Redis already equals the ledger: nothing in flight, and a reconcile finds no drift.
    for wallet_id in wallet_ids:
        assert await in_flight(mirror, wallet_id) == {}
    report = await reconcile_all(ledger_pool, mirror)
    assert report.drifted == [], report.summary()
    for wallet_id in wallet_ids:
        view = await snapshot(mirror, wallet_id)
        assert view is not None
        assert view.available == await ledger_available(ledger_pool, wallet_id)


async def test_the_worker_exits_non_zero_when_a_dependency_stays_down(
    tansu: TansuBroker,
    topics: TopicNames,
    producer: AIOKafkaProducer,
    ledger_db_url: str,
    mirror: WalletStore,
    tmp_path: Path,
) -> None:
    """Redis refuses connections mid-batch (releasing a refused event): after its retries the
    worker exits 1 without committing the batch, which stays on the topic for the next run."""
    event = usage_authorized("ev-stuck", "wal_nobody", 5)
    await produce(producer, topics.usage_authorized, payloads([event]))
    argv = _worker_argv(tansu, ledger_db_url, topics, mirror.keys.prefix, tmp_path, "settle-down")
    argv = [a for a in argv if not a.startswith("--redis-url=")]
    argv.append(f"--redis-url=redis://127.0.0.1:{free_port()}/0")
    log = tmp_path / "worker.log"
    worker = _spawn(argv, log)
    try:
        assert await asyncio.to_thread(worker.wait, 60) == 1, _tail(log)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert "redis release failed 6 times" in _tail(log, 0)
    committed = await committed_offsets(
        tansu.bootstrap, "settle-down", topics.usage_authorized, TEST_PARTITIONS
    )
    assert set(committed.values()) == {None}
