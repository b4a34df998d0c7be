"""One ``wallet.events`` (and ``alerts.suspicious-burn``) reader per API process, fanned out to
per-wallet subscriber queues for the SSE route.

* No consumer group: the hub assigns itself every partition of both topics and starts at their
  end, so each API process sees every event (its subscribers may be on any wallet) and nothing
  is committed. Tansu answers ListOffsets(latest) with the start of the last record *batch*, so
  the first poll may return a few records from before the hub started: records whose broker
  timestamp is older than the hub's start are skipped.
* Each subscriber has a bounded queue. Delivery never waits: a subscriber whose queue is full
  is dropped on the spot (its queue is replaced by one final ``stream_dropped`` event, so the
  client knows to reconnect and re-read its balance), and the other subscribers never block.
* :meth:`LiveHub.stop` is signalled by an event; every open stream then receives a final
  ``stream_closed`` event and ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, TopicPartition

from domain.errors import Unavailable
from meter.schema import (
    SchemaViolation,
    SuspiciousBurn,
    decode_suspicious_burn,
    decode_wallet_event,
)
from meter.topics import TopicNames

log = logging.getLogger(__name__)

DROPPED: Final = "stream_dropped"
CLOSED: Final = "stream_closed"
ALERT: Final = "suspicious_burn"


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """One server-sent event: ``id`` is ``<topic>:<partition>:<offset>`` (empty for the
    stream's own control events), ``type`` the wallet event's ``type`` (or ``suspicious_burn``),
    ``data`` its JSON (the wire contract of meter/schema.py), ``final`` ends the stream."""

    id: str
    type: str
    data: str
    final: bool = False


def control(kind: str, **fields: object) -> LiveEvent:
    return LiveEvent("", kind, json.dumps({"type": kind, **fields}), final=kind != "stream_started")


class Subscription:
    """One SSE client's queue. Read with :meth:`get`; always :meth:`LiveHub.unsubscribe`."""

    def __init__(self, wallet_id: str, size: int) -> None:
        self.wallet_id = wallet_id
        self._queue: asyncio.Queue[LiveEvent] = asyncio.Queue(maxsize=size)
        self.ended = False

    def offer(self, event: LiveEvent) -> bool:
        """Enqueue without waiting; False (and nothing queued) when the queue is full."""
        if self.ended:
            return True
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            return False
        return True

    def end(self, final: LiveEvent) -> None:
        """Replace whatever is queued by ``final``: the reader sees it next and stops."""
        if self.ended:
            return
        self.ended = True
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(final)

    async def get(self, timeout_s: float) -> LiveEvent | None:
        """The next event, or None after ``timeout_s`` without one (time for a heartbeat)."""
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(self._queue.get(), timeout=timeout_s)
        return None


class LiveHub:
    def __init__(
        self,
        bootstrap: str,
        topics: TopicNames,
        *,
        queue_size: int = 256,
        metadata_timeout_s: float = 10.0,
    ) -> None:
        assert queue_size >= 2
        self._bootstrap, self._topics = bootstrap, topics
        self._queue_size, self._metadata_timeout_s = queue_size, metadata_timeout_s
        self._subscribers: dict[str, set[Subscription]] = defaultdict(set)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._consumer: Any = None
        self._started_ms = 0
        self.dropped = 0

    async def start(self) -> None:
        """Assign every partition of both topics at their end and start fanning out."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=None,
            enable_auto_commit=False,
            client_id="credits-api-live",
        )
        await consumer.start()
        try:
            partitions = await self._partitions(consumer)
            consumer.assign(partitions)
            await consumer.seek_to_end(*partitions)
        except BaseException:
            await consumer.stop()
            raise
        self._started_ms = int(time.time() * 1000) - 50  # broker and host share a clock
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(consumer), name="live-hub")

    async def _partitions(self, consumer: Any) -> list[TopicPartition]:
        names = (self._topics.wallet_events, self._topics.suspicious_burn)
        deadline = time.monotonic() + self._metadata_timeout_s
        while True:
            await consumer.topics()  # refreshes metadata
            found = {name: consumer.partitions_for_topic(name) or set() for name in names}
            if all(found.values()):
                return [TopicPartition(n, p) for n, ps in found.items() for p in sorted(ps)]
            if time.monotonic() > deadline:
                missing = [name for name, ps in found.items() if not ps]
                raise Unavailable(f"live updates: topics {missing} do not exist", topics=missing)
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        """Signal the reader, wait for it, end every stream with ``stream_closed``."""
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.close_streams("server_shutdown")
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()

    def close_streams(self, reason: str) -> None:
        """End every open stream now (also called when the HTTP server begins shutting down,
        so that open streams do not hold its graceful shutdown)."""
        for subscribers in list(self._subscribers.values()):
            for subscription in list(subscribers):
                subscription.end(control(CLOSED, reason=reason))

    def subscribe(self, wallet_id: str) -> Subscription:
        subscription = Subscription(wallet_id, self._queue_size)
        if self._stop.is_set():
            subscription.end(control(CLOSED, reason="server_shutdown"))
        self._subscribers[wallet_id].add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscribers = self._subscribers.get(subscription.wallet_id)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[subscription.wallet_id]

    def subscriber_count(self, wallet_id: str | None = None) -> int:
        if wallet_id is not None:
            return len(self._subscribers.get(wallet_id, ()))
        return sum(len(s) for s in self._subscribers.values())

    async def _run(self, consumer: Any) -> None:
        while not self._stop.is_set():
            try:
                batches = await consumer.getmany(timeout_ms=200, max_records=1000)
            except Exception:  # a broker hiccup: log, pause, poll again
                log.exception("live hub: poll failed")
                await asyncio.sleep(1.0)
                continue
            for records in batches.values():
                self.dispatch(records)

    def dispatch(self, records: Sequence[Any]) -> None:
        """Fan the records out to their wallet's subscribers (never waits)."""
        for record in records:
            if record.timestamp < self._started_ms or not self._subscribers:
                continue
            decoded = self._decode(record)
            if decoded is None:
                continue
            wallet_id, kind = decoded
            targets = self._subscribers.get(wallet_id)
            if not targets:
                continue
            event = LiveEvent(
                f"{record.topic}:{record.partition}:{record.offset}", kind, record.value.decode()
            )
            for subscription in list(targets):
                if not subscription.offer(event):
                    self.dropped += 1
                    subscription.end(control(DROPPED, reason="slow_consumer"))
                    self.unsubscribe(subscription)

    def _decode(self, record: Any) -> tuple[str, str] | None:
        try:
            if record.topic == self._topics.suspicious_burn:
                alert: SuspiciousBurn = decode_suspicious_burn(record.value or b"")
                return alert.wallet_id, ALERT
            event = decode_wallet_event(record.value or b"")
        except SchemaViolation as exc:
            log.warning("live hub: unreadable %s record: %s", record.topic, exc)
            return None
        return event.wallet_id, event.type
