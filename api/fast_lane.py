"""The consume fast lane: ``POST /wallet/consume`` without FastAPI's per-request machinery.

Why: consume is the one route on every billable operation's path. Profiled under load, the
framework around it — the middleware stack, routing over every route, dependency resolution
(bearer scheme, key, scope, services, idempotency header), the request object — cost about a
third of the CPU of a consume, more than the authorisation itself.

What: :class:`ConsumeFastLane` wraps the app's whole middleware stack (see
:func:`api.app.create_app`), so a consume skips even the outer layers. It recognises
exactly ``POST /wallet/consume`` and serves it with the building blocks the FastAPI route
uses — the same key authentication (:meth:`api.keys.ApiKeys.authenticate`), scope check
(:func:`api.auth.admit`), body model (:class:`api.usage_models.ConsumeRequest`), idempotency
record (:func:`api.idempotency.execute_claiming`) and action
(:func:`api.routers.spend.consume_action`) — so a consume means one thing whichever path
serves it.

It serves only requests it fully understands: a JSON body the model accepts, a valid key with
the ``wallet:write`` scope and a well-formed ``Idempotency-Key``. Anything else (no or bad key,
a body the model refuses, another content type, an oversized body) is handed on to the FastAPI
route with its body, so every such refusal comes from one place. Every other request passes
through untouched. The FastAPI route stays the OpenAPI declaration of the operation and serves
it when the lane is off (``ApiConfig.fast_lane``); tests send the same requests both ways and
compare the answers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Send
from starlette.types import Scope as Asgi

from api.auth import admit, bearer_token
from api.errors import OVERLOAD_ERRORS, overload_problem, problem_for, unexpected_problem
from api.idempotency import HEADER, execute_claiming, require_key
from api.keys import Principal, Scope
from api.routers.spend import consume_action
from api.services import ApiServices
from api.usage_models import ConsumeRequest
from domain.errors import CreditsError

PATH: Final = "/wallet/consume"
MAX_BODY_BYTES: Final = 64 * 1024
"""Larger consume bodies (big metadata) are handed on to the FastAPI route."""
_IDEMPOTENCY_HEADER: Final = HEADER.lower().encode()
_HANDED_ON: Final[tuple[type[Exception], ...]] = (ValidationError, CreditsError, *OVERLOAD_ERRORS)
"""Failures while admitting a request that the FastAPI route answers instead."""


@dataclass(frozen=True, slots=True)
class _Admitted:
    principal: Principal
    key: str
    body: ConsumeRequest


@dataclass(slots=True)
class LaneCounters:
    """How many consumes the lane served and how many it handed to the FastAPI route."""

    served: int = 0
    handed_on: int = 0


class ConsumeFastLane:
    """ASGI middleware serving ``POST /wallet/consume`` directly (module docstring).

    ``services`` returns the process's :class:`ApiServices` (opened by the app's lifespan, so it
    is looked up per request, not at construction).
    """

    def __init__(
        self, app: ASGIApp, services: Callable[[], ApiServices], counters: LaneCounters
    ) -> None:
        self.app = app
        self._services = services
        self.counters = counters

    async def __call__(self, scope: Asgi, receive: Receive, send: Send) -> None:
        if not _is_consume(scope):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:  # the client went away mid-body: nothing to answer
            return
        services = self._services()
        admitted = await _admit(services, scope, body)
        if admitted is None:
            self.counters.handed_on += 1
            await self.app(scope, _replay(body, receive), send)
            return
        self.counters.served += 1
        try:
            response = await _serve(services, admitted, body)
        except Exception as exc:  # a bug: answered like the app's own handler would
            response = unexpected_problem("POST", PATH, exc)
        await response(scope, receive, send)


def _is_consume(scope: Asgi) -> bool:
    return (
        scope["type"] == "http"
        and scope["method"] == "POST"
        and scope["path"] == PATH
        and not scope.get("root_path")
    )


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body, or ``None`` if the client disconnected first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields ``body`` once, then defers to the server's (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _header(scope: Asgi, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            decoded: str = value.decode("latin-1")
            return decoded
    return None


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return True  # FastAPI reads a body without a content type as JSON too
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def _admit(services: ApiServices, scope: Asgi, body: bytes) -> _Admitted | None:
    """The caller, key and body if the lane may serve this request; ``None`` hands it on."""
    if len(body) > MAX_BODY_BYTES or not _is_json(_header(scope, b"content-type")):
        return None
    token = bearer_token(_header(scope, b"authorization"))
    if token is None:
        return None
    try:
        request = ConsumeRequest.model_validate_json(body)
        principal = admit(await services.keys.authenticate(token), Scope.WALLET_WRITE)
        key = require_key(_header(scope, _IDEMPOTENCY_HEADER))
    except _HANDED_ON:
        return None  # a refusal, or the key store is unavailable: the route answers (503)
    return _Admitted(principal, key, request)


async def _serve(services: ApiServices, admitted: _Admitted, raw: bytes) -> Any:
    """Run the consume once per key; domain refusals and saturated dependencies answer as the
    FastAPI route's exception handlers would (an unexpected error propagates to the app's)."""
    try:
        wallet_id, action = consume_action(
            services, admitted.principal, admitted.body, admitted.key
        )
        return await execute_claiming(
            services.idempotency, "POST", PATH, raw, wallet_id, admitted.key, action
        )
    except CreditsError as exc:
        return problem_for(exc, PATH)
    except OVERLOAD_ERRORS as exc:
        return overload_problem("POST", PATH, exc)
