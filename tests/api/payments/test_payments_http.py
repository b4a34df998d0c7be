"""The payment routes over real HTTP (tests/api/conftest.py's ``api`` harness): add funds with
the sandbox, its signed webhooks delivered over HTTP to the API, client confirmation, a forged
webhook refused, the quote preview, retry and refund."""

from __future__ import annotations

import asyncio

import pytest

from api.payments.sandbox import SandboxGateway
from tests.api.conftest import ApiHarness

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.kafka]


def _sandbox(api: ApiHarness) -> SandboxGateway:
    gateway = api.services.gateway
    assert isinstance(gateway, SandboxGateway)
    gateway.webhook_url = f"{api.base_url}/webhooks/razorpay"
    gateway.webhook_delay_s = 0.0
    return gateway


async def _state(api: ApiHarness, headers: dict[str, str], payment_id: str) -> str:
    reply = await api.client.get(f"/wallet/payments/{payment_id}", headers=headers)
    assert reply.status_code == 200, reply.text
    state: str = reply.json()["state"]
    return state


async def test_add_funds_confirm_and_webhook_over_http(api: ApiHarness) -> None:
    sandbox = _sandbox(api)
    tenant = await api.tenant()
    quote = await api.client.get("/wallet/quote?amount_rupees=700", headers=tenant.headers)
    assert quote.json()["nudge"]["message"] == "add ₹300 more for +1,500 bonus credits"
    created = await api.post(
        "/wallet/add-funds",
        {"amount_rupees": 500, "method": {"kind": "upi", "vpa": "success@razorpay"}},
        headers=tenant.headers,
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["quote"]["total_paise"] == 60_200
    action = body["next_action"]
    confirm = {
        "razorpay_payment_id": action["razorpay_payment_id"],
        "razorpay_order_id": action["order_id"],
        "razorpay_signature": action["razorpay_signature"],
    }
    path = f"/wallet/payments/{body['payment']['id']}/confirm"
    replies = await asyncio.gather(
        *(api.post(path, confirm, headers=tenant.headers) for _ in range(3))
    )
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
    for _ in range(100):  # the sandbox's webhook arrives asynchronously
        if sandbox.deliveries:
            break
        await asyncio.sleep(0.05)
    hook = sandbox.event("payment.captured")
    assert await sandbox.deliver(hook.event_id) == 200  # a re-delivery: 2xx, no effect
    assert all(d.status_code == 200 for d in sandbox.deliveries)
    assert await _state(api, tenant.headers, body["payment"]["id"]) == "success"
    wallet = await api.client.get("/wallet", headers=tenant.headers)
    assert wallet.status_code == 200
    assert "5500" in wallet.text.replace(",", "")
    forged = await api.client.post(
        "/webhooks/razorpay",
        content=hook.body,
        headers={**hook.headers, "X-Razorpay-Signature": "0" * 64},
    )
    assert 400 <= forged.status_code < 500
    assert forged.json()["code"] == "invalid_signature"


async def test_failed_payment_retry_and_refund_over_http(api: ApiHarness) -> None:
    _sandbox(api)
    tenant = await api.tenant()
    failed = await api.post(
        "/wallet/add-funds",
        {"amount_rupees": 300, "method": {"kind": "card", "card_number": "4000000000000002"}},
        headers=tenant.headers,
    )
    assert failed.json()["payment"]["state"] == "failed", failed.text
    payment_id = failed.json()["payment"]["id"]
    retry = await api.post(
        f"/wallet/payments/{payment_id}/retry",
        {"method": {"kind": "card", "card_number": "4111 1111 1111 1111"}},
        headers=tenant.headers,
    )
    assert retry.status_code == 201, retry.text
    new_id = retry.json()["payment"]["id"]
    assert retry.json()["payment"]["retry_of"] == payment_id
    for _ in range(100):
        if await _state(api, tenant.headers, new_id) == "success":
            break
        await asyncio.sleep(0.05)
    assert await _state(api, tenant.headers, new_id) == "success"
    refund = await api.post(
        "/wallet/refund",
        {"kind": "purchase", "payment_id": new_id, "amount_paise": 15_000},
        headers=tenant.headers,
    )
    assert refund.status_code == 200, refund.text
    assert refund.json()["credits_removed"] == 1_600  # 1,500 + half of the 200 bonus
    assert await _state(api, tenant.headers, new_id) == "partially_refunded"
