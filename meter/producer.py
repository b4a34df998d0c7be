"""Producer SDK for streamed metering: services ``record`` usage events, consumers dead-letter.

Delivery contract (ARCHITECTURE flow 2, invariant 6):

* ``record`` / ``record_many`` return only once the broker acknowledged every event with
  ``acks=all``; an acknowledged event is never lost downstream.
* Any failure raises :class:`PublishFailed` (retryable). Some of the events may still have been
  written, so the caller retries with the **same event ids**; every consumer deduplicates on
  ``event_id`` (STYLE 6). The producer is deliberately not idempotent: Tansu refuses idempotent
  and transactional producers, and the sinks make duplicates harmless anyway.
* The message key is the wallet id, so one wallet's events stay ordered on one partition.

The Kafka client is created in :meth:`UsageProducer.start` (or passed in), never at import.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from domain.errors import Unavailable
from meter.direct_sender import DirectSender, DirectSendFailed
from meter.schema import (
    DeadLetter,
    MessageSource,
    SchemaViolation,
    UsageEvent,
    decode_usage_event,
    encode,
)
from meter.topics import TopicNames, wallet_key

PARTITION_CACHE_KEYS = 100_000
"""Keys whose partition is remembered (wallets); the cache starts over when full."""
_DEFAULT_PARTITIONER = DefaultPartitioner()


class PublishFailed(Unavailable):
    """The broker did not acknowledge some events in time. Nothing is known about them:
    retry with the same event ids (duplicates are deduplicated downstream)."""

    code = "publish_failed"

    def __init__(self, message: str, *, event_ids: Sequence[str], **details: object) -> None:
        super().__init__(message, event_ids=tuple(event_ids), **details)
        self.event_ids = tuple(event_ids)


@dataclass(frozen=True, slots=True)
class ProducerTuning:
    """Client settings. Defaults favour throughput for ``record_many`` while keeping a single
    ``record`` under ~10 ms: a short linger lets concurrent callers share a batch."""

    linger_ms: int = 5
    max_batch_bytes: int = 512 * 1024
    max_request_bytes: int = 2 * 1024 * 1024  # a dead letter embeds up to 256 KiB of raw bytes
    request_timeout_ms: int = 15_000
    delivery_timeout_s: float = 30.0
    """Upper bound on one record/record_many call (a single record's direct send is checked
    against it once a second: :mod:`meter.direct_sender`)."""
    client_id: str = "commdesk-meter"
    direct_single_sends: bool = True
    """Single-record publishes (every consume) go straight to the partition leader
    (:mod:`meter.direct_sender`), falling back to the aiokafka producer on any failure."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where the broker stored one message."""

    topic: str
    partition: int
    offset: int


def _utc_now() -> datetime:
    return datetime.now(UTC)


class UsageProducer:
    """Publishes usage events to ``usage.events`` and dead letters to ``usage.dead-letter``.

    Give it either ``bootstrap`` (it creates and owns an ``AIOKafkaProducer`` in :meth:`start`)
    or a started ``producer`` (the caller owns it and must configure ``acks="all"``).
    """

    def __init__(
        self,
        *,
        bootstrap: str | None = None,
        producer: AIOKafkaProducer | None = None,
        topics: TopicNames | None = None,
        tuning: ProducerTuning | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        assert (bootstrap is None) != (producer is None), "pass exactly one of bootstrap/producer"
        self._bootstrap = bootstrap
        self._producer: Any = producer
        self._owns_producer = producer is None
        self._topics = topics or TopicNames()
        self._tuning = tuning or ProducerTuning()
        self._clock = clock
        self._partitions: dict[tuple[str, bytes], tuple[int, int]] = {}
        """(topic, key) -> (the topic's partition count, the key's partition)."""
        self._direct: DirectSender | None = None

    async def start(self) -> None:
        """Connect to the brokers. Raises :class:`~domain.errors.Unavailable` if unreachable."""
        if not self._owns_producer or self._producer is not None:
            return
        tuning = self._tuning
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            client_id=tuning.client_id,
            acks="all",
            enable_idempotence=False,  # Tansu refuses InitProducerId; sinks deduplicate instead
            linger_ms=tuning.linger_ms,
            max_batch_size=tuning.max_batch_bytes,
            max_request_size=tuning.max_request_bytes,
            request_timeout_ms=tuning.request_timeout_ms,
        )
        try:
            await producer.start()
        except KafkaError as exc:
            await producer.stop()
            raise Unavailable(f"Kafka at {self._bootstrap} is unreachable: {exc}") from exc
        self._producer = producer
        if tuning.direct_single_sends:
            self._direct = DirectSender(
                producer.client,
                client_id=tuning.client_id,
                request_timeout_ms=tuning.request_timeout_ms,
                max_request_bytes=tuning.max_request_bytes,
            )

    async def stop(self) -> None:
        """Flush what is buffered and disconnect (only a producer this object created)."""
        if self._owns_producer and self._producer is not None:
            direct, self._direct = self._direct, None
            if direct is not None:
                await direct.close()
            producer, self._producer = self._producer, None
            await producer.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def record(self, event: UsageEvent) -> Delivery:
        """Validate and publish one event; return once it is acknowledged by all replicas."""
        (delivery,) = await self.record_many((event,))
        return delivery

    async def record_many(self, events: Iterable[UsageEvent]) -> tuple[Delivery, ...]:
        """Publish many events in batches: enqueue all, then wait for every acknowledgement.

        Every event is re-checked against the wire contract first, so nothing reaches the topic
        that a consumer would dead-letter; an invalid one raises :class:`SchemaViolation` and
        nothing is sent. Deliveries are returned in input order.
        """
        batch = tuple(events)
        messages = [(wallet_key(e.wallet_id), _checked_payload(e)) for e in batch]
        ids = [e.event_id for e in batch]
        return await self._publish(self._topics.usage_events, messages, ids)

    async def dead_letter(
        self,
        raw: bytes,
        reason: SchemaViolation | str,
        source: MessageSource,
        *,
        message: str = "",
        details: Mapping[str, object] | None = None,
    ) -> Delivery:
        """Keep a message no consumer could accept, with why, keyed like the original.

        ``reason`` is a :class:`SchemaViolation` (its reason, message and details are used) or
        a stable code such as ``"unknown_feature"``. Returns once acknowledged, like ``record``.
        """
        if isinstance(reason, SchemaViolation):
            code, message, details = reason.reason.value, reason.message, reason.details
        else:
            code = reason
        letter = DeadLetter.capture(
            raw, reason=code, message=message, source=source, at=self._clock(), details=details
        )
        key = base64.b64decode(source.key_base64) if source.key_base64 is not None else None
        ref = f"{source.topic}/{source.partition}@{source.offset}"
        (delivery,) = await self._publish(
            self._topics.usage_dead_letter, [(key, encode(letter))], [ref]
        )
        return delivery

    async def _publish(
        self, topic: str, messages: Sequence[tuple[bytes | None, bytes]], ids: Sequence[str]
    ) -> tuple[Delivery, ...]:
        if self._producer is None:
            raise RuntimeError("UsageProducer.start() was not awaited")  # a bug, not an outage
        if len(messages) == 1:
            return (await self._publish_one(topic, messages[0], ids[0]),)
        try:
            async with asyncio.timeout(self._tuning.delivery_timeout_s):
                # send() only enqueues (waiting when the buffer is full); acks come afterwards,
                # so all messages share batches instead of paying one round trip each.
                pending = [
                    await self._producer.send(topic, value, key=key) for key, value in messages
                ]
                results = await asyncio.gather(*pending, return_exceptions=True)
        except (KafkaError, TimeoutError) as exc:
            raise PublishFailed(f"publishing to {topic} failed: {exc!r}", event_ids=ids) from exc
        deliveries: list[Delivery] = []
        errors: list[tuple[str, BaseException]] = []
        for message_id, result in zip(ids, results, strict=True):
            if isinstance(result, BaseException):
                errors.append((message_id, result))
            else:
                deliveries.append(Delivery(topic, result.partition, result.offset))
        if errors:
            first = errors[0][1]
            raise PublishFailed(
                f"{len(errors)} of {len(ids)} messages to {topic} were not acknowledged: {first!r}",
                event_ids=[event_id for event_id, _ in errors],
            ) from first
        return tuple(deliveries)

    async def _publish_one(
        self, topic: str, message: tuple[bytes | None, bytes], message_id: str
    ) -> Delivery:
        """:meth:`_publish` of one message (every consume), without the gather: straight to
        the partition's leader when it is known, else (or if that fails) through aiokafka."""
        key, value = message
        deadline = asyncio.get_running_loop().time() + self._tuning.delivery_timeout_s
        partition = self._partition_of(topic, key)
        if self._direct is not None and partition is not None:
            try:  # bounded by the deadline without a timer per send (meter.direct_sender)
                offset = await self._direct.send(topic, partition, key, value, deadline=deadline)
            except DirectSendFailed:
                pass  # the client retries (reconnects, metadata) within the deadline
            else:
                return Delivery(topic, partition, offset)
        try:
            async with asyncio.timeout_at(deadline):
                pending = await self._producer.send(topic, value, key=key, partition=partition)
                result = await pending
        except (KafkaError, TimeoutError) as exc:
            raise PublishFailed(
                f"publishing to {topic} failed: {exc!r}", event_ids=[message_id]
            ) from exc
        return Delivery(topic, result.partition, result.offset)

    def _partition_of(self, topic: str, key: bytes | None) -> int | None:
        """The partition the client's default partitioner gives ``key``, remembered per key
        while the topic's partition count stays the same (the partitioner hashes the key with
        a pure-Python murmur2 on every send). ``None`` lets the client choose: no key, a topic
        whose metadata is not known yet, or a producer passed in (its partitioner may differ)."""
        if key is None or not self._owns_producer:
            return None
        partitions = self._producer.client.cluster.partitions_for_topic(topic)
        if not partitions:
            return None
        known = self._partitions.get((topic, key))
        if known is not None and known[0] == len(partitions):
            return known[1]
        ordered = sorted(partitions)
        partition: int = _DEFAULT_PARTITIONER(key, ordered, ordered)
        if len(self._partitions) >= PARTITION_CACHE_KEYS:
            self._partitions.clear()
        self._partitions[(topic, key)] = (len(partitions), partition)
        return partition


def _checked_payload(event: UsageEvent) -> bytes:
    """Encode, and prove the bytes decode under the contract (catches ``model_construct``)."""
    payload = encode(event)
    decode_usage_event(payload)
    return payload
