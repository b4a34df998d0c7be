"""Request and response bodies of the payment routes (snake_case JSON, integer paise/credits)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.payments.gateway import ClientAction
from api.payments.store import PaymentRecord, RefundRecord
from domain.payments import MethodKind, PaymentMethod
from domain.quote import AddFundsQuote


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class MethodIn(_In):
    kind: Annotated[MethodKind, Field(strict=False)]  # JSON strings name the enum
    vpa: str | None = None
    card_number: str | None = None
    card_token: str | None = None
    bank: str | None = None
    wallet: str | None = None
    token: str | None = None

    def to_domain(self) -> PaymentMethod:
        number = self.card_number.replace(" ", "") if self.card_number else None
        return PaymentMethod(
            self.kind, vpa=self.vpa, card_number=number, card_token=self.card_token,
            bank=self.bank, wallet=self.wallet, token=self.token,
        )  # fmt: skip


class AddFundsIn(_In):
    amount_rupees: Annotated[int, Field(ge=1)]
    method: MethodIn


class ConfirmIn(_In):
    razorpay_payment_id: Annotated[str, Field(min_length=1, max_length=64)]
    razorpay_order_id: Annotated[str, Field(min_length=1, max_length=64)]
    razorpay_signature: Annotated[str, Field(min_length=1, max_length=128)]


class RetryIn(_In):
    method: MethodIn | None = None


class PurchaseRefundIn(_In):
    kind: Literal["purchase"]
    payment_id: str
    amount_paise: Annotated[int, Field(ge=1)]


class UsageRefundIn(_In):
    kind: Literal["usage"]
    event_id: str
    credits: Annotated[int, Field(ge=1)]
    reason: Annotated[str, Field(min_length=1, max_length=256)] = "usage_reversal"


RefundIn = Annotated[PurchaseRefundIn | UsageRefundIn, Field(discriminator="kind")]


class NudgeOut(BaseModel):
    pack_amount_paise: int
    additional_paise: int
    extra_bonus_credits: int
    message: str


class QuoteOut(BaseModel):
    amount_paise: int
    gst_paise: int
    platform_fee_paise: int
    total_paise: int
    base_credits: int
    bonus_credits: int
    credits_added: int
    nudge: NudgeOut | None

    @classmethod
    def of(cls, quote: AddFundsQuote) -> QuoteOut:
        nudge = quote.nudge
        return cls(
            amount_paise=quote.amount_paise, gst_paise=quote.gst_paise,
            platform_fee_paise=quote.platform_fee_paise, total_paise=quote.total_paise,
            base_credits=quote.base_credits, bonus_credits=quote.bonus_credits,
            credits_added=quote.credits_added,
            nudge=None if nudge is None else NudgeOut(
                pack_amount_paise=nudge.pack.amount_paise, additional_paise=nudge.additional_paise,
                extra_bonus_credits=nudge.extra_bonus_credits, message=nudge.message,
            ),
        )  # fmt: skip


class PaymentOut(BaseModel):
    id: str
    state: str
    purpose: str
    method: str
    method_detail: str
    amount_paise: int
    gst_paise: int
    platform_fee_paise: int
    total_paise: int
    credits: int
    bonus_credits: int
    refunded_paise: int
    failure_reason: str | None
    retry_of: str | None
    gateway: str
    gateway_order_id: str | None
    gateway_payment_id: str | None
    created_at: datetime

    @classmethod
    def of(cls, r: PaymentRecord) -> PaymentOut:
        return cls(
            id=r.id, state=r.state.value, purpose=r.purpose.value, method=r.method.value,
            method_detail=r.method_detail, amount_paise=r.amount_paise, gst_paise=r.gst_paise,
            platform_fee_paise=r.platform_fee_paise, total_paise=r.total_paise,
            credits=r.credits, bonus_credits=r.bonus_credits, refunded_paise=r.refunded_paise,
            failure_reason=r.failure_reason, retry_of=r.retry_of, gateway=r.gateway,
            gateway_order_id=r.gateway_order_id, gateway_payment_id=r.gateway_payment_id,
            created_at=r.created_at,
        )  # fmt: skip


class NextActionOut(BaseModel):
    """``checkout``: open Razorpay checkout with ``key_id`` and ``order_id``; ``confirm``
    (sandbox): post these ids and signature to ``/confirm``; ``await_webhook``: wait."""

    kind: str
    key_id: str
    order_id: str
    razorpay_payment_id: str | None
    razorpay_signature: str | None

    @classmethod
    def of(cls, action: ClientAction | None) -> NextActionOut | None:
        if action is None:
            return None
        return cls(
            kind=action.kind, key_id=action.key_id, order_id=action.order_id,
            razorpay_payment_id=action.payment_id, razorpay_signature=action.signature,
        )  # fmt: skip


class AddFundsOut(BaseModel):
    payment: PaymentOut
    quote: QuoteOut
    next_action: NextActionOut | None


class RefundOut(BaseModel):
    kind: Literal["purchase", "usage"]
    refund_id: str
    credits_removed: int = 0
    credits_returned: int = 0
    amount_paise: int = 0
    total_refund_paise: int = 0
    bonus_credits_clawed_back: int = 0
    state: str

    @classmethod
    def of(cls, r: RefundRecord) -> RefundOut:
        return cls(
            kind="purchase", refund_id=r.id, credits_removed=r.credits_removed,
            amount_paise=r.amount_paise, total_refund_paise=r.total_refund_paise,
            bonus_credits_clawed_back=r.bonus_credits_clawed_back, state=r.state,
        )  # fmt: skip


class WebhookOut(BaseModel):
    status: str
    event_id: str
