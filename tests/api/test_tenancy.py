"""A key reaches only its own wallet: every operation of the schema, tried with another
tenant's key against the victim's ids, is refused — 404s indistinguishable from a missing id,
403 on admin routes — and nothing of the victim changes.

The operations are read from the app's own OpenAPI schema, so a new route with a path
parameter fails this test until its parameter is given a victim id below.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.api.conftest import ApiHarness, Tenant

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.kafka]

PUBLIC = {"/health"}
"""Operations that need no key at all."""

STREAMS = {"/wallet/events/stream"}
"""Never-ending responses; their isolation is tested in tests/api/live (events reach only
their own wallet's stream)."""

SIGNED = ("/webhooks/",)
"""Operations authenticated by a gateway signature, not by a key (tested with payments)."""

BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/wallet/holds/{hold_id}/capture"): {"quantity": 1},
    ("post", "/wallet/payments/{payment_id}/confirm"): {
        "razorpay_payment_id": "pay_x", "razorpay_order_id": "order_x",
        "razorpay_signature": "0" * 64,
    },
    ("post", "/admin/wallets/{wallet_id}/adjustments"): {
        "credits": 1, "reason": "goodwill", "actor": "mallory",
    },
    ("post", "/admin/wallets/{wallet_id}/status"): {"status": "frozen", "reason": "x"},
    ("post", "/admin/wallets/{wallet_id}/keys"): {
        "member_id": "m", "name": "k", "scopes": ["admin"],
    },
}  # fmt: skip


async def _victim(api: ApiHarness) -> tuple[Tenant, dict[str, str]]:
    victim = await api.tenant(credits=2000)
    await api.fund(victim, 300, reason="community_earnings")
    hold = await api.post(
        "/wallet/holds", {"feature": "ai.summary", "estimated_quantity": 1000},
        headers=victim.headers,
    )  # fmt: skip
    assert hold.status_code == 201, hold.text
    payout = await api.post("/wallet/payouts", {"credits": 100}, headers=victim.headers)
    assert payout.status_code == 201, payout.text
    keys = (await api.client.get("/wallet/keys", headers=victim.headers)).json()
    paid = await api.post(
        "/wallet/add-funds",
        {"amount_rupees": 150, "method": {"kind": "upi", "vpa": "failure@razorpay"}},
        headers=victim.headers,
    )
    assert paid.status_code == 201, paid.text
    spent = await api.post("/wallet/consume", {"feature": "ai.moderation"}, headers=victim.headers)
    assert spent.status_code == 200, spent.text
    ids = {
        "wallet_id": victim.wallet_id,
        "hold_id": hold.json()["hold_id"],
        "payout_id": payout.json()["payout_id"],
        "key_id": keys[0]["key_id"],
        "payment_id": paid.json()["payment"]["id"],
        "event_id": spent.json()["event_id"],
    }
    return victim, ids


def _operations(schema: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (method, path)
        for path, item in schema["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    ]


def _comparable(body: Any) -> Any:
    if isinstance(body, dict):
        # The requested id is echoed back (detail, instance, *_id); nothing else may differ.
        return {
            k: v for k, v in body.items()
            if k not in {"instance", "detail"} and not k.endswith("_id")
        }  # fmt: skip
    return body


async def test_another_tenants_key_reaches_nothing_of_the_victim(api: ApiHarness) -> None:
    victim, ids = await _victim(api)
    mallory = await api.tenant(credits=2000)
    before = (await api.client.get("/wallet", headers=victim.headers)).json()
    schema = (await api.client.get("/openapi.json")).json()
    tried = 0
    for method, template in _operations(schema):
        if template in PUBLIC or template in STREAMS or template.startswith(SIGNED):
            continue
        params = [p.strip("{}") for p in template.split("/") if p.startswith("{")]
        missing = [p for p in params if p not in ids]
        assert not missing, f"{method.upper()} {template}: give the victim an id for {missing}"
        path = template
        for name in params:
            path = path.replace("{" + name + "}", ids[name])
        body = BODIES.get((method, template), {})
        headers = {**mallory.headers, "Idempotency-Key": uuid.uuid4().hex}
        response = await api.client.request(
            method.upper(), path, headers=headers, json=body if method != "get" else None
        )
        tried += 1
        if template.startswith("/admin/"):
            assert response.status_code == 403, (method, path, response.text)
            assert response.json()["code"] == "forbidden"
            continue
        if not params:
            # Key-bound routes act on mallory's own wallet: the victim never appears.
            assert victim.wallet_id not in response.text, (method, path, response.text)
            continue
        assert response.status_code == 404, (method, path, response.status_code, response.text)
        missing_path = template
        for name in params:
            missing_path = missing_path.replace("{" + name + "}", f"nope{uuid.uuid4().hex[:8]}")
        headers = {**mallory.headers, "Idempotency-Key": uuid.uuid4().hex}
        absent = await api.client.request(
            method.upper(), missing_path, headers=headers,
            json=body if method != "get" else None,
        )  # fmt: skip
        assert absent.status_code == 404, (method, missing_path, absent.text)
        assert _comparable(response.json()) == _comparable(absent.json()), (method, path)
    assert tried >= 15
    for body in (
        {"kind": "purchase", "payment_id": ids["payment_id"], "amount_paise": 100},
        {"kind": "usage", "event_id": ids["event_id"], "credits": 1},
    ):
        refund = await api.post("/wallet/refund", body, headers=mallory.headers)
        assert refund.status_code == 404, (body, refund.text)
    after = (await api.client.get("/wallet", headers=victim.headers)).json()
    assert after["balances"] == before["balances"]
    assert after["status"] == before["status"]
