"""The embedded Redis really serves a TCP URL to other clients, and restarts cleanly."""

from __future__ import annotations

import os
import re
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio

from stack import embedded_redis
from stack.embedded_redis import EmbeddedRedis
from stack.ports import free_port


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path) as started:
        yield started


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)


async def test_serves_a_tcp_url_to_sync_and_asyncio_clients(server: EmbeddedRedis) -> None:
    assert re.fullmatch(r"redis://127\.0\.0\.1:\d+/0", server.url)
    with _client(server.url) as client:
        assert client.set("wallet:1:available", 500)
    async_client = redis.asyncio.Redis.from_url(server.url)
    try:
        assert await async_client.get("wallet:1:available") == b"500"
    finally:
        await async_client.aclose()


def test_stop_then_start_keeps_the_snapshot(server: EmbeddedRedis) -> None:
    with _client(server.url) as client:
        client.set("k", "v")
    url = server.url

    server.stop()
    with pytest.raises(redis.ConnectionError), _client(url) as client:
        client.ping()

    server.start()
    with _client(server.url) as client:
        assert client.get("k") == b"v"  # SIGTERM made Redis save before exiting


def test_a_second_handle_adopts_the_running_server(server: EmbeddedRedis) -> None:
    other = EmbeddedRedis(server.data_dir)
    assert other.start() == server.url
    assert other.pid == server.pid


def test_start_after_kill_9_replaces_the_dead_server(server: EmbeddedRedis) -> None:
    old_pid = server.pid
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)

    fresh = EmbeddedRedis(server.data_dir)  # as a new `credits up` would
    try:
        fresh.start()
        assert fresh.pid != old_pid
        with _client(fresh.url) as client:
            assert client.ping()
    finally:
        fresh.stop()


def test_retries_on_another_port_when_the_picked_one_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        picks = iter([taken, free_port()])
        monkeypatch.setattr(embedded_redis, "free_port", lambda host: next(picks))

        with EmbeddedRedis(tmp_path) as server:
            assert server.port != taken
            with _client(server.url) as client:
                assert client.ping()
    assert "Address already in use" in (tmp_path / "logs" / "redis.log").read_text()
