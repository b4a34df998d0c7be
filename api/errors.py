"""Every failure leaves the API as an RFC 9457 problem-details body with a stable ``code``.

Routes raise the domain's typed errors (:mod:`domain.errors`), never ``HTTPException``; this
module maps each ``code`` to an HTTP status once. Retryable refusals carry ``Retry-After``
(seconds, rounded up) from the error's ``retry_after_ms`` detail. Request validation failures
become ``invalid_request`` (422) naming each offending field; an unexpected exception becomes a
500 ``internal_error`` whose body reveals nothing but a correlation id that is also logged.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout
from redis import exceptions as redis_errors
from starlette.exceptions import HTTPException as StarletteHTTPException

from domain.errors import CreditsError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://docs.commdesk.dev/credits/errors/"

STATUS_BY_CODE: dict[str, int] = {
    "invalid_request": 422,
    "invalid_signature": 400,
    "invalid_amount": 422,
    "invalid_config": 422,
    "invalid_settings": 422,
    "schema_violation": 422,
    "unknown_feature": 422,
    "not_found": 404,
    "unknown_wallet": 404,
    "hold_not_found": 404,
    "insufficient_credits": 402,
    "premium_paused": 402,
    "unauthenticated": 401,
    "forbidden": 403,
    "wallet_frozen": 403,
    "idempotency_conflict": 409,
    "idempotency_in_progress": 409,
    "state_conflict": 409,
    "hold_expired": 409,
    "hold_already_resolved": 409,
    "daily_cap_reached": 429,
    "rate_limited": 429,
    "unavailable": 503,
    "publish_failed": 503,
}
"""The HTTP status of each stable error code; unknown codes fall back by error class."""

_STATUS_TITLES: dict[int, str] = {
    400: "Bad request",
    401: "Authentication required",
    402: "Payment required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request too large",
    415: "Unsupported media type",
    422: "Invalid request",
    429: "Too many requests",
    500: "Internal error",
    503: "Service unavailable",
}


def status_of(exc: CreditsError) -> int:
    status = STATUS_BY_CODE.get(exc.code)
    if status is not None:
        return status
    for cls in type(exc).__mro__:
        code = getattr(cls, "code", None)
        if isinstance(code, str) and code in STATUS_BY_CODE:
            return STATUS_BY_CODE[code]
    return 503 if exc.retryable else 400


def _jsonable(value: object) -> object:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)


def problem_body(
    status: int,
    code: str,
    detail: str,
    *,
    instance: str | None = None,
    extra: Mapping[str, object] | None = None,
) -> dict[str, Any]:
    """A problem-details body. ``extra`` members sit beside the standard ones."""
    body: dict[str, Any] = {
        "type": TYPE_BASE + code,
        "title": _STATUS_TITLES.get(status, "Error"),
        "status": status,
        "code": code,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    for key, value in (extra or {}).items():
        if key not in body:
            body[key] = _jsonable(value)
    return body


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    instance: str | None = None,
    extra: Mapping[str, object] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """One problem-details response (:func:`problem_body`)."""
    body = problem_body(status, code, detail, instance=instance, extra=extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def retry_after_header(details: Mapping[str, object], status: int) -> dict[str, str]:
    raw = details.get("retry_after_ms")
    if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0:
        return {"Retry-After": str(max(1, math.ceil(raw / 1000)))}
    if status in (429, 503):
        return {"Retry-After": "1"}
    return {}


@dataclass(frozen=True, slots=True)
class Problem:
    """The answer to a domain error, before it is a response (the idempotency record keeps it)."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str]  # Retry-After, WWW-Authenticate


def problem_of(exc: CreditsError, instance: str | None = None) -> Problem:
    status = status_of(exc)
    headers = retry_after_header(exc.details, status)
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="commdesk-credits"'
    body = problem_body(status, exc.code, exc.message, instance=instance, extra=exc.details)
    return Problem(status, body, headers)


def problem_for(exc: CreditsError, instance: str | None = None) -> JSONResponse:
    found = problem_of(exc, instance)
    return JSONResponse(
        found.body, status_code=found.status, media_type=PROBLEM_JSON, headers=found.headers
    )


def _field_of(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


async def _on_credits_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CreditsError)
    return problem_for(exc, request.url.path)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"field": _field_of(tuple(err.get("loc", ()))), "message": str(err.get("msg", ""))}
        for err in exc.errors()
    ]
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5]) or "invalid request"
    return problem(
        422, "invalid_request", summary, instance=request.url.path, extra={"errors": errors}
    )


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {
        404: "not_found",
        405: "method_not_allowed",
        413: "request_too_large",
        415: "unsupported_media_type",
    }.get(exc.status_code, "http_error")
    headers = dict(exc.headers or {})
    return problem(
        exc.status_code, code, str(exc.detail), instance=request.url.path, headers=headers
    )


OVERLOAD_ERRORS: tuple[type[Exception], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    psycopg.OperationalError,
    PoolTimeout,
)
"""A dependency down or saturated: the request had no effect (every step is idempotent or
undone), so the caller gets a retryable 503, not a 500."""


def overload_problem(method: str, path: str, exc: Exception) -> JSONResponse:
    """The retryable 503 for one of :data:`OVERLOAD_ERRORS` (logged as a warning)."""
    log.warning("dependency unavailable on %s %s: %r", method, path, exc)
    return problem(
        503,
        "unavailable",
        "a dependency is unavailable or saturated; retry with the same Idempotency-Key",
        instance=path,
        headers={"Retry-After": "1"},
    )


async def _on_overload(request: Request, exc: Exception) -> JSONResponse:
    return overload_problem(request.method, request.url.path, exc)


def unexpected_problem(method: str, path: str, exc: BaseException) -> JSONResponse:
    """The 500 for a bug: the body names only an incident id, logged with the traceback."""
    incident = uuid.uuid4().hex
    log.error("unhandled error %s on %s %s", incident, method, path, exc_info=exc)
    return problem(
        500,
        "internal_error",
        f"unexpected error; reference {incident}",
        instance=path,
        extra={"incident_id": incident},
    )


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    return unexpected_problem(request.method, request.url.path, exc)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(CreditsError, _on_credits_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    for overload in OVERLOAD_ERRORS:
        app.add_exception_handler(overload, _on_overload)
    app.add_exception_handler(Exception, _on_unexpected)
