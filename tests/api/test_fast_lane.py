"""The consume fast lane answers exactly as the FastAPI route it stands in front of.

Two apps over the same database, Redis prefix and topics: one with the lane (the default), one
without (``fast_lane=False``: FastAPI's own route serves consume). Every case is sent to both,
each on its own freshly funded wallet, and the answers (status, problem ``code``, body with the
run's ids masked, replay header) must be identical; the lane's counters show which cases it
served itself and which it handed on.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import psycopg
import pytest
import pytest_asyncio

from api import fast_lane
from api.app import create_app
from api.fast_lane import LaneCounters
from api.keys import Principal
from tests.api.conftest import ApiHarness, Tenant, serve

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.kafka]

Case = Callable[[ApiHarness, httpx.AsyncClient, Tenant], Awaitable[list[httpx.Response]]]


@pytest_asyncio.fixture(loop_scope="session")
async def route_only(api: ApiHarness) -> AsyncIterator[httpx.AsyncClient]:
    """A second app on the same backends, without the lane (and without the background
    workers, which the first app runs)."""
    config = dataclasses.replace(
        api.config, fast_lane=False, auto_recharge_worker=False, live_updates=False
    )
    app = create_app(config)
    server, task, base_url = await serve(app)
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        yield client
    server.should_exit = True
    await task


def _post(
    client: httpx.AsyncClient,
    body: Any,
    headers: dict[str, str],
    key: str | None = "fresh",
    *,
    raw: bytes | None = None,
) -> Awaitable[httpx.Response]:
    all_headers = dict(headers)
    if key is not None:
        all_headers["Idempotency-Key"] = uuid.uuid4().hex if key == "fresh" else key
    if raw is not None:
        return client.post("/wallet/consume", content=raw, headers=all_headers)
    return client.post("/wallet/consume", json=body, headers=all_headers)


async def _charge_then_replay(api: ApiHarness, c: httpx.AsyncClient, t: Tenant) -> list[Any]:
    key = uuid.uuid4().hex
    first = await _post(c, {"feature": "ai.summary"}, t.headers, key)
    return [first, await _post(c, {"feature": "ai.summary"}, t.headers, key)]


async def _same_key_other_body(api: ApiHarness, c: httpx.AsyncClient, t: Tenant) -> list[Any]:
    key = uuid.uuid4().hex
    first = await _post(c, {"feature": "ai.summary"}, t.headers, key)
    return [first, await _post(c, {"feature": "ai.summary", "quantity": 2}, t.headers, key)]


async def _too_poor(api: ApiHarness, c: httpx.AsyncClient, t: Tenant) -> list[Any]:
    return [await _post(c, {"feature": "api.heavy_query", "quantity": 1000}, t.headers)]


async def _unknown_feature(api: ApiHarness, c: httpx.AsyncClient, t: Tenant) -> list[Any]:
    return [await _post(c, {"feature": "no.such_feature"}, t.headers)]


async def _other_member(api: ApiHarness, c: httpx.AsyncClient, t: Tenant) -> list[Any]:
    return [await _post(c, {"feature": "ai.summary", "member_id": "someone_else"}, t.headers)]


async def _explicit_event_id(api: ApiHarness, c: httpx.AsyncClient, t: Tenant) -> list[Any]:
    body = {"feature": "queue.email_send", "quantity": 3, "event_id": f"evt-{t.wallet_id}",
            "metadata": {"campaign": "welcome", "n": 1, "ok": True, "x": None}}  # fmt: skip
    return [await _post(c, body, t.headers)]


async def _no_key_header(api: ApiHarness, c: httpx.AsyncClient, t: Tenant) -> list[Any]:
    return [await _post(c, {"feature": "ai.summary"}, t.headers, key=None)]


async def _bad_key_header(api: ApiHarness, c: httpx.AsyncClient, t: Tenant) -> list[Any]:
    return [await _post(c, {"feature": "ai.summary"}, t.headers, key="has space")]


async def _no_token(api: ApiHarness, c: httpx.AsyncClient, t: Tenant) -> list[Any]:
    return [await _post(c, {"feature": "ai.summary"}, {})]


async def _bad_token(api: ApiHarness, c: httpx.AsyncClient, t: Tenant) -> list[Any]:
    bad = {"Authorization": "Bearer cdk_" + "0" * 16 + "_" + "a" * 43}
    return [await _post(c, {"feature": "ai.summary"}, bad)]


async def _basic_scheme(api: ApiHarness, c: httpx.AsyncClient, t: Tenant) -> list[Any]:
    return [await _post(c, {"feature": "ai.summary"}, {"Authorization": "Basic Zm9vOmJhcg=="})]


async def _read_only_key(api: ApiHarness, c: httpx.AsyncClient, t: Tenant) -> list[Any]:
    member = f"reader_{uuid.uuid4().hex[:6]}"
    token = await api.key(t, member, "member", ["wallet:read"])
    return [await _post(c, {"feature": "ai.summary"}, {"Authorization": f"Bearer {token}"})]


async def _admin_key(api: ApiHarness, c: httpx.AsyncClient, t: Tenant) -> list[Any]:
    return [await _post(c, {"feature": "ai.summary"}, api.admin)]


async def _invalid_fields(api: ApiHarness, c: httpx.AsyncClient, t: Tenant) -> list[Any]:
    return [
        await _post(c, {"feature": "ai.summary", "quantity": 0}, t.headers),
        await _post(c, {"feature": "ai.summary", "surprise": 1}, t.headers),
        await _post(c, {"quantity": 1}, t.headers),
        await _post(c, ["ai.summary"], t.headers),
    ]


async def _malformed_json(api: ApiHarness, c: httpx.AsyncClient, t: Tenant) -> list[Any]:
    json_type = {**t.headers, "Content-Type": "application/json"}
    return [
        await _post(c, None, json_type, raw=b'{"feature": "ai.summary"'),
        await _post(c, None, json_type, raw=b""),
    ]


async def _not_json(api: ApiHarness, c: httpx.AsyncClient, t: Tenant) -> list[Any]:
    text = {**t.headers, "Content-Type": "text/plain"}
    return [await _post(c, None, text, raw=b'{"feature": "ai.summary"}')]


SERVED_BY_LANE: dict[str, Case] = {
    "charge_then_replay": _charge_then_replay,
    "same_key_other_body": _same_key_other_body,
    "too_poor": _too_poor,
    "unknown_feature": _unknown_feature,
    "other_member": _other_member,
    "explicit_event_id": _explicit_event_id,
}
HANDED_ON: dict[str, Case] = {
    "no_key_header": _no_key_header,
    "bad_key_header": _bad_key_header,
    "no_token": _no_token,
    "bad_token": _bad_token,
    "basic_scheme": _basic_scheme,
    "read_only_key": _read_only_key,
    "admin_key": _admin_key,
    "invalid_fields": _invalid_fields,
    "malformed_json": _malformed_json,
    "not_json": _not_json,
}


def _answer(response: httpx.Response, tenant: Tenant) -> dict[str, Any]:
    """What a client can observe, with the run's own ids masked."""
    text = response.text.replace(tenant.wallet_id, "<wallet>").replace(tenant.owner_member, "<m>")
    return {
        "status": response.status_code,
        "content_type": response.headers.get("content-type"),
        "replayed": response.headers.get("idempotent-replayed"),
        "retry_after": response.headers.get("retry-after"),
        "www_authenticate": response.headers.get("www-authenticate"),
        "body": _masked_event_id(httpx.Response(200, content=text.encode()).json()),
    }


def _masked_event_id(body: Any) -> Any:
    if isinstance(body, dict) and isinstance(body.get("event_id"), str):
        event_id = body["event_id"]
        return {**body, "event_id": "<evt>" if event_id.startswith("evt_") else event_id}
    return body


async def _run_case(api: ApiHarness, client: httpx.AsyncClient, case: Case) -> list[dict[str, Any]]:
    tenant = await api.tenant(credits=500)
    return [_answer(response, tenant) for response in await case(api, client, tenant)]


@pytest.mark.parametrize("name", [*SERVED_BY_LANE, *HANDED_ON])
async def test_the_lane_answers_like_the_route(
    api: ApiHarness, route_only: httpx.AsyncClient, name: str
) -> None:
    case = {**SERVED_BY_LANE, **HANDED_ON}[name]
    counters: LaneCounters = api.app.state.fast_lane
    served, handed_on = counters.served, counters.handed_on
    through_lane = await _run_case(api, api.client, case)
    lane_served, lane_handed_on = counters.served - served, counters.handed_on - handed_on
    through_route = await _run_case(api, route_only, case)
    assert through_lane == through_route
    assert counters.served - served == lane_served  # the route-only app never used the lane
    expected = (len(through_lane), 0) if name in SERVED_BY_LANE else (0, len(through_lane))
    assert (lane_served, lane_handed_on) == expected


async def test_every_case_is_a_real_outcome(api: ApiHarness) -> None:
    """The cases cover success, replay and each refusal family (guards against a case that
    silently degenerated into the same answer as another)."""
    seen: set[tuple[int, str | None]] = set()
    for case in (*SERVED_BY_LANE.values(), *HANDED_ON.values()):
        for answer in await _run_case(api, api.client, case):
            body = answer["body"]
            seen.add((answer["status"], body.get("code") if isinstance(body, dict) else None))
    assert {
        (200, None),
        (409, "idempotency_conflict"),
        (402, "insufficient_credits"),
        (422, "unknown_feature"),
        (403, "forbidden"),
        (422, "invalid_request"),
        (401, "unauthenticated"),
    } <= seen


async def test_the_lane_leaves_the_schema_and_other_routes_alone(
    api: ApiHarness, route_only: httpx.AsyncClient
) -> None:
    with_lane = (await api.client.get("/openapi.json")).json()
    without = (await route_only.get("/openapi.json")).json()
    assert with_lane == without
    assert "/wallet/consume" in with_lane["paths"]
    # Only POST /wallet/consume takes the lane: another method, path or a trailing slash pass.
    counters: LaneCounters = api.app.state.fast_lane
    before = (counters.served, counters.handed_on)
    tenant = await api.tenant(credits=10)
    assert (await api.client.get("/wallet/consume", headers=tenant.headers)).status_code == 405
    assert (await api.client.get("/wallet", headers=tenant.headers)).status_code == 200
    await api.client.post("/wallet/consume/", headers=tenant.headers)
    assert (counters.served, counters.handed_on) == before


async def test_a_dependency_down_while_admitting_is_the_routes_503(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = await api.tenant(credits=100)

    async def database_down(token: str | None) -> Principal:
        raise psycopg.OperationalError("connection refused")

    monkeypatch.setattr(api.services.keys, "authenticate", database_down)
    counters: LaneCounters = api.app.state.fast_lane
    handed_on = counters.handed_on
    answer = await _post(api.client, {"feature": "ai.summary"}, tenant.headers)
    assert answer.status_code == 503, answer.text
    assert answer.json()["code"] == "unavailable"
    assert answer.headers["Retry-After"] == "1"
    assert counters.handed_on == handed_on + 1


async def test_a_bug_in_the_lane_is_a_500_naming_only_an_incident(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = await api.tenant(credits=100)

    def broken(*args: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(fast_lane, "consume_action", broken)
    answer = await _post(api.client, {"feature": "ai.summary"}, tenant.headers)
    assert answer.status_code == 500
    body = answer.json()
    assert body["code"] == "internal_error"
    assert "secret" not in answer.text
    assert body["incident_id"] in body["detail"]
    wallet = await api.client.get("/wallet", headers=tenant.headers)
    assert wallet.json()["balances"]["available"] == 100  # nothing was charged
