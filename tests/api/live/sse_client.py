"""A minimal SSE reader over an httpx streaming response (tests only)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Sse:
    event: str  # "" for a comment (heartbeat)
    id: str
    data: dict[str, Any]


async def frames(response: httpx.Response) -> AsyncIterator[Sse]:
    event, ident, comment = "", "", False
    data: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if event or data:
                yield Sse(event, ident, json.loads("\n".join(data)) if data else {})
            elif comment:
                yield Sse("", "", {})
            event, ident, data, comment = "", "", [], False
        elif line.startswith(":"):
            comment = True
        elif line.startswith("event: "):
            event = line[7:]
        elif line.startswith("id: "):
            ident = line[4:]
        elif line.startswith("data: "):
            data.append(line[6:])


async def next_event(stream: AsyncIterator[Sse], timeout_s: float = 10.0) -> Sse:
    """The next non-heartbeat event."""
    while True:
        frame = await asyncio.wait_for(anext(stream), timeout_s)
        if frame.event:
            return frame
