"""Wallet, consume, holds, usage ingestion and errors over real HTTP."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.api.conftest import ApiHarness

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.kafka]


async def test_health_needs_no_key(api: ApiHarness) -> None:
    response = await api.client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_missing_and_bad_keys_are_401_problems(api: ApiHarness) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Bearer cdk_" + "0" * 16 + "_" + "a" * 43},
    ):
        response = await api.client.get("/wallet", headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"].startswith("application/problem+json")
        body = response.json()
        assert body["code"] == "unauthenticated"
        assert body["status"] == 401
        assert "WWW-Authenticate" in response.headers


async def test_get_wallet_shows_funded_balance(api: ApiHarness) -> None:
    tenant = await api.tenant(credits=1500)
    response = await api.client.get("/wallet", headers=tenant.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == tenant.wallet_id
    assert body["balances"]["available"] == 1500
    assert body["role"] == "owner"


async def test_consume_charges_and_replays(api: ApiHarness) -> None:
    tenant = await api.tenant(credits=100)
    key = uuid.uuid4().hex
    first = await api.post(
        "/wallet/consume", {"feature": "ai.summary"}, headers=tenant.headers, key=key
    )
    assert first.status_code == 200, first.text
    charged = first.json()
    assert charged["outcome"] == "authorized"
    assert charged["credits"] > 0
    assert charged["available_after"] == 100 - charged["credits"]
    again = await api.post(
        "/wallet/consume", {"feature": "ai.summary"}, headers=tenant.headers, key=key
    )
    assert again.status_code == 200
    assert again.json() == charged
    assert again.headers["Idempotent-Replayed"] == "true"
    wallet = (await api.client.get("/wallet", headers=tenant.headers)).json()
    assert wallet["balances"]["available"] == 100 - charged["credits"]
    assert (
        wallet["balances"]["reserved"] + wallet["balances"]["lifetime_used"] >= charged["credits"]
    )


async def test_same_key_different_body_is_refused(api: ApiHarness) -> None:
    tenant = await api.tenant(credits=100)
    key = uuid.uuid4().hex
    ok = await api.post(
        "/wallet/consume", {"feature": "ai.summary"}, headers=tenant.headers, key=key
    )
    assert ok.status_code == 200
    clash = await api.post(
        "/wallet/consume", {"feature": "ai.summary", "quantity": 2}, headers=tenant.headers, key=key
    )
    assert clash.status_code == 409
    assert clash.json()["code"] == "idempotency_conflict"


async def test_concurrent_requests_with_one_key_execute_once(api: ApiHarness) -> None:
    tenant = await api.tenant(credits=1000)
    key = uuid.uuid4().hex
    responses = await asyncio.gather(
        *(
            api.post("/wallet/consume", {"feature": "ai.summary"}, headers=tenant.headers, key=key)
            for _ in range(20)
        )
    )
    bodies = [r.json() for r in responses]
    assert {r.status_code for r in responses} == {200}
    assert all(b == bodies[0] for b in bodies)
    wallet = (await api.client.get("/wallet", headers=tenant.headers)).json()
    assert wallet["balances"]["available"] == 1000 - bodies[0]["credits"]


async def test_insufficient_credits_is_402_and_charges_nothing(api: ApiHarness) -> None:
    tenant = await api.tenant(credits=0)
    response = await api.post("/wallet/consume", {"feature": "ai.summary"}, headers=tenant.headers)
    assert response.status_code == 402, response.text
    body = response.json()
    assert body["code"] == "insufficient_credits"
    assert body["available_credits"] == 0
    assert body["required_credits"] > 0


async def test_missing_idempotency_key_is_422(api: ApiHarness) -> None:
    tenant = await api.tenant(credits=100)
    response = await api.client.post(
        "/wallet/consume", json={"feature": "ai.summary"}, headers=tenant.headers
    )
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"


async def test_bad_bodies_are_422_naming_the_field(api: ApiHarness) -> None:
    tenant = await api.tenant(credits=100)
    for body, field in (
        ({"feature": "ai.summary", "quantity": 0}, "quantity"),
        ({"feature": "ai.summary", "quantity": 1.5}, "quantity"),
        ({"feature": "ai.summary", "surprise": 1}, "surprise"),
        ({}, "feature"),
    ):
        response = await api.post("/wallet/consume", body, headers=tenant.headers)
        assert response.status_code == 422, (body, response.text)
        assert any(e["field"] == field for e in response.json()["errors"]), response.text
    unknown = await api.post("/wallet/consume", {"feature": "no.such"}, headers=tenant.headers)
    assert unknown.status_code == 422
    assert unknown.json()["code"] == "unknown_feature"


async def test_transactions_paginate_newest_first(api: ApiHarness) -> None:
    tenant = await api.tenant()
    for credits in (10, 20, 30, 40, 50):
        await api.fund(tenant, credits)
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (
            await api.client.get("/wallet/transactions", params=params, headers=tenant.headers)
        ).json()
        seen.extend(t["credits"] for t in page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [50, 40, 30, 20, 10]
    typed = await api.client.get(
        "/wallet/transactions", params={"type": "USAGE_DEDUCTION"}, headers=tenant.headers
    )
    assert typed.json()["data"] == []
    bad = await api.client.get(
        "/wallet/transactions", params={"cursor": "!!"}, headers=tenant.headers
    )
    assert bad.status_code == 422


async def test_hold_reserve_capture_release(api: ApiHarness) -> None:
    tenant = await api.tenant(credits=5000)
    held = await api.post(
        "/wallet/holds", {"feature": "ai.summary", "estimated_quantity": 4000},
        headers=tenant.headers,
    )  # fmt: skip
    assert held.status_code == 201, held.text
    hold = held.json()
    assert hold["state"] == "held"
    assert hold["available_after"] == 5000 - hold["credits"]
    captured = await api.post(
        f"/wallet/holds/{hold['hold_id']}/capture", {"quantity": 1000}, headers=tenant.headers
    )
    assert captured.status_code == 200, captured.text
    charged = captured.json()["credits"]
    assert 0 < charged <= hold["credits"]
    wallet = (await api.client.get("/wallet", headers=tenant.headers)).json()
    assert wallet["balances"]["available"] == 5000 - charged
    again = await api.post(f"/wallet/holds/{hold['hold_id']}/release", headers=tenant.headers)
    assert again.status_code == 409
    missing = await api.post("/wallet/holds/hold_nope/release", headers=tenant.headers)
    assert missing.status_code == 404


async def test_usage_events_batch_is_all_or_nothing(api: ApiHarness) -> None:
    tenant = await api.tenant(credits=100)
    ok = await api.post(
        "/usage/events",
        {"events": [{"event_id": "e1", "feature": "api.basic_request"},
                    {"event_id": "e2", "feature": "webhooks.trigger", "quantity": 3}]},
        headers=tenant.headers,
    )  # fmt: skip
    assert ok.status_code == 202, ok.text
    assert ok.json()["accepted"] == 2
    bad = await api.post(
        "/usage/events",
        {"events": [{"event_id": "e3", "feature": "api.basic_request"},
                    {"event_id": "e4", "feature": "no.such"}]},
        headers=tenant.headers,
    )  # fmt: skip
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["index"] == 1


async def test_a_rate_limited_consume_is_a_429_with_retry_after(api: ApiHarness) -> None:
    """AI requests are limited per second (caps.toml); the refusal tells when to retry, and the
    retry-after header survives the idempotency record (a 429 is not stored: a retry runs)."""
    tenant = await api.tenant(credits=10_000)
    answers = await asyncio.gather(
        *(api.post("/wallet/consume", {"feature": "ai.summary"}, headers=tenant.headers)
          for _ in range(12))
    )  # fmt: skip
    limited = [a for a in answers if a.status_code == 429]
    assert limited, [a.status_code for a in answers]
    assert {a.status_code for a in answers} <= {200, 429}
    for answer in limited:
        assert answer.json()["code"] == "rate_limited"
        assert int(answer.headers["Retry-After"]) >= 1
        assert answer.headers["content-type"].startswith("application/problem+json")


async def test_a_rate_limited_consume_runs_anew_when_retried_with_its_key(api: ApiHarness) -> None:
    """The authorisation script gives a rate-limited request's claim back: its retry, with the
    same key, is decided afresh instead of replaying the 429 (or waiting on a stale claim)."""
    tenant = await api.tenant(credits=10_000)
    keys = [uuid.uuid4().hex for _ in range(12)]
    answers = await asyncio.gather(
        *(api.post("/wallet/consume", {"feature": "ai.summary"}, headers=tenant.headers, key=key)
          for key in keys)
    )  # fmt: skip
    limited = [key for key, answer in zip(keys, answers, strict=True) if answer.status_code == 429]
    assert limited, [a.status_code for a in answers]
    await asyncio.sleep(max(int(a.headers.get("Retry-After", "0")) for a in answers) + 0.1)
    retry = await api.post(
        "/wallet/consume", {"feature": "ai.summary"}, headers=tenant.headers, key=limited[0]
    )
    assert retry.status_code == 200, retry.text
    assert "Idempotent-Replayed" not in retry.headers


async def test_a_refused_consume_is_replayed_and_its_key_stays_bound(api: ApiHarness) -> None:
    """A consume refused before its authorisation (an unknown feature) records its answer like
    any other: the retry replays it, and the key cannot be reused for another request."""
    tenant = await api.tenant(credits=100)
    key = uuid.uuid4().hex
    unknown = {"feature": "no.such"}
    first = await api.post("/wallet/consume", unknown, headers=tenant.headers, key=key)
    assert first.status_code == 422
    again = await api.post("/wallet/consume", unknown, headers=tenant.headers, key=key)
    assert again.status_code == 422
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    other = await api.post(
        "/wallet/consume", {"feature": "ai.summary"}, headers=tenant.headers, key=key
    )
    assert other.status_code == 409
    assert other.json()["code"] == "idempotency_conflict"
    wallet = (await api.client.get("/wallet", headers=tenant.headers)).json()
    assert wallet["balances"]["available"] == 100
