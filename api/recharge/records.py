"""Rows the recharge store returns (read-only values)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Recharge:
    """One recharge (columns in the store's ``_RECHARGE_COLUMNS`` order). ``tries`` numbers
    the current try; with ``id`` it makes the payment idempotency key."""

    id: str
    wallet_id: str
    state: str
    amount_paise: int
    tries: int
    next_try_at: datetime
    lease_until: datetime | None
    charging_since: datetime | None
    payment_id: str | None
    credits_added: int | None
    failure_reason: str | None
    failure_message: str | None
    created_at: datetime
    finished_at: datetime | None
    payment_method_token: str

    @property
    def idempotency_key(self) -> str:
        assert self.tries >= 1, "only a leased try is charged"
        return f"auto_recharge:{self.id}:{self.tries}"


@dataclass(frozen=True, slots=True)
class Notification:
    id: int
    kind: str
    message: str
    recharge_id: str | None
    created_at: datetime
