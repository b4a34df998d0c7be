"""The handle every mirror operation takes: a client, its key space and its scripts.

Built by the process that owns the client (``main()`` or a test fixture), never at import time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from aggregator.multiplexed_redis import MultiplexedRedis
from aggregator.redis_keys import KeySpace
from aggregator.scripts import RedisClient, Scripts
from domain.money import require_int

DAY_MS = 86_400_000
RECORD_TTL_MS = 7 * DAY_MS
"""How long decisions, hold records and credit ids are remembered (the idempotency window)."""
CAP_TTL_MS = 2 * DAY_MS
"""Daily cap counters outlive their day by a day, whatever the offset of the caller's zone."""


@dataclass(frozen=True, slots=True)
class WalletStore:
    """A redis.asyncio client (standalone or cluster) bound to the mirror's scripts and keys.

    Redis must run with ``maxmemory-policy noeviction``: an evicted in-flight map or wallet
    hash would silently break conservation (the reconciler would report it as drift).
    """

    client: RedisClient
    keys: KeySpace
    scripts: Scripts
    record_ttl_ms: int = RECORD_TTL_MS
    cap_ttl_ms: int = CAP_TTL_MS
    script_client: MultiplexedRedis | None = None
    """Runs the consume path's script calls (authorize, release; :meth:`run_script`) when set:
    the API's shared connection, which costs a fraction of redis-py's CPU per call. ``None``:
    ``client`` runs them, like every other call."""

    async def run_script(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[str | int]
    ) -> Any:
        """Call ``script`` through :attr:`script_client` (or ``client``); same reply either way.

        Through the shared connection it is a bare ``EVALSHA`` (redis-py's ``AsyncScript`` call
        costs a few microseconds of type checks per call); on ``NOSCRIPT`` (a restarted or
        flushed server) the source is loaded and the call made once more, as ``AsyncScript``
        does."""
        runner = self.script_client
        if runner is None:
            return await script(keys=keys, args=args)
        try:
            return await runner.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await runner.script_load(cast(str, script.script))  # registered from source text
            return await runner.evalsha(script.sha, len(keys), *keys, *args)

    def __post_init__(self) -> None:
        require_int(self.record_ttl_ms, field="record_ttl_ms", minimum=1)
        require_int(self.cap_ttl_ms, field="cap_ttl_ms", minimum=1)

    @classmethod
    def create(
        cls,
        client: RedisClient,
        keys: KeySpace | None = None,
        *,
        record_ttl_ms: int = RECORD_TTL_MS,
        cap_ttl_ms: int = CAP_TTL_MS,
        script_client: MultiplexedRedis | None = None,
    ) -> WalletStore:
        """Register the scripts on ``client`` (no I/O) and bundle them with the key space."""
        return cls(
            client,
            keys or KeySpace(),
            Scripts.register(client),
            record_ttl_ms,
            cap_ttl_ms,
            script_client,
        )
