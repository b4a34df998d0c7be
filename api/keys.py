"""API keys: issued once, stored as a SHA-256 of their secret, scoped, bound to one wallet member.

A key reads ``cdk_<16 hex id>_<43 url-safe chars>``. The id finds the row; the secret is
compared by its digest with :func:`hmac.compare_digest`. Secrets carry 256 random bits, so a
fast hash is the right one (a slow password hash buys nothing against brute force of 2^256
and would cost every request; GitHub and Stripe tokens work the same way).

Lookups are cached per process for :data:`CACHE_TTL_S` seconds so the hot path (consume)
costs no database round trip; a revocation through this process takes effect at once, and in
other API processes within the TTL (documented in README Operations). A key in use is
refreshed in the background once its entry is older than :data:`REFRESH_AFTER_S` plus a
random part of :data:`REFRESH_SPREAD_S`, so a busy key never waits for the database and keys
loaded together (every key of a busy process, within a second of start) are not all
refreshed together: measured in ``credits bench api``, 100 keys re-read in one 200 ms burst
every 5 s queued on the pool and stalled consumes for up to half a second; concurrent lookups
of one key share one query; at most :data:`CACHE_MAX_KEYS` keys are kept (the oldest entry
goes first).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import partial
from typing import Any

from psycopg_pool import AsyncConnectionPool

from domain.errors import InvalidInput, NotFound, Unauthenticated
from settlement.ledger.records import MEMBER_ID_RE, require_id
from settlement.ledger.writer import Conn

log = logging.getLogger(__name__)

CACHE_TTL_S = 10.0
REFRESH_AFTER_S = 5.0
REFRESH_SPREAD_S = 2.5
"""Each entry is refreshed after ``REFRESH_AFTER_S + jitter() * REFRESH_SPREAD_S`` seconds,
``jitter()`` uniform in [0, 1): still well before it expires (:data:`CACHE_TTL_S`)."""
CACHE_MAX_KEYS = 10_000
_TOKEN_RE = re.compile(r"^cdk_([a-f0-9]{16})_([A-Za-z0-9_-]{43})$")


class Scope(StrEnum):
    WALLET_READ = "wallet:read"
    WALLET_WRITE = "wallet:write"
    USAGE_WRITE = "usage:write"
    ADMIN = "admin"


class Role(StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"


MANAGERS = frozenset({Role.OWNER, Role.ADMIN})
"""Roles that may add funds, change auto-recharge, request payouts and manage keys."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling. A wallet key acts for ``member_id`` on ``wallet_id`` only; the platform
    admin key (from settings) has no wallet and reaches ``/admin`` routes only."""

    key_id: str
    scopes: frozenset[Scope]
    wallet_id: str | None = None
    member_id: str | None = None
    role: Role | None = None

    @property
    def platform_admin(self) -> bool:
        return self.wallet_id is None and Scope.ADMIN in self.scopes


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A new key. ``token`` is shown once and never stored."""

    key_id: str
    token: str
    wallet_id: str
    member_id: str
    name: str
    scopes: tuple[Scope, ...]


@dataclass(frozen=True, slots=True)
class KeyInfo:
    key_id: str
    wallet_id: str
    member_id: str
    name: str
    scopes: tuple[Scope, ...]
    created_at: datetime
    revoked_at: datetime | None


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


def new_token() -> tuple[str, str, str]:
    """(key id, secret, token)."""
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    return key_id, secret, f"cdk_{key_id}_{secret}"


def parse_token(token: str) -> tuple[str, str]:
    match = _TOKEN_RE.match(token)
    if match is None:
        raise Unauthenticated("invalid API key")
    return match.group(1), match.group(2)


def require_scopes(raw: Iterable[object]) -> tuple[Scope, ...]:
    values = list(raw)
    if not values:
        raise InvalidInput("at least one scope is required", field="scopes")
    out: list[Scope] = []
    for value in values:
        try:
            scope = Scope(str(value))
        except ValueError:
            allowed = ", ".join(s.value for s in Scope)
            raise InvalidInput(
                f"unknown scope {value!r}; one of {allowed}", field="scopes"
            ) from None
        if scope not in out:
            out.append(scope)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class _Cached:
    secret_sha256: bytes
    principal: Principal | None  # None: revoked or unknown
    refresh_after: float
    expires: float


class ApiKeys:
    """Issue, list, revoke and authenticate wallet keys (the platform admin key is separate)."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Conn],
        *,
        admin_token: str | None,
        monotonic: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.pool = pool
        self._monotonic = monotonic
        self._jitter = jitter
        self._admin_sha256 = digest(admin_token) if admin_token else None
        self._cache: dict[str, _Cached] = {}
        self._loading: dict[str, asyncio.Future[_Cached]] = {}
        """Lookups in flight (a refresh or a miss), joined by concurrent requests for the key."""
        self._generation = 0
        """Bumped by every invalidation: a lookup that started before one is not cached."""

    async def issue(
        self,
        wallet_id: str,
        member_id: str,
        *,
        name: str,
        scopes: Iterable[object],
        created_by: str,
    ) -> IssuedKey:
        require_id(member_id, field="member_id", pattern=MEMBER_ID_RE)
        clean_scopes = require_scopes(scopes)
        if not isinstance(name, str) or not 1 <= len(name.strip()) <= 100:
            raise InvalidInput("name is required (1-100 characters)", field="name")
        key_id, secret, token = new_token()
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT 1 FROM wallet_members WHERE wallet_id = %s AND member_id = %s",
                (wallet_id, member_id),
            )
            if await cur.fetchone() is None:
                raise NotFound(
                    f"member {member_id!r} of wallet {wallet_id!r} not found", field="member_id"
                )
            await conn.execute(
                "INSERT INTO api_keys (id, wallet_id, member_id, name, scopes, secret_sha256, "
                "created_by) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    key_id,
                    wallet_id,
                    member_id,
                    name.strip(),
                    [s.value for s in clean_scopes],
                    digest(secret),
                    created_by,
                ),
            )
        return IssuedKey(key_id, token, wallet_id, member_id, name.strip(), clean_scopes)

    async def list(self, wallet_id: str) -> list[KeyInfo]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT id, wallet_id, member_id, name, scopes, created_at, revoked_at "
                "FROM api_keys WHERE wallet_id = %s ORDER BY created_at, id",
                (wallet_id,),
            )
            return [_info(row) for row in await cur.fetchall()]

    async def revoke(self, wallet_id: str, key_id: str) -> KeyInfo:
        """Revoke a key of ``wallet_id``; revoking twice is a no-op returning the same row."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) "
                "WHERE id = %s AND wallet_id = %s "
                "RETURNING id, wallet_id, member_id, name, scopes, created_at, revoked_at",
                (key_id, wallet_id),
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"key {key_id!r} not found", field="key_id")
        self._invalidate(key_id)
        return _info(row)

    async def authenticate(self, token: str | None) -> Principal:
        """The principal behind a bearer token; :class:`Unauthenticated` for anything else."""
        if not token:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        if self._admin_sha256 is not None and hmac.compare_digest(
            digest(token), self._admin_sha256
        ):
            return Principal(key_id="admin", scopes=frozenset({Scope.ADMIN}))
        key_id, secret = parse_token(token)
        cached = self._cache.get(key_id)
        now = self._monotonic()
        if cached is None or cached.expires <= now:
            cached = await self._lookup(key_id)
        elif cached.refresh_after <= now and key_id not in self._loading:
            self._start_lookup(key_id)  # refresh in the background; this request goes on
        if cached.principal is None or not hmac.compare_digest(
            digest(secret), cached.secret_sha256
        ):
            raise Unauthenticated("invalid API key")
        return cached.principal

    def forget(self, wallet_id: str) -> None:
        """Drop cached keys of a wallet (after a member's role changes or a wallet freezes)."""
        for key_id, cached in list(self._cache.items()):
            if cached.principal is not None and cached.principal.wallet_id == wallet_id:
                self._cache.pop(key_id, None)
        self._loading.clear()  # a lookup in flight may hold the old role: nobody may join it
        self._generation += 1  # ... nor cache what it read

    def _invalidate(self, key_id: str) -> None:
        self._cache.pop(key_id, None)
        self._loading.pop(key_id, None)
        self._generation += 1

    async def _lookup(self, key_id: str) -> _Cached:
        """The key's row, read once however many requests ask for it at the same time."""
        return await asyncio.shield(self._start_lookup(key_id))

    def _start_lookup(self, key_id: str) -> asyncio.Future[_Cached]:
        """The lookup of ``key_id`` in flight, started now if there is none. A lookup started
        before an invalidation is no longer joinable: later callers start their own."""
        loading = self._loading.get(key_id)
        if loading is None:
            loading = asyncio.ensure_future(self._load(key_id))
            self._loading[key_id] = loading
            loading.add_done_callback(partial(self._lookup_done, key_id))
        return loading

    def _lookup_done(self, key_id: str, loading: asyncio.Future[_Cached]) -> None:
        if self._loading.get(key_id) is loading:
            del self._loading[key_id]
        if not loading.cancelled() and loading.exception() is not None:
            # Waiting callers get the error; a background refresh leaves the entry to expire.
            log.info("looking up API key %s failed: %r", key_id, loading.exception())

    async def _load(self, key_id: str) -> _Cached:
        generation = self._generation
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT k.secret_sha256, k.wallet_id, k.member_id, k.scopes, k.revoked_at, m.role "
                "FROM api_keys k JOIN wallet_members m "
                "ON m.wallet_id = k.wallet_id AND m.member_id = k.member_id WHERE k.id = %s",
                (key_id,),
            )
            row = await cur.fetchone()
        now = self._monotonic()
        sha, principal = b"\0" * 32, None
        if row is not None:
            sha, wallet_id, member_id, scopes, revoked_at, role = row
            if revoked_at is None:
                principal = Principal(
                    key_id=key_id,
                    scopes=frozenset(Scope(s) for s in scopes),
                    wallet_id=wallet_id,
                    member_id=member_id,
                    role=Role(role),
                )
        refresh_after = now + REFRESH_AFTER_S + self._jitter() * REFRESH_SPREAD_S
        cached = _Cached(bytes(sha), principal, refresh_after, now + CACHE_TTL_S)
        if generation == self._generation:
            self._cache.pop(key_id, None)  # re-insert: the dict's order is the load order
            while len(self._cache) >= CACHE_MAX_KEYS:
                del self._cache[next(iter(self._cache))]
            self._cache[key_id] = cached
        return cached


def _info(row: tuple[Any, ...]) -> KeyInfo:
    key_id, wallet_id, member_id, name, scopes, created_at, revoked_at = row
    return KeyInfo(
        key_id, wallet_id, member_id, name, tuple(Scope(s) for s in scopes), created_at, revoked_at
    )
