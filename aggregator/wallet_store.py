"""The handle every mirror operation takes: a client, its key space and its scripts.

Built by the process that owns the client (``main()`` or a test fixture), never at import time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.commands.core import AsyncScript

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

    def run_script(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[str | int]
    ) -> Awaitable[Any]:
        """Call ``script`` through :attr:`script_client` (or ``client``); same reply either way
        (``AsyncScript`` loads the script on ``NOSCRIPT`` through whichever runs it)."""
        runner: Any = self.script_client  # AsyncScript is typed for redis-py clients only
        return script(keys=keys, args=args, client=runner)

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
