"""The FastAPI application: routers, problem-details errors, and the services' lifespan.

``create_app(config)`` opens every dependency in its lifespan (:func:`api.services.open_services`)
and closes them on shutdown; background tasks (the live-update hub, the auto-recharge worker)
register on ``services.exits`` so they stop before the clients they use. OpenAPI is at
``/openapi.json`` and the interactive docs at ``/docs``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp

from api.errors import install_error_handlers
from api.fast_lane import ConsumeFastLane, LaneCounters
from api.live.lifecycle import start_live_hub
from api.recharge.lifecycle import start_recharge_worker
from api.routers import (
    admin,
    analytics,
    auto_recharge,
    health,
    live,
    payments,
    payouts,
    spend,
    wallet,
)
from api.services import ApiConfig, ApiServices, open_services
from domain.clock import Clock

ROUTERS = (
    health.router,
    wallet.router,
    spend.router,
    payouts.router,
    admin.router,
    analytics.router,
    auto_recharge.router,
    live.router,
    payments.router,
)
"""Every router the app serves; a new area adds its router here."""

Starter = Callable[[ApiServices], Any]
STARTERS: list[Starter] = [start_live_hub, start_recharge_worker]
"""Coroutines run once services are open (background workers), in order; each registers
its own shutdown on ``services.exits``."""


def create_app(config: ApiConfig, *, clock: Clock | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_services(config, clock=clock) as services:
            app.state.services = services
            for start in STARTERS:
                await start(services)
            yield

    app = CreditsApi(
        title="CommDesk Credits API",
        version="1.0.0",
        description=(
            "Prepaid credits for CommDesk: wallets, spending, payments, auto-recharge, "
            "payouts, analytics and live updates. Every mutating call takes an "
            "`Idempotency-Key` header; errors are problem-details bodies with a stable `code`."
        ),
        lifespan=lifespan,
        # No OpenTelemetry providers are configured (metrics are Prometheus, stack/metrics.py);
        # FastAPI would still check for them on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.state.fast_lane = LaneCounters()
    app.fast_lane = config.fast_lane
    return app


class CreditsApi(FastAPI):
    """The app, with the consume fast lane (:mod:`api.fast_lane`) outside every middleware
    when ``fast_lane`` is set: a consume pays for none of them. The lane answers its own
    errors the way the app's handlers would (problem details, 503 for a saturated dependency,
    500 with an incident id for a bug)."""

    fast_lane: bool = False

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        if not self.fast_lane:
            return stack
        return ConsumeFastLane(
            stack, services=lambda: self.state.services, counters=self.state.fast_lane
        )
