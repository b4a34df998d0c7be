"""Auto-recharge settings (SPEC §7), its recent recharges, and the owner's notifications.

Only wallet owners and admins (``wallet:write``) may enable or disable it; any ``wallet:read``
key may read. Amounts are validated by :func:`domain.auto_recharge.settings_from` (whole rupees,
₹150 up to the per-payment maximum), so a bad value is a typed error with a stable code.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from api.auth import IdemKey, Manager, Reader, Services, member_of, wallet_of
from api.idempotency import run_idempotent
from api.recharge.records import Recharge
from domain.auto_recharge import AutoRechargeSettings, settings_from

router = APIRouter(tags=["auto-recharge"])


class EnableIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    threshold_credits: int = Field(description="Recharge when available credits fall below this")
    amount_rupees: int = Field(description="Whole rupees per recharge, at least 150")
    payment_method_token: str = Field(description="A saved (tokenised) payment method")
    daily_max: int = Field(description="At most this many recharges per day (Asia/Kolkata)")


class SettingsOut(BaseModel):
    enabled: bool
    threshold_credits: int
    amount_rupees: int
    amount_paise: int
    payment_method_token: str
    daily_max: int
    disabled_reason: str | None = Field(
        description="Why it is off: by_member, or repeated_failures (turned off automatically)"
    )


class RechargeOut(BaseModel):
    recharge_id: str
    state: str = Field(description="pending, charging, retry_wait, succeeded or failed")
    amount_paise: int
    tries: int
    payment_id: str | None
    credits_added: int | None
    failure_reason: str | None
    next_try_at: datetime | None
    created_at: datetime
    finished_at: datetime | None


class AutoRechargeOut(BaseModel):
    settings: SettingsOut | None = Field(description="None: never enabled")
    recent: list[RechargeOut]


class NotificationOut(BaseModel):
    id: int
    kind: str = Field(description="recharge_succeeded, recharge_failed, auto_recharge_disabled")
    message: str
    recharge_id: str | None
    created_at: datetime


class NotificationsOut(BaseModel):
    data: list[NotificationOut]


def _settings_out(settings: AutoRechargeSettings, reason: str | None) -> SettingsOut:
    return SettingsOut(
        enabled=settings.enabled,
        threshold_credits=settings.threshold_credits,
        amount_rupees=settings.amount_paise // 100,
        amount_paise=settings.amount_paise,
        payment_method_token=settings.payment_method_token,
        daily_max=settings.daily_max,
        disabled_reason=None if settings.enabled else reason,
    )


def _recharge_out(r: Recharge) -> RechargeOut:
    waiting = r.state in ("pending", "retry_wait")
    return RechargeOut(
        recharge_id=r.id,
        state=r.state,
        amount_paise=r.amount_paise,
        tries=r.tries,
        payment_id=r.payment_id,
        credits_added=r.credits_added,
        failure_reason=r.failure_reason,
        next_try_at=r.next_try_at if waiting else None,
        created_at=r.created_at,
        finished_at=r.finished_at,
    )


async def _view(services: Services, wallet_id: str) -> AutoRechargeOut:
    found = await services.recharge.settings(wallet_id)
    recent = await services.recharge.recent(wallet_id)
    return AutoRechargeOut(
        settings=_settings_out(*found) if found else None,
        recent=[_recharge_out(r) for r in recent],
    )


@router.post(
    "/wallet/auto-recharge/enable",
    response_model=AutoRechargeOut,
    summary="Turn auto-recharge on (or change its settings); owners and admins only",
)
async def enable(
    body: EnableIn, request: Request, principal: Manager, services: Services, key: IdemKey
) -> Response:
    wallet_id = wallet_of(principal)
    settings = settings_from(
        threshold_credits=body.threshold_credits,
        amount_rupees=body.amount_rupees,
        payment_method_token=body.payment_method_token,
        daily_max=body.daily_max,
    )

    async def action() -> tuple[int, AutoRechargeOut]:
        await services.recharge.save_settings(wallet_id, settings, member_of(principal))
        return 200, await _view(services, wallet_id)

    return await run_idempotent(request, wallet_id, key, action)


@router.post(
    "/wallet/auto-recharge/disable",
    response_model=AutoRechargeOut,
    summary="Turn auto-recharge off; a charge already under way finishes",
    responses={409: {"description": "auto_recharge_not_configured"}},
)
async def disable(
    request: Request, principal: Manager, services: Services, key: IdemKey
) -> Response:
    wallet_id = wallet_of(principal)

    async def action() -> tuple[int, AutoRechargeOut]:
        await services.recharge.disable(wallet_id, member_of(principal))
        return 200, await _view(services, wallet_id)

    return await run_idempotent(request, wallet_id, key, action)


@router.get(
    "/wallet/auto-recharge",
    response_model=AutoRechargeOut,
    summary="Auto-recharge settings and the most recent recharges",
)
async def show(principal: Reader, services: Services) -> AutoRechargeOut:
    return await _view(services, wallet_of(principal))


@router.get(
    "/wallet/notifications",
    response_model=NotificationsOut,
    summary="What the wallet's owner was told (recharge succeeded / failed / disabled)",
)
async def notifications(
    principal: Reader,
    services: Services,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> NotificationsOut:
    found = await services.recharge.notifications(wallet_of(principal), limit)
    return NotificationsOut(
        data=[
            NotificationOut(
                id=n.id, kind=n.kind, message=n.message, recharge_id=n.recharge_id,
                created_at=n.created_at,
            )
            for n in found
        ]
    )  # fmt: skip
