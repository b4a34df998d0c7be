"""The settlement worker (flow 4): usage.authorized -> ledger -> Redis -> ClickHouse -> offsets.

One batch, top to bottom (:meth:`SettlementPipeline.process_batch`, then the commit)::

    0. poll     up to ``batch_max`` records, or ``batch_ms`` after the first one, whichever first
    1. decode   (pure) a record that is not valid UsageAuthorized v1 -> dead letter with its reason
                (acks=all); it is kept there, never dropped
    2. plan     (pure) each event's settlement id (its event id, or a capture's hold id), ledger
                charge and analytics row; an event the ledger could never take (an id the
                ledger's format refuses) is refused here with a reason; free events (0 credits)
                skip the ledger
    3. post     every charge in ONE PostgreSQL transaction (BatchWriter, idempotent on event id)
                -> posted | duplicate | rejected
    4. settle   per wallet, the reservations of posted, duplicate and free events, with the
                wallet's ledger version after the commit; posted events carry their credits, so
                an event the mirror lost in a Redis flush is debited once (``settle.lua``)
    5. refuse   events the ledger rejected: release their reservation, reconcile each wallet
                whose mirror proved wrong (a ledger refusal for credits, or a settle shortfall),
                then UsageRejected with the reason on usage.rejected (acks=all) -- invariant 6;
                with them, one balance_changed per wallet charged in the batch on wallet.events
                (its state after the settle; settlement.balance_events)
    6. record   posted, duplicate and free events in ClickHouse (idempotent on event id)
    7. commit   the batch's offsets, only now that every write above is durable

Two batches overlap (:func:`settle_batches`): the next one is polled, decoded and planned
(steps 0-2, no writes) while this one runs steps 3-7; its own steps 3-7 start only after this
batch's offsets are committed, so the writes, and what a crash leaves, are as for one batch.
The next batch stops filling as soon as this one is written (waiting longer only adds lag):
under load it holds whatever arrived during one write, up to ``batch_max``.

A crash (kill -9) anywhere redelivers the batch from the last committed offset, and every step
is idempotent, so nothing is lost or charged twice. What a crash leaves, step by step:

* during 0-3 (before the ledger COMMIT): nothing, except dead letters already sent in step 1;
  they are sent again on redelivery (a dead letter names its source topic/partition/offset).
* after 3, before 4: the ledger holds the events while Redis still reserves them. On restart
  the start-up reconcile settles every in-flight event the ledger holds ("late settlement")
  and reloads the mirror; the redelivered batch finds them duplicates and settles nothing twice.
* after 4, before 5 ends: ledger refusals may be unreleased and unannounced. Redelivery decides
  them again against the ledger: still refused, then released (a no-op if it was) and
  announced; or posted, if the wallet was funded meanwhile, and settled like any event.
* after 5, before 6: UsageRejected is produced again on redelivery (consumers dedupe on event
  id). In the rare case the wallet was funded in between, the redelivery posts an event already
  announced as rejected: the ledger is the truth, and a later settlement supersedes a rejection.
* after 6, before 7: the ClickHouse sink skips the stored events and repairs their rollup cells.

A failure of PostgreSQL, Redis, ClickHouse or Kafka inside a batch is retried in place with
backoff; if it persists, :class:`SettlementStalled` is raised without committing, the process
exits non-zero and its supervisor restarts it (which is then a crash at that step).

On start-up the worker converges before consuming: ClickHouse rollups are reconciled for the
last days (a crash may split an insert from its views), then every ledger wallet is reconciled
into the mirror (settles what a crash left posted-but-reserved; rebuilds a flushed Redis).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar
from zoneinfo import ZoneInfo

import psycopg
import redis.exceptions
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from aggregator.authorize import SettleCall, SettleResult, release, settle_many
from aggregator.gc_tuning import tuned_for_batches
from aggregator.redis_client import connect
from aggregator.redis_keys import KeySpace
from aggregator.wallet_store import WalletStore
from domain.errors import InvalidInput, Unavailable, UnknownFeature
from domain.hash_chain import MetadataValue
from domain.pricing import PricingCatalogue, load_catalogue
from meter.producer import UsageProducer
from meter.schema import (
    BalanceChanged,
    MessageSource,
    SchemaViolation,
    UsageAuthorized,
    UsageRejected,
    decode_usage_authorized,
    encode,
)
from meter.topics import TopicNames, wallet_key
from settlement.balance_events import usage_balance_changes
from settlement.ledger.batch_writer import BatchOutcome, BatchWriter, UsageCharge
from settlement.ledger.db import open_pool
from settlement.ledger.writer import Conn
from settlement.reconciler import reconcile_all, reconcile_wallet
from settlement.usage_sink import UsageRow, UsageStore, open_usage_store
from settlement.usage_sink.query_service import serve_usage_queries
from stack.metrics import RoleMetrics
from stack.retry_policy import RetryPolicy

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

ROLE: Final = "settlement"
MAX_LEDGER_METADATA_KEYS: Final = 32
PREPARE_CHUNK: Final = 250  # records decoded between two yields to the event loop
WRITER_POLL_MS: Final = 10  # how often a filling batch checks whether the writer is free
RETRYABLE: Final = (
    Unavailable,  # ClickHouse, and our own typed outages
    psycopg.OperationalError,  # connection lost, pool timeout, serialization failure
    psycopg.IntegrityError,  # a racing writer posted the same event: the retry sees a duplicate
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    KafkaError,
    OSError,
    TimeoutError,
)


class SettlementStalled(Unavailable):
    """A batch could not be made durable after retries; its offsets were not committed.

    The process should exit non-zero and be restarted; the batch is then redelivered. The
    message names the failing step: check that dependency (PostgreSQL, Redis, ClickHouse, Kafka).
    """

    code = "settlement_stalled"


@dataclass(frozen=True)
class SettlementConfig:
    """What one settlement process needs. ``data_dir`` is chdb's data directory, used when
    ``clickhouse_url`` is None (chdb allows one per process)."""

    bootstrap: str
    redis_url: str
    database_url: str
    clickhouse_url: str | None
    data_dir: Path
    topics: TopicNames = field(default_factory=TopicNames)
    group_id: str = "settlement"
    key_prefix: str = "cdc"
    batch_max: int = 5000
    batch_ms: int = 200
    session_timeout_ms: int = 10_000  # short on Tansu: a restart waits ~1.5x for the old session
    reconcile_days: int = 2  # ClickHouse rollup days repaired at start-up
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    pricing_path: Path | None = None  # None: the packaged catalogue
    query_port: int | None = None  # read-only usage query service (None: off; 0: a free port)

    def __post_init__(self) -> None:
        if not 1 <= self.batch_max <= 100_000:
            raise InvalidInput("batch_max must be 1..100000", field="batch_max")
        if not 1 <= self.batch_ms <= 60_000:
            raise InvalidInput("batch_ms must be 1..60000", field="batch_ms")


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


# --- the plan (pure) ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refusal:
    """An authorised event that will not be settled, and why (a stable reason code)."""

    authorized: UsageAuthorized
    settlement_id: str
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class PlannedEvent:
    """One decoded event and what each sink needs. ``charge`` None: free, nothing to post.
    ``row`` None: ClickHouse cannot store it (logged; the ledger still settles it)."""

    authorized: UsageAuthorized
    settlement_id: str
    charge: UsageCharge | None
    row: UsageRow | None

    @property
    def wallet_id(self) -> str:
        return self.authorized.event.wallet_id


@dataclass(frozen=True, slots=True)
class BatchPlan:
    events: tuple[PlannedEvent, ...]  # unique by event id, in delivery order
    refused: tuple[Refusal, ...]  # refused before the ledger
    repeated: int  # further copies of an event id within the batch (dropped: duplicates)

    @property
    def charges(self) -> list[UsageCharge]:
        return [e.charge for e in self.events if e.charge is not None]


def settlement_id(authorized: UsageAuthorized) -> str:
    """The id an event settles under in every sink: the ledger's ``source_id``, the Redis
    reservation and the ClickHouse ``event_id``.

    A hold capture's is its hold id: ``capture_hold`` keys the in-flight entry by it, and a
    hold is captured at most once, so even a capture produced twice under two event ids is
    charged once. Every other event's is its event id. This is the aggregator's rule
    (``aggregator.admission.mirror_event_id``); the two must agree.
    """
    event = authorized.event
    return event.hold_id if event.hold_id is not None else event.event_id


def pricing_version_number(tag: str) -> int | None:
    """The catalogue version as an integer when the wire tag is one (``"3"``), else None."""
    return int(tag) if tag.isascii() and tag.isdigit() and len(tag) <= 9 else None


def ledger_metadata(authorized: UsageAuthorized) -> dict[str, MetadataValue]:
    """The event's metadata as the hash chain takes it, plus references worth keeping.

    Floats are not canonical in the chain, so they are kept as their shortest decimal text.
    A non-numeric pricing tag, and a hold capture's own event id, are added when there is room.
    """
    meta: dict[str, MetadataValue] = {
        k: repr(v) if isinstance(v, float) else v for k, v in authorized.event.metadata.items()
    }
    extras: dict[str, MetadataValue] = {}
    if pricing_version_number(authorized.pricing_version) is None:
        extras["pricing_version_tag"] = authorized.pricing_version
    if authorized.event.hold_id is not None:
        extras["event_id"] = authorized.event.event_id
    for key, value in extras.items():
        if key not in meta and len(meta) < MAX_LEDGER_METADATA_KEYS:
            meta[key] = value
    return meta


def ledger_charge(authorized: UsageAuthorized) -> UsageCharge | None:
    """The ledger charge of an event, None when it is free. Raises InvalidInput if the ledger
    can never take it (e.g. a wallet id longer than the ledger's)."""
    if authorized.credits == 0:
        return None
    event = authorized.event
    return UsageCharge(
        event_id=settlement_id(authorized),
        wallet_id=event.wallet_id,
        credits=authorized.credits,
        feature=event.feature,
        member_id=event.member_id,
        pricing_version=pricing_version_number(authorized.pricing_version),
        metadata=ledger_metadata(authorized),
    )


def usage_row(
    authorized: UsageAuthorized, catalogue: PricingCatalogue, settled_at: datetime
) -> UsageRow:
    """The analytics row; the category comes from the catalogue, else from the feature key
    (``<category>.<operation>``) for features of another pricing version."""
    event = authorized.event
    try:
        category = catalogue.operation(event.feature).category.value
    except UnknownFeature:
        category = event.feature.partition(".")[0]
    return UsageRow(
        event_id=settlement_id(authorized),
        wallet_id=event.wallet_id,
        member_id=event.member_id,
        feature=event.feature,
        category=category,
        quantity=event.quantity,
        credits=authorized.credits,
        pricing_version=pricing_version_number(authorized.pricing_version) or 0,
        occurred_at=event.occurred_at,
        settled_at=settled_at,
    )


def decode_batch(
    records: Iterable[InboundRecord],
) -> tuple[list[UsageAuthorized], list[tuple[InboundRecord, SchemaViolation]]]:
    """Decoded events in order, and the records that are not valid v1 with why."""
    decoded: list[UsageAuthorized] = []
    poison: list[tuple[InboundRecord, SchemaViolation]] = []
    for record in records:
        try:
            decoded.append(decode_usage_authorized(record.value or b""))
        except SchemaViolation as exc:
            poison.append((record, exc))
    return decoded, poison


def plan_batch(
    decoded: Sequence[UsageAuthorized], catalogue: PricingCatalogue, settled_at: datetime
) -> BatchPlan:
    """What each sink must do with the batch (pure). The first copy of a settlement id wins."""
    events: list[PlannedEvent] = []
    refused: list[Refusal] = []
    seen: set[str] = set()
    for authorized in decoded:
        key = settlement_id(authorized)
        if key in seen:
            continue
        seen.add(key)
        try:
            charge = ledger_charge(authorized)
        except InvalidInput as exc:
            refused.append(Refusal(authorized, key, exc.code, exc.message))
            continue
        try:
            row: UsageRow | None = usage_row(authorized, catalogue, settled_at)
        except InvalidInput:  # e.g. occurred_at outside ClickHouse's range: still settled
            row = None
        events.append(PlannedEvent(authorized, key, charge, row))
    return BatchPlan(tuple(events), tuple(refused), len(decoded) - len(seen))


# --- one batch (steps 1-6) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchReport:
    """What one batch did; every record is counted exactly once across these fields."""

    records: int
    dead_letter_reasons: tuple[str, ...]
    posted: int
    duplicates: int  # already in the ledger, or another copy within the batch
    free: int
    refused: tuple[Refusal, ...]
    recovered: int  # events the mirror had lost (Redis flush), debited at settle
    reconciled: tuple[str, ...]  # wallets reloaded because their mirror proved wrong


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """A batch decoded and planned (steps 1-2, pure), ready to be written."""

    records: tuple[InboundRecord, ...]
    poison: tuple[tuple[InboundRecord, SchemaViolation], ...]
    plan: BatchPlan


@dataclass(frozen=True, slots=True)
class _Settled:
    recovered: int
    drifted: frozenset[str]
    results: tuple[SettleResult, ...]


def _utc_now() -> datetime:
    return datetime.now(UTC)


async def with_retries(policy: RetryPolicy, step: str, action: Callable[[], Awaitable[_T]]) -> _T:
    """Run an idempotent I/O step, retrying outages with backoff; SettlementStalled after
    ``policy.attempts`` failures. Anything not an outage (a bug) propagates at once."""
    for attempt in range(1, policy.attempts + 1):
        try:
            return await action()
        except RETRYABLE as exc:
            if attempt == policy.attempts:
                raise SettlementStalled(
                    f"{step} failed {attempt} times (last: {exc!r}); offsets were not committed",
                    step=step,
                ) from exc
            _log.warning(
                "%s failed (attempt %d/%d), retrying: %r", step, attempt, policy.attempts, exc
            )
            await asyncio.sleep(policy.delay_s(attempt))
    raise AssertionError("unreachable: the last attempt returns or raises")


class SettlementPipeline:
    """Steps 1-6 of the module docstring for one batch; the caller commits offsets (step 7).

    Clients are passed in and owned by the caller: ``writer`` (its pool also serves the
    reconciler), ``mirror`` (Redis), ``usage`` (ClickHouse, schema ensured) and ``producer``
    (a started AIOKafkaProducer with ``acks="all"``). :meth:`process_batch` returns only when
    every effect of the batch is durable, so committing its offsets afterwards is safe.
    """

    def __init__(
        self,
        *,
        writer: BatchWriter,
        mirror: WalletStore,
        usage: UsageStore,
        producer: AIOKafkaProducer,
        topics: TopicNames,
        catalogue: PricingCatalogue,
        metrics: RoleMetrics,
        retry: RetryPolicy | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.writer = writer
        self.mirror = mirror
        self.usage = usage
        self._producer = producer
        self._letters = UsageProducer(producer=producer, topics=topics, clock=clock)
        self._topics = topics
        self._catalogue = catalogue
        self._metrics = metrics
        self._retry = retry or RetryPolicy()
        self._clock = clock

    async def process_batch(self, records: Sequence[InboundRecord]) -> BatchReport:
        """Settle ``records`` (any mix of partitions); see the module docstring for the order."""
        return await self.write(self.prepare(records))

    def prepare(self, records: Sequence[InboundRecord]) -> PreparedBatch:
        """Steps 1-2 without I/O (decode, plan), so that the next batch can be prepared while
        this one is written."""
        decoded, poison = decode_batch(records)
        plan = plan_batch(decoded, self._catalogue, self._clock())
        return PreparedBatch(tuple(records), tuple(poison), plan)

    async def prepare_interleaved(self, records: Sequence[InboundRecord]) -> PreparedBatch:
        """:meth:`prepare`, yielding to the event loop every ``PREPARE_CHUNK`` records: the
        batch being written meanwhile resumes as its database, Redis and ClickHouse replies
        arrive, instead of waiting for this one's decoding to finish."""
        decoded: list[UsageAuthorized] = []
        poison: list[tuple[InboundRecord, SchemaViolation]] = []
        for start in range(0, len(records), PREPARE_CHUNK):
            chunk_decoded, chunk_poison = decode_batch(records[start : start + PREPARE_CHUNK])
            decoded += chunk_decoded
            poison += chunk_poison
            await asyncio.sleep(0)
        plan = plan_batch(decoded, self._catalogue, self._clock())
        return PreparedBatch(tuple(records), tuple(poison), plan)

    async def write(self, batch: PreparedBatch) -> BatchReport:
        """Steps 1 (dead letters) and 3-6 of a prepared batch; returns once all is durable."""
        started = time.perf_counter()
        records, poison, plan = batch.records, batch.poison, batch.plan
        await self._step("kafka dead letters", lambda: self._dead_letter(poison))
        outcome = await self._step("postgres", lambda: self.writer.post_usage(plan.charges))
        settled = await self._step("redis settle", lambda: self._settle(plan, outcome))
        refused = (*plan.refused, *_ledger_refusals(plan, outcome))
        drifted = sorted(settled.drifted | _short_of_credits(refused))
        await self._step("redis release", lambda: self._release(refused, drifted))
        balances = usage_balance_changes(
            outcome.posted, settled.results, outcome.versions, self._clock()
        )
        await self._step(
            "kafka usage.rejected, wallet.events", lambda: self._announce(refused, balances)
        )
        await self._step("clickhouse", lambda: self._record(plan, outcome))
        report = BatchReport(
            records=len(records),
            dead_letter_reasons=tuple(exc.reason.value for _, exc in poison),
            posted=len(outcome.posted),
            duplicates=len(outcome.duplicates) + plan.repeated,
            free=sum(1 for e in plan.events if e.charge is None),
            refused=refused,
            recovered=settled.recovered,
            reconciled=tuple(drifted),
        )
        self._observe(report, time.perf_counter() - started)
        return report

    async def _step(self, step: str, action: Callable[[], Awaitable[_T]]) -> _T:
        return await with_retries(self._retry, step, action)

    async def _dead_letter(self, poison: Sequence[tuple[InboundRecord, SchemaViolation]]) -> None:
        # Concurrent calls share producer batches; each returns once acknowledged.
        await asyncio.gather(
            *(self._letters.dead_letter(r.value or b"", exc, _source(r)) for r, exc in poison)
        )

    async def _settle(self, plan: BatchPlan, outcome: BatchOutcome) -> _Settled:
        """Settle each wallet's events in Redis (one atomic script per wallet)."""
        by_id = {e.settlement_id: e for e in plan.events}
        ids: dict[str, list[str]] = defaultdict(list)
        credits: dict[str, dict[str, int]] = defaultdict(dict)
        for posted in outcome.posted:
            event = by_id[posted.event_id]
            ids[event.wallet_id].append(event.settlement_id)
            credits[event.wallet_id][event.settlement_id] = posted.credits
        # Duplicates go without credits: their posting may predate the mirror's last load.
        for event_id in outcome.duplicates:
            ids[by_id[event_id].wallet_id].append(by_id[event_id].settlement_id)
        for event in plan.events:
            if event.charge is None:
                ids[event.wallet_id].append(event.settlement_id)
        calls = [SettleCall(w, tuple(ids[w]), outcome.versions.get(w), credits.get(w)) for w in ids]
        # One round trip for the batch; each wallet's settle is still its own atomic script.
        results = await settle_many(self.mirror, calls)
        for result in results:
            if result.shortfall:
                _log.warning(
                    "wallet %s: the mirror had promised %d credits it did not have (events %s)",
                    result.wallet_id,
                    result.shortfall,
                    ", ".join((*result.late_event_ids, *result.recovered_event_ids)[:10]),
                )
        return _Settled(
            recovered=sum(len(r.recovered_event_ids) for r in results),
            drifted=frozenset(r.wallet_id for r in results if r.shortfall),
            results=tuple(results),
        )

    async def _release(self, refused: Sequence[Refusal], drifted: Sequence[str]) -> None:
        """Give refused reservations back, then reload wallets whose mirror proved wrong: a
        ledger refusal for credits means the mirror admitted what the ledger could not cover."""
        for refusal in refused:
            await release(self.mirror, refusal.authorized.event.wallet_id, refusal.settlement_id)
        for wallet_id in drifted:
            result = await reconcile_wallet(self.writer.pool, self.mirror, wallet_id)
            _log.warning(
                "wallet %s reconciled after drift: ledger %d, mirror %d (drift %d, shortfall %d)",
                wallet_id,
                result.ledger_available,
                result.mirror_available,
                result.drift,
                result.shortfall,
            )

    async def _announce(
        self, refused: Sequence[Refusal], balances: Sequence[BalanceChanged]
    ) -> None:
        """The refusals on usage.rejected and the balances on wallet.events, sharing batches."""
        now = self._clock()
        messages = [
            *(
                (self._topics.usage_rejected, refusal.authorized.event.wallet_id,
                 encode(_rejection(refusal, now)))
                for refusal in refused
            ),
            *((self._topics.wallet_events, b.wallet_id, encode(b)) for b in balances),
        ]  # fmt: skip
        pending = [
            await self._producer.send(topic, value, key=wallet_key(wallet_id))
            for topic, wallet_id, value in messages
        ]
        await asyncio.gather(*pending)  # every acknowledgement (acks=all) before the commit

    async def _record(self, plan: BatchPlan, outcome: BatchOutcome) -> None:
        rejected = {r.event_id for r in outcome.rejected}
        settled = [e for e in plan.events if e.settlement_id not in rejected]
        rows = [e.row for e in settled if e.row is not None]
        for event in settled:
            if event.row is None:
                _log.warning(
                    "event %s is settled but ClickHouse cannot store it", event.settlement_id
                )
        if rows:
            # chdb is synchronous; a thread keeps the consumer's heartbeats on time.
            await asyncio.to_thread(self.usage.insert, rows)

    def _observe(self, report: BatchReport, seconds: float) -> None:
        m, role = self._metrics, self._metrics.role
        m.events_in.labels(role, self._topics.usage_authorized).inc(report.records)
        m.batch_size.labels(role).observe(report.records)
        m.batch_seconds.labels(role).observe(seconds)
        results = {
            "posted": report.posted,
            "duplicate": report.duplicates,
            "free": report.free,
            "rejected": len(report.refused),
        }
        for result, count in results.items():
            if count:
                m.settled.labels(role, result).inc(count)
        for reason in report.dead_letter_reasons:
            m.dead_letters.labels(role, reason).inc()
        if report.dead_letter_reasons:
            topic = self._topics.usage_dead_letter
            m.events_out.labels(role, topic).inc(len(report.dead_letter_reasons))
        if report.refused:
            m.events_out.labels(role, self._topics.usage_rejected).inc(len(report.refused))


def _ledger_refusals(plan: BatchPlan, outcome: BatchOutcome) -> list[Refusal]:
    by_id = {e.settlement_id: e for e in plan.events}
    return [
        Refusal(by_id[r.event_id].authorized, by_id[r.event_id].settlement_id, r.code, r.message)
        for r in outcome.rejected
    ]


def _short_of_credits(refused: Iterable[Refusal]) -> set[str]:
    return {r.authorized.event.wallet_id for r in refused if r.reason == "insufficient_credits"}


_REASON_CODE: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")


def _rejection(refusal: Refusal, at: datetime) -> UsageRejected:
    reason = refusal.reason if _REASON_CODE.fullmatch(refusal.reason) else "settlement_refused"
    return UsageRejected(
        event=refusal.authorized.event,
        reason=reason,
        message=refusal.message[:2048],
        rejected_at=at,
    )


def _source(record: InboundRecord) -> MessageSource:
    key = base64.b64encode(record.key).decode("ascii") if record.key is not None else None
    return MessageSource(
        topic=record.topic, partition=record.partition, offset=record.offset, key_base64=key
    )


# --- the process: converge, then consume (steps 0 and 7) ---------------------------------------


async def run_settlement(
    config: SettlementConfig, *, stop: asyncio.Event, metrics: RoleMetrics
) -> None:
    """Converge the mirror and the rollups, then settle batches until ``stop`` is set.

    Returns after the batch in hand is committed and every client is closed. Raises
    :class:`SettlementStalled` (or :class:`~domain.errors.Unavailable` at start-up) when a
    dependency stays down: nothing uncommitted is lost, exit non-zero and be restarted.
    """
    async with AsyncExitStack() as stack:
        pool = await open_pool(config.database_url, min_size=1, max_size=4)
        stack.push_async_callback(pool.close)
        client = connect(config.redis_url, Redis)
        stack.push_async_callback(client.aclose)
        mirror = WalletStore.create(client, KeySpace(prefix=config.key_prefix))
        usage = await asyncio.to_thread(open_usage, config.clickhouse_url, config.data_dir)
        stack.callback(usage.close)
        await serve_usage_queries(stack, usage, config.query_port)
        producer = await _started(_producer(config), config.bootstrap)
        stack.push_async_callback(producer.stop)
        await converge(
            pool, mirror, usage, days=config.reconcile_days, retry=config.retry, metrics=metrics
        )
        pipeline = SettlementPipeline(
            writer=BatchWriter(pool),
            mirror=mirror,
            usage=usage,
            producer=producer,
            topics=config.topics,
            catalogue=load_catalogue(config.pricing_path),
            metrics=metrics,
            retry=config.retry,
        )
        guard = _BatchGuard()
        consumer = _consumer(config)
        consumer.subscribe([config.topics.usage_authorized], listener=guard)
        await _started(consumer, config.bootstrap)
        stack.push_async_callback(consumer.stop)
        _log.info("settling %s as group %s", config.topics.usage_authorized, config.group_id)
        stack.enter_context(tuned_for_batches())
        await settle_batches(consumer, pipeline, guard, config, stop=stop, metrics=metrics)


def open_usage(clickhouse_url: str | None, data_dir: Path) -> UsageStore:
    """The usage store with its schema ensured (blocking: chdb boots, DDL runs)."""
    usage = open_usage_store(clickhouse_url, data_dir)
    try:
        usage.ensure_schema()
    except BaseException:
        usage.close()
        raise
    return usage


async def converge(
    pool: AsyncConnectionPool[Conn],
    mirror: WalletStore,
    usage: UsageStore,
    *,
    days: int,
    retry: RetryPolicy,
    metrics: RoleMetrics,
    clock: Callable[[], datetime] = _utc_now,
) -> None:
    """Start-up repair: rollups of the last ``days`` local days, then every wallet's mirror
    (late settlement of what a crash left posted but reserved; a rebuild after a flush)."""
    today = clock().astimezone(ZoneInfo(usage.day_timezone)).date()
    first = today - timedelta(days=days)
    appended = await with_retries(
        retry,
        "clickhouse rollups",
        lambda: asyncio.to_thread(usage.reconcile_rollups, first, today),
    )
    report = await with_retries(retry, "mirror reconcile", lambda: reconcile_all(pool, mirror))
    metrics.drift.labels(metrics.role).set(report.total_drift)
    _log.info("start-up: %d rollup corrections; %s", appended, report.summary())


async def next_batch(
    consumer: AIOKafkaConsumer,
    batch_max: int,
    batch_ms: int,
    stop: asyncio.Event,
    writing: asyncio.Future[Any] | None = None,
) -> list[Any]:
    """Up to ``batch_max`` records: the first within ``batch_ms`` (else none: idle), the rest
    within ``batch_ms`` of the first, or until ``writing`` (the batch being written meanwhile)
    is done, whichever first: once the writer is free, waiting longer only adds latency, and
    under load the batch still grows to whatever arrived during one write. Per-partition
    order is kept."""
    records: list[Any] = []
    deadline: float | None = None
    while len(records) < batch_max and not stop.is_set():
        wait_ms = batch_ms if deadline is None else int((deadline - time.monotonic()) * 1000)
        if wait_ms <= 0:
            break
        if records and writing is not None:
            if writing.done():
                break
            wait_ms = min(wait_ms, WRITER_POLL_MS)
        fetched = await consumer.getmany(timeout_ms=wait_ms, max_records=batch_max - len(records))
        for partition_records in fetched.values():
            records.extend(partition_records)
        if not records:
            break
        if deadline is None:
            deadline = time.monotonic() + batch_ms / 1000
    return records


async def settle_batches(
    consumer: AIOKafkaConsumer,
    pipeline: SettlementPipeline,
    guard: _BatchGuard,
    config: SettlementConfig,
    *,
    stop: asyncio.Event,
    metrics: RoleMetrics,
) -> None:
    """Steps 0-7 batch after batch until ``stop``, two batches overlapped: while one is
    written (ledger -> Redis -> ClickHouse -> offsets), the next is fetched, decoded and
    planned. Writes stay in order: a batch's ledger transaction starts only after the previous
    batch's offsets are committed, so a crash still leaves at most the uncommitted batches to
    redeliver. Returns once the batch in flight is committed; raises its SettlementStalled."""
    writing: asyncio.Task[None] | None = None
    try:
        while not stop.is_set():
            records = await next_batch(
                consumer, config.batch_max, config.batch_ms, stop, writing=writing
            )
            prepared = await pipeline.prepare_interleaved(records) if records else None
            if writing is not None:
                await writing
                writing = None
            if prepared is not None:
                writing = asyncio.create_task(_write(consumer, pipeline, guard, prepared))
            await _observe_lag(consumer, metrics)
    finally:
        if writing is not None:
            await asyncio.wait([writing])  # never abandon a batch half-way
    if writing is not None:
        writing.result()


async def _write(
    consumer: AIOKafkaConsumer,
    pipeline: SettlementPipeline,
    guard: _BatchGuard,
    batch: PreparedBatch,
) -> None:
    async with guard.lock:  # a rebalance waits until the batch is committed
        owned = consumer.assignment()
        if any(_tp(r) not in owned for r in batch.records):
            # Revoked while it was prepared: the new owner settles those records.
            batch = pipeline.prepare([r for r in batch.records if _tp(r) in owned])
        if batch.records:
            await pipeline.write(batch)
            await _commit(consumer, batch.records)


def _tp(record: InboundRecord) -> TopicPartition:
    return TopicPartition(record.topic, record.partition)


async def _commit(consumer: AIOKafkaConsumer, records: Sequence[InboundRecord]) -> None:
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
    try:
        await consumer.commit(offsets)  # aiokafka retries retriable errors itself
    except KafkaError as exc:
        # The batch is durable; whoever owns these partitions next redelivers it, idempotently.
        _log.warning("offset commit failed, the batch will be redelivered: %r", exc)


async def _observe_lag(consumer: AIOKafkaConsumer, metrics: RoleMetrics) -> None:
    # highwater() from fetch responses, not end_offsets(): Tansu under-reports ListOffsets.
    for tp in consumer.assignment():
        highwater = consumer.highwater(tp)
        if highwater is None:
            continue
        try:
            position = await consumer.position(tp)
        except KafkaError:  # revoked meanwhile
            continue
        metrics.consumer_lag.labels(metrics.role, str(tp.partition)).set(
            max(0, highwater - position)
        )


class _BatchGuard(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Makes a rebalance wait for the batch in hand: revoking partitions mid-batch would let
    the next owner redo it concurrently (harmless, but wasteful and noisy)."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()

    async def on_partitions_revoked(self, revoked: object) -> None:
        async with self.lock:
            pass

    async def on_partitions_assigned(self, assigned: object) -> None:
        _log.info("assigned %s", sorted(str(tp) for tp in assigned))  # type: ignore[attr-defined]


def _producer(config: SettlementConfig) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=config.bootstrap,
        client_id=f"commdesk-{ROLE}",
        acks="all",
        enable_idempotence=False,  # Tansu refuses InitProducerId; consumers dedupe on event id
        linger_ms=5,
        max_request_size=2 * 1024 * 1024,  # a dead letter embeds up to 256 KiB of raw bytes
    )


def _consumer(config: SettlementConfig) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=config.bootstrap,
        group_id=config.group_id,
        client_id=f"commdesk-{ROLE}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # a new group must not skip acknowledged events
        max_poll_records=config.batch_max,
        session_timeout_ms=config.session_timeout_ms,
        heartbeat_interval_ms=max(100, config.session_timeout_ms // 4),
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )


async def _started(client: Any, bootstrap: str) -> Any:
    try:
        await client.start()
    except KafkaError as exc:
        await client.stop()
        raise Unavailable(f"Kafka at {bootstrap} is unreachable: {exc!r}") from exc
    return client
