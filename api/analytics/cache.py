"""The analytics cache: bounded LRU, keyed by the wallet's mirror version so a settle invalidates.

Why the version works: every time settlement settles a wallet's usage it stamps the ledger
version it applied into the wallet's Redis mirror hash (``applied_version``, written by
``settle.lua``; a reload stamps ``loaded_version``). A key that contains both changes exactly
when new usage (or a reload) lands, so stale entries are never *found* again — they simply age
out of the LRU. No invalidation messages, no scans, nothing to forget to call.

Two gaps, closed by a short TTL (``ttl_s``, default 15 s):

* settlement stamps the version (step 4) a few milliseconds *before* it writes the ClickHouse
  rows (step 6); a read in between caches pre-settle figures under the new version;
* free events (0 credits) and the passage of time (trailing windows) change answers without a
  version bump.

A wallet whose mirror is not loaded has no version: its answers are not cached at all.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Final, Generic, Protocol, TypeVar

from aggregator.mirror import snapshot
from aggregator.wallet_store import WalletStore
from domain.errors import InvalidInput

T = TypeVar("T")
DEFAULT_ENTRIES: Final = 4096
DEFAULT_TTL_S: Final = 15.0


class UsageVersions(Protocol):
    async def version(self, wallet_id: str) -> str | None:
        """A token that changes whenever the wallet's settled usage changes (None: unknown)."""
        ...


class MirrorUsageVersions:
    """Versions read from the wallet's Redis mirror hash (one HMGET per request)."""

    def __init__(self, mirror: WalletStore) -> None:
        self._mirror = mirror

    async def version(self, wallet_id: str) -> str | None:
        found = await snapshot(self._mirror, wallet_id)
        if found is None:
            return None
        return f"{found.loaded_version}:{found.applied_version}"


class VersionedCache(Generic[T]):
    """An LRU of at most ``max_entries`` values, each kept at most ``ttl_s`` seconds.

    Not thread-safe; it lives on the API's event loop. Concurrent misses of one key both
    compute (analytics reads are idempotent; a single-flight map is not worth its locking).
    """

    def __init__(
        self,
        max_entries: int = DEFAULT_ENTRIES,
        ttl_s: float = DEFAULT_TTL_S,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= max_entries <= 1_000_000:
            raise InvalidInput("max_entries must be 1..1000000", field="max_entries")
        if not 0 < ttl_s <= 86_400:
            raise InvalidInput("ttl_s must be in (0, 86400]", field="ttl_s")
        self._entries: OrderedDict[Hashable, tuple[float, T]] = OrderedDict()
        self._max = max_entries
        self._ttl = ttl_s
        self._now = monotonic
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> T | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] <= self._now():
            if entry is not None:
                del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[1]

    def put(self, key: Hashable, value: T) -> None:
        self._entries[key] = (self._now() + self._ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    async def get_or_compute(self, key: Hashable | None, compute: Callable[[], Awaitable[T]]) -> T:
        """The cached value of ``key``, else ``compute()`` stored under it (``None``: no cache)."""
        if key is not None:
            found = self.get(key)
            if found is not None:
                return found
        value = await compute()
        if key is not None:
            self.put(key, value)
        return value
