"""The Lua scripts of the wallet mirror, composed from ``aggregator/lua`` and registered per
client.

Each script is its own file plus shared preludes (``lib.lua``, and ``hold_lib.lua`` for holds)
concatenated in front, because Redis scripts cannot import one another. Registration only
hashes the source; redis-py's ``AsyncScript`` sends ``EVALSHA`` and on ``NOSCRIPT`` (a server
restart, a failover or ``SCRIPT FLUSH``) loads the source and retries once, so there is no
start-up ``SCRIPT LOAD`` to forget.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TypeAlias

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

RedisClient: TypeAlias = Redis | RedisCluster
"""A redis.asyncio client; a cluster client works because every script is single-slot."""

_PRELUDES: dict[str, tuple[str, ...]] = {
    "authorize": ("lib",),
    "settle": ("lib",),
    "release": ("lib",),
    "hold_reserve": ("lib", "hold_lib"),
    "hold_capture": ("lib", "hold_lib"),
    "hold_release": ("lib", "hold_lib"),
    "load_wallet": ("lib",),
    "credit": ("lib",),
    "set_status": ("lib",),
}


@cache
def script_source(name: str) -> str:
    """The full source of script ``name``: its preludes, then its own file."""
    lua = resources.files("aggregator").joinpath("lua")
    parts = [*_PRELUDES[name], name]
    return "\n".join(lua.joinpath(f"{part}.lua").read_text(encoding="utf-8") for part in parts)


@dataclass(frozen=True, slots=True)
class Scripts:
    """One registered ``AsyncScript`` per Lua file, bound to one client."""

    authorize: AsyncScript
    settle: AsyncScript
    release: AsyncScript
    hold_reserve: AsyncScript
    hold_capture: AsyncScript
    hold_release: AsyncScript
    load_wallet: AsyncScript
    credit: AsyncScript
    set_status: AsyncScript

    @classmethod
    def register(cls, client: RedisClient) -> Scripts:
        """Bind every script to ``client``. No I/O happens here."""
        return cls(**{name: client.register_script(script_source(name)) for name in _PRELUDES})
