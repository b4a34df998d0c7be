"""The recharge port over the payment service (api/payments/service.py, flow 5).

Each try creates a payment with ``purpose=auto_recharge`` for the saved token under the try's
idempotency key; asking again with that key returns the same payment (its current state), so
re-driving a pending try polls it instead of charging again. Credits are posted by the
payment flow (exactly once per captured payment), not here.
"""

from __future__ import annotations

from api.payments.service import PaymentService
from api.recharge.charger import ChargeRequest, ChargeResult, ChargeStatus
from domain.errors import IdempotencyConflict, InvalidInput, StateConflict
from domain.money import PAISE_PER_RUPEE
from domain.payments import PaymentMethod, PaymentPurpose, PaymentState

_SUCCEEDED = frozenset(
    {PaymentState.SUCCESS, PaymentState.PARTIALLY_REFUNDED, PaymentState.REFUNDED}
)


class PaymentServiceCharger:
    def __init__(self, payments: PaymentService) -> None:
        self._payments = payments

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        try:
            view = await self._payments.create_payment(
                wallet_id=request.wallet_id,
                member_id=None,
                amount_rupees=request.amount_paise // PAISE_PER_RUPEE,
                method=PaymentMethod.saved_token(request.payment_method_token),
                purpose=PaymentPurpose.AUTO_RECHARGE,
                idempotency_key=request.idempotency_key,
            )
        except IdempotencyConflict:
            raise  # the same try asked for something else: a bug, not a decline
        except (InvalidInput, StateConflict) as exc:  # e.g. a token the gateway refuses
            return ChargeResult(ChargeStatus.DECLINED, reason=exc.code, message=exc.message)
        payment = view.payment
        if payment.state in _SUCCEEDED:
            credits = payment.credits + payment.bonus_credits
            return ChargeResult(ChargeStatus.SUCCEEDED, payment.id, credits)
        if payment.state is PaymentState.FAILED:
            reason = payment.failure_reason or "payment_failed"
            return ChargeResult(
                ChargeStatus.DECLINED, payment.id, reason=reason, message=f"payment {reason}"
            )
        return ChargeResult(ChargeStatus.PENDING, payment.id)
