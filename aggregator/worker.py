"""The aggregator (flow 2): usage.events -> authorise in Redis -> decisions on Kafka -> offsets.

A plain aiokafka consumer-group loop (not Faust: its batch ``take()`` acks a batch whose body
raised). One partition's batch, top to bottom (:meth:`AggregatorPipeline.process_batch`)::

    0. poll     up to ``batch_max`` records (``max_poll_records``), waiting at most ``batch_ms``
    1. decode   (pure) bytes -> UsageEvent; a SchemaViolation goes to the dead-letter topic with
                its reason (acks=all): kept, never dropped, and the batch flows on
    2. decide   each wallet's events in log order (``EventAuthorizer``, shared with
                the SDK): admission (pure: price, tier, cap, limits) -> authorise in Redis, or
                capture the event's hold; an unloaded wallet is loaded from the ledger and asked
                once more; an unknown feature or wallet is a refusal with its reason. The
                batch's authorisations go in one round trip, each its own atomic script
                (``EventAuthorizer.decide_many``); the rest share round trips
                (:class:`ScriptBatchingRedis`)
    3. shape    (pure) UsageAuthorized | UsageRejected per event; LowBalance once per crossing
                and PremiumPaused on exhaustion (wallet.events); anomaly findings ->
                SuspiciousBurn (alerts.suspicious-burn, at most one per wallet per cooldown)
    4. produce  all of it and the dead letters, and await every ack
    5. commit   the batch's offsets (last + 1 per partition), only now

What a crash (or a cancelled task) between steps does; the batch is redelivered from the last
committed offset and every step is idempotent on the event id:

* before 2: nothing happened yet.
* after 2, before 4 completes: reservations are made, their messages maybe not. Redelivered, the
  mirror answers ``duplicate`` with the original decision, so the same verdict is produced again
  (settlement deduplicates on event id; wallet events and alerts carry derived ids). Transient
  refusals (``rate_limited``) are not remembered by the mirror and are decided afresh.
* after 4, before 5: everything is durable; the redelivery produces it all once more.

A Redis, PostgreSQL or Kafka failure inside a batch retries the whole batch in place with
backoff (same idempotency); if it persists, :class:`AggregatorStalled` is raised without
committing, so the process exits non-zero and is restarted: never an offset past unprocessed
events. ``batch_max=1`` is per-message mode (one commit per event; the benchmark baseline).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Protocol

import psycopg
import redis.exceptions
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from redis.asyncio import Redis

from aggregator.admission import Verdict, now_ms
from aggregator.anomaly import AlertGate, BurnDetector, Finding, Observation, to_alert
from aggregator.gc_tuning import tuned_for_batches
from aggregator.hold_sweeper import sweep_expired
from aggregator.redis_client import connect
from aggregator.redis_keys import KeySpace
from aggregator.wallet_store import WalletStore
from domain.caps import load_caps
from domain.clock import Clock, SystemClock
from domain.errors import InvalidInput, Unavailable
from domain.pricing import load_catalogue
from meter.consume import DecisionProducer, EventAuthorizer, Outbound, usage_message
from meter.consume import wallet_messages as wallet_event_messages
from meter.schema import MessageSource, SchemaViolation, UsageEvent, decode_usage_event, encode
from meter.topics import TopicNames, wallet_key
from settlement.ledger.db import open_pool
from stack.metrics import RoleMetrics
from stack.retry_policy import RetryPolicy

log = logging.getLogger(__name__)

RETRYABLE: Final = (
    Unavailable,  # includes PublishFailed
    psycopg.OperationalError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    KafkaError,
    OSError,
    TimeoutError,
)


class AggregatorStalled(Unavailable):
    """A batch could not be processed after retries; its offsets were not committed.

    Exit non-zero and let the supervisor restart the process (the batch is redelivered). The
    cause is chained: check that dependency (Redis, PostgreSQL or Kafka).
    """

    code = "aggregator_stalled"


@dataclass(frozen=True)
class AggregatorConfig:
    """What one aggregator process needs; ``session_timeout_ms`` short on Tansu (a restarted
    member waits ~1.5x it for its old session), ``low_balance_threshold`` 0 disables it."""

    bootstrap: str
    redis_url: str
    database_url: str
    topics: TopicNames = field(default_factory=TopicNames)
    group_id: str = "aggregator"
    key_prefix: str = "cdc"
    batch_max: int = 2000
    batch_ms: int = 50
    low_balance_threshold: int = 200
    hold_sweep_interval_ms: int = 1000
    session_timeout_ms: int = 10_000
    retry: RetryPolicy = RetryPolicy()

    def __post_init__(self) -> None:
        checks = {
            "batch_max": 1 <= self.batch_max <= 100_000,
            "batch_ms": 1 <= self.batch_ms <= 60_000,
            "low_balance_threshold": self.low_balance_threshold >= 0,
            "hold_sweep_interval_ms": self.hold_sweep_interval_ms >= 10,
            "session_timeout_ms": self.session_timeout_ms >= 1000,
        }
        for name, ok in checks.items():
            if not ok:
                raise InvalidInput(f"{name} is out of range", field=name)


class InboundRecord(Protocol):
    """The part of a consumed Kafka record the pipeline reads (aiokafka's ConsumerRecord)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


class OffsetCommitter(Protocol):
    """Commits ``{TopicPartition: next offset}`` (an AIOKafkaConsumer with a group id)."""

    async def commit(self, offsets: Mapping[Any, int]) -> None: ...


@dataclass(frozen=True, slots=True)
class BatchReport:
    records: int
    authorized: int
    rejected: int
    replayed: int
    dead_lettered: int
    alerts: int


@dataclass(frozen=True, slots=True)
class _Decided:
    record: InboundRecord
    verdict: Verdict


class AggregatorPipeline:
    """Steps 1-5 of the module docstring for one batch; holds no per-batch state."""

    def __init__(
        self,
        *,
        authorizer: EventAuthorizer,
        producer: DecisionProducer,
        committer: OffsetCommitter,
        metrics: RoleMetrics,
        topics: TopicNames,
        low_balance_threshold: int = 200,
        detector: BurnDetector | None = None,
    ) -> None:
        self._authorizer = authorizer
        self._producer = producer
        self._committer = committer
        self._metrics = metrics
        self._topics = topics
        self._low_balance_threshold = low_balance_threshold
        self._detector = detector or BurnDetector()
        self._gate = AlertGate(self._detector.settings.alert_cooldown_ms)

    @property
    def clock(self) -> Clock:
        return self._authorizer.clock

    async def process_batch(self, records: Sequence[InboundRecord]) -> BatchReport:
        """Decode, decide, shape, produce and await, then commit. Raises on any I/O failure
        before committing (the caller retries the same records, or gives up)."""
        started = time.perf_counter()
        events, letters = _decode(records)
        decided = await self._decide(events)
        at = self.clock.now()
        messages = [m for d in decided for m in self._shape(d.verdict, at)]
        findings = self._gate.due(self._observe(decided, at), now_ms(at))
        messages += [_alert_message(self._topics, f, at) for f in findings]
        await _all(self._producer.publish(messages), self._dead_letter(letters))
        self._gate.record(findings, now_ms(at))
        await self._committer.commit(_next_offsets(records))
        return self._count(records, decided, letters, messages, time.perf_counter() - started)

    async def _decide(self, events: Sequence[tuple[InboundRecord, UsageEvent]]) -> list[_Decided]:
        """Each wallet's events in log order, the batch's authorisations in shared round trips
        (``EventAuthorizer.decide_many``)."""
        verdicts = await self._authorizer.decide_many([event for _, event in events])
        return [
            _Decided(record, verdict) for (record, _), verdict in zip(events, verdicts, strict=True)
        ]

    def _shape(self, verdict: Verdict, at: datetime) -> tuple[Outbound, ...]:
        usage = usage_message(
            verdict, topics=self._topics, pricing_version=self._authorizer.pricing_version, at=at
        )
        wallet = wallet_event_messages(
            verdict, topics=self._topics, low_balance_threshold=self._low_balance_threshold,
            at=at,
        )  # fmt: skip
        return (usage, *wallet)

    def _observe(self, decided: Sequence[_Decided], at: datetime) -> tuple[Finding, ...]:
        observations = (
            Observation(
                wallet_id=d.verdict.event.wallet_id,
                event_id=d.verdict.event.event_id,
                operation=f"{d.verdict.event.feature}/{d.verdict.event.member_id}",
                delivery=f"{d.record.topic}/{d.record.partition}@{d.record.offset}",
                credits=d.verdict.new_charge,
            )
            for d in decided
        )
        return self._detector.observe(observations, now_ms(at))

    async def _dead_letter(self, letters: Sequence[tuple[InboundRecord, SchemaViolation]]) -> None:
        await _all(*(self._producer.dead_letter(r.value or b"", v, _source(r)) for r, v in letters))

    def _count(
        self,
        records: Sequence[InboundRecord],
        decided: Sequence[_Decided],
        letters: Sequence[tuple[InboundRecord, SchemaViolation]],
        messages: Sequence[Outbound],
        seconds: float,
    ) -> BatchReport:
        m, role = self._metrics, self._metrics.role
        for topic, n in Counter(r.topic for r in records).items():
            m.events_in.labels(role, topic).inc(n)
        for topic, n in Counter(o.topic for o in messages).items():
            m.events_out.labels(role, topic).inc(n)
        for code, n in Counter(d.verdict.code.value for d in decided).items():
            m.decisions.labels(role, code).inc(n)
        for reason, n in Counter(v.reason.value for _, v in letters).items():
            m.dead_letters.labels(role, reason).inc(n)
        m.batch_size.labels(role).observe(len(records))
        m.batch_seconds.labels(role).observe(seconds)
        authorized = sum(d.verdict.authorized for d in decided)
        return BatchReport(
            records=len(records),
            authorized=authorized,
            rejected=len(decided) - authorized,
            replayed=sum(d.verdict.replayed for d in decided),
            dead_lettered=len(letters),
            alerts=sum(o.topic == self._topics.suspicious_burn for o in messages),
        )


# --- pure helpers ------------------------------------------------------------------------------


def _decode(
    records: Sequence[InboundRecord],
) -> tuple[list[tuple[InboundRecord, UsageEvent]], list[tuple[InboundRecord, SchemaViolation]]]:
    events: list[tuple[InboundRecord, UsageEvent]] = []
    letters: list[tuple[InboundRecord, SchemaViolation]] = []
    for record in records:
        try:
            events.append((record, decode_usage_event(record.value or b"")))
        except SchemaViolation as violation:
            letters.append((record, violation))
    return events, letters


def _alert_message(topics: TopicNames, finding: Finding, at: datetime) -> Outbound:
    alert = to_alert(finding, now_ms(at))
    return Outbound(
        topics.suspicious_burn, wallet_key(alert.wallet_id), encode(alert), alert.alert_id
    )


def _next_offsets(records: Sequence[InboundRecord]) -> dict[Any, int]:
    offsets: dict[Any, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
    return offsets


def _source(record: InboundRecord) -> MessageSource:
    key = base64.b64encode(record.key).decode("ascii") if record.key is not None else None
    return MessageSource(
        topic=record.topic, partition=record.partition, offset=record.offset, key_base64=key
    )


async def _all(*steps: Any) -> None:
    """Await every step to its end, then raise the first failure (no step is left running)."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


# --- Redis round trips ------------------------------------------------------------------------


class ScriptBatchingRedis(Redis):
    """A Redis client that sends the ``EVALSHA`` calls issued in one event-loop tick as one
    pipeline (non-transactional); every other command is an ordinary call.

    Each script still runs atomically on the server, in the order issued, and each caller
    awaits its own reply, so ``authorize()`` works unchanged. The wallets decided concurrently
    in a batch then share round trips instead of paying one each (the aggregator's bottleneck).
    A ``NOSCRIPT`` reply reaches its caller's ``AsyncScript``, which loads and retries as usual;
    a connection failure fails every call of that pipeline.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._queued: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        if not self._queued:
            loop.call_soon(self._flush)
        reply: asyncio.Future[Any] = loop.create_future()
        self._queued.append(((sha, numkeys, *keys_and_args), reply))
        return reply

    def _flush(self) -> None:
        batch, self._queued = self._queued, []
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        pipe = self.pipeline(transaction=False)
        for args, _ in batch:
            pipe.execute_command("EVALSHA", *args)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # handed to every waiting caller, not swallowed
            replies = [exc] * len(batch)
        for (_, reply), result in zip(batch, replies, strict=True):
            if reply.done():  # its caller was cancelled
                continue
            if isinstance(result, Exception):
                reply.set_exception(result)
            else:
                reply.set_result(result)


# --- the loop ----------------------------------------------------------------------------------


async def consume_loop(
    consumer: Any,
    pipeline: AggregatorPipeline,
    *,
    stop: asyncio.Event,
    batch_max: int,
    batch_ms: int,
    retry: RetryPolicy = RetryPolicy(),
    in_flight: asyncio.Lock | None = None,
    metrics: RoleMetrics | None = None,
) -> None:
    """Poll -> one batch per partition (concurrently, each committing its own offsets) -> poll,
    until ``stop`` is set; the batch in flight always finishes first. Partitions run
    concurrently so that one batch's Python work overlaps another's Redis and Kafka waits.
    ``consumer`` is a started AIOKafkaConsumer, subscribed or assigned. Raises
    :class:`AggregatorStalled`."""
    lock = in_flight or asyncio.Lock()
    while not stop.is_set():
        fetched = await consumer.getmany(timeout_ms=batch_ms, max_records=batch_max)
        async with lock:  # a revocation waits for these batches to commit
            await _all(*(_retrying(pipeline, r, retry, stop) for r in fetched.values() if r))
        if metrics is not None:
            _report_lag(consumer, fetched, metrics)


async def _retrying(
    pipeline: AggregatorPipeline, records: Sequence[InboundRecord], retry: RetryPolicy,
    stop: asyncio.Event,
) -> BatchReport | None:  # fmt: skip
    for attempt in range(1, retry.attempts + 1):
        try:
            return await pipeline.process_batch(records)
        except (CommitFailedError, IllegalStateError) as exc:
            log.warning("partition reassigned mid-batch, left to its new owner: %s", exc)
            return None
        except RETRYABLE as exc:
            if attempt == retry.attempts:
                raise AggregatorStalled(f"batch failed {attempt} times: {exc!r}") from exc
            delay = retry.delay_s(attempt)
            log.warning("batch failed (attempt %d), retrying in %.1fs: %r", attempt, delay, exc)
            if await _stopped_within(stop, delay):
                return None  # shutting down: uncommitted, so redelivered after the restart
    raise AssertionError("unreachable")


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


def _report_lag(consumer: Any, fetched: Mapping[Any, Sequence[Any]], metrics: RoleMetrics) -> None:
    for tp, records in fetched.items():
        highwater = consumer.highwater(tp)  # not end_offsets(): wrong on Tansu
        if records and highwater is not None:
            lag = max(0, highwater - records[-1].offset - 1)
            metrics.consumer_lag.labels(metrics.role, str(tp.partition)).set(lag)


class _FinishBatchOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, in_flight: asyncio.Lock) -> None:
        self._in_flight = in_flight

    async def on_partitions_revoked(self, revoked: Any) -> None:
        async with self._in_flight:
            pass  # the batch in flight has committed (or failed) by now

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("aggregator assigned %s", sorted(str(tp) for tp in assigned))


async def sweep_holds(
    store: WalletStore, clock: Clock, *, interval_ms: int, stop: asyncio.Event
) -> None:
    """Expire due holds every ``interval_ms`` until ``stop``; a failed sweep is retried next
    time (several sweepers may run at once: each hold still resolves exactly once)."""
    while not stop.is_set():
        try:
            report = await sweep_expired(store, now_ms(clock.now()))
            if report.expired:
                log.info(
                    "expired %d holds (%d credits)", len(report.expired), report.expired_credits
                )
        except RETRYABLE as exc:
            log.warning("hold sweep failed, retrying in %d ms: %r", interval_ms, exc)
        await _stopped_within(stop, interval_ms / 1000)


async def run_aggregator(
    config: AggregatorConfig, *, stop: asyncio.Event, metrics: RoleMetrics
) -> None:
    """Run one aggregator process until ``stop`` is set (the batch in flight finishes and
    commits first). Raises :class:`AggregatorStalled` when a batch cannot be processed."""
    clock: Clock = SystemClock()
    async with AsyncExitStack() as stack:
        client = connect(config.redis_url, ScriptBatchingRedis)
        stack.push_async_callback(client.aclose)
        store = WalletStore.create(client, KeySpace(config.key_prefix))
        pool = await open_pool(config.database_url)
        stack.push_async_callback(pool.close)
        producer = DecisionProducer(bootstrap=config.bootstrap, topics=config.topics)
        await producer.start()
        stack.push_async_callback(producer.stop)
        in_flight = asyncio.Lock()
        consumer = _consumer(config)
        consumer.subscribe([config.topics.usage_events], listener=_FinishBatchOnRevoke(in_flight))
        await consumer.start()
        stack.push_async_callback(consumer.stop)
        authorizer = EventAuthorizer(store, pool, load_catalogue(), load_caps(), clock)
        pipeline = AggregatorPipeline(
            authorizer=authorizer, producer=producer, committer=consumer, metrics=metrics,
            topics=config.topics, low_balance_threshold=config.low_balance_threshold,
        )  # fmt: skip
        # Stopped by an event, never cancelled: redis-py 8's asyncio client can swallow a
        # cancellation that lands mid-command, and the task would then run on.
        sweeper_stop = asyncio.Event()
        sweeper = asyncio.create_task(
            sweep_holds(store, clock, interval_ms=config.hold_sweep_interval_ms, stop=sweeper_stop)
        )
        stack.push_async_callback(_finish, sweeper, sweeper_stop)
        stack.enter_context(tuned_for_batches())
        await consume_loop(
            consumer, pipeline, stop=stop, batch_max=config.batch_max, batch_ms=config.batch_ms,
            retry=config.retry, in_flight=in_flight, metrics=metrics,
        )  # fmt: skip


def _consumer(config: AggregatorConfig) -> Any:
    return AIOKafkaConsumer(
        bootstrap_servers=config.bootstrap,
        group_id=config.group_id,
        client_id=f"{config.group_id}-consumer",
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # never "latest": Tansu's ListOffsets(latest) is wrong
        max_poll_records=config.batch_max,
        fetch_max_wait_ms=max(10, config.batch_ms),
        session_timeout_ms=config.session_timeout_ms,
        heartbeat_interval_ms=max(100, config.session_timeout_ms // 4),
    )


async def _finish(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    """Ask ``task`` to end by ``stop`` and wait for it (at most one sweep plus a little)."""
    stop.set()
    done, _ = await asyncio.wait([task], timeout=30)
    if not done:
        log.error("the hold sweeper did not stop within 30 s; abandoning it")
