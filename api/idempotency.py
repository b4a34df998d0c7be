"""``Idempotency-Key``: a retried mutating request gets the stored response, never a re-run.

Every mutating route requires the header (1-255 printable ASCII characters). Keys are scoped
to the caller's wallet (the platform admin has its own scope) and remembered for
:data:`RECORD_TTL_S` (24 h, like Stripe). The record lives in Redis:

1. ``SET NX`` an ``in_progress`` record holding the request's fingerprint (method, path and
   the canonical JSON body). Only the request that set it executes.
2. A concurrent request with the same key and fingerprint waits (polling, up to
   :data:`WAIT_S`) for the first to finish and replays its response; after that it gets
   ``idempotency_in_progress`` (409, retryable). A different fingerprint is refused at once
   with ``idempotency_conflict`` (409), whatever the record's state.
3. The executing request stores its final response (status, body) unless it is retryable
   (429, 5xx, ``idempotency_in_progress``): then the record is deleted so a retry runs anew.
   A replay carries ``Idempotent-Replayed: true``.

   The final record overwrites the request's own claim without waiting for Redis's reply
   (a detached write on the shared connection, :mod:`aggregator.multiplexed_redis`): it is
   queued before the response is sent, and every later command of this process runs after it.
   If it fails (Redis lost the connection meanwhile), the failure is logged and the claim
   simply expires after :data:`LOCK_TTL_S`: until then a retry waits, then gets
   ``idempotency_in_progress``; after that it executes again, which the ledger's source id
   (below) and the mirror's idempotent authorisation turn into a replay, never a second charge.
   Measured: about 6% of a consume's API CPU, and one Redis round trip off its latency.

Redis is not the last line of defence: each route derives its ledger ``source_id`` (payment
id, event id, adjustment id...) from the key, and the ledger is unique on it, so even a
record lost with Redis (or a lock that expired under a stalled request) cannot double-post —
it can only cost the exact replay of the first response.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel
from pydantic_core import to_json

from aggregator.claim import ClaimHeld, RequestClaim
from aggregator.multiplexed_redis import MultiplexedRedis
from api.errors import PROBLEM_JSON, problem_of
from domain.errors import (
    CreditsError,
    IdempotencyConflict,
    IdempotencyInProgress,
    InvalidInput,
)

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
RECORD_TTL_S = 24 * 3600
LOCK_TTL_S = 60
WAIT_S = 5.0
_POLL_S = 0.01
_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")


def require_key(raw: str | None) -> str:
    if raw is None or raw == "":
        raise InvalidInput(f"the {HEADER} header is required on every mutating call", field=HEADER)
    if not _KEY_RE.match(raw):
        raise InvalidInput(
            f"{HEADER} must be 1-255 printable ASCII characters without spaces", field=HEADER
        )
    return raw


def derived_id(prefix: str, scope: str, key: str) -> str:
    """A stable, ledger-safe id for what ``key`` creates (e.g. ``pay_…``, ``evt_…``)."""
    return f"{prefix}_{hashlib.sha256(f'{scope}|{key}'.encode()).hexdigest()[:24]}"


def fingerprint(method: str, path: str, body: bytes) -> str:
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"))
    except (ValueError, UnicodeDecodeError):
        canonical = body.hex()
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Stored:
    status: int
    body: Any
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)
    """The response headers a client acts on (``Retry-After``, ``WWW-Authenticate``)."""


def _retryable(status: int, body: Any) -> bool:
    code = body.get("code") if isinstance(body, dict) else None
    return status == 429 or status >= 500 or code == IdempotencyInProgress.code


class IdempotencyStore:
    def __init__(self, client: Any, prefix: str) -> None:
        self._client = client
        self._prefix = prefix

    def record_key(self, scope: str, key: str) -> str:
        # The scope (a wallet id, or the admin's) is the key's hash tag: the record shares the
        # wallet's slot, so the consume path's authorisation script can take it (aggregator.claim).
        return f"{self._prefix}:idem:{{{scope}}}:{hashlib.sha256(key.encode()).hexdigest()}"

    def claim_first(self, action: Action) -> ClaimingAction:
        """``action`` preceded by its own claim (``SET NX``): every route but consume, whose
        authorisation script takes the claim itself."""

        async def claim_then_act(claim: RequestClaim) -> tuple[int, Body]:
            if not await self._client.set(claim.key, claim.record, nx=True, px=claim.ttl_ms):
                raise ClaimHeld(claim.key)
            claim.taken = True
            return await action()

        return claim_then_act

    async def execute(
        self,
        *,
        scope: str,
        key: str,
        fingerprint: str,
        instance: str,
        action: Callable[[RequestClaim], Awaitable[tuple[int, Any]]],
    ) -> Response:
        """Run ``action`` once per (scope, key); see the module docstring. The action takes the
        claim itself, atomically with its work (consume: in the authorisation script; every
        other route: :meth:`claim_first`), and raises ``ClaimHeld`` if it exists.

        An action that fails before taking the claim (an invalid body, an unknown wallet) is
        answered as if it had claimed first: a final answer is recorded only if nobody holds
        the key (``SET NX``), otherwise the holder's record answers, as it would have.
        """
        rkey = self.record_key(scope, key)
        claim = RequestClaim(
            rkey, to_json({"state": "in_progress", "fp": fingerprint}).decode(), LOCK_TTL_S * 1000
        )
        try:
            status, body = await action(claim)
            stored = Stored(status, body, "application/json")
        except ClaimHeld:
            return await self._existing(rkey, fingerprint, instance)
        except CreditsError as exc:
            stored = _problem(exc, instance)
        except BaseException:
            if claim.taken:
                await self._client.delete(rkey)
            raise
        if _retryable(stored.status, stored.body):
            if claim.taken:
                await self._client.delete(rkey)
            return _response(stored, replayed=False)
        record = {"state": "done", "fp": fingerprint, "status": stored.status,
                  "body": stored.body, "media_type": stored.media_type,
                  "headers": stored.headers}  # fmt: skip
        if claim.taken:
            await self._replace_claim(rkey, to_json(record))
        elif not await self._client.set(rkey, to_json(record), nx=True, ex=RECORD_TTL_S):
            return await self._existing(rkey, fingerprint, instance)
        return _response(stored, replayed=False)

    async def _replace_claim(self, rkey: str, record: bytes) -> None:
        """Overwrite our own claim with the final record: detached on the shared connection
        (module docstring, step 3), else awaited."""
        if isinstance(self._client, MultiplexedRedis) and self._client.write_detached(
            "SET", rkey, record, "EX", RECORD_TTL_S, on_failure=partial(_record_lost, rkey)
        ):
            return
        await self._client.set(rkey, record, ex=RECORD_TTL_S)

    async def _existing(self, rkey: str, fingerprint: str, instance: str) -> Response:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_S
        while True:
            raw = await self._client.get(rkey)
            if raw is None:
                # The first request failed retryably and let go: this one may run after all.
                raise IdempotencyInProgress(
                    "the first request with this key did not finish; retry it",
                    retry_after_ms=100,
                )
            record = json.loads(raw)
            if record["fp"] != fingerprint:
                raise IdempotencyConflict(
                    "this Idempotency-Key was used with a different request; "
                    "use a new key for a new request"
                )
            if record["state"] == "done":
                stored = Stored(
                    record["status"],
                    record["body"],
                    record["media_type"],
                    record.get("headers", {}),  # records written before headers were kept
                )
                return _response(stored, replayed=True)
            if loop.time() >= deadline:
                raise IdempotencyInProgress(
                    "a request with this Idempotency-Key is still executing", retry_after_ms=500
                )
            await asyncio.sleep(_POLL_S)


def _record_lost(rkey: str, exc: BaseException) -> None:
    log.warning(
        "idempotency record %s not stored (%s): its claim expires within %d s, retries with "
        "its key wait until then and then execute again (a replay, never a second charge)",
        rkey, exc, LOCK_TTL_S,
    )  # fmt: skip


def _problem(exc: CreditsError, instance: str) -> Stored:
    """The problem-details answer to ``exc``, as a response to store and replay."""
    found = problem_of(exc, instance)
    return Stored(found.status, found.body, PROBLEM_JSON, found.headers)


def _response(stored: Stored, *, replayed: bool) -> Response:
    headers = dict(stored.headers)
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    if stored.status == 204:
        return Response(status_code=204, headers=headers)
    return Response(
        to_json(stored.body),  # compact JSON, like JSONResponse, serialised in C
        status_code=stored.status,
        media_type=stored.media_type,
        headers=headers,
    )


Body = BaseModel | dict[str, Any]
Action = Callable[[], Awaitable[tuple[int, Body]]]
"""What a mutating route does once per key: its status and body (a model or a JSON dict)."""
ClaimingAction = Callable[[RequestClaim], Awaitable[tuple[int, Body]]]
"""An :data:`Action` that takes the key's claim itself, atomically with its work (consume)."""


def _json(body: Body) -> Any:
    return body.model_dump(mode="json") if isinstance(body, BaseModel) else body


async def run_idempotent(request: Request, scope: str, key: str, action: Action) -> Response:
    """Execute ``action`` once per (scope, key); see the module docstring."""
    store: IdempotencyStore = request.app.state.services.idempotency
    return await run_claiming(request, scope, key, store.claim_first(action))


async def run_claiming(request: Request, scope: str, key: str, action: ClaimingAction) -> Response:
    """:func:`run_idempotent` for an action that takes the claim itself (consume)."""
    store: IdempotencyStore = request.app.state.services.idempotency
    return await execute_claiming(
        store, request.method, request.url.path, await request.body(), scope, key, action
    )


async def execute_claiming(
    store: IdempotencyStore,
    method: str,
    path: str,
    body: bytes,
    scope: str,
    key: str,
    action: ClaimingAction,
) -> Response:
    """:func:`run_claiming` for a caller that holds the raw request (the consume fast lane)."""

    async def run(claim: RequestClaim) -> tuple[int, Any]:
        status, out = await action(claim)
        return status, _json(out)

    return await store.execute(
        scope=scope,
        key=key,
        fingerprint=fingerprint(method, path, body),
        instance=path,
        action=run,
    )
