"""The Razorpay adapter against Razorpay's published test vectors, and its network edge.

Test vectors (inputs and expected signatures, data only):

* Payment signature: razorpay/razorpay-python, ``tests/test_client_utility.py``
  (``test_verify_payment_signature``): key secret ``key_secret`` (``tests/helpers.py``),
  ``fake_order_id`` | ``fake_payment_id`` ->
  ``b2335e3b0801106b84a7faff035df56ecffde06918c9ddd1f0fafbb37a51cc89``.
* Webhook signature: razorpay/razorpay-python, ``tests/test_client_utility.py``
  (``test_verify_webhook_signature``): the raw bytes of
  ``tests/mocks/fake_payment_authorized_webhook.json`` (kept here as
  ``fixtures/razorpay_python_payment_authorized_webhook.json``, trailing newline included),
  secret ``key_secret`` -> ``d60e67fd884556c045e9be7dad57903e33efc7172c17c6e3ef77db42d2b366e9``.
* Webhook signature: razorpay/razorpay-node, ``test/utils/razorpay-utils.spec.js``
  (``validateWebhookSignature``): body ``{"a":1,"b":2,"c":{"d":3}}``, secret ``123456`` ->
  ``2fe04e22977002e6c7cb553adab8b460cb9e2a4970d5953cb27a8472752e3bbc``.

Only the network edge is mocked (``httpx.MockTransport``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from api.payments import razorpay_webhooks as rw
from api.payments.gateway import GatewayStatus, WebhookKind
from api.payments.razorpay import RazorpayGateway, RazorpaySettings
from domain.errors import InvalidInput, SignatureInvalid, Unavailable
from domain.payments import PaymentMethod

FIXTURES = Path(__file__).parent / "fixtures"
PY_PAYMENT_SIG = "b2335e3b0801106b84a7faff035df56ecffde06918c9ddd1f0fafbb37a51cc89"
PY_WEBHOOK_SIG = "d60e67fd884556c045e9be7dad57903e33efc7172c17c6e3ef77db42d2b366e9"
NODE_BODY = b'{"a":1,"b":2,"c":{"d":3}}'
NODE_WEBHOOK_SIG = "2fe04e22977002e6c7cb553adab8b460cb9e2a4970d5953cb27a8472752e3bbc"


def test_payment_signature_vector_from_razorpay_python() -> None:
    assert rw.payment_signature("key_secret", "fake_order_id", "fake_payment_id") == PY_PAYMENT_SIG
    rw.verify_payment_signature("key_secret", "fake_order_id", "fake_payment_id", PY_PAYMENT_SIG)
    for bad in ("test_signature", "", "A" * 64, PY_PAYMENT_SIG.upper(), None):
        with pytest.raises(SignatureInvalid):
            rw.verify_payment_signature("key_secret", "fake_order_id", "fake_payment_id", bad)


def test_webhook_signature_vectors_from_razorpay_sdks() -> None:
    body = (FIXTURES / "razorpay_python_payment_authorized_webhook.json").read_bytes()
    assert rw.hmac_hex("key_secret", body) == PY_WEBHOOK_SIG
    assert rw.hmac_hex("123456", NODE_BODY) == NODE_WEBHOOK_SIG
    assert rw.signatures_match(NODE_WEBHOOK_SIG, NODE_WEBHOOK_SIG)
    assert not rw.signatures_match(NODE_WEBHOOK_SIG, "sdfafds")


def test_the_python_sdk_webhook_verifies_and_parses() -> None:
    body = (FIXTURES / "razorpay_python_payment_authorized_webhook.json").read_bytes()
    headers = {"X-Razorpay-Signature": PY_WEBHOOK_SIG, "X-Razorpay-Event-Id": "evt_1"}
    created = datetime.fromtimestamp(1400826760, UTC)
    event = rw.verify_webhook("key_secret", body, headers, now=created + timedelta(minutes=1))
    assert event.kind is WebhookKind.PAYMENT_AUTHORIZED
    assert (event.payment_id, event.order_id) == ("pay_6koWN7bvxujzxM", "order_100000000order")
    assert event.amount_paise == 1_000_000
    with pytest.raises(SignatureInvalid) as stale:
        rw.verify_webhook("key_secret", body, headers, now=created + timedelta(days=2))
    assert stale.value.details["reason"] == "stale"
    with pytest.raises(SignatureInvalid) as resigned:
        rw.verify_webhook("key_secret", body.rstrip(), headers, now=created)
    assert resigned.value.details["reason"] == "bad_signature"  # the raw bytes are what count


def _gateway(handler: httpx.MockTransport) -> RazorpayGateway:
    settings = RazorpaySettings(key_id="rzp_test_x", key_secret="key_secret", webhook_secret="w")
    return RazorpayGateway.create(settings, transport=handler)


async def test_orders_upi_tokens_and_refunds_over_the_rest_api() -> None:
    seen: list[tuple[str, dict[str, object], str]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append((request.url.path, body, request.headers["authorization"]))
        replies = {
            "/v1/orders": {"id": "order_1", "amount": body.get("amount"), "status": "created"},
            "/v1/payments/create/upi": {"razorpay_payment_id": "pay_1"},
            "/v1/payments/create/recurring": {"razorpay_payment_id": "pay_2"},
            "/v1/payments/pay_1/refund": {"id": "rfnd_1", "amount": body.get("amount")},
        }
        return httpx.Response(200, json=replies[request.url.path])

    gateway = _gateway(httpx.MockTransport(handle))
    order = await gateway.create_order(60_200, "pmt_1", {"wallet_id": "w"})
    assert order.order_id == "order_1"
    upi = await gateway.charge(order, PaymentMethod.upi("success@razorpay"))
    assert (upi.status, upi.payment_id) == (GatewayStatus.PENDING, "pay_1")
    card = await gateway.charge(order, PaymentMethod.card("4111111111111111"))
    assert card.status is GatewayStatus.ATTEMPTED
    assert card.action is not None
    assert card.action.kind == "checkout"
    token = await gateway.charge(order, PaymentMethod.saved_token("token_abc1"))
    assert token.payment_id == "pay_2"
    refund = await gateway.refund("pay_1", 29_500, "rfd_1")
    assert (refund.refund_id, refund.amount_paise) == ("rfnd_1", 29_500)
    assert seen[0][1] == {
        "amount": 60_200, "currency": "INR", "receipt": "pmt_1", "notes": {"wallet_id": "w"},
    }  # fmt: skip
    assert all(auth.startswith("Basic ") for _, _, auth in seen)
    await gateway.aclose()


async def test_gateway_errors_are_typed() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    def refused(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": {"code": "BAD_REQUEST_ERROR",
                                                   "description": "amount too low"}})  # fmt: skip

    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("no route", request=request)

    for handler, error in (
        (down, Unavailable),
        (refused, InvalidInput),
        (unreachable, Unavailable),
    ):
        gateway = _gateway(httpx.MockTransport(handler))
        with pytest.raises(error):
            await gateway.create_order(100, "r", {})
        await gateway.aclose()
