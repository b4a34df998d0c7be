"""An open-loop HTTP/1.1 load generator: requests at a constant offered rate, latency measured
from each request's *scheduled* start (so a stalled server cannot hide its queueing: no
coordinated omission).

Deliberately small: keep-alive connections over asyncio streams, ``Content-Length`` bodies
only (what uvicorn sends), one request in flight per connection; a request whose turn comes
while every connection is busy opens a new one (up to ``max_connections``), else waits for
the first free one — and that wait counts in its latency.

:func:`run_saturation` is the closed-loop counterpart, for throughput: a fixed number of
keep-alive connections, each sending its next request as soon as the previous answer arrives,
so the server is always busy and ``achieved_rps`` is the most it can answer (latency is then
counted from each request's send: there is no schedule to be late against).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass(slots=True)
class Sample:
    status: int
    latency_s: float
    body: bytes


@dataclass(slots=True)
class LoadResult:
    offered_rps: float  # 0.0 for a closed-loop (saturation) run: nothing is offered
    seconds: float
    samples: list[Sample] = field(default_factory=list)
    failures: int = 0  # connection errors, timeouts

    @property
    def achieved_rps(self) -> float:
        return len(self.samples) / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(s.latency_s for s in self.samples)
        if not ordered:
            return math.nan
        index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
        return round(ordered[index] * 1000, 3)


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, host: str, request: Request) -> tuple[int, bytes]:
        lines = [f"{request.method} {request.path} HTTP/1.1", f"Host: {host}"]
        lines += [f"{k}: {v}" for k, v in request.headers.items()]
        lines.append(f"Content-Length: {len(request.body)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + request.body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        status = int(status_line.split(b" ", 2)[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        body = await self.reader.readexactly(length) if length else b""
        return status, body

    def close(self) -> None:
        self.writer.close()


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cycle collector while load runs. Measured: with it on, the generator's full
    collections (each pass walking every task, connection and sample it holds, a growing
    heap) blocked its event loop for ~20 ms at a time, again and again, and requests scheduled
    meanwhile were counted as the *server's* latency. What a run allocates is freed by
    reference counting (or after the run); objects that exist before it are frozen out of
    every pass."""
    enabled = gc.isenabled()
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        if enabled:
            gc.enable()


PREOPENED_CONNECTIONS = 16
"""Keep-alive connections :func:`run_load` opens before its first request; more are opened
on demand (up to ``max_connections``) when every one is busy."""

_FAILURES = (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError)


async def run_load(
    host: str,
    port: int,
    make_request: Callable[[int], Request],
    *,
    rate: float,
    seconds: float,
    max_connections: int = 256,
    timeout_s: float = 10.0,
) -> LoadResult:
    """Offer ``rate`` requests/s for ``seconds``; request ``i`` is ``make_request(i)``."""
    total = max(1, int(rate * seconds))
    result = LoadResult(offered_rps=rate, seconds=seconds)
    idle: asyncio.Queue[_Connection] = asyncio.Queue()
    # Connections opened before the clock starts (as wrk does): opening one costs more than a
    # request, so a cold start would otherwise be measured as the server's first latencies.
    for _ in range(min(max_connections, PREOPENED_CONNECTIONS)):
        reader, writer = await asyncio.open_connection(host, port)
        idle.put_nowait(_Connection(reader, writer))
    opened = idle.qsize()

    async def connection() -> _Connection:
        nonlocal opened
        if not idle.empty() or opened >= max_connections:
            return await idle.get()
        opened += 1
        reader, writer = await asyncio.open_connection(host, port)
        return _Connection(reader, writer)

    async def one(i: int, scheduled: float) -> None:
        request = make_request(i)
        conn = await connection()
        try:
            async with asyncio.timeout(timeout_s):
                status, body = await conn.send(f"{host}:{port}", request)
        except _FAILURES:
            result.failures += 1
            conn.close()
            nonlocal opened
            opened -= 1
            return
        result.samples.append(Sample(status, time.perf_counter() - scheduled, body))
        idle.put_nowait(conn)

    tasks: list[asyncio.Task[None]] = []
    with collector_paused():  # before the clock starts: its collection is not the server's
        start = time.perf_counter() + 0.05
        for i in range(total):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, scheduled)))
        await asyncio.gather(*tasks)
    result.seconds = max(seconds, time.perf_counter() - start)
    while not idle.empty():
        idle.get_nowait().close()
    return result


async def run_saturation(
    host: str,
    port: int,
    make_request: Callable[[int], Request],
    *,
    connections: int,
    seconds: float,
    timeout_s: float = 10.0,
) -> LoadResult:
    """Closed loop: ``connections`` keep-alive connections, each sending its next request as
    soon as the previous answer arrives, until ``seconds`` have passed (requests in flight then
    are still awaited and counted). Latency is measured from each request's send.

    Request indices come from one counter shared by all connections, so every ``make_request(i)``
    gets a distinct ``i`` (``0, 1, 2, ...``). A failed request (connection error, timeout,
    unreadable answer) counts in ``failures`` and its connection is replaced; a connection that
    cannot be reopened ends that loop (counted once more as a failure).
    """
    if connections < 1:
        raise ValueError("connections must be at least 1")
    result = LoadResult(offered_rps=0.0, seconds=seconds)
    target = f"{host}:{port}"
    indices = itertools.count()  # one counter for every connection: each index is used once

    async def connect() -> _Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return _Connection(reader, writer)

    attempts = await asyncio.gather(
        *(connect() for _ in range(connections)), return_exceptions=True
    )
    opened = [each for each in attempts if isinstance(each, _Connection)]
    refused = next((each for each in attempts if isinstance(each, BaseException)), None)
    if refused is not None:  # as run_load: a server that cannot be reached is not a result
        for conn in opened:
            conn.close()
        raise refused

    async def loop(conn: _Connection | None) -> None:
        try:
            while time.perf_counter() < deadline:
                if conn is None:
                    try:
                        conn = await connect()
                    except OSError:
                        result.failures += 1
                        return
                request = make_request(next(indices))
                sent = time.perf_counter()
                try:
                    async with asyncio.timeout(timeout_s):
                        status, body = await conn.send(target, request)
                except _FAILURES:
                    result.failures += 1
                    conn.close()
                    conn = None
                    continue
                result.samples.append(Sample(status, time.perf_counter() - sent, body))
        finally:
            if conn is not None:
                conn.close()

    with collector_paused():  # before the clock starts, as in run_load
        start = time.perf_counter()
        deadline = start + seconds
        await asyncio.gather(*(loop(conn) for conn in opened))
    result.seconds = max(seconds, time.perf_counter() - start)
    return result
