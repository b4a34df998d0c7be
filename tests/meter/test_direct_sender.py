"""DirectSender against a real Tansu broker: offsets, shared requests, failures that fall back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer

from meter.direct_sender import DirectSender, DirectSendFailed, _Queued
from meter.producer import ProducerTuning, UsageProducer
from meter.schema import decode_usage_event
from meter.topics import TopicNames
from stack.tansu import TansuBroker
from tests.meter.conftest import TEST_PARTITIONS
from tests.meter.kafka_helpers import read_topic
from tests.meter.test_producer import event

pytestmark = pytest.mark.kafka


@pytest_asyncio.fixture(loop_scope="session")
async def client(tansu: TansuBroker, topics: TopicNames) -> AsyncIterator[Any]:
    """A started aiokafka client whose metadata knows the test's topics."""
    producer = AIOKafkaProducer(bootstrap_servers=tansu.bootstrap, enable_idempotence=False)
    await producer.start()
    await producer.client._wait_on_metadata(topics.usage_events)
    try:
        yield producer.client
    finally:
        await producer.stop()


def _sender(client: Any, *, request_timeout_ms: int = 15_000, rest_s: float = 0.0) -> DirectSender:
    return DirectSender(
        client,
        client_id="test-direct",
        request_timeout_ms=request_timeout_ms,
        max_request_bytes=2 * 1024 * 1024,
        rest_s=rest_s,
    )


async def _cut_while_sending(sender: DirectSender, topics: TopicNames) -> None:
    """Connect, then cut the connection under a send not yet answered: that send fails."""
    await sender.send(topics.usage_events, 0, b"k", b"first")
    pending = asyncio.ensure_future(sender.send(topics.usage_events, 0, b"k", b"cut"))
    await asyncio.sleep(0)  # queued on the link, not yet answered
    for link in sender._links.values():
        link.abort("cut by the test")
    with pytest.raises(DirectSendFailed, match="cut by the test"):
        await pending


async def test_records_land_at_the_offsets_returned(
    tansu: TansuBroker, topics: TopicNames, client: Any
) -> None:
    sender = _sender(client)
    try:
        sent = [
            (n % TEST_PARTITIONS, f"wal_{n}".encode(), f"value-{n}".encode()) for n in range(12)
        ]
        offsets = [await sender.send(topics.usage_events, p, k, v) for p, k, v in sent]
    finally:
        await sender.close()
    records = await read_topic(tansu.bootstrap, topics.usage_events, len(sent))
    stored = {(r.partition, r.offset): (r.key, r.value) for r in records}
    assert len(stored) == len(sent)
    for (partition, key, value), offset in zip(sent, offsets, strict=True):
        assert stored[(partition, offset)] == (key, value)


async def test_concurrent_sends_share_requests_and_stay_in_order(
    tansu: TansuBroker, topics: TopicNames, client: Any
) -> None:
    sender = _sender(client)
    try:
        values = [f"v{n}".encode() for n in range(200)]
        offsets = await asyncio.gather(
            *(sender.send(topics.usage_events, n % 2, b"k", v) for n, v in enumerate(values))
        )
        requests = sender.requests_sent
    finally:
        await sender.close()
    assert requests <= 3  # one request per loop iteration, not one per record
    for partition in (0, 1):
        mine = [o for n, o in enumerate(offsets) if n % 2 == partition]
        assert mine == list(range(mine[0], mine[0] + len(mine)))  # in send order, no gaps
    records = await read_topic(tansu.bootstrap, topics.usage_events, len(values))
    by_place = {(r.partition, r.offset): r.value for r in records}
    assert [by_place[(n % 2, o)] for n, o in enumerate(offsets)] == values


async def test_a_partition_without_a_known_leader_is_refused(
    topics: TopicNames, client: Any
) -> None:
    sender = _sender(client)
    with pytest.raises(DirectSendFailed, match="no known leader"):
        await sender.send(topics.usage_events, TEST_PARTITIONS + 5, b"k", b"v")
    with pytest.raises(DirectSendFailed, match="no known leader"):
        await sender.send("a-topic-nobody-made", 0, b"k", b"v")
    await sender.close()


async def test_after_a_failure_sends_take_the_clients_path_for_a_rest(
    topics: TopicNames, client: Any
) -> None:
    sender = _sender(client, rest_s=0.3)
    try:
        await _cut_while_sending(sender, topics)
        with pytest.raises(DirectSendFailed, match="resting"):
            await sender.send(topics.usage_events, 0, b"k", b"too soon")
        await asyncio.sleep(0.35)
        assert await sender.send(topics.usage_events, 0, b"k", b"rested") >= 1
    finally:
        await sender.close()


async def test_a_send_handed_to_a_link_that_closed_meanwhile_fails_at_once(
    topics: TopicNames, client: Any
) -> None:
    """The connection can close between its opening and the send that waited for it."""
    sender = _sender(client)
    try:
        await sender.send(topics.usage_events, 0, b"k", b"first")
        (link,) = sender._links.values()
        link.abort("closed by the test")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        link.enqueue(_Queued(topics.usage_events, 0, (b"k", b"late", 0), future))
        with pytest.raises(DirectSendFailed, match="closed"):
            await asyncio.wait_for(future, timeout=1)
    finally:
        await sender.close()


async def test_a_cut_connection_fails_its_sends_and_the_next_send_reconnects(
    topics: TopicNames, client: Any
) -> None:
    sender = _sender(client)
    try:
        await _cut_while_sending(sender, topics)
        offset = await sender.send(topics.usage_events, 0, b"k", b"after")
    finally:
        await sender.close()
    assert offset >= 1


@dataclass
class _SilentBroker:
    """A client whose metadata names one broker: a real TCP server that accepts and never
    answers (the only stand-in here: no Kafka broker can be told to stay silent)."""

    host: str
    port: int

    @property
    def cluster(self) -> _SilentBroker:
        return self

    def leader_for_partition(self, _: object) -> int:
        return 1

    def broker_metadata(self, _: int) -> Any:
        return self

    def force_metadata_update(self) -> None:
        pass  # nothing to refresh: this broker is all there is


@asynccontextmanager
async def _silent_sender(request_timeout_ms: int) -> AsyncIterator[DirectSender]:
    """A sender whose only broker accepts connections and never answers."""
    accepted: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sender = _sender(_SilentBroker("127.0.0.1", port), request_timeout_ms=request_timeout_ms)
    try:
        yield sender
    finally:
        await sender.close(drain_s=0)
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_request_left_unanswered_fails_after_the_request_timeout() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with _silent_sender(request_timeout_ms=300) as sender:
        with pytest.raises(DirectSendFailed, match="unanswered"):
            await asyncio.wait_for(sender.send("usage", 0, b"k", b"v"), timeout=5)
    assert 0.3 <= loop.time() - started < 3  # the watchdog looks once a second


async def test_sends_past_their_deadline_fail_before_the_request_timeout() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + 0.2
    async with _silent_sender(request_timeout_ms=60_000) as sender:
        in_flight = asyncio.ensure_future(sender.send("usage", 0, b"k", b"a", deadline=deadline))
        await asyncio.sleep(0.05)  # written: the next send waits behind it
        waiting = asyncio.ensure_future(sender.send("usage", 0, b"k", b"b", deadline=deadline))
        patient = asyncio.ensure_future(sender.send("usage", 0, b"k", b"c"))
        for send in (in_flight, waiting):
            with pytest.raises(DirectSendFailed, match="deadline"):
                await asyncio.wait_for(send, timeout=5)
        assert loop.time() - started < 2.5  # the watchdog looks once a second
        assert not patient.done()  # no deadline: only the request timeout ends it
        patient.cancel()


async def test_usage_producer_falls_back_to_the_client_when_the_direct_send_fails(
    tansu: TansuBroker, topics: TopicNames, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with UsageProducer(bootstrap=tansu.bootstrap, topics=topics) as producer:
        await producer.record(event(1))  # metadata known: the next one goes direct
        direct = producer._direct
        assert direct is not None
        requests_before = direct.requests_sent

        async def refuse(*_: object, **__: object) -> int:
            raise DirectSendFailed("refused by the test")

        monkeypatch.setattr(direct, "send", refuse)
        delivery = await producer.record(event(2))
        assert direct.requests_sent == requests_before
    records = await read_topic(tansu.bootstrap, topics.usage_events, 2)
    stored = {(r.partition, r.offset): r.value for r in records}
    assert decode_usage_event(stored[(delivery.partition, delivery.offset)]) == event(2)


async def test_direct_and_client_sends_put_a_key_on_the_same_partition(
    tansu: TansuBroker, topics: TopicNames
) -> None:
    direct_on = UsageProducer(bootstrap=tansu.bootstrap, topics=topics)
    direct_off = UsageProducer(
        bootstrap=tansu.bootstrap,
        topics=topics,
        tuning=ProducerTuning(direct_single_sends=False),
    )
    async with direct_on, direct_off:
        assert direct_off._direct is None
        pairs = [
            (await direct_on.record(event(n)), await direct_off.record(event(n))) for n in range(30)
        ]
    assert all(a.partition == b.partition for a, b in pairs[1:])  # the first loads metadata
    assert direct_on._direct is None  # stopped: its connections are closed


async def test_a_send_abandoned_while_waiting_for_the_link_is_not_written(
    tansu: TansuBroker, topics: TopicNames, client: Any
) -> None:
    """A caller whose deadline passes while its record waits behind the request in flight is
    told it failed; the record must then not be written after all."""
    sender = _sender(client)
    try:
        await sender.send(topics.usage_events, 0, b"k", b"warm")  # connected
        (link,) = sender._links.values()
        abandoned = None
        for attempt in range(50):
            first = asyncio.ensure_future(sender.send(topics.usage_events, 0, b"k", b"kept"))
            await asyncio.sleep(0)
            await asyncio.sleep(0)  # written: the link's one request is in flight
            second = asyncio.ensure_future(
                sender.send(topics.usage_events, 0, b"k", f"abandoned-{attempt}".encode())
            )
            await asyncio.sleep(0)  # queued behind it
            if link.in_flight is not None and link.waiting:
                second.cancel()
                abandoned = f"abandoned-{attempt}".encode()
                await first
                break
            await asyncio.gather(first, second)
        assert abandoned is not None, "never caught a send waiting behind a request"
        last = await sender.send(topics.usage_events, 0, b"k", b"last")
    finally:
        await sender.close()
    records = await read_topic(tansu.bootstrap, topics.usage_events, last + 1)
    values = [r.value for r in records if r.partition == 0]
    assert values[-2:] == [b"kept", b"last"]
    assert abandoned not in values
