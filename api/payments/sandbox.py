"""The sandbox gateway: Razorpay test mode without the internet, for ``make up`` and the tests.

Behaviour (Razorpay test-mode conventions):

* UPI ``success@razorpay`` succeeds, ``failure@razorpay`` fails, ``pending@razorpay`` stays
  pending until :meth:`SandboxGateway.resolve_pending` (an operator or test call) or, when
  ``pending_delay_s`` is set, succeeds by itself after that delay. Other VPAs succeed.
* Card ``4111 1111 1111 1111`` (and any other valid number) succeeds; ``4000 0000 0000 0002``
  is declined (``card_declined``). :meth:`tokenize_card` saves a card as a token for
  auto-recharge; ``tok_sandbox_ok`` succeeds and ``tok_sandbox_declined`` is declined out of the
  box; an unknown token fails (``invalid_token``). Netbanking and wallets succeed.
* A success hands the client what Razorpay checkout hands the browser (payment id and the
  ``order_id|payment_id`` signature) to echo to ``/confirm``.
* Webhooks (``payment.captured``, ``payment.failed``, ``refund.processed``) are Razorpay-shaped
  JSON, signed exactly like Razorpay's (HMAC-SHA256 of the raw body in ``X-Razorpay-Signature``,
  ``X-Razorpay-Event-Id``) and POSTed asynchronously with httpx to ``webhook_url`` after
  ``webhook_delay_s``, retried with backoff on a non-2xx answer. With ``auto_deliver=False``
  they wait in :attr:`events` for :meth:`deliver`; :meth:`deliver` also re-delivers (tests send
  duplicates and out-of-order deliveries that way).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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
from domain.errors import InvalidInput, NotFound, StateConflict
from domain.payments import MethodKind, PaymentMethod

log = logging.getLogger(__name__)

SUCCESS_VPA = "success@razorpay"
FAILURE_VPA = "failure@razorpay"
PENDING_VPA = "pending@razorpay"
SUCCESS_CARD = "4111111111111111"
DECLINED_CARD = "4000000000000002"
OK_TOKEN = "tok_sandbox_ok"  # noqa: S105 - a test-mode token id, not a secret
DECLINED_TOKEN = "tok_sandbox_declined"  # noqa: S105


@dataclass(slots=True)
class SandboxPayment:
    id: str
    order: GatewayOrder
    method: str
    detail: str
    status: str  # created | pending | captured | failed
    error_reason: str | None = None
    refunded_paise: int = 0
    refunds: dict[str, RefundResult] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SandboxWebhook:
    event_id: str
    event: str
    body: bytes
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Delivery:
    event_id: str
    attempt: int
    status_code: int  # 0: the request did not get an answer


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(7)}"


def _utc_now() -> datetime:
    return datetime.now(UTC)


class SandboxGateway:
    """:class:`~api.payments.gateway.PaymentGateway` that decides locally and signs its webhooks."""

    name = "sandbox"

    def __init__(
        self,
        *,
        key_id: str = "rzp_test_sandbox",
        key_secret: str = "sandbox_key_secret",  # noqa: S107 - test-mode secret, not a credential
        webhook_secret: str = "sandbox_webhook_secret",  # noqa: S107
        webhook_url: str | None = None,
        client: httpx.AsyncClient | None = None,
        auto_deliver: bool = True,
        webhook_delay_s: float = 0.05,
        pending_delay_s: float | None = None,
        max_attempts: int = 5,
        retry_base_s: float = 0.2,
        max_event_age: timedelta = rw.DEFAULT_MAX_AGE,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.key_id, self.key_secret, self.webhook_secret = key_id, key_secret, webhook_secret
        self.webhook_url = webhook_url
        self.auto_deliver = auto_deliver
        self.webhook_delay_s, self.pending_delay_s = webhook_delay_s, pending_delay_s
        self.max_attempts, self.retry_base_s = max_attempts, retry_base_s
        self.max_event_age = max_event_age
        self._now = now
        self._client = client or httpx.AsyncClient(timeout=10.0)
        self._owns_client = client is None
        self.orders: dict[str, GatewayOrder] = {}
        self.payments: dict[str, SandboxPayment] = {}
        self.tokens: dict[str, bool] = {OK_TOKEN: True, DECLINED_TOKEN: False}
        self.events: list[SandboxWebhook] = []
        self.deliveries: list[Delivery] = []
        self._tasks: set[asyncio.Task[None]] = set()

    # -- gateway port ---------------------------------------------------------------------------

    async def create_order(
        self, amount_paise: int, receipt: str, notes: Mapping[str, str]
    ) -> GatewayOrder:
        order = GatewayOrder(_new_id("order"), amount_paise, receipt)
        self.orders[order.order_id] = order
        return order

    async def charge(self, order: GatewayOrder, method: PaymentMethod) -> ChargeResult:
        if method.kind is MethodKind.SAVED_TOKEN and method.token is not None:
            return await self.charge_token(order, method.token)
        failure: str | None = None
        if method.vpa == FAILURE_VPA:
            failure = "upi_declined"
        elif method.card_number == DECLINED_CARD or (
            method.card_token is not None and not self.tokens.get(method.card_token, False)
        ):
            failure = "card_declined"
        payment = self._new_payment(order, method.kind.value, method.detail)
        if failure is not None:
            return self._fail(payment, failure)
        if method.vpa == PENDING_VPA:
            payment.status = "pending"
            if self.pending_delay_s is not None:
                self._spawn(self._resolve_later(payment.id, self.pending_delay_s))
            action = ClientAction("await_webhook", self.key_id, order.order_id, payment.id)
            return ChargeResult(GatewayStatus.PENDING, payment.id, action)
        return self._capture(payment)

    async def charge_token(self, order: GatewayOrder, token: str) -> ChargeResult:
        payment = self._new_payment(order, "card", token)
        known = self.tokens.get(token)
        if known is None:
            return self._fail(payment, "invalid_token")
        if not known:
            return self._fail(payment, "token_declined")
        result = self._capture(payment)
        action = ClientAction("await_webhook", self.key_id, order.order_id, payment.id)
        return ChargeResult(result.status, payment.id, action)

    async def refund(self, payment_id: str, amount_paise: int, refund_id: str) -> RefundResult:
        payment = self.payments.get(payment_id)
        if payment is None:
            raise NotFound(f"sandbox payment {payment_id!r} not found")
        if refund_id in payment.refunds:  # same receipt: the gateway answers the same refund
            return payment.refunds[refund_id]
        if payment.status != "captured":
            raise StateConflict(f"sandbox payment {payment_id!r} is {payment.status}")
        if amount_paise <= 0 or payment.refunded_paise + amount_paise > payment.order.amount_paise:
            raise InvalidInput(f"refund of {amount_paise} paise exceeds the payment")
        payment.refunded_paise += amount_paise
        result = RefundResult(_new_id("rfnd"), payment_id, amount_paise, "pending")
        payment.refunds[refund_id] = result
        self._emit("refund.processed", self._refund_payload(payment, result, refund_id))
        return result

    def parse_webhook(self, body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        return rw.verify_webhook(
            self.webhook_secret, body, headers, now=self._now(), max_age=self.max_event_age
        )

    def verify_payment_signature(self, order_id: str, payment_id: str, signature: str) -> None:
        rw.verify_payment_signature(self.key_secret, order_id, payment_id, signature)

    # -- operator and test controls -------------------------------------------------------------

    def tokenize_card(self, card_number: str) -> str:
        """Save a card for recurring charges; the token declines iff the card does."""
        method = PaymentMethod.card(card_number)
        token = _new_id("token")
        self.tokens[token] = method.card_number != DECLINED_CARD
        return token

    def resolve_pending(self, payment_id: str, *, succeed: bool = True) -> None:
        """Decide a pending UPI payment now (the payer approved or declined the collect)."""
        payment = self.payments.get(payment_id)
        if payment is None:
            raise NotFound(f"sandbox payment {payment_id!r} not found")
        if payment.status != "pending":
            raise StateConflict(f"sandbox payment {payment_id!r} is {payment.status}")
        if succeed:
            self._capture(payment)
        else:
            self._fail(payment, "upi_declined")

    def event(self, event_type: str, payment_id: str | None = None) -> SandboxWebhook:
        """The last webhook of ``event_type`` (about ``payment_id`` when given)."""
        for hook in reversed(self.events):
            if hook.event == event_type and (
                payment_id is None or payment_id.encode() in hook.body
            ):
                return hook
        raise NotFound(f"no {event_type} webhook for {payment_id!r}")

    async def deliver(self, event_id: str) -> int:
        """POST one webhook now (again, if it was delivered before); return the HTTP status."""
        hook = next((h for h in self.events if h.event_id == event_id), None)
        if hook is None:
            raise NotFound(f"no sandbox webhook {event_id!r}")
        if self.webhook_url is None:
            raise StateConflict("the sandbox has no webhook_url to deliver to")
        attempt = 1 + sum(1 for d in self.deliveries if d.event_id == event_id)
        try:
            response = await self._client.post(
                self.webhook_url, content=hook.body, headers=dict(hook.headers)
            )
            status = response.status_code
        except httpx.HTTPError as exc:
            log.warning("sandbox webhook %s delivery failed: %r", event_id, exc)
            status = 0
        self.deliveries.append(Delivery(event_id, attempt, status))
        return status

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._owns_client:
            await self._client.aclose()

    # -- internals ------------------------------------------------------------------------------

    def _new_payment(self, order: GatewayOrder, method: str, detail: str) -> SandboxPayment:
        if order.order_id not in self.orders:
            raise NotFound(f"sandbox order {order.order_id!r} not found")
        payment = SandboxPayment(_new_id("pay"), order, method, detail, "created")
        self.payments[payment.id] = payment
        return payment

    def _capture(self, payment: SandboxPayment) -> ChargeResult:
        payment.status = "captured"
        self._emit("payment.captured", self._payment_payload(payment))
        signature = rw.payment_signature(self.key_secret, payment.order.order_id, payment.id)
        action = ClientAction("confirm", self.key_id, payment.order.order_id, payment.id, signature)
        return ChargeResult(GatewayStatus.ATTEMPTED, payment.id, action)

    def _fail(self, payment: SandboxPayment, reason: str) -> ChargeResult:
        payment.status, payment.error_reason = "failed", reason
        self._emit("payment.failed", self._payment_payload(payment))
        return ChargeResult(GatewayStatus.FAILED, payment.id, None, reason)

    async def _resolve_later(self, payment_id: str, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        if self.payments[payment_id].status == "pending":
            self.resolve_pending(payment_id, succeed=True)

    def _payment_payload(self, payment: SandboxPayment) -> dict[str, Any]:
        failed = payment.status == "failed"
        return {
            "payment": {
                "entity": {
                    "id": payment.id,
                    "entity": "payment",
                    "amount": payment.order.amount_paise,
                    "currency": "INR",
                    "status": payment.status,
                    "order_id": payment.order.order_id,
                    "method": payment.method,
                    "amount_refunded": payment.refunded_paise,
                    "captured": payment.status == "captured",
                    "vpa": payment.detail if payment.method == "upi" else None,
                    "notes": {"receipt": payment.order.receipt},
                    "error_code": "BAD_REQUEST_ERROR" if failed else None,
                    "error_reason": payment.error_reason,
                    "created_at": int(self._now().timestamp()),
                }
            }
        }

    def _refund_payload(
        self, payment: SandboxPayment, refund: RefundResult, receipt: str
    ) -> dict[str, Any]:
        entity = {
            "id": refund.refund_id,
            "entity": "refund",
            "amount": refund.amount_paise,
            "currency": "INR",
            "payment_id": payment.id,
            "receipt": receipt,
            "status": "processed",
            "created_at": int(self._now().timestamp()),
        }
        return {"refund": {"entity": entity}, **self._payment_payload(payment)}

    def _emit(self, event_type: str, payload: dict[str, Any]) -> None:
        envelope = {
            "entity": "event",
            "account_id": "acc_sandbox",
            "event": event_type,
            "contains": list(payload),
            "payload": payload,
            "created_at": int(self._now().timestamp()),
        }
        body = json.dumps(envelope, separators=(",", ":")).encode()
        event_id = _new_id("evt")
        headers = {
            "Content-Type": "application/json",
            "X-Razorpay-Signature": rw.hmac_hex(self.webhook_secret, body),
            "X-Razorpay-Event-Id": event_id,
        }
        self.events.append(SandboxWebhook(event_id, event_type, body, headers))
        if self.auto_deliver and self.webhook_url is not None:
            self._spawn(self._deliver_with_retries(event_id))

    async def _deliver_with_retries(self, event_id: str) -> None:
        await asyncio.sleep(self.webhook_delay_s)
        for attempt in range(self.max_attempts):
            if 200 <= await self.deliver(event_id) < 300:
                return
            await asyncio.sleep(self.retry_base_s * 2**attempt)
        log.warning("sandbox webhook %s gave up after %d attempts", event_id, self.max_attempts)

    def _spawn(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
