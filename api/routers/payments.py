"""Payments (SPEC §6): add funds, quote, payment status, client confirmation, retry, the
gateway webhook, and refunds (purchase refunds and usage reversals, one endpoint).

Routes validate, call one :class:`~api.payments.service.PaymentService` method and shape the
reply; every mutating wallet route is idempotent on its ``Idempotency-Key``. The webhook is
authenticated by its signature, not a key, and is idempotent on the gateway's event id.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from aggregator import mirror
from api.auth import IdemKey, Manager, Reader, Services, Writer, member_of, wallet_of
from api.idempotency import derived_id, run_idempotent
from api.payments.models import (
    AddFundsIn,
    AddFundsOut,
    ConfirmIn,
    NextActionOut,
    PaymentOut,
    PurchaseRefundIn,
    QuoteOut,
    RefundIn,
    RefundOut,
    RetryIn,
    WebhookOut,
)
from api.payments.service import PaymentService, PaymentView
from api.services import ApiServices
from domain.errors import Unavailable

router = APIRouter(tags=["payments"])


def _payments(services: ApiServices) -> PaymentService:
    if services.payments is None:
        raise Unavailable("payments are not configured on this API")
    return services.payments


def _view(view: PaymentView) -> AddFundsOut:
    return AddFundsOut(
        payment=PaymentOut.of(view.payment),
        quote=QuoteOut.of(view.quote),
        next_action=NextActionOut.of(view.action),
    )


@router.get("/wallet/quote", response_model=QuoteOut)
async def quote(
    principal: Reader, services: Services, amount_rupees: Annotated[int, Query(ge=1)]
) -> QuoteOut:
    """Live add-funds preview: GST, platform fee, credits, pack bonus and the next-pack nudge."""
    return QuoteOut.of(_payments(services).quote(amount_rupees))


@router.post("/wallet/add-funds", response_model=AddFundsOut, status_code=201)
async def add_funds(
    body: AddFundsIn, request: Request, principal: Manager, services: Services, key: IdemKey
) -> object:
    wallet_id = wallet_of(principal)

    async def action() -> tuple[int, AddFundsOut]:
        view = await _payments(services).create_payment(
            wallet_id=wallet_id, member_id=member_of(principal),
            amount_rupees=body.amount_rupees, method=body.method.to_domain(),
            idempotency_key=key,
        )  # fmt: skip
        return 201, _view(view)

    return await run_idempotent(request, wallet_id, key, action)


@router.get("/wallet/payments/{payment_id}", response_model=PaymentOut)
async def get_payment(payment_id: str, principal: Reader, services: Services) -> PaymentOut:
    record = await _payments(services).get_payment(wallet_of(principal), payment_id)
    return PaymentOut.of(record)


@router.post("/wallet/payments/{payment_id}/confirm", response_model=PaymentOut)
async def confirm(
    payment_id: str, body: ConfirmIn, request: Request, principal: Writer, services: Services,
    key: IdemKey,
) -> object:  # fmt: skip
    wallet_id = wallet_of(principal)

    async def action() -> tuple[int, PaymentOut]:
        record = await _payments(services).confirm(
            wallet_id, payment_id, order_id=body.razorpay_order_id,
            gateway_payment_id=body.razorpay_payment_id, signature=body.razorpay_signature,
        )  # fmt: skip
        return 200, PaymentOut.of(record)

    return await run_idempotent(request, wallet_id, key, action)


@router.post("/wallet/payments/{payment_id}/retry", response_model=AddFundsOut, status_code=201)
async def retry(
    payment_id: str, body: RetryIn, request: Request, principal: Manager, services: Services,
    key: IdemKey,
) -> object:  # fmt: skip
    wallet_id = wallet_of(principal)

    async def action() -> tuple[int, AddFundsOut]:
        view = await _payments(services).retry_payment(
            wallet_id, payment_id, member_id=member_of(principal), idempotency_key=key,
            method=body.method.to_domain() if body.method else None,
        )  # fmt: skip
        return 201, _view(view)

    return await run_idempotent(request, wallet_id, key, action)


@router.post("/webhooks/razorpay", response_model=WebhookOut)
async def razorpay_webhook(request: Request, services: Services) -> WebhookOut:
    """Razorpay's (and the sandbox's) signed webhook: 2xx for accepted and duplicate events;
    a forged, unsigned, stale or malformed delivery is refused (``invalid_signature``)."""
    body = await request.body()
    result = await _payments(services).handle_webhook(body, dict(request.headers))
    return WebhookOut(status=result.outcome, event_id=result.event_id)


@router.post("/wallet/refund", response_model=RefundOut)
async def refund(
    body: RefundIn, request: Request, principal: Manager, services: Services, key: IdemKey
) -> object:
    """``kind: purchase``: money back through the gateway, purchased credits and the
    proportional bonus leave the wallet. ``kind: usage``: a usage deduction is reversed."""
    wallet_id = wallet_of(principal)

    async def action() -> tuple[int, RefundOut]:
        if isinstance(body, PurchaseRefundIn):
            record = await _payments(services).refund_purchase(
                wallet_id, body.payment_id, body.amount_paise, idempotency_key=key,
                member_id=member_of(principal),
            )  # fmt: skip
            return 200, RefundOut.of(record)
        reversal_id = derived_id("rev", wallet_id, key)
        txn = await services.ledger.reverse_usage(
            wallet_id, reversal_id, body.event_id, body.credits, reason=body.reason
        )
        await mirror.credit(
            services.mirror, wallet_id, txn.credits, f"reversal:{txn.source_id}",
            ledger_version=txn.seq,
        )  # fmt: skip
        out = RefundOut(kind="usage", refund_id=txn.source_id, credits_returned=txn.credits,
                        state="posted")  # fmt: skip
        return 200, out

    return await run_idempotent(request, wallet_id, key, action)
