"""``GET /wallet/events/stream``: the caller's wallet as server-sent events (see api/live/sse.py
for the event types, heartbeats and why ``Last-Event-ID`` does not resume)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse

from api.auth import Reader, Services, wallet_of
from api.live import sse
from domain.errors import Unavailable

router = APIRouter(tags=["live"])


@router.get(
    "/wallet/events/stream",
    summary="Live updates of the caller's wallet (server-sent events)",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "Events: stream_started, balance_changed, low_balance, "
            "premium_paused, premium_resumed, recharge_requested, recharge_succeeded, "
            "recharge_failed, payment_state_changed, suspicious_burn; a final stream_dropped "
            "or stream_closed. `Last-Event-ID` is accepted but nothing is replayed: re-read "
            "GET /wallet after reconnecting.",
        }
    },
)
async def wallet_stream(
    request: Request,
    principal: Reader,
    services: Services,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=256)] = None,
) -> StreamingResponse:
    hub = services.live
    if hub is None:
        raise Unavailable("live updates are not running in this API process")
    body = sse.stream(
        hub,
        wallet_of(principal),
        last_event_id,
        request.is_disconnected,
        heartbeat_s=services.live_heartbeat_s,
    )
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
