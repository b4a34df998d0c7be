"""Single-record publishes straight to the partition leader: the consume path's Kafka hop.

Why: every ``POST /wallet/consume`` waits for one ``acks=all`` publish. Measured on the 2-core
build machine at 1,000 sends/s, one at a time, aiokafka's producer costs ~250-340 µs of CPU
per message: each send runs its whole sender cycle (accumulator drain, a handler object, a
task, ``asyncio.wait`` over every waiter, pure-Python request encoding and response
decoding, a ``wait_for`` per request). That was a third of a consume's CPU.

What: :class:`DirectSender` frames ``Produce`` v3 requests itself (:mod:`meter.produce_wire`,
record batches from aiokafka's C builder) and writes them on its own connection to each
partition leader, an :class:`asyncio.Protocol` that parses the answers as they arrive and
resolves the waiting sends. One request is in flight per connection (as aiokafka does, and
what keeps one partition's records in order without an idempotent producer; Tansu also
leaves pipelined requests unanswered): sends queued meanwhile, or in the same event-loop
iteration, share the next request (records of one partition share one batch), so under load
requests carry many records without any linger.

It rides on the aiokafka client the producer already owns: cluster metadata (which broker
leads which partition, and its address) comes from it. It never retries: anything other than
an acknowledged write (no known leader, no connection, a broker error code, a request
unanswered for ``request_timeout_ms``) raises :class:`DirectSendFailed`, and the caller sends
the record again through the aiokafka producer, which owns retries, reconnects and metadata
refreshes. A record written but not acknowledged may so be written twice: delivery is
at-least-once and every consumer deduplicates on event id (ARCHITECTURE). After a failure
every send takes the client's path for :data:`REST_AFTER_FAILURE_S`.

A send may carry its caller's deadline (event-loop time): a record still waiting, or in a
request still unanswered, when its deadline passes fails with ``DirectSendFailed`` (checked
once a second by the connection's watchdog, so within a second of it, and without a timer per
send: an ``asyncio.timeout`` per send cost ~3% of a consume's CPU). Connecting is bounded by
the deadline and by ``request_timeout_ms``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final, cast

from aiokafka.structs import TopicPartition

from meter.produce_wire import (
    MalformedResponse,
    Message,
    PartitionResult,
    decode_produce_response,
    encode_produce_request,
    record_batch,
    record_bytes,
    response_correlation_id,
)

MAX_DIRECT_RECORD_BYTES: Final = 256 * 1024
"""Larger records go through the aiokafka producer (one request each, its size checks)."""
REST_AFTER_FAILURE_S: Final = 1.0
"""After a failure, sends take the aiokafka producer's path this long."""
_OVERDUE_CHECK_S: Final = 1.0
_log = logging.getLogger(__name__)
_SIZE_BYTES: Final = 4


class DirectSendFailed(Exception):
    """The record was not acknowledged on the direct path; send it through the client."""


@dataclass(slots=True)
class _Queued:
    topic: str
    partition: int
    message: Message
    future: asyncio.Future[int]
    deadline: float = math.inf
    """Event-loop time after which its caller no longer waits for it."""


@dataclass(slots=True)
class _InFlight:
    correlation_id: int
    sent_at: float
    batches: dict[tuple[str, int], list[asyncio.Future[int]]]
    sends: list[_Queued]


def _fail(future: asyncio.Future[int], reason: str) -> None:
    if not future.done():
        future.set_exception(DirectSendFailed(reason))


@dataclass(eq=False)
class _BrokerLink(asyncio.Protocol):
    """One connection to one broker: one request in flight, the sends queued meanwhile go in
    the next one."""

    address: str
    client_id: str
    request_timeout_ms: int
    max_request_bytes: int
    on_failure: Any  # called (no arguments) when sends fail: a broker error, a lost link
    correlation_ids: Iterator[int]
    transport: asyncio.Transport | None = None
    closed: bool = False
    in_flight: _InFlight | None = None
    waiting: list[_Queued] = field(default_factory=list)
    requests_sent: int = 0
    _flush_scheduled: bool = False
    _buffer: bytearray = field(default_factory=bytearray)
    _watchdog: asyncio.TimerHandle | None = None

    def enqueue(self, send: _Queued) -> None:
        if self.closed:  # lost while its sender waited for the connection to open
            _fail(send.future, f"the connection to {self.address} closed")
            return
        self.waiting.append(send)
        if self.in_flight is None and not self._flush_scheduled:
            self._flush_scheduled = True  # the rest of this loop iteration's sends join it
            asyncio.get_running_loop().call_soon(self._flush)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"the connection to {self.address} was lost" + (f": {exc!r}" if exc else "")
        self._fail_all(reason)

    def abort(self, reason: str) -> None:
        """Drop the connection; every send in flight or waiting fails with ``reason``."""
        self._fail_all(reason)
        if self.transport is not None:
            self.transport.abort()

    def _fail_all(self, reason: str) -> None:
        if not self.closed and (self.in_flight is not None or self.waiting):
            _log.warning(
                "direct produce to %s failed (the client resends): %s", self.address, reason
            )
            self.on_failure()
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        sent, self.in_flight = self.in_flight, None
        waiting, self.waiting = self.waiting, []
        if sent is not None:
            for futures in sent.batches.values():
                for future in futures:
                    _fail(future, reason)
        for each in waiting:
            _fail(each.future, reason)

    def _flush(self) -> None:
        """Write the waiting sends (up to ``max_request_bytes``) as the next request."""
        self._flush_scheduled = False
        if self.in_flight is not None or self.closed:
            return
        # A caller that gave up meanwhile (its deadline passed) is not sent for: it has been
        # told the record was not acknowledged, and its retry reuses the event id.
        self.waiting = [each for each in self.waiting if not each.future.done()]
        if not self.waiting:
            return
        chunk = _leading_chunk(self.waiting, self.max_request_bytes)
        del self.waiting[: len(chunk)]
        try:
            self._write(chunk)
        except Exception as exc:  # a loop callback: its sends must hear of any failure
            self.abort(f"a request to {self.address} could not be written: {exc!r}")

    def _write(self, sends: list[_Queued]) -> None:
        assert self.transport is not None
        grouped: dict[tuple[str, int], list[_Queued]] = {}
        for each in sends:
            grouped.setdefault((each.topic, each.partition), []).append(each)
        batches: dict[str, dict[int, bytes]] = {}
        for (topic, partition), group in grouped.items():
            batches.setdefault(topic, {})[partition] = record_batch([g.message for g in group])
        correlation_id = next(self.correlation_ids) & 0x7FFFFFFF
        frame = encode_produce_request(
            correlation_id, self.client_id, self.request_timeout_ms, batches
        )
        futures = {where: [g.future for g in group] for where, group in grouped.items()}
        self.in_flight = _InFlight(correlation_id, time.monotonic(), futures, sends)
        self.transport.write(frame)
        self.requests_sent += 1
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().call_later(
                _OVERDUE_CHECK_S, self._check_overdue
            )

    def _check_overdue(self) -> None:
        self._watchdog = None
        if self.in_flight is None or self.closed:
            return
        if time.monotonic() - self.in_flight.sent_at > self.request_timeout_ms / 1000:
            self.abort(f"{self.address} left a request unanswered for {self.request_timeout_ms} ms")
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        for each in (*self.in_flight.sends, *self.waiting):
            if each.deadline <= now:  # the answer, if it comes, skips a done future
                _fail(each.future, f"no acknowledgement from {self.address} by its deadline")
        self._watchdog = loop.call_later(_OVERDUE_CHECK_S, self._check_overdue)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= _SIZE_BYTES:
            end = _SIZE_BYTES + int.from_bytes(buffer[:_SIZE_BYTES], "big")
            if len(buffer) < end:
                return
            frame = bytes(buffer[_SIZE_BYTES:end])
            del buffer[:end]
            try:
                self._answer(frame)
            except MalformedResponse as exc:
                self.abort(f"{self.address} answered what cannot be read: {exc}")
                return

    def _answer(self, frame: bytes) -> None:
        sent = self.in_flight
        if sent is None:
            raise MalformedResponse("an answer to no request")
        if response_correlation_id(frame) != sent.correlation_id:
            raise MalformedResponse("an answer to another request")
        results = {(r.topic, r.partition): r for r in decode_produce_response(frame)}
        self.in_flight = None
        for where, futures in sent.batches.items():
            _resolve(futures, results.get(where), self.on_failure)
        if self.waiting:
            self._flush()


def _resolve(
    futures: list[asyncio.Future[int]], result: PartitionResult | None, on_error: Any
) -> None:
    if result is None or result.error_code != 0:
        reason = "no answer for the partition" if result is None else f"error {result.error_code}"
        on_error()
        for future in futures:
            _fail(future, f"the broker refused the batch: {reason}")
        return
    for index, future in enumerate(futures):
        if not future.done():  # a caller that timed out cancelled its future
            future.set_result(result.base_offset + index)


class DirectSender:
    """See the module docstring. ``client`` is a started aiokafka client (``producer.client``)
    whose metadata names the leaders; every send is ``acks=all``."""

    def __init__(
        self,
        client: Any,
        *,
        client_id: str,
        request_timeout_ms: int,
        max_request_bytes: int,
        rest_s: float = REST_AFTER_FAILURE_S,
    ) -> None:
        self._client = client
        self._rest_s = rest_s
        self._resting_until = 0.0
        self._client_id = client_id
        self._timeout_ms = request_timeout_ms
        self._max_request_bytes = max_request_bytes
        self._links: dict[int, _BrokerLink] = {}
        self._connecting: dict[int, asyncio.Future[_BrokerLink]] = {}
        self._correlation_ids = itertools.count(1)

    @property
    def requests_sent(self) -> int:
        """Produce requests written on the open connections (sends share requests)."""
        return sum(link.requests_sent for link in self._links.values())

    async def send(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes,
        *,
        deadline: float | None = None,
    ) -> int:
        """Write one record to ``topic``/``partition``; its offset once every in-sync replica
        has it. Raises :class:`DirectSendFailed` if it was not acknowledged, or not by
        ``deadline`` (event-loop time; module docstring)."""
        if time.monotonic() < self._resting_until:
            raise DirectSendFailed("resting after a failure: the client sends meanwhile")
        if len(value) + len(key or b"") > MAX_DIRECT_RECORD_BYTES:
            raise DirectSendFailed("a record this large goes through the client")
        leader = self._client.cluster.leader_for_partition(TopicPartition(topic, partition))
        if leader is None or leader < 0:
            raise DirectSendFailed(f"no known leader for {topic}/{partition}")
        link = self._links.get(leader)
        if link is None or link.closed:
            try:
                async with asyncio.timeout_at(deadline):
                    link = await self._connect(leader)
            except TimeoutError as exc:
                raise DirectSendFailed(f"no connection to broker {leader} by the deadline") from exc
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        message = (key, value, int(time.time() * 1000))
        link.enqueue(
            _Queued(topic, partition, message, future, math.inf if deadline is None else deadline)
        )
        return await future

    async def _connect(self, node_id: int) -> _BrokerLink:
        pending = self._connecting.get(node_id)
        if pending is None:
            pending = asyncio.ensure_future(self._open(node_id))
            self._connecting[node_id] = pending
            pending.add_done_callback(lambda _: self._connecting.pop(node_id, None))
        return await asyncio.shield(pending)

    async def _open(self, node_id: int) -> _BrokerLink:
        broker = self._client.cluster.broker_metadata(node_id)
        if broker is None:
            raise DirectSendFailed(f"broker {node_id} is not in the cluster metadata")
        link = _BrokerLink(
            f"{broker.host}:{broker.port}",
            self._client_id,
            self._timeout_ms,
            self._max_request_bytes,
            self._failed,
            self._correlation_ids,
        )
        try:
            async with asyncio.timeout(self._timeout_ms / 1000):
                transport, _ = await asyncio.get_running_loop().create_connection(
                    lambda: link, broker.host, broker.port
                )
        except (OSError, TimeoutError) as exc:
            self._failed()
            raise DirectSendFailed(f"cannot connect to {link.address}: {exc!r}") from exc
        # uvloop may call connection_made after create_connection returns: set it here too.
        link.transport = transport
        self._links[node_id] = link
        return link

    def _failed(self) -> None:
        """After any failure every send goes through the client for ``rest_s``: its retries
        back off and refresh metadata, where ours would hammer a failing broker."""
        self._resting_until = time.monotonic() + self._rest_s
        self._client.force_metadata_update()

    async def close(self, *, drain_s: float = 5.0) -> None:
        """Wait (up to ``drain_s``) for requests in flight to be answered, then disconnect."""
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline and any(
            link.in_flight is not None or link.waiting for link in self._links.values()
        ):
            await asyncio.sleep(0.01)
        for link in self._links.values():
            link.abort("the producer stopped")
        self._links.clear()


def _leading_chunk(sends: list[_Queued], max_bytes: int) -> list[_Queued]:
    """The first sends whose records fit in ``max_bytes`` (always at least one)."""
    size = 0
    for count, each in enumerate(sends):
        size += record_bytes(each.message)
        if count and size > max_bytes:
            return sends[:count]
    return sends[:]
