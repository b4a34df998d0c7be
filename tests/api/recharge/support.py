"""A charger implemented at the payment gateway's edge: it records every charge and answers
from a script (default: success), so tests can count charges and replay declines."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from api.recharge.charger import ChargeRequest, ChargeResult, ChargeStatus
from domain.errors import Unavailable


def success(credits: int = 1500) -> ChargeResult:
    return ChargeResult(ChargeStatus.SUCCEEDED, f"pay_{uuid.uuid4().hex[:12]}", credits)


def declined(reason: str = "card_declined") -> ChargeResult:
    return ChargeResult(ChargeStatus.DECLINED, None, reason=reason, message="issuer declined")


def pending() -> ChargeResult:
    return ChargeResult(ChargeStatus.PENDING, "pay_pending")


OUTAGE = object()


@dataclass
class RecordingCharger:
    script: list[object] = field(default_factory=list)  # ChargeResult or OUTAGE, in order
    delay_s: float = 0.0
    calls: list[ChargeRequest] = field(default_factory=list)

    def then(self, outcomes: Iterable[object]) -> RecordingCharger:
        self.script.extend(outcomes)
        return self

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        self.calls.append(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        outcome = self.script.pop(0) if self.script else success()
        if outcome is OUTAGE:
            raise Unavailable("sandbox gateway unreachable")
        assert isinstance(outcome, ChargeResult)
        return outcome
