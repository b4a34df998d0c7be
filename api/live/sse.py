"""Server-sent events framing and one client's stream.

Resume semantics: **no resume**. Every stream starts at "now". ``Last-Event-ID`` (sent by
browsers when they reconnect) is read and echoed back in the first event,
``stream_started {"resumed": false, "last_event_id": ...}``, and nothing is replayed: the hub
keeps no history (it reads from the end of the topics, without a consumer group). A client that
reconnects re-reads ``GET /wallet`` (and what else it shows) and then applies events from the
stream; event ids (``<topic>:<partition>:<offset>``) let it ignore duplicates.

Heartbeats: an SSE comment line every ``heartbeat_s`` without events, so proxies keep the
connection and a dead client is noticed. A stream ends after a final event: ``stream_dropped``
(the client read too slowly; reconnect) or ``stream_closed`` (the server is shutting down).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from api.live.hub import LiveEvent, LiveHub, control

RETRY_MS = 3000


def frame(event: LiveEvent) -> bytes:
    """One event in ``text/event-stream`` framing (``data`` is one line of JSON)."""
    lines = []
    if event.id:
        lines.append(f"id: {event.id}")
    lines.append(f"event: {event.type}")
    lines.extend(f"data: {line}" for line in event.data.splitlines() or [""])
    return ("\n".join(lines) + "\n\n").encode()


HEARTBEAT = b": heartbeat\n\n"


async def stream(
    hub: LiveHub,
    wallet_id: str,
    last_event_id: str | None,
    is_disconnected: Callable[[], Awaitable[bool]],
    heartbeat_s: float = 15.0,
) -> AsyncIterator[bytes]:
    """The bytes of one wallet's stream until a final event or the client goes away."""
    subscription = hub.subscribe(wallet_id)
    try:
        started = control("stream_started", resumed=False, last_event_id=last_event_id)
        yield f"retry: {RETRY_MS}\n".encode() + frame(started)
        while True:
            event = await subscription.get(heartbeat_s)
            if event is None:
                if await is_disconnected():
                    return
                yield HEARTBEAT
                continue
            yield frame(event)
            if event.final:
                return
    finally:
        hub.unsubscribe(subscription)
