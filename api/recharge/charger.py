"""The payment port the recharge worker charges through (implemented over api/payments).

Kept small so the worker and its tests depend on this protocol, not on the payment service.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    """Charge ``payment_method_token`` for ``amount_paise`` (the credited amount; GST and the
    platform fee come on top as for any add-funds). ``idempotency_key`` is stable per try of
    a recharge: asking again with it must return that try's payment, never charge twice."""

    wallet_id: str
    recharge_id: str
    amount_paise: int
    payment_method_token: str
    idempotency_key: str


class ChargeStatus(StrEnum):
    SUCCEEDED = "succeeded"  # captured; the payment flow posts the credits exactly once
    PENDING = "pending"  # the gateway has not decided yet; ask again with the same key
    DECLINED = "declined"  # a final refusal of this try (card declined, UPI refused, ...)


@dataclass(frozen=True, slots=True)
class ChargeResult:
    status: ChargeStatus
    payment_id: str | None = None
    credits_added: int | None = None  # on success: purchased + bonus credits
    reason: str = ""  # on decline: a stable code such as ``card_declined``
    message: str = ""

    def __post_init__(self) -> None:
        if self.status is ChargeStatus.SUCCEEDED:
            assert self.credits_added is not None
            assert self.credits_added > 0
        if self.status is ChargeStatus.DECLINED:
            assert self.reason


class RechargeCharger(Protocol):
    """Charges a saved payment method. Raise :class:`~domain.errors.Unavailable` (or any
    subclass) when the gateway cannot be reached: the try is repeated later with the same
    idempotency key and does not count as a decline."""

    async def charge(self, request: ChargeRequest) -> ChargeResult: ...
