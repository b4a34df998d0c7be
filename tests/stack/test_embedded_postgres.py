"""The embedded PostgreSQL really starts, persists, restarts, recovers and runs side by side."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from domain.errors import Unavailable
from stack.embedded_postgres import EmbeddedPostgres


@pytest.fixture(scope="session")
def stacks_dir() -> Iterator[Path]:
    """Where the test clusters live: outside pytest's basetemp on purpose.

    Run as root, the server runs as ``embedded_postgres`` and needs o+x on every ancestor of its
    data dir; but each pytest session starting on this machine resets ``/tmp/pytest-of-<user>``
    to 0700, which locked initdb out mid-run ("could not open file .../pg_control: Permission
    denied") whenever two sessions overlapped.
    """
    root = Path(tempfile.mkdtemp(prefix="credits-stack-test-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server(stacks_dir: Path) -> Iterator[EmbeddedPostgres]:
    """One cluster for the session: initdb costs about a second, a restart a tenth of that."""
    server = EmbeddedPostgres(stacks_dir / "stack-a")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def pg(pg_server: EmbeddedPostgres) -> EmbeddedPostgres:
    pg_server.start()  # idempotent: brings it back if an earlier test stopped or killed it
    return pg_server


def _scalar(url: str, query: str) -> object:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def _write_row(url: str, value: str) -> None:
    with psycopg.connect(url, connect_timeout=5) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS notes (body text PRIMARY KEY)")
        conn.execute("INSERT INTO notes VALUES (%s) ON CONFLICT DO NOTHING", (value,))


def _has_row(url: str, value: str) -> bool:
    return _scalar(url, f"SELECT count(*) FROM notes WHERE body = '{value}'") == 1


def _kill_9(pg: EmbeddedPostgres) -> None:
    assert pg.pid is not None
    os.kill(pg.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _accepts_connections(pg.url) and time.monotonic() < deadline:
        time.sleep(0.05)


def _accepts_connections(url: str) -> bool:
    try:
        _scalar(url, "SELECT 1")
    except psycopg.OperationalError:
        return False
    return True


def test_url_reaches_the_credits_database_over_a_unix_socket_only(pg: EmbeddedPostgres) -> None:
    assert pg.url.startswith("postgresql://postgres@/credits?host=")
    assert _scalar(pg.url, "SELECT current_database()") == "credits"
    assert _scalar(pg.url, "SHOW listen_addresses") == ""  # no TCP port to collide on


def test_stop_then_start_keeps_the_data(pg: EmbeddedPostgres) -> None:
    _write_row(pg.url, "before restart")
    url = pg.url

    pg.stop()
    assert pg.pid is None
    assert not (pg.pgdata / "postmaster.pid").exists()
    assert not _accepts_connections(url)

    assert pg.start() == url
    assert _has_row(pg.url, "before restart")


def test_a_second_handle_adopts_the_running_server(pg: EmbeddedPostgres) -> None:
    other = EmbeddedPostgres(pg.data_dir)
    assert other.start() == pg.url
    assert other.pid == pg.pid


def test_start_after_kill_9_clears_the_stale_postmaster_pid(pg: EmbeddedPostgres) -> None:
    _write_row(pg.url, "committed before kill")
    old_pid = pg.pid
    _kill_9(pg)
    assert (pg.pgdata / "postmaster.pid").exists()  # left behind, naming a zombie or no one

    pg.start()
    assert pg.pid != old_pid
    assert _has_row(pg.url, "committed before kill")  # crash recovery replayed the WAL


def test_start_ignores_a_stale_pid_reused_by_another_process(pg: EmbeddedPostgres) -> None:
    _kill_9(pg)
    pid_file = pg.pgdata / "postmaster.pid"
    impostor = subprocess.Popen(["sleep", "30"])
    try:
        lines = pid_file.read_text().splitlines()
        pid_file.write_text("\n".join([str(impostor.pid), *lines[1:]]) + "\n")

        pg.start()
        assert impostor.poll() is None  # not mistaken for the server, and left alone
        assert _scalar(pg.url, "SELECT 1") == 1
    finally:
        impostor.kill()
        impostor.wait()


def test_two_stacks_run_side_by_side(pg: EmbeddedPostgres, stacks_dir: Path) -> None:
    _write_row(pg.url, "only in stack a")
    with EmbeddedPostgres(stacks_dir / "stack-b") as other:
        other_url = other.url
        assert other_url != pg.url
        assert other.pid != pg.pid
        assert _scalar(other.url, "SELECT to_regclass('notes') IS NULL") is True
        assert _has_row(pg.url, "only in stack a")
    assert other.pid is None
    assert not _accepts_connections(other_url)
    assert _accepts_connections(pg.url)


def test_a_directory_that_is_not_a_cluster_is_refused(tmp_path: Path) -> None:
    (tmp_path / "postgres").mkdir()
    (tmp_path / "postgres" / "notes.txt").write_text("not a cluster")

    with pytest.raises(Unavailable, match="move it aside or delete it"):
        EmbeddedPostgres(tmp_path).start()
