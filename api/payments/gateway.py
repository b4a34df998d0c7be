"""The payment gateway port: what the payment service needs from Razorpay (or the sandbox).

Amounts are integer paise, ids are the gateway's. Every method may raise
:class:`~domain.errors.Unavailable` when the gateway cannot be reached (nothing is known: retry
with the same ``receipt``/``refund_id``). A decline is not an error: it is a
:class:`ChargeResult` with status ``failed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from domain.payments import PaymentMethod


class GatewayStatus(StrEnum):
    """A gateway's view of one payment attempt, mapped onto our states by the service."""

    ATTEMPTED = "attempted"  # submitted; the verdict comes by client confirmation or webhook
    PENDING = "pending"  # the payer must still approve (UPI collect)
    CAPTURED = "captured"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class GatewayOrder:
    order_id: str
    amount_paise: int
    receipt: str


@dataclass(frozen=True, slots=True)
class ClientAction:
    """What the payer's client needs: Razorpay checkout options, or (sandbox) the checkout's
    outcome to echo back to ``/confirm`` as the browser would."""

    kind: str  # "checkout" | "await_webhook" | "confirm"
    key_id: str
    order_id: str
    payment_id: str | None = None
    signature: str | None = None


@dataclass(frozen=True, slots=True)
class ChargeResult:
    status: GatewayStatus
    payment_id: str | None
    action: ClientAction | None = None
    failure_reason: str | None = None  # a stable code such as ``card_declined``


@dataclass(frozen=True, slots=True)
class RefundResult:
    refund_id: str
    payment_id: str
    amount_paise: int
    status: str  # "pending" | "processed"


class WebhookKind(StrEnum):
    PAYMENT_CAPTURED = "payment.captured"
    PAYMENT_FAILED = "payment.failed"
    PAYMENT_AUTHORIZED = "payment.authorized"
    REFUND_PROCESSED = "refund.processed"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """A verified, parsed webhook. ``event_id`` is the replay key."""

    event_id: str
    kind: WebhookKind
    raw_type: str
    created_at: datetime
    order_id: str | None = None
    payment_id: str | None = None
    amount_paise: int | None = None
    failure_reason: str | None = None
    refund_id: str | None = None
    refund_amount_paise: int | None = None
    notes: Mapping[str, str] = field(default_factory=dict)


class PaymentGateway(Protocol):
    """Razorpay's shape: orders, payment attempts, saved-token charges, refunds, signed webhooks.

    ``parse_webhook`` and ``verify_payment_signature`` raise
    :class:`~domain.errors.SignatureInvalid` (with a ``reason`` detail) and nothing else for a
    request that must be refused; replay protection (an event id seen before) is the caller's,
    because it needs storage.
    """

    name: str
    key_id: str

    async def create_order(
        self, amount_paise: int, receipt: str, notes: Mapping[str, str]
    ) -> GatewayOrder: ...

    async def charge(self, order: GatewayOrder, method: PaymentMethod) -> ChargeResult: ...

    async def charge_token(self, order: GatewayOrder, token: str) -> ChargeResult: ...

    async def refund(self, payment_id: str, amount_paise: int, refund_id: str) -> RefundResult: ...

    def parse_webhook(self, body: bytes, headers: Mapping[str, str]) -> WebhookEvent: ...

    def verify_payment_signature(self, order_id: str, payment_id: str, signature: str) -> None: ...
