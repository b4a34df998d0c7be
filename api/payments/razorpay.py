"""The Razorpay adapter: the orders and payments REST API over httpx, key id/secret basic auth.

Standard checkout does the card / netbanking / wallet attempt in the payer's browser: the
adapter creates the order and hands the client the checkout options; the verdict comes back by
client confirmation (the ``order_id|payment_id`` signature) or by webhook. UPI collect and
saved-token (recurring) charges are server-to-server and answer with a payment id whose verdict
arrives by webhook. Signatures and webhooks: :mod:`api.payments.razorpay_webhooks`.

The httpx client is passed in or created in :meth:`RazorpayGateway.create` (tests give it an
``httpx.MockTransport``: the network edge is the only thing mocked).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from api.payments import razorpay_webhooks as rw
from api.payments.gateway import (
    ChargeResult,
    ClientAction,
    GatewayOrder,
    GatewayStatus,
    RefundResult,
    WebhookEvent,
)
from domain.errors import ConfigError, InvalidInput, Unavailable
from domain.payments import MethodKind, PaymentMethod

API_URL = "https://api.razorpay.com/v1"


@dataclass(frozen=True, slots=True)
class RazorpaySettings:
    key_id: str
    key_secret: str
    webhook_secret: str
    base_url: str = API_URL
    timeout_s: float = 10.0
    webhook_max_age: timedelta = rw.DEFAULT_MAX_AGE
    customer_email: str = "payments@commdesk.dev"
    customer_contact: str = "+910000000000"

    def __post_init__(self) -> None:
        for name in ("key_id", "key_secret", "webhook_secret"):
            if not getattr(self, name):
                raise ConfigError(f"razorpay {name} is required", field=name)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class RazorpayGateway:
    """:class:`~api.payments.gateway.PaymentGateway` over Razorpay's REST API."""

    name = "razorpay"

    def __init__(
        self,
        settings: RazorpaySettings,
        client: httpx.AsyncClient,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.settings = settings
        self.key_id = settings.key_id
        self._client = client
        self._now = now

    @classmethod
    def create(
        cls, settings: RazorpaySettings, transport: httpx.AsyncBaseTransport | None = None
    ) -> RazorpayGateway:
        client = httpx.AsyncClient(
            base_url=settings.base_url,
            auth=(settings.key_id, settings.key_secret),
            timeout=settings.timeout_s,
            transport=transport,
        )
        return cls(settings, client)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        try:
            response = await self._client.post(path, json=dict(body))
        except httpx.HTTPError as exc:
            raise Unavailable(f"razorpay {path} unreachable: {exc!r}") from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise Unavailable(f"razorpay {path} answered {response.status_code}")
        payload = response.json() if response.content else {}
        if response.status_code >= 400:
            error = payload.get("error", {}) if isinstance(payload, dict) else {}
            raise InvalidInput(
                f"razorpay refused {path}: {error.get('description', response.status_code)}",
                gateway_code=str(error.get("code", "")),
                reason=str(error.get("reason", "")),
            )
        assert isinstance(payload, dict), f"razorpay {path} answered a non-object"
        return payload

    async def create_order(
        self, amount_paise: int, receipt: str, notes: Mapping[str, str]
    ) -> GatewayOrder:
        body = {"amount": amount_paise, "currency": "INR", "receipt": receipt[:40]}
        reply = await self._post("/orders", {**body, "notes": dict(notes)})
        return GatewayOrder(str(reply["id"]), int(reply["amount"]), receipt)

    async def charge(self, order: GatewayOrder, method: PaymentMethod) -> ChargeResult:
        if method.kind is MethodKind.UPI and method.vpa is not None:
            reply = await self._post("/payments/create/upi", self._s2s(order, "upi", method.vpa))
            return ChargeResult(
                GatewayStatus.PENDING,
                str(reply["razorpay_payment_id"]),
                ClientAction("await_webhook", self.key_id, order.order_id),
            )
        if method.kind is MethodKind.SAVED_TOKEN and method.token is not None:
            return await self.charge_token(order, method.token)
        # Cards, netbanking and wallets go through Razorpay checkout in the payer's browser.
        return ChargeResult(
            GatewayStatus.ATTEMPTED, None, ClientAction("checkout", self.key_id, order.order_id)
        )

    def _s2s(self, order: GatewayOrder, method: str, vpa: str) -> dict[str, Any]:
        return {
            "amount": order.amount_paise,
            "currency": "INR",
            "order_id": order.order_id,
            "method": method,
            "vpa": vpa,
            "email": self.settings.customer_email,
            "contact": self.settings.customer_contact,
        }

    async def charge_token(self, order: GatewayOrder, token: str) -> ChargeResult:
        body = {
            "amount": order.amount_paise,
            "currency": "INR",
            "order_id": order.order_id,
            "token": token,
            "recurring": "1",
            "email": self.settings.customer_email,
            "contact": self.settings.customer_contact,
        }
        reply = await self._post("/payments/create/recurring", body)
        return ChargeResult(
            GatewayStatus.ATTEMPTED,
            str(reply["razorpay_payment_id"]),
            ClientAction("await_webhook", self.key_id, order.order_id),
        )

    async def refund(self, payment_id: str, amount_paise: int, refund_id: str) -> RefundResult:
        body = {"amount": amount_paise, "speed": "normal", "receipt": refund_id[:40]}
        reply = await self._post(f"/payments/{payment_id}/refund", body)
        return RefundResult(
            str(reply["id"]), payment_id, int(reply["amount"]), str(reply.get("status", "pending"))
        )

    def parse_webhook(self, body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        return rw.verify_webhook(
            self.settings.webhook_secret,
            body,
            headers,
            now=self._now(),
            max_age=self.settings.webhook_max_age,
        )

    def verify_payment_signature(self, order_id: str, payment_id: str, signature: str) -> None:
        rw.verify_payment_signature(self.settings.key_secret, order_id, payment_id, signature)
