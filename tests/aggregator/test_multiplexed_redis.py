"""MultiplexedRedis against the real Redis (logical DB 9): FIFO matching under concurrency,
error replies, scripts, timeouts, cancellation and connection loss.

Keys carry a per-test prefix and are deleted afterwards. Nothing here flushes scripts or kills
other clients: the server may be shared (only our own connection is killed, by its id).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import cast
from urllib.parse import urlsplit, urlunsplit

import pytest
from redis import exceptions as errors
from redis.asyncio import Redis

from aggregator.multiplexed_redis import MultiplexedRedis
from stack.ports import free_port
from tests.redis_support import REDIS_URL, cleaning_client

pytestmark = pytest.mark.redis


def url_with_db(db: int) -> str:
    parts = urlsplit(REDIS_URL)
    return urlunsplit(parts._replace(path=f"/{db}"))


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}:mux:"


@pytest.fixture
async def redis_py(prefix: str) -> AsyncIterator[Redis]:
    """A redis-py client on the same database, which deletes the test's keys afterwards."""
    async with cleaning_client(f"{prefix}*") as client:
        yield client


@pytest.fixture
async def mux(redis_py: Redis) -> AsyncIterator[MultiplexedRedis]:
    client = MultiplexedRedis.from_url(REDIS_URL)
    yield client
    await client.aclose()


async def client_id(client: MultiplexedRedis) -> int:
    return cast(int, await client.execute("CLIENT", "ID"))


async def test_concurrent_callers_each_get_their_own_reply(
    mux: MultiplexedRedis, redis_py: Redis, prefix: str
) -> None:
    counter = f"{prefix}counter"
    n = 2000
    await redis_py.mset({f"{prefix}r{i}": f"read-{i}" for i in range(n) if i % 4 == 1})
    await mux.ping()  # connected: every task below writes as soon as it starts, in order

    async def one(i: int) -> object:
        match i % 4:
            case 0:
                return await mux.execute("INCR", counter)
            case 1:
                return await mux.get(f"{prefix}r{i}")
            case 2:
                return await mux.set(f"{prefix}w{i}", f"write-{i}")
            case _:
                return await mux.execute("ECHO", f"echo-{i}")

    replies = await asyncio.gather(*(one(i) for i in range(n)))

    assert replies[0::4] == list(range(1, n // 4 + 1))
    assert replies[1::4] == [f"read-{i}".encode() for i in range(1, n, 4)]
    assert replies[2::4] == [True] * (n // 4)
    assert replies[3::4] == [f"echo-{i}".encode() for i in range(3, n, 4)]
    written = await redis_py.mget([f"{prefix}w{i}" for i in range(2, n, 4)])
    assert written == [f"write-{i}".encode() for i in range(2, n, 4)]


async def test_many_racing_first_callers_share_one_connection() -> None:
    client = MultiplexedRedis.from_url(REDIS_URL)
    try:
        ids = await asyncio.gather(*(client_id(client) for _ in range(50)))
    finally:
        await client.aclose()
    assert len(set(ids)) == 1


async def test_large_values_round_trip(mux: MultiplexedRedis, prefix: str) -> None:
    big = uuid.uuid4().bytes * 65_536  # 1 MiB: written and read in many chunks
    assert await mux.set(f"{prefix}big", big)
    echoed, value = await asyncio.gather(mux.execute("ECHO", "after"), mux.get(f"{prefix}big"))
    assert value == big
    assert echoed == b"after"


async def test_error_reply_is_raised_and_the_next_command_gets_its_own_reply(
    mux: MultiplexedRedis, prefix: str
) -> None:
    key = f"{prefix}string"
    assert await mux.set(key, "x")
    with pytest.raises(errors.ResponseError, match="WRONGTYPE") as raised:
        await mux.execute("LPUSH", key, "a")
    assert not isinstance(raised.value, errors.NoScriptError)
    assert await mux.get(key) == b"x"

    replies = await asyncio.gather(
        mux.execute("LPUSH", key, "a"), mux.execute("ECHO", "ok"), return_exceptions=True
    )
    assert isinstance(replies[0], errors.ResponseError)
    assert replies[1] == b"ok"


async def test_evalsha_of_an_unknown_script_raises_no_script_error(mux: MultiplexedRedis) -> None:
    with pytest.raises(errors.NoScriptError):
        await mux.evalsha("0" * 40, 0)
    assert await mux.ping()


async def test_async_script_loads_its_source_when_the_server_lacks_it(
    mux: MultiplexedRedis, redis_py: Redis, prefix: str
) -> None:
    # A source no server has seen (a unique comment) takes the NOSCRIPT path like a SCRIPT
    # FLUSH would, without flushing the scripts of whoever else uses this server.
    script = redis_py.register_script(f"-- {prefix}\nreturn KEYS[1] .. ARGV[1]")
    assert await redis_py.script_exists(script.sha) == [False]

    client = cast(Redis, mux)  # AsyncScript only needs evalsha and script_load
    assert await script(keys=[f"{prefix}k"], args=["!"], client=client) == f"{prefix}k!".encode()
    assert await redis_py.script_exists(script.sha) == [True]
    assert await script(keys=[f"{prefix}k"], args=["?"], client=client) == f"{prefix}k?".encode()


async def test_script_load_returns_the_sha(mux: MultiplexedRedis, redis_py: Redis) -> None:
    script = redis_py.register_script("return 7")
    assert await mux.script_load("return 7") == script.sha
    assert await mux.evalsha(script.sha, 0) == 7


async def test_set_get_delete(mux: MultiplexedRedis, redis_py: Redis, prefix: str) -> None:
    key, other = f"{prefix}a", f"{prefix}b"
    assert await mux.get(key) is None
    assert await mux.set(key, "one", nx=True, ex=100)
    assert not await mux.set(key, "two", nx=True)
    assert await mux.get(key) == b"one"
    assert 0 < await redis_py.ttl(key) <= 100
    assert await mux.set(key, 3)
    assert await mux.get(key) == b"3"
    assert await redis_py.ttl(key) == -1  # a plain SET clears the TTL
    assert await mux.set(other, 1.5, px=5_000)
    assert 0 < await redis_py.pttl(other) <= 5_000
    assert await mux.delete(key, other, f"{prefix}missing") == 2
    assert await redis_py.exists(key, other) == 0


async def test_a_killed_connection_fails_pending_callers_and_the_next_call_reconnects(
    mux: MultiplexedRedis, redis_py: Redis, prefix: str
) -> None:
    first_id = await client_id(mux)
    pending = asyncio.create_task(mux.execute("BLPOP", f"{prefix}empty", 5))
    await asyncio.sleep(0.05)

    assert await redis_py.client_kill_filter(_id=str(first_id)) == 1
    with pytest.raises(errors.ConnectionError, match="lost"):
        await asyncio.wait_for(pending, 2)

    assert await client_id(mux) != first_id
    assert await mux.execute("ECHO", "back") == b"back"


async def test_a_reply_timeout_drops_the_connection(prefix: str) -> None:
    impatient = MultiplexedRedis.from_url(REDIS_URL, reply_timeout_s=0.1)
    try:
        first_id = await client_id(impatient)
        started = time.monotonic()
        blocked = asyncio.create_task(impatient.execute("BLPOP", f"{prefix}empty", 1))
        behind = asyncio.create_task(impatient.execute("ECHO", "behind"))
        with pytest.raises(errors.TimeoutError):
            await blocked
        assert time.monotonic() - started < 0.8  # the deadline, not BLPOP's own 1 s
        with pytest.raises(errors.ConnectionError):
            await behind

        assert await client_id(impatient) != first_id
        assert await impatient.execute("ECHO", "again") == b"again"
    finally:
        await impatient.aclose()


async def test_a_cancelled_caller_does_not_desynchronise_the_stream(
    mux: MultiplexedRedis, prefix: str
) -> None:
    first_id = await client_id(mux)
    blocked = asyncio.create_task(mux.execute("BLPOP", f"{prefix}empty", "0.3"))
    await asyncio.sleep(0.05)
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked

    # Queued behind the cancelled BLPOP: its nil reply must not reach any of these.
    replies = await asyncio.gather(
        mux.execute("ECHO", "one"), mux.execute("INCR", f"{prefix}n"), mux.get(f"{prefix}none")
    )
    assert list(replies) == [b"one", 1, None]
    assert await client_id(mux) == first_id  # same connection throughout


async def test_writers_wait_while_the_transport_is_paused(mux: MultiplexedRedis) -> None:
    await mux.ping()
    connection = mux._connection
    assert connection is not None
    connection.pause_writing()
    waiting = asyncio.create_task(mux.execute("ECHO", "later"))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    connection.resume_writing()
    assert await asyncio.wait_for(waiting, 2) == b"later"


async def test_an_unreachable_server_is_a_connection_error_naming_it() -> None:
    port = free_port()
    client = MultiplexedRedis.from_url(f"redis://127.0.0.1:{port}/0", connect_timeout_s=2)
    with pytest.raises(errors.ConnectionError, match=f"127.0.0.1:{port}"):
        await client.ping()
    await client.aclose()


async def test_a_refused_handshake_is_a_connection_error() -> None:
    parts = urlsplit(url_with_db(9))
    wrong = urlunsplit(
        parts._replace(netloc=f":wrong-{uuid.uuid4().hex}@{parts.hostname}:{parts.port or 6379}")
    )
    client = MultiplexedRedis.from_url(wrong)
    with pytest.raises(errors.ConnectionError, match="handshake"):
        await client.ping()
    await client.aclose()


@pytest.mark.parametrize(
    "url",
    ["rediss://127.0.0.1:6379/0", "unix:///tmp/redis.sock", "redis://127.0.0.1:6379/0?db=1"],
)
def test_unsupported_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="MultiplexedRedis"):
        MultiplexedRedis.from_url(url)


async def test_the_url_db_is_selected(prefix: str) -> None:
    key = f"{prefix}where"
    client = MultiplexedRedis.from_url(url_with_db(9))
    on_9, on_0 = Redis.from_url(url_with_db(9)), Redis.from_url(url_with_db(0))
    try:
        assert await client.set(key, "here", ex=60)
        assert await on_9.get(key) == b"here"
        assert await on_0.exists(key) == 0
    finally:
        await on_9.delete(key)
        await client.aclose()
        await on_9.aclose()
        await on_0.aclose()


async def test_aclose_fails_pending_callers_and_later_calls(prefix: str) -> None:
    client = MultiplexedRedis.from_url(REDIS_URL)
    await client.ping()
    pending = asyncio.create_task(client.execute("BLPOP", f"{prefix}empty", 5))
    await asyncio.sleep(0.05)
    await client.aclose()
    with pytest.raises(errors.ConnectionError, match="client closed"):
        await pending
    with pytest.raises(errors.ConnectionError, match="client closed"):
        await client.ping()


# --- detached writes ---------------------------------------------------------------------------


async def test_a_detached_write_runs_before_every_later_command(
    mux: MultiplexedRedis, prefix: str
) -> None:
    await mux.ping()
    failures: list[BaseException] = []
    key = f"{prefix}detached"
    assert mux.write_detached("SET", key, "first", on_failure=failures.append)
    # Written to the same stream before this GET: it is already there, nothing awaited it.
    assert await mux.get(key) == b"first"
    assert failures == []


async def test_a_detached_write_needs_an_open_writable_connection(
    mux: MultiplexedRedis, redis_py: Redis, prefix: str
) -> None:
    failures: list[BaseException] = []
    key = f"{prefix}detached"
    assert not mux.write_detached("SET", key, "never", on_failure=failures.append)  # no connection
    await mux.ping()
    connection = mux._connection
    assert connection is not None
    connection.pause_writing()
    assert not mux.write_detached("SET", key, "never", on_failure=failures.append)
    connection.resume_writing()
    await mux.ping()
    assert await redis_py.exists(key) == 0
    assert failures == []


async def test_a_detached_error_reply_is_reported_and_the_stream_stays_in_step(
    mux: MultiplexedRedis, redis_py: Redis, prefix: str
) -> None:
    key = f"{prefix}list"
    await redis_py.rpush(key, "x")
    await mux.ping()
    failures: list[BaseException] = []
    assert mux.write_detached("INCR", key, on_failure=failures.append)  # WRONGTYPE
    assert await mux.execute("ECHO", "mine") == b"mine"
    assert len(failures) == 1
    assert isinstance(failures[0], errors.ResponseError)
    assert "WRONGTYPE" in str(failures[0])


async def test_a_detached_write_lost_with_the_connection_is_reported(
    redis_py: Redis, prefix: str
) -> None:
    client = MultiplexedRedis.from_url(REDIS_URL)
    await client.ping()
    failures: list[BaseException] = []
    key = f"{prefix}detached"
    assert client.write_detached("SET", key, "lost", on_failure=failures.append)
    await client.aclose()  # before the loop ran again: the command was never written
    assert len(failures) == 1
    assert isinstance(failures[0], errors.ConnectionError)
    assert await redis_py.exists(key) == 0
