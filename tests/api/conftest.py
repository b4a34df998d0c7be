"""The API over real HTTP: uvicorn on a free port in the test loop, real PostgreSQL (a database
cloned per test), the real Redis (a key prefix per test) and Tansu (topics per test).

``api`` yields an :class:`ApiHarness`: an httpx client on the server, the admin token, and
helpers that create wallets through the API itself.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn
from fastapi import FastAPI

from aggregator.redis_keys import KeySpace
from api.app import create_app
from api.live.lifecycle import end_streams_on_shutdown
from api.services import ApiConfig, ApiServices
from meter.topics import TopicNames
from settlement.usage_sink import UsageStore, open_usage_store
from settlement.usage_sink.query_service import UsageQueryService
from stack.redis_cleanup import unlink_key_space
from stack.tansu import TansuBroker
from tests.meter import conftest as meter_fixtures
from tests.redis_support import REDIS_URL, new_client

tansu = meter_fixtures.tansu
topics = meter_fixtures.topics


@dataclass
class Tenant:
    wallet_id: str
    owner_member: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class ApiHarness:
    client: httpx.AsyncClient
    app: FastAPI
    base_url: str
    admin_token: str
    config: ApiConfig
    tenants: list[Tenant] = field(default_factory=list)

    @property
    def services(self) -> ApiServices:
        found: ApiServices = self.app.state.services
        return found

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    async def post(
        self, path: str, body: Any = None, *, headers: dict[str, str], key: str | None = None
    ) -> httpx.Response:
        """POST with a fresh Idempotency-Key unless ``key`` is given."""
        all_headers = {**headers, "Idempotency-Key": key or uuid.uuid4().hex}
        return await self.client.post(path, json=body, headers=all_headers)

    async def tenant(self, credits: int = 0, *, owner_type: str = "community") -> Tenant:
        """A new wallet with an owner key, funded with ``credits`` by an admin adjustment."""
        wallet_id = f"w_{uuid.uuid4().hex[:10]}"
        owner = f"owner_{uuid.uuid4().hex[:6]}"
        created = await self.post(
            "/admin/wallets",
            {"wallet_id": wallet_id, "owner_type": owner_type, "owner_id": owner,
             "owner_member_id": owner},
            headers=self.admin,
        )  # fmt: skip
        assert created.status_code == 201, created.text
        tenant = Tenant(wallet_id, owner, created.json()["owner_key"]["token"])
        if credits:
            await self.fund(tenant, credits)
        self.tenants.append(tenant)
        return tenant

    async def fund(self, tenant: Tenant, credits: int, reason: str = "goodwill") -> None:
        funded = await self.post(
            f"/admin/wallets/{tenant.wallet_id}/adjustments",
            {"credits": credits, "reason": reason, "actor": "tests"},
            headers=self.admin,
        )
        assert funded.status_code == 201, funded.text

    async def key(self, tenant: Tenant, member_id: str, role: str, scopes: list[str]) -> str:
        """Add ``member_id`` with ``role`` and issue it a key with ``scopes``."""
        added = await self.post(
            "/wallet/members", {"member_id": member_id, "role": role}, headers=tenant.headers
        )
        assert added.status_code == 200, added.text
        issued = await self.post(
            "/wallet/keys",
            {"member_id": member_id, "name": f"{member_id} key", "scopes": scopes},
            headers=tenant.headers,
        )
        assert issued.status_code == 201, issued.text
        token: str = issued.json()["token"]
        return token


async def serve(app: FastAPI) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    """Run ``app`` under uvicorn on a free port in this loop; return when it accepts requests."""
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=10,
        )
    )
    end_streams_on_shutdown(server, app)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises why it could not start
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, task, f"http://127.0.0.1:{port}"


@pytest.fixture
def usage_store(tmp_path: Path) -> Iterator[UsageStore]:
    """A real chdb usage store (one data dir per test: chdb allows one per process at a time)."""
    store = open_usage_store(None, tmp_path / "chdb")
    store.ensure_schema()
    yield store
    store.close()


@pytest_asyncio.fixture(loop_scope="session")
async def usage_queries(usage_store: UsageStore) -> AsyncIterator[UsageQueryService]:
    """The settlement worker's usage query service over that store (what the API reads)."""
    service = UsageQueryService(usage_store)
    await service.start(0)
    yield service
    await service.close()


def api_config(
    database_url: str, topics: TopicNames, tansu: TansuBroker, prefix: str, usage_url: str
) -> ApiConfig:
    return ApiConfig(
        database_url=database_url,
        redis_url=REDIS_URL,
        kafka_bootstrap=tansu.bootstrap,
        topics=topics,
        key_prefix=prefix,
        admin_key=secrets.token_urlsafe(32),
        pool_max_size=30,
        usage_query_url=usage_url,
    )


@pytest_asyncio.fixture(loop_scope="session")
async def api(
    ledger_db_url: str, topics: TopicNames, tansu: TansuBroker, usage_queries: UsageQueryService
) -> AsyncIterator[ApiHarness]:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    config = api_config(ledger_db_url, topics, tansu, prefix, usage_queries.url)
    app = create_app(config)
    server, task, base_url = await serve(app)
    assert config.admin_key is not None
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        yield ApiHarness(client, app, base_url, config.admin_key, config)
    server.should_exit = True
    await task
    redis = new_client()
    await unlink_key_space(redis, KeySpace(prefix))
    await redis.aclose()
