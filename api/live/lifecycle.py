"""Start and stop the live-update hub with the API process."""

from __future__ import annotations

from typing import Any

import uvicorn

from api.live.hub import LiveHub
from api.services import ApiServices


async def start_live_hub(services: ApiServices) -> None:
    """An app starter: run the hub; it stops (ending every stream) before the clients close."""
    if not services.config.live_updates:
        return
    hub = LiveHub(services.config.kafka_bootstrap, services.config.topics)
    await hub.start()
    services.live = hub
    services.exits.push_async_callback(hub.stop)


def end_streams_on_shutdown(server: uvicorn.Server, app: Any) -> None:
    """Make ``server`` end every open event stream when it begins its graceful shutdown.

    uvicorn waits for open responses to finish before it runs the lifespan shutdown, and an
    event stream never finishes by itself; without this hook a shutdown waits for every client
    to hang up (or for ``timeout_graceful_shutdown``).
    """
    original = server.shutdown

    async def shutdown(sockets: Any = None) -> None:
        services = getattr(app.state, "services", None)
        hub = getattr(services, "live", None)
        if hub is not None:
            hub.close_streams("server_shutdown")
        await original(sockets)

    server.shutdown = shutdown  # type: ignore[method-assign]
