"""Live updates over real HTTP with a real Tansu broker: an event produced to wallet.events
reaches only its own wallet's stream; slow subscribers are dropped; shutdown ends streams."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from api.live.hub import LiveEvent, LiveHub
from meter.consume import DecisionProducer, Outbound
from meter.schema import BalanceChanged, BurnWindow, SuspiciousBurn, encode
from meter.topics import TopicNames, wallet_key
from stack.tansu import TansuBroker
from tests.api.conftest import ApiHarness
from tests.api.live.sse_client import Sse, frames, next_event

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.kafka]

STREAM = "/wallet/events/stream"


def balance_changed(wallet_id: str, available: int) -> Outbound:
    event = BalanceChanged(
        type="balance_changed",
        event_id=f"wev_{uuid.uuid4().hex[:12]}",
        wallet_id=wallet_id,
        occurred_at=datetime.now(UTC),
        available_credits=available,
        reserved_credits=0,
        delta_credits=-5,
        cause="usage",
        source_id="evt_1",
    )
    return Outbound("", wallet_key(wallet_id), encode(event), event.event_id)


def burn_alert(topic: str, wallet_id: str) -> Outbound:
    now = datetime.now(UTC)
    alert = SuspiciousBurn(
        alert_id=f"alert_{uuid.uuid4().hex[:8]}",
        wallet_id=wallet_id,
        reason_codes=("rapid_burn",),
        score=80,
        window=BurnWindow(start=now - timedelta(minutes=5), end=now),
        credits_in_window=9000,
        events_in_window=700,
        detected_at=now,
    )
    return Outbound(topic, wallet_key(wallet_id), encode(alert), alert.alert_id)


async def test_an_event_reaches_only_its_own_wallets_stream(
    api: ApiHarness, topics: TopicNames
) -> None:
    api.services.live_heartbeat_s = 0.3
    mine, other = await api.tenant(), await api.tenant()
    async with (
        api.client.stream("GET", STREAM, headers=mine.headers) as mine_response,
        api.client.stream(
            "GET", STREAM, headers={**other.headers, "Last-Event-ID": "wallet.events:0:7"}
        ) as other_response,
    ):
        assert mine_response.status_code == 200
        assert mine_response.headers["content-type"].startswith("text/event-stream")
        mine_stream, other_stream = frames(mine_response), frames(other_response)
        assert (await next_event(mine_stream)).event == "stream_started"
        started = await next_event(other_stream)
        assert started.data == {
            "type": "stream_started", "resumed": False, "last_event_id": "wallet.events:0:7"
        }  # fmt: skip

        change = balance_changed(mine.wallet_id, 1234)
        await api.services.producer.publish(
            [
                Outbound(topics.wallet_events, change.key, change.value, change.ref),
                burn_alert(topics.suspicious_burn, mine.wallet_id),
            ]
        )
        received = [await next_event(mine_stream), await next_event(mine_stream)]
        by_type = {frame.event: frame for frame in received}
        assert set(by_type) == {"balance_changed", "suspicious_burn"}
        assert by_type["balance_changed"].data["wallet_id"] == mine.wallet_id
        assert by_type["balance_changed"].data["available_credits"] == 1234
        assert by_type["balance_changed"].id.startswith(f"{topics.wallet_events}:")

        # The other wallet's stream gets heartbeats only.
        seen: list[Sse] = [await asyncio.wait_for(anext(other_stream), 5) for _ in range(3)]
        assert all(frame.event == "" for frame in seen)

        hub = api.services.live
        assert hub is not None
        hub.close_streams("server_shutdown")
        closed = await next_event(mine_stream)
        assert closed.event == "stream_closed"
        assert closed.data["reason"] == "server_shutdown"
        with pytest.raises(StopAsyncIteration):
            await anext(mine_stream)  # the response ended
    assert hub.subscriber_count() == 0


async def test_stream_needs_a_key(api: ApiHarness) -> None:
    response = await api.client.get(STREAM)
    assert response.status_code == 401
    assert response.json()["code"] == "unauthenticated"


async def test_a_slow_subscriber_is_dropped_and_never_blocks_others(
    tansu: TansuBroker, topics: TopicNames
) -> None:
    hub = LiveHub(tansu.bootstrap, topics, queue_size=5)
    await hub.start()
    try:
        slow, fast = hub.subscribe("w_live"), hub.subscribe("w_live")
        received: list[LiveEvent] = []

        async def read_fast() -> None:
            while len(received) < 15:
                event = await fast.get(10)
                assert event is not None
                received.append(event)

        reader = asyncio.create_task(read_fast())
        async with DecisionProducer(bootstrap=tansu.bootstrap, topics=topics) as producer:
            for group in range(5):  # bursts of 3: the fast reader keeps up, the slow one never
                changes = [balance_changed("w_live", 3 * group + n) for n in range(3)]
                await producer.publish(
                    [Outbound(topics.wallet_events, c.key, c.value, c.ref) for c in changes]
                )
                for _ in range(100):
                    if len(received) >= 3 * (group + 1):
                        break
                    await asyncio.sleep(0.05)
        await asyncio.wait_for(reader, 15)
        assert [event.type for event in received] == ["balance_changed"] * 15
        final = await slow.get(1)
        assert final is not None
        assert final.type == "stream_dropped"
        assert final.final
        assert await slow.get(0.1) is None  # nothing after the final event
        assert hub.dropped == 1
        assert hub.subscriber_count("w_live") == 1
    finally:
        await hub.stop()
    assert fast.ended  # stop ends every remaining stream
