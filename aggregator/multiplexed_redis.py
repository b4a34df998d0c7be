"""A Redis client that shares one connection among all its callers (a "multiplexer").

What: every caller's command is packed by hiredis (C), queued, and written to one asyncio
transport with the other commands of the same event-loop iteration (one system call for all
of them); its reply, parsed by ``hiredis.Reader`` (C), is handed to that caller's future.
Nothing is pooled, wrapped or timed per call; in the spirit of StackExchange.Redis's
multiplexer.

Why: on the API hot path (``POST /wallet/consume``) redis-py's asyncio client spends about
50-80 µs of CPU per command (pool get/release, retry wrapper, observability hooks, an
``asyncio.timeout`` per call); a micro-benchmark of this design costs about 10-35 µs.

Ordering: Redis answers the commands of one connection in the order it received them, so the
n-th reply belongs to the n-th command written; a deque of futures matches them (FIFO). Many
callers' commands are in flight at once (pipelining); each command, and each Lua script, still
runs atomically on the server, in the order written.

Failures:

- ``ResponseError`` (``NoScriptError`` for ``NOSCRIPT``, so redis-py's ``AsyncScript`` reloads
  its script): this command's own error reply (full server message); the connection stays up.
- ``TimeoutError``: no reply within ``reply_timeout_s``. The reply stream can no longer be
  trusted, so the connection is dropped and every other pending caller gets ``ConnectionError``.
- ``ConnectionError``: cannot connect (the message names the address), the handshake was
  refused, the connection was lost (every pending caller), or the client is closed. The next
  command reconnects.

After a ``TimeoutError`` or ``ConnectionError`` the command may or may not have run: retry only
idempotent commands (every mirror script is idempotent on its ids). A cancelled caller's
command may still run; its reply is discarded and the stream stays in step.

Detached writes (:meth:`MultiplexedRedis.write_detached`): a command whose caller does not wait
for its reply (the idempotency record of a finished request). It is queued exactly like an
awaited command, so every later command of this client runs after it; its reply keeps its
place in the stream and is checked when it arrives. A failure (an error reply, a timeout, a
lost connection) goes to the ``on_failure`` callback, which owns reporting it (it is never
dropped silently). Without an open, writable connection it is not written and the caller is
told (``False``), so it can await the command instead.

Not supported: pub/sub, blocking commands (they hold up every caller behind them), transactions
(``MULTI``/``EXEC``: other callers' commands would interleave), RESP3, cluster, TLS
(``rediss://``) and unix sockets. Use redis-py for those.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Final, Protocol, TypeAlias, cast
from urllib.parse import unquote, urlsplit

import hiredis
from redis import exceptions as errors

Arg: TypeAlias = str | int | bytes | float
"""One argument of a command, as hiredis packs it."""

DEFAULT_PORT: Final = 6379


def _pack(args: tuple[Arg, ...]) -> bytes:
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]  # the stub says 1-tuple
    return packed


def _reply_error(message: str) -> errors.ResponseError:
    """The exception of an error reply (``hiredis.Reader`` returns it as the reply)."""
    if message.startswith("NOSCRIPT"):
        return errors.NoScriptError(message)
    return errors.ResponseError(message)


class _Waiter(Protocol):
    """Who gets a command's reply: an awaiting caller's future, or a :class:`_Detached`."""

    def done(self) -> bool: ...
    def set_result(self, result: object, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


class _Detached:
    """The reply slot of a detached write: success is dropped, failure reported."""

    __slots__ = ("_on_failure",)

    def __init__(self, on_failure: Callable[[BaseException], None]) -> None:
        self._on_failure = on_failure

    def done(self) -> bool:
        return False

    def set_result(self, result: object, /) -> None:
        """A success needs nothing: the caller did not wait for it."""

    def set_exception(self, exception: BaseException, /) -> None:
        self._on_failure(exception)


class _Connection(asyncio.Protocol):
    """One TCP connection: writes commands and hands replies to their futures in FIFO order."""

    def __init__(self, address: str, reply_timeout_s: float) -> None:
        self.address = address
        self.failure: str | None = None
        """Why the connection is unusable, once it is (it is never reused then)."""
        self._loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self._reply_timeout_s = reply_timeout_s
        self._reader = hiredis.Reader(replyError=_reply_error)
        self._pending: deque[tuple[_Waiter, float]] = deque()  # (who gets the reply, deadline)
        self._writable = asyncio.Event()
        self._writable.set()
        self._watchdog: asyncio.TimerHandle | None = None
        self._outbox: list[bytes] = []
        """Packed commands waiting for this loop iteration's :meth:`_flush`, in FIFO order."""
        self._transport: asyncio.Transport

    async def request(self, packed: bytes) -> object:
        """Write one packed command and wait for its reply."""
        if not self._writable.is_set():
            await self._writable.wait()
        if self.failure is not None:
            raise errors.ConnectionError(self.failure)
        future: asyncio.Future[object] = self._loop.create_future()
        self._queue(packed, future)
        return await future  # if cancelled, the slot stays: its reply is discarded

    def write_detached(self, packed: bytes, on_failure: Callable[[BaseException], None]) -> bool:
        """Queue one packed command without waiting for its reply (module docstring); False,
        and nothing queued, unless the connection is open and writable."""
        if self.failure is not None or not self._writable.is_set():
            return False
        self._queue(packed, _Detached(on_failure))
        return True

    def _queue(self, packed: bytes, waiter: _Waiter) -> None:
        if not self._outbox:
            self._loop.call_soon(self._flush)
        self._outbox.append(packed)
        deadline = self._loop.time() + self._reply_timeout_s
        self._pending.append((waiter, deadline))
        if self._watchdog is None:
            self._watchdog = self._loop.call_at(deadline, self._check_deadline)

    def _flush(self) -> None:
        """Write every command queued in this loop iteration at once (one system call for all
        of them instead of one each; at most one iteration of delay, no timer)."""
        outbox, self._outbox = self._outbox, []
        if self.failure is None and outbox:
            self._transport.write(b"".join(outbox))

    def abort(self, reason: str) -> None:
        """Fail every pending caller with ``reason`` and drop the connection at once."""
        if self.failure is None:
            self._fail(reason)
            self._transport.abort()

    def _fail(self, reason: str) -> None:
        self.failure = reason
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        pending, self._pending = self._pending, deque()
        for future, _ in pending:
            if not future.done():
                future.set_exception(errors.ConnectionError(reason))
        self._writable.set()  # writers waiting on flow control now see the failure

    def _check_deadline(self) -> None:
        """Deadlines grow in FIFO order, so only the oldest pending command needs a timer."""
        self._watchdog = None
        if not self._pending:
            return
        future, deadline = self._pending[0]
        if self._loop.time() < deadline:
            self._watchdog = self._loop.call_at(deadline, self._check_deadline)
            return
        self._pending.popleft()
        if not future.done():
            message = f"no reply from Redis at {self.address} within {self._reply_timeout_s} s"
            future.set_exception(errors.TimeoutError(message))
        self.abort(f"connection to Redis at {self.address} dropped: a command timed out")

    def _deliver(self, reply: object) -> None:
        if not self._pending:
            self.abort(f"unexpected reply from Redis at {self.address}")
            return
        future = self._pending.popleft()[0]
        if future.done():  # its caller was cancelled
            return
        if isinstance(reply, errors.ResponseError):
            future.set_exception(reply)
        else:
            future.set_result(reply)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while self.failure is None:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self.abort(f"protocol error from Redis at {self.address}: {exc}")
                return
            if reply is False:  # no complete reply yet
                return
            self._deliver(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.failure is None:
            self._fail(f"connection to Redis at {self.address} lost: {exc or 'closed by peer'}")
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()


class MultiplexedRedis:
    """A Redis client whose concurrent callers share one connection (see the module doc)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        reply_timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        if reply_timeout_s <= 0 or connect_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        self.address = f"{host}:{port}"
        self._host = host
        self._port = port
        self._handshake = _handshake(db, username, password)
        self._reply_timeout_s = reply_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._connection: _Connection | None = None
        self._connect_lock = asyncio.Lock()
        self._closed = False

    @classmethod
    def from_url(
        cls, url: str, *, reply_timeout_s: float = 10.0, connect_timeout_s: float = 5.0
    ) -> MultiplexedRedis:
        """A client for ``redis://[[user]:password@]host[:port][/db]`` (no I/O yet)."""
        parts = urlsplit(url)
        if parts.scheme != "redis":
            raise ValueError(
                f"MultiplexedRedis takes plain TCP redis:// URLs only, not {parts.scheme}://"
                " (TLS and unix sockets need redis-py)"
            )
        if parts.query:
            raise ValueError("MultiplexedRedis takes no URL query options")
        path = parts.path.strip("/")
        return cls(
            parts.hostname or "127.0.0.1",
            parts.port or DEFAULT_PORT,
            db=int(path) if path else 0,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            reply_timeout_s=reply_timeout_s,
            connect_timeout_s=connect_timeout_s,
        )

    async def execute(self, *args: Arg) -> object:
        """Send one command and return its reply (bytes, int, None or a list of them)."""
        packed = _pack(args)
        connection = self._connection
        if connection is None or connection.failure is not None:
            connection = await self._connect()
        return await connection.request(packed)

    def write_detached(self, *args: Arg, on_failure: Callable[[BaseException], None]) -> bool:
        """Write one command without waiting for its reply; its failure, if any, is handed to
        ``on_failure`` later (module docstring). Returns False, writing nothing, when no
        connection is open and writable: the caller then awaits :meth:`execute` instead."""
        connection = self._connection
        if connection is None:
            return False
        return connection.write_detached(_pack(args), on_failure)

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Arg) -> object:
        return await self.execute("EVALSHA", sha, numkeys, *keys_and_args)

    async def script_load(self, script: str | bytes) -> str:
        """Load ``script`` and return its SHA1 digest."""
        sha = cast(bytes, await self.execute("SCRIPT", "LOAD", script))
        return sha.decode()

    async def get(self, key: str | bytes) -> bytes | None:
        return cast(bytes | None, await self.execute("GET", key))

    async def set(
        self,
        key: str | bytes,
        value: Arg,
        *,
        nx: bool = False,
        ex: int | None = None,
        px: int | None = None,
    ) -> bool:
        """``SET``; False when ``nx`` and the key exists."""
        args: list[Arg] = ["SET", key, value]
        if nx:
            args.append("NX")
        if ex is not None:
            args += ["EX", ex]
        if px is not None:
            args += ["PX", px]
        return await self.execute(*args) == b"OK"

    async def delete(self, *keys: str | bytes) -> int:
        """Delete ``keys``; return how many existed."""
        return cast(int, await self.execute("DEL", *keys))

    async def ping(self) -> bool:
        return await self.execute("PING") == b"PONG"

    async def aclose(self) -> None:
        """Close the connection, failing pending callers; later calls raise ConnectionError."""
        self._closed = True
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.abort("client closed")
            await connection.closed

    async def _connect(self) -> _Connection:
        """The open connection, opening it first if needed (one opener at a time)."""
        async with self._connect_lock:
            if self._closed:
                raise errors.ConnectionError("client closed")
            connection = self._connection
            if connection is None or connection.failure is not None:
                connection = await self._open()
                if self._closed:  # closed while we were opening
                    connection.abort("client closed")
                    raise errors.ConnectionError("client closed")
                self._connection = connection
            return connection

    async def _open(self) -> _Connection:
        """A new connection, handshake (AUTH, SELECT) done before any caller's command."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self.address, self._reply_timeout_s), self._host, self._port
                )
        except (OSError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            message = f"cannot connect to Redis at {self.address}: {reason}"
            raise errors.ConnectionError(message) from exc
        try:
            for command in self._handshake:
                await connection.request(command)
        except errors.ResponseError as exc:
            connection.abort("handshake refused")
            raise errors.ConnectionError(
                f"Redis at {self.address} refused the connection handshake: {exc}"
            ) from exc
        except BaseException:
            connection.abort("handshake failed")
            raise
        return connection


def _handshake(db: int, username: str | None, password: str | None) -> list[bytes]:
    """The packed commands that open every connection (they hold the password: never log)."""
    commands: list[tuple[Arg, ...]] = []
    if password is not None:
        commands.append(("AUTH", password) if username is None else ("AUTH", username, password))
    if db != 0:
        commands.append(("SELECT", db))
    return [_pack(command) for command in commands]
