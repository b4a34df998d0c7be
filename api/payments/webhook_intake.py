"""Webhook intake: verify -> deduplicate -> apply -> log, one delivery at a time.

Every delivery is logged in ``payment_webhooks``, refused ones with why (``missing_signature``,
``bad_signature``, ``stale``, ``malformed``): a refusal raises
:class:`~domain.errors.SignatureInvalid` after logging and changes nothing else. Only
accepted deliveries claim their event id, so a forged copy cannot block the genuine event.

A re-delivered event id (the gateway retrying, or a replay of a genuine body) is answered as a
``duplicate``: logged, no effect. Outcomes of an accepted event: ``applied`` (a forward move),
``ignored`` (a duplicate verdict, an out-of-order one, an event type or payment we do not
handle) and ``conflict`` (a verdict contradicting the recorded one, e.g. captured after failed:
an operator must look; the gateway is still answered 2xx because re-sending cannot help).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from api.payments.gateway import PaymentGateway, WebhookEvent, WebhookKind
from api.payments.razorpay_webhooks import EVENT_ID_HEADER, lower_headers
from api.payments.store import PaymentRecord, PaymentStore
from domain.errors import SignatureInvalid, StateConflict
from domain.payments import PaymentState

Apply = Callable[..., Awaitable[PaymentRecord]]

_TARGETS = {
    WebhookKind.PAYMENT_CAPTURED: PaymentState.SUCCESS,
    WebhookKind.PAYMENT_FAILED: PaymentState.FAILED,
}


@dataclass(frozen=True, slots=True)
class WebhookResult:
    outcome: str  # applied | ignored | duplicate | conflict
    event_id: str
    payment_id: str | None = None


class WebhookIntake:
    def __init__(self, store: PaymentStore, gateway: PaymentGateway, apply: Apply) -> None:
        self.store, self.gateway, self.apply = store, gateway, apply

    async def handle(self, body: bytes, headers: Mapping[str, str]) -> WebhookResult:
        gateway = self.gateway.name
        try:
            event = self.gateway.parse_webhook(body, headers)
        except SignatureInvalid as exc:
            claimed = lower_headers(headers).get(EVENT_ID_HEADER, "")[:128] or None
            await self.store.log_webhook(
                gateway, body, outcome="refused", event_id=claimed,
                reason=str(exc.details.get("reason", "malformed")), detail=exc.message,
            )  # fmt: skip
            raise
        if await self.store.webhook_seen(gateway, event.event_id):
            await self.store.log_webhook(
                gateway, body, outcome="duplicate", event_id=event.event_id,
                event_type=event.raw_type,
            )  # fmt: skip
            return WebhookResult("duplicate", event.event_id)
        outcome, payment_id, detail = await self._apply(event)
        recorded = await self.store.log_webhook(
            gateway, body, outcome=outcome, event_id=event.event_id,
            event_type=event.raw_type, payment_id=payment_id, detail=detail,
        )  # fmt: skip
        return WebhookResult(recorded, event.event_id, payment_id)

    async def _apply(self, event: WebhookEvent) -> tuple[str, str | None, str | None]:
        if event.kind is WebhookKind.REFUND_PROCESSED and event.refund_id is not None:
            changed = await self.store.mark_refund_processed(event.refund_id)
            return ("applied" if changed else "ignored"), None, None
        target = _TARGETS.get(event.kind)
        if target is None:
            return "ignored", None, f"event type {event.raw_type} is not handled"
        payment = await self.store.find(order_id=event.order_id, payment_id=event.payment_id)
        if payment is None:
            return "ignored", None, "no payment has this order or payment id"
        before = payment.state
        try:
            after = await self.apply(
                payment.id,
                target,
                cause="webhook",
                gateway_payment_id=event.payment_id,
                failure_reason=event.failure_reason,
            )
        except StateConflict as exc:
            return "conflict", payment.id, exc.message
        moved = after.state is target and before is not target
        return ("applied" if moved else "ignored"), payment.id, None
