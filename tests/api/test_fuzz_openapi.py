"""Schemathesis fuzzes every operation of the OpenAPI schema over real HTTP: zero 5xx.

The API runs as its own process (``credits api``), as in production, against the real
PostgreSQL, Redis and Tansu; schemathesis (its CLI, another process) generates requests from
the schema, once with a wallet owner's key and once with the platform admin key, and fails on
any server error.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from meter.topics import TopicNames
from settlement.usage_sink.query_service import UsageQueryService
from stack.api_process import start_api_process, wait_until_healthy
from stack.ports import free_port
from stack.tansu import TansuBroker
from tests.redis_support import REDIS_URL

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.kafka, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def _stop_api(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=60)


@pytest_asyncio.fixture(loop_scope="session")
async def api_process(
    ledger_db_url: str, tansu: TansuBroker, tmp_path: Path, usage_queries: UsageQueryService
) -> AsyncIterator[tuple[str, str]]:
    await tansu.create_topics(TopicNames().all(), 4)  # the API's default topic names
    port, admin = free_port(), secrets.token_urlsafe(32)
    env = {
        **os.environ,
        "DATABASE_URL": ledger_db_url,
        "REDIS_URL": REDIS_URL,
        "KAFKA_BOOTSTRAP": tansu.bootstrap,
        "CREDITS_KEY_PREFIX": f"t{uuid.uuid4().hex[:12]}",
        "CREDITS_ADMIN_KEY": admin,
        "CREDITS_DATA_DIR": str(tmp_path),
        "CREDITS_USAGE_QUERY_URL": usage_queries.url,
    }
    log_path = tmp_path / "api.log"
    proc = await asyncio.to_thread(start_api_process, env, port, log_path)
    try:
        await wait_until_healthy(f"http://127.0.0.1:{port}", alive=lambda: proc.poll() is None)
        yield f"http://127.0.0.1:{port}", admin
    finally:
        await asyncio.to_thread(_stop_api, proc)
        server_log = log_path.read_text()
        assert "unhandled error" not in server_log, server_log


def _fuzz(url: str, token: str, tmp_path: Path, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(SCHEMATHESIS), "run", f"{url}/openapi.json",
            "--checks", "not_a_server_error",
            # The event stream never ends by design; it has its own tests (tests/api/live).
            "--exclude-path", "/wallet/events/stream",
            "-H", f"Authorization: Bearer {token}",
            "--max-examples", "12", "--seed", "20261124",
            "--request-timeout", "20",
            "--report", "junit", "--report-junit-path", str(tmp_path / f"{name}.xml"),
        ],
        check=False, capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )  # fmt: skip


async def test_schemathesis_finds_no_server_error(
    api_process: tuple[str, str], tansu: TansuBroker, tmp_path: Path
) -> None:
    url, admin = api_process
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        created = await client.post(
            "/admin/wallets",
            json={"wallet_id": "fuzz_w", "owner_type": "community", "owner_id": "fuzz_owner",
                  "owner_member_id": "fuzz_owner"},
            headers={"Authorization": f"Bearer {admin}", "Idempotency-Key": "fuzz-wallet"},
        )  # fmt: skip
        assert created.status_code == 201, created.text
        owner = created.json()["owner_key"]["token"]
        funded = await client.post(
            "/admin/wallets/fuzz_w/adjustments",
            json={"credits": 100_000, "reason": "goodwill", "actor": "fuzz"},
            headers={"Authorization": f"Bearer {admin}", "Idempotency-Key": "fuzz-fund"},
        )
        assert funded.status_code == 201, funded.text
    for name, token in (("owner", owner), ("admin", admin)):
        # In a thread: the usage query service runs on this test's event loop.
        run = await asyncio.to_thread(_fuzz, url, token, tmp_path, name)
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
        generated = re.search(r"(\d+) generated", run.stdout)
        assert generated is not None, run.stdout[-3000:]
        assert int(generated.group(1)) >= 200, run.stdout[-3000:]  # it really fuzzed
