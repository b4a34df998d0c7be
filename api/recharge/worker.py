"""The auto-recharge worker: a background task of the API process (flow 6).

Three loops, stopped by one :class:`asyncio.Event` (never only by cancellation: a client
library may swallow a cancel mid-command):

* **trigger**: its own consumer group on ``wallet.events``. Per batch: decode -> keep the
  balance observations (``low_balance``, ``balance_changed`` but usage's; an auto-recharge
  ``payment_state_changed`` makes its pending try due now) -> observe each (concurrently,
  bounded; the database serialises claims per wallet) -> commit offsets. A crash before the
  commit redelivers the batch; claims are guarded by in-flight / cooldown / daily max, so a
  redelivery starts nothing twice. A batch that keeps failing is logged and skipped: the
  periodic sweep re-observes every enabled wallet, so no trigger is lost for good.
* **scheduler**: every ``tick_s``, charge the tries that are due (retries after backoff,
  pending payments, leases left by a crashed worker); every ``sweep_s``, the sweep.
* **outbox**: publish the ``recharge_*`` wallet events the store wrote, then mark them.

Usage's ``balance_changed`` (one per wallet per settlement batch, for every active wallet) is
not observed: an observation is a database claim, and usage's drops are announced by
``low_balance`` when they cross the threshold; a wallet's own higher threshold is found by the
sweep.

Several API processes may run workers: they share the consumer group, and every decision is
taken under a database lock, so "one recharge in flight per wallet" never rests on memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeGuard

from aiokafka import AIOKafkaConsumer

from api.recharge.engine import RechargeEngine
from domain.clock import Clock
from meter.consume import DecisionProducer, Outbound
from meter.schema import (
    BalanceChanged,
    LowBalance,
    PaymentStateChanged,
    SchemaViolation,
    decode_wallet_event,
)
from meter.topics import TopicNames, wallet_key
from settlement.balance_events import USAGE_CAUSE
from stack.retry_policy import RetryPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    bootstrap: str
    topics: TopicNames = field(default_factory=TopicNames)
    group_id: str = "auto-recharge"
    session_timeout_ms: int = 6_000  # Tansu: a rejoin waits ~1.5x this for the old session
    tick_s: float = 1.0
    sweep_s: float = 30.0
    concurrency: int = 16
    max_observation_age_s: int = 900  # older observations are history, not a trigger
    retry: RetryPolicy = RetryPolicy(attempts=4)


class RechargeWorker:
    def __init__(
        self,
        engine: RechargeEngine,
        producer: DecisionProducer,
        config: WorkerConfig,
        clock: Clock,
    ) -> None:
        self._engine, self._producer, self._config, self._clock = engine, producer, config, clock
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._consumer: Any = None
        self.observed = 0

    async def start(self) -> None:
        config = self._config
        consumer = AIOKafkaConsumer(
            config.topics.wallet_events,
            bootstrap_servers=config.bootstrap,
            group_id=config.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=config.session_timeout_ms,
            heartbeat_interval_ms=max(config.session_timeout_ms // 3, 100),
            client_id="credits-auto-recharge",
        )
        await consumer.start()
        self._consumer = consumer
        self._tasks = [
            asyncio.create_task(self._triggers(consumer), name="auto-recharge-triggers"),
            asyncio.create_task(self._every(config.tick_s, self._tick), name="auto-recharge-tick"),
            asyncio.create_task(
                self._every(config.sweep_s, self._engine.sweep), name="auto-recharge-sweep"
            ),
        ]

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Signal every loop, wait for them to finish their step, then leave the group."""
        self._stop.set()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=timeout_s)
            for task in late:  # stuck in I/O past the deadline: cancel as a last resort
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = []
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()

    async def _triggers(self, consumer: Any) -> None:
        while not self._stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=500)
            records = [record for batch in batches.values() for record in batch]
            if not records:
                continue
            if await self._retrying("trigger batch", functools.partial(self._observe_all, records)):
                await consumer.commit()  # only now: a crash before this redelivers the batch

    async def _observe_all(self, records: Sequence[Any]) -> None:
        oldest = self._clock.now() - timedelta(seconds=self._config.max_observation_age_s)
        gate = asyncio.Semaphore(self._config.concurrency)

        async def observe(event: LowBalance | BalanceChanged) -> None:
            async with gate:
                await self._engine.observe(event.wallet_id, event.available_credits, event.event_id)

        observations: list[Awaitable[object]] = []
        for record in records:
            try:
                event = decode_wallet_event(record.value or b"")
            except SchemaViolation as exc:  # the producer's bug; not ours to dead-letter
                log.warning(
                    "wallet.events %s@%s unreadable: %s", record.partition, record.offset, exc
                )
                continue
            if _observed(event) and event.occurred_at >= oldest:
                observations.append(observe(event))
            elif isinstance(event, PaymentStateChanged) and event.purpose == "auto_recharge":
                observations.append(self._engine.store.nudge(event.payment_id))
        self.observed += len(observations)
        await asyncio.gather(*observations)

    async def _tick(self) -> None:
        await self._engine.drive_due()
        await self._publish_outbox()

    async def _publish_outbox(self) -> None:
        topic = self._config.topics.wallet_events

        async def publish(rows: list[tuple[int, str, bytes]]) -> None:
            await self._producer.publish(
                [Outbound(topic, wallet_key(w), payload, str(seq)) for seq, w, payload in rows]
            )

        while await self._engine.store.publish_outbox(publish):
            pass

    async def _every(self, interval_s: float, step: Callable[[], Awaitable[object]]) -> None:
        while not self._stop.is_set():
            try:
                await step()
            except Exception:  # one failed step must not end the loop; the next one retries
                log.exception("auto-recharge background step failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=interval_s)

    async def _retrying(self, what: str, step: Callable[[], Awaitable[None]]) -> bool:
        """Run ``step`` with backoff. True: done, or given up for good (commit past it; the
        sweep covers it). False: stopping mid-failure (do not commit; it is redelivered)."""
        policy = self._config.retry
        for attempt in range(1, policy.attempts + 1):
            try:
                await step()
                return True
            except Exception:
                if self._stop.is_set():
                    return False
                if attempt == policy.attempts:
                    log.exception("auto-recharge: %s failed %d times; skipped", what, attempt)
                    return True
                log.warning("auto-recharge: %s failed (attempt %d); retrying", what, attempt)
                await asyncio.sleep(policy.delay_s(attempt))
        return True


def _observed(event: object) -> TypeGuard[LowBalance | BalanceChanged]:
    """A balance observation the trigger loop acts on (module docstring)."""
    if isinstance(event, BalanceChanged):
        return event.cause != USAGE_CAUSE
    return isinstance(event, LowBalance)
