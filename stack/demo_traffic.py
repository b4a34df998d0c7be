"""Realistic live traffic for the demo community: what ``credits demo`` (and ``credits up``) send.

The demo wallet's members use features in the mix of a community's day
(:data:`stack.demo_history.DAILY_MIX`, the same mix as the seeded history), at a rate that
follows a compressed day (quiet nights, a late-morning and a bigger evening peak; one demo
"day" lasts ``day_s`` seconds and starts at the current hour in India). On top of that:

* occasional AI bursts: one member fires a quick run of ``ai.*`` requests, which is what rate
  limits and the daily AI cap exist for, so some of them are refused (``usage.rejected``);
* every ``retry_every``-th message re-sends an earlier event unchanged (same ``event_id``), as
  a client retrying after a timeout would: the pipeline must charge it once;
* every ``malformed_every``-th message is a payload that is not valid v1 (a typo'd field, a
  string quantity, truncated JSON, ...), which the aggregator must keep in the dead-letter
  topic with a reason.

Every event id and every malformed payload contains the run id (``demo:<run>:<seq>``), so one
run's traffic can be traced through the topics and the ledger. Valid events go through
:meth:`meter.producer.UsageProducer.record_many` (acks=all); malformed ones are written raw,
because the SDK refuses to send them. Traffic is bounded by ``duration_s`` and/or ``count`` and
stops early when the stop event is set.

:class:`TrafficGenerator` is pure (seeded, clock passed in) so the mix can be tested without a
broker; :func:`run_traffic` sends what it plans.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from domain.errors import InvalidInput, Unavailable
from meter.producer import PublishFailed, UsageProducer
from meter.schema import SCHEMA_VERSION, UsageEvent, make_usage_event
from meter.topics import TopicNames, wallet_key
from stack.demo_history import DAILY_MIX, DEMO_MEMBERS, DEMO_WALLET
from stack.metrics import RoleMetrics

_log = logging.getLogger(__name__)

# Relative activity of a community per hour of the day (IST), midnight first: quiet nights, a
# late-morning plateau and a bigger evening peak. Normalised to a mean of 1 below.
_HOURLY = (
    0.35, 0.3, 0.3, 0.3, 0.3, 0.35, 0.5, 0.7, 0.9, 1.1, 1.3, 1.4,
    1.3, 1.2, 1.1, 1.1, 1.1, 1.2, 1.4, 1.7, 1.9, 1.8, 1.3, 0.7,
)  # fmt: skip
_HOURLY_MEAN = sum(_HOURLY) / len(_HOURLY)
# Owners and admins are busier than members (same order as DEMO_MEMBERS).
_MEMBER_WEIGHTS = (4, 3, 2, 2, 1)
_AI_FEATURES = ("ai.moderation", "ai.summary", "ai.search")
_RECENT_FOR_RETRY = 256  # retries pick from the last events sent, as a client retry would


def diurnal_factor(day_fraction: float) -> float:
    """Activity at ``day_fraction`` (0 = midnight) relative to the day's mean, interpolated."""
    position = (day_fraction % 1.0) * len(_HOURLY)
    hour = int(position)
    weight = position - hour
    here, after = _HOURLY[hour], _HOURLY[(hour + 1) % len(_HOURLY)]
    return (here + (after - here) * weight) / _HOURLY_MEAN


def new_run_id() -> str:
    """A short id for one traffic run (part of every event id it sends)."""
    return f"{datetime.now(UTC):%H%M%S}{secrets.token_hex(2)}"


@dataclass(frozen=True, slots=True)
class TrafficConfig:
    """What to send. ``rate`` is the mean events per second over a demo day; ``count`` bounds
    the messages of every kind (events, retries, malformed). At least one of ``duration_s``
    and ``count`` must be set."""

    wallet_id: str = DEMO_WALLET
    members: tuple[str, ...] = tuple(member for member, _ in DEMO_MEMBERS)
    rate: float = 5.0
    duration_s: float | None = 60.0
    count: int | None = None
    run_id: str = field(default_factory=new_run_id)
    seed: int | None = None
    day_s: float = 240.0
    start_hour: float | None = None  # None: the current hour in the demo's time zone
    timezone: str = "Asia/Kolkata"
    malformed_every: int = 40
    retry_every: int = 25
    ai_burst_per_s: float = 0.03
    tick_s: float = 0.1

    def __post_init__(self) -> None:
        if not self.members:
            raise InvalidInput("demo traffic needs at least one member", field="members")
        if not 0 < self.rate <= 100_000:
            raise InvalidInput("--rate must be > 0 and at most 100000 events/s", field="rate")
        if self.duration_s is None and self.count is None:
            raise InvalidInput("demo traffic must be bounded: give a duration or a count")
        if self.duration_s is not None and self.duration_s <= 0:
            raise InvalidInput("--duration must be > 0 seconds", field="duration_s")
        if self.count is not None and self.count < 1:
            raise InvalidInput("--count must be at least 1", field="count")
        if self.malformed_every < 2 or self.retry_every < 2:
            raise InvalidInput("malformed_every and retry_every must be at least 2")
        if not 0 < self.tick_s <= 1 or self.day_s <= 0:
            raise InvalidInput("tick_s must be in (0, 1] and day_s > 0")
        # The run id is part of event ids: [A-Za-z0-9_.:-], and short enough for 128 chars.
        make_usage_event(
            event_id=f"demo:{self.run_id}:000000",
            wallet_id=self.wallet_id,
            member_id=self.members[0],
            feature="api.basic_request",
            quantity=1,
            occurred_at=datetime.now(UTC),
            schema_version=SCHEMA_VERSION,
        )

    @property
    def event_id_prefix(self) -> str:
        return f"demo:{self.run_id}:"


@dataclass(frozen=True, slots=True)
class Malformed:
    """A payload that is not valid v1, and the dead-letter reason it should earn."""

    expected_reason: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class TickPlan:
    """What to send in one tick: new events, retries of earlier ones, malformed payloads."""

    events: tuple[UsageEvent, ...] = ()
    retries: tuple[UsageEvent, ...] = ()
    malformed: tuple[Malformed, ...] = ()

    @property
    def size(self) -> int:
        return len(self.events) + len(self.retries) + len(self.malformed)


@dataclass(slots=True)
class TrafficReport:
    """What one run sent (acknowledged by the broker)."""

    run_id: str
    wallet_id: str
    events: int = 0  # distinct valid events
    retries: int = 0  # re-sent events (same id)
    malformed: int = 0
    ai_bursts: int = 0
    seconds: float = 0.0
    features: Counter[str] = field(default_factory=Counter)

    @property
    def messages(self) -> int:
        return self.events + self.retries + self.malformed

    def summary(self) -> str:
        return (
            f"demo run {self.run_id}: {self.messages} messages to {self.wallet_id} in "
            f"{self.seconds:.1f}s: {self.events} events, {self.retries} retries of an event id, "
            f"{self.malformed} malformed, {self.ai_bursts} AI bursts"
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "run_id": self.run_id,
                "wallet_id": self.wallet_id,
                "events": self.events,
                "retries": self.retries,
                "malformed": self.malformed,
                "ai_bursts": self.ai_bursts,
                "seconds": round(self.seconds, 3),
                "features": dict(self.features),
            }
        )

    @classmethod
    def from_json(cls, raw: str) -> TrafficReport:
        data = json.loads(raw)
        return cls(
            run_id=str(data["run_id"]),
            wallet_id=str(data["wallet_id"]),
            events=int(data["events"]),
            retries=int(data["retries"]),
            malformed=int(data["malformed"]),
            ai_bursts=int(data["ai_bursts"]),
            seconds=float(data["seconds"]),
            features=Counter({str(k): int(v) for k, v in data["features"].items()}),
        )


class TrafficGenerator:
    """Plans the demo traffic tick by tick; pure apart from its seeded random generator."""

    def __init__(self, config: TrafficConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        self._features = [feature for feature, _ in DAILY_MIX]
        self._weights = [weight for _, weight in DAILY_MIX]
        self._member_weights = [
            _MEMBER_WEIGHTS[i] if i < len(_MEMBER_WEIGHTS) else 1
            for i in range(len(config.members))
        ]
        self._recent: deque[UsageEvent] = deque(maxlen=_RECENT_FOR_RETRY)
        self._messages = 0  # every kind, numbered from 1
        self._next_event = 0
        self._malformed = 0
        self._start_fraction = self._start_of_day()
        self._carry = 0.0  # fractional events owed from earlier ticks
        self.ai_bursts = 0

    @property
    def remaining(self) -> int | None:
        """Messages still allowed by ``count`` (None: unbounded by count)."""
        if self.config.count is None:
            return None
        return max(0, self.config.count - self._messages)

    def rate_at(self, elapsed_s: float) -> float:
        """Events per second ``elapsed_s`` into the run (the diurnal curve times ``rate``)."""
        fraction = self._start_fraction + elapsed_s / self.config.day_s
        return self.config.rate * diurnal_factor(fraction)

    def plan(self, elapsed_s: float, dt_s: float, now: datetime) -> TickPlan:
        """The messages of the tick ``[elapsed_s, elapsed_s + dt_s)``, stamped ``now``."""
        expected = self.rate_at(elapsed_s) * dt_s + self._carry
        wanted = int(expected)
        self._carry = expected - wanted
        burst: list[tuple[str, str]] = []
        if self._rng.random() < self.config.ai_burst_per_s * dt_s:
            self.ai_bursts += 1
            member = self._pick_member()
            size = self._rng.randint(6, 14)
            burst = [(self._rng.choice(_AI_FEATURES), member) for _ in range(size)]
        uses = [(self._pick_feature(), self._pick_member()) for _ in range(wanted)] + burst
        events: list[UsageEvent] = []
        retries: list[UsageEvent] = []
        malformed: list[Malformed] = []
        for feature, member in uses:
            if self.remaining == 0:
                break
            self._messages += 1
            if self._messages % self.config.malformed_every == 0:
                malformed.append(self._malformed_payload(now))
            elif self._messages % self.config.retry_every == 0 and self._recent:
                retries.append(self._rng.choice(self._recent))
            else:
                event = self._event(feature, member, now)
                events.append(event)
        # Retries of this tick's own events would not be retries: remember them afterwards.
        self._recent.extend(events)
        return TickPlan(tuple(events), tuple(retries), tuple(malformed))

    def _start_of_day(self) -> float:
        hour = self.config.start_hour
        if hour is None:
            local = datetime.now(ZoneInfo(self.config.timezone))
            hour = local.hour + local.minute / 60
        return (hour % 24) / 24

    def _pick_feature(self) -> str:
        return self._rng.choices(self._features, self._weights)[0]

    def _pick_member(self) -> str:
        return self._rng.choices(self.config.members, self._member_weights)[0]

    def _event(self, feature: str, member: str, now: datetime) -> UsageEvent:
        self._next_event += 1
        return make_usage_event(
            schema_version=SCHEMA_VERSION,
            event_id=f"{self.config.event_id_prefix}{self._next_event:06d}",
            wallet_id=self.config.wallet_id,
            member_id=member,
            feature=feature,
            quantity=1,
            occurred_at=now,
            metadata={"source": "credits-demo", "run": self.config.run_id},
        )

    def _malformed_payload(self, now: datetime) -> Malformed:
        """One of a rotating set of broken payloads, each naming the run (for tracing)."""
        self._malformed += 1
        event_id = f"{self.config.event_id_prefix}bad{self._malformed:04d}"
        base: dict[str, object] = {
            "schema_version": SCHEMA_VERSION,
            "event_id": event_id,
            "wallet_id": self.config.wallet_id,
            "member_id": self._pick_member(),
            "feature": self._pick_feature(),
            "quantity": 1,
            "occurred_at": now.isoformat(),
        }
        kind = self._malformed % 5
        if kind == 1:  # a typo: an unknown field, not a silently defaulted one
            base["quantiy"] = base.pop("quantity")
            return Malformed("unknown_field", json.dumps(base).encode())
        if kind == 2:
            base["quantity"] = "1"
            return Malformed("invalid_quantity", json.dumps(base).encode())
        if kind == 3:  # cut off mid-write
            whole = json.dumps(base).encode()
            return Malformed("malformed_json", whole[: len(whole) * 2 // 3])
        if kind == 4:
            del base["schema_version"]
            return Malformed("missing_field", json.dumps(base).encode())
        base["occurred_at"] = now.replace(tzinfo=None).isoformat()
        return Malformed("invalid_timestamp", json.dumps(base).encode())


async def run_traffic(
    config: TrafficConfig,
    bootstrap: str,
    *,
    stop: asyncio.Event,
    metrics: RoleMetrics | None = None,
    topics: TopicNames | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> TrafficReport:
    """Send the traffic :class:`TrafficGenerator` plans until the run is over or ``stop`` is
    set; return what the broker acknowledged. A failed publish is retried with the same event
    ids (consumers deduplicate); raises :class:`~domain.errors.Unavailable` if the broker is
    unreachable at start."""
    names = topics or TopicNames()
    generator = TrafficGenerator(config)
    report = TrafficReport(config.run_id, config.wallet_id)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="credits-demo",
        acks="all",
        enable_idempotence=False,  # Tansu refuses idempotent producers; consumers deduplicate
        linger_ms=5,
    )
    try:
        await producer.start()
    except KafkaError as exc:
        await producer.stop()
        raise Unavailable(
            f"Kafka at {bootstrap} is unreachable: {exc!r}; is the stack up (credits up)?"
        ) from exc
    usage = UsageProducer(producer=producer, topics=names)
    started = time.monotonic()
    _log.info(
        "demo run %s: %.1f events/s (mean) to %s for %s",
        config.run_id,
        config.rate,
        config.wallet_id,
        " and ".join(
            part
            for part in (
                f"{config.duration_s:g}s" if config.duration_s is not None else "",
                f"{config.count} messages" if config.count is not None else "",
            )
            if part
        ),
    )
    try:
        tick = 0
        while not stop.is_set() and generator.remaining != 0:
            elapsed = tick * config.tick_s
            if config.duration_s is not None and elapsed >= config.duration_s:
                break
            plan = generator.plan(elapsed, config.tick_s, clock())
            await _send(usage, producer, names.usage_events, config.wallet_id, plan, stop)
            _count(report, plan, metrics, names)
            tick += 1
            # An absolute schedule: slow sends shorten the next sleep instead of the rate.
            delay = started + tick * config.tick_s - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
    finally:
        report.seconds = time.monotonic() - started
        report.ai_bursts = generator.ai_bursts
        await producer.stop()
    _log.info("%s", report.summary())
    return report


async def _send(
    usage: UsageProducer,
    producer: AIOKafkaProducer,
    topic: str,
    wallet_id: str,
    plan: TickPlan,
    stop: asyncio.Event,
) -> None:
    batch = plan.events + plan.retries
    attempt = 0
    while True:
        try:
            if batch:
                await usage.record_many(batch)
            for bad in plan.malformed:
                # Keyed like the sender's valid events, so it lands on the wallet's partition.
                await producer.send_and_wait(topic, bad.payload, key=wallet_key(wallet_id))
            return
        except (PublishFailed, KafkaError) as exc:
            attempt += 1
            # Same ids again: the pipeline deduplicates, so a retry can never double-charge.
            delay = min(0.2 * 2**attempt, 5.0)
            _log.warning("publishing failed (%s); retrying in %.1fs with the same ids", exc, delay)
            if stop.is_set() and attempt >= 3:
                raise
            await asyncio.sleep(delay)


def _count(
    report: TrafficReport, plan: TickPlan, metrics: RoleMetrics | None, names: TopicNames
) -> None:
    report.events += len(plan.events)
    report.retries += len(plan.retries)
    report.malformed += len(plan.malformed)
    report.features.update(event.feature for event in plan.events)
    if metrics is not None and plan.size:
        metrics.events_out.labels(metrics.role, names.usage_events).inc(plan.size)
