"""Redis clients for the hot paths, and many script calls in one round trip.

:func:`connect` builds a redis.asyncio client whose commands are packed by hiredis (C) instead
of redis-py's asyncio packer (pure Python): an ``EVALSHA`` with twenty keys and arguments costs
the aggregator several microseconds to pack in Python, per event. Without hiredis, or for
``rediss://`` and ``unix://`` URLs (redis-py then picks its own connection class), the client is
the stock one: same commands, same replies.

:func:`run_scripts` writes many ``EVALSHA`` calls at once on one connection and then reads every
reply (a non-transactional pipeline). Each script still runs atomically on the server, one after
another in the order given, so the calls of one wallet keep their order; only the round trips
(and the per-call Python overhead) are shared.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any, Final, TypeVar, cast

import redis.exceptions
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.commands.core import AsyncScript

from aggregator.scripts import RedisClient

try:
    import hiredis
    from redis.connection import HiredisRespSerializer
    from redis.utils import HIREDIS_AVAILABLE
except ImportError:  # an older redis-py: keep its own packer
    HIREDIS_AVAILABLE = False

_R = TypeVar("_R", bound=Redis)

REPLY_TIMEOUT_S: Final = 30.0
"""The deadline of a batch of script calls (plus 1 ms per call) when the client sets none."""

ScriptCall = tuple[AsyncScript, Sequence[str], Sequence[str | int]]
"""One script call: the script, its KEYS and its ARGV."""


class HiredisPackedConnection(Connection):
    """A redis.asyncio connection that packs commands with hiredis (same bytes on the wire)."""

    if HIREDIS_AVAILABLE:
        _packer = HiredisRespSerializer()

        def pack_command(self, *args: Any) -> list[bytes]:
            if isinstance(args[0], str) and " " not in args[0]:
                try:  # the common case: str/int arguments hiredis takes as they are
                    return [hiredis.pack_command(args)]
                except TypeError:
                    pass  # e.g. a memoryview: redis-py's serializer converts it
            packed: list[bytes] = self._packer.pack(*args)
            return packed


def connect(url: str, client_class: type[_R], **kwargs: Any) -> _R:
    """A ``client_class`` client for ``url`` (no I/O yet), packing commands with hiredis when
    it can (``client_class`` is ``Redis`` or a subclass)."""
    client = client_class.from_url(url, connection_class=HiredisPackedConnection, **kwargs)
    return cast(_R, client)


async def run_scripts(client: RedisClient, calls: Sequence[ScriptCall]) -> list[object]:
    """Run ``calls`` in order and return each reply, or the error reply of that call in its
    place (a Lua error or a refused command). Scripts the server does not know are loaded
    first (``SCRIPT EXISTS``, then ``SCRIPT LOAD`` of the missing ones).

    Raises on a connection failure or a timeout: any prefix of the calls may have run, so the
    caller must only send calls that are idempotent (every mirror script is, on its ids) and
    retry them all. A cluster client runs the calls one by one, in the same order.
    """
    if not calls:
        return []
    if not isinstance(client, Redis):
        return [await _one(script, keys, args) for script, keys, args in calls]
    await _load_missing(client, {script.sha: script for script, _, _ in calls})
    commands = [("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args in calls]
    return await _pipelined(client, commands)


async def _load_missing(client: Redis, scripts: dict[str, AsyncScript]) -> None:
    shas = list(scripts)
    known = await client.script_exists(*shas)
    for sha, exists in zip(shas, known, strict=True):
        if not exists:
            loaded = await client.script_load(scripts[sha].script)
            assert loaded == sha, "SCRIPT LOAD answered another digest"


async def _pipelined(client: Redis, commands: Sequence[tuple[str | int, ...]]) -> list[object]:
    """Write every command at once on one pooled connection, then read every reply.

    What redis-py's non-transactional pipeline does, minus its per-reply overhead (a timer per
    reply, a retry wrapper): one deadline covers the whole exchange instead. On any failure
    the connection is dropped (unread replies must never reach its next user).
    """
    pool = client.connection_pool
    connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    replies: list[object] = []
    try:
        deadline = (connection.socket_timeout or REPLY_TIMEOUT_S) + len(commands) / 1000
        async with asyncio.timeout(deadline):
            await connection.send_packed_command(connection.pack_commands(commands))
            for _ in commands:
                try:
                    replies.append(await connection.read_response(timeout=math.inf))
                except redis.exceptions.ResponseError as error:  # this call's own error reply
                    replies.append(error)
    except BaseException:
        await connection.disconnect()
        raise
    finally:
        await pool.release(connection)
    return replies


async def _one(script: AsyncScript, keys: Sequence[str], args: Sequence[str | int]) -> object:
    try:
        return await script(keys=keys, args=args)
    except redis.exceptions.ResponseError as exc:
        return exc
