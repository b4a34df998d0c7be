"""Auto-recharge routes over real HTTP (PostgreSQL, Redis, Tansu)."""

from __future__ import annotations

from typing import Any

import pytest

from api.recharge.engine import RechargeEngine
from tests.api.conftest import ApiHarness
from tests.api.recharge.support import RecordingCharger, declined

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.kafka]

ENABLE = "/wallet/auto-recharge/enable"
GOOD: dict[str, Any] = {
    "threshold_credits": 200,
    "amount_rupees": 150,
    "payment_method_token": "tok_card_4111",
    "daily_max": 2,
}


async def test_owner_enables_reads_and_disables(api: ApiHarness) -> None:
    owner = await api.tenant()
    enabled = await api.post(ENABLE, GOOD, headers=owner.headers)
    assert enabled.status_code == 200, enabled.text
    assert enabled.json()["settings"] == {
        "enabled": True, "threshold_credits": 200, "amount_rupees": 150, "amount_paise": 15000,
        "payment_method_token": "tok_card_4111", "daily_max": 2, "disabled_reason": None,
    }  # fmt: skip
    shown = await api.client.get("/wallet/auto-recharge", headers=owner.headers)
    assert shown.json()["settings"]["enabled"] is True

    disabled = await api.post("/wallet/auto-recharge/disable", headers=owner.headers)
    assert disabled.status_code == 200, disabled.text
    assert disabled.json()["settings"]["enabled"] is False
    assert disabled.json()["settings"]["disabled_reason"] == "by_member"


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"amount_rupees": 149}, "invalid_amount"),
        ({"amount_rupees": 200_001}, "invalid_amount"),
        ({"threshold_credits": 0}, "invalid_auto_recharge_settings"),
        ({"daily_max": 100}, "invalid_auto_recharge_settings"),
        ({"payment_method_token": "no spaces"}, "invalid_payment_method_token"),
        ({"amount_rupees": "150"}, "invalid_request"),
        ({"amount_rupees": 150.5}, "invalid_request"),
        ({"surprise": 1}, "invalid_request"),
    ],
)
async def test_bad_settings_are_refused_and_change_nothing(
    api: ApiHarness, change: dict[str, Any], code: str
) -> None:
    owner = await api.tenant()
    assert (await api.post(ENABLE, GOOD, headers=owner.headers)).status_code == 200
    refused = await api.post(ENABLE, {**GOOD, **change}, headers=owner.headers)
    assert refused.status_code == 422, refused.text
    assert refused.json()["code"] == code
    shown = (await api.client.get("/wallet/auto-recharge", headers=owner.headers)).json()
    assert shown["settings"]["amount_rupees"] == 150
    assert shown["settings"]["daily_max"] == 2


async def test_only_owners_and_admins_change_settings(api: ApiHarness) -> None:
    owner = await api.tenant()
    member = await api.key(owner, "member_1", "member", ["wallet:read", "wallet:write"])
    admin = await api.key(owner, "admin_1", "admin", ["wallet:read", "wallet:write"])
    as_member = {"Authorization": f"Bearer {member}"}
    refused = await api.post(ENABLE, GOOD, headers=as_member)
    assert refused.status_code == 403
    assert refused.json()["code"] == "forbidden"
    refused = await api.post("/wallet/auto-recharge/disable", headers=as_member)
    assert refused.status_code == 403
    assert (await api.client.get("/wallet/auto-recharge", headers=as_member)).json() == {
        "settings": None, "recent": []
    }  # fmt: skip
    as_admin = {"Authorization": f"Bearer {admin}"}
    assert (await api.post(ENABLE, GOOD, headers=as_admin)).status_code == 200


async def test_disable_before_enable_is_a_conflict(api: ApiHarness) -> None:
    owner = await api.tenant()
    refused = await api.post("/wallet/auto-recharge/disable", headers=owner.headers)
    assert refused.status_code == 409
    assert refused.json()["code"] == "auto_recharge_not_configured"


async def test_enable_needs_an_idempotency_key(api: ApiHarness) -> None:
    owner = await api.tenant()
    refused = await api.client.post(ENABLE, json=GOOD, headers=owner.headers)
    assert refused.status_code in (400, 422)
    assert (await api.client.get("/wallet/auto-recharge", headers=owner.headers)).json()[
        "settings"
    ] is None


async def test_failed_recharge_shows_in_attempts_and_notifications(api: ApiHarness) -> None:
    owner, other = await api.tenant(), await api.tenant()
    assert (await api.post(ENABLE, GOOD, headers=owner.headers)).status_code == 200
    services = api.services
    engine = RechargeEngine(
        services.recharge, RecordingCharger().then([declined()]), services.clock
    )
    await engine.observe(owner.wallet_id, 50, "low:1")

    shown = (await api.client.get("/wallet/auto-recharge", headers=owner.headers)).json()
    (attempt,) = shown["recent"]
    assert attempt["state"] == "retry_wait"
    assert attempt["failure_reason"] == "card_declined"
    assert attempt["next_try_at"] is not None
    notes = (await api.client.get("/wallet/notifications", headers=owner.headers)).json()
    assert [n["kind"] for n in notes["data"]] == ["recharge_failed"]
    others = (await api.client.get("/wallet/notifications", headers=other.headers)).json()
    assert others == {"data": []}
