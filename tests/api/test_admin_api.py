"""Roles, scopes, key lifecycle, wallet status, adjustments and payouts over real HTTP."""

from __future__ import annotations

import pytest

from tests.api.conftest import ApiHarness

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.kafka]


async def test_members_spend_but_only_managers_move_money(api: ApiHarness) -> None:
    tenant = await api.tenant(credits=1000)
    await api.fund(tenant, 200, reason="community_earnings")
    member = await api.key(tenant, "asha", "member", ["wallet:read", "wallet:write"])
    headers = {"Authorization": f"Bearer {member}"}
    spent = await api.post("/wallet/consume", {"feature": "ai.moderation"}, headers=headers)
    assert spent.status_code == 200, spent.text
    txn_page = await api.client.get("/wallet", headers=headers)
    assert txn_page.json()["role"] == "member"
    refused = await api.post("/wallet/payouts", {"credits": 50}, headers=headers)
    assert refused.status_code == 403
    assert refused.json()["code"] == "forbidden"
    keys = await api.client.get("/wallet/keys", headers=headers)
    assert keys.status_code == 403


async def test_scopes_are_enforced(api: ApiHarness) -> None:
    tenant = await api.tenant(credits=1000)
    reader = await api.key(tenant, "ravi", "admin", ["wallet:read"])
    headers = {"Authorization": f"Bearer {reader}"}
    assert (await api.client.get("/wallet", headers=headers)).status_code == 200
    spend = await api.post("/wallet/consume", {"feature": "ai.moderation"}, headers=headers)
    assert spend.status_code == 403
    assert "wallet:write" in spend.json()["detail"]
    ingest = await api.post(
        "/usage/events", {"events": [{"event_id": "x1", "feature": "api.basic_request"}]},
        headers=headers,
    )  # fmt: skip
    assert ingest.status_code == 403


async def test_a_revoked_key_is_refused_at_once(api: ApiHarness) -> None:
    tenant = await api.tenant(credits=100)
    token = await api.key(tenant, "temp", "member", ["wallet:read"])
    headers = {"Authorization": f"Bearer {token}"}
    assert (await api.client.get("/wallet", headers=headers)).status_code == 200
    key_id = token.split("_")[1]
    revoked = await api.post(f"/wallet/keys/{key_id}/revoke", headers=tenant.headers)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"] is not None
    assert (await api.client.get("/wallet", headers=headers)).status_code == 401
    listed = (await api.client.get("/wallet/keys", headers=tenant.headers)).json()
    assert all("token" not in k or k["token"] is None for k in listed)


async def test_frozen_wallet_spends_nothing(api: ApiHarness) -> None:
    tenant = await api.tenant(credits=1000)
    frozen = await api.post(
        f"/admin/wallets/{tenant.wallet_id}/status", {"status": "frozen", "reason": "review"},
        headers=api.admin,
    )  # fmt: skip
    assert frozen.status_code == 200, frozen.text
    assert frozen.json()["status"] == "frozen"
    refused = await api.post(
        "/wallet/consume", {"feature": "ai.moderation"}, headers=tenant.headers
    )
    assert refused.status_code == 403
    assert refused.json()["code"] == "wallet_frozen"
    wallet = (await api.client.get("/wallet", headers=tenant.headers)).json()
    assert wallet["balances"]["available"] == 1000


async def test_adjustments_need_actor_and_never_overdraw(api: ApiHarness) -> None:
    tenant = await api.tenant(credits=100)
    path = f"/admin/wallets/{tenant.wallet_id}/adjustments"
    no_actor = await api.post(path, {"credits": 5, "reason": "x"}, headers=api.admin)
    assert no_actor.status_code == 422
    overdraw = await api.post(
        path, {"credits": -101, "reason": "fraud", "actor": "ops"}, headers=api.admin
    )
    assert overdraw.status_code == 422
    assert overdraw.json()["code"] == "invalid_amount"
    taken = await api.post(
        path, {"credits": -40, "reason": "fraud", "actor": "ops"}, headers=api.admin
    )
    assert taken.status_code == 201, taken.text
    assert taken.json()["type"] == "ADMIN_ADJUSTMENT"
    wallet = (await api.client.get("/wallet", headers=tenant.headers)).json()
    assert wallet["balances"]["available"] == 60
    missing = await api.post(
        "/admin/wallets/nope/adjustments", {"credits": 5, "reason": "x", "actor": "ops"},
        headers=api.admin,
    )  # fmt: skip
    assert missing.status_code == 404


async def test_payout_of_earnings_completes_or_cancels(api: ApiHarness) -> None:
    tenant = await api.tenant(credits=1000)
    too_much = await api.post("/wallet/payouts", {"credits": 10}, headers=tenant.headers)
    assert too_much.status_code == 422  # purchased/bonus credits are never paid out
    await api.fund(tenant, 500, reason="community_earnings")
    first = await api.post("/wallet/payouts", {"credits": 200}, headers=tenant.headers)
    assert first.status_code == 201, first.text
    assert first.json()["state"] == "requested"
    wallet = (await api.client.get("/wallet", headers=tenant.headers)).json()
    assert wallet["balances"]["locked"] == 200
    assert wallet["balances"]["available"] == 1300
    payout_id = first.json()["payout_id"]
    base = f"/admin/wallets/{tenant.wallet_id}/payouts/{payout_id}"
    done = await api.post(f"{base}/complete", headers=api.admin)
    assert done.status_code == 200, done.text
    assert done.json()["state"] == "completed"
    again = await api.post(f"{base}/cancel", headers=api.admin)
    assert again.status_code == 409
    second = await api.post("/wallet/payouts", {"credits": 100}, headers=tenant.headers)
    cancel = await api.post(
        f"/admin/wallets/{tenant.wallet_id}/payouts/{second.json()['payout_id']}/cancel",
        headers=api.admin,
    )
    assert cancel.json()["state"] == "cancelled"
    wallet = (await api.client.get("/wallet", headers=tenant.headers)).json()
    assert wallet["balances"]["locked"] == 0
    assert wallet["balances"]["available"] == 1300
    listed = (await api.client.get("/wallet/payouts", headers=tenant.headers)).json()
    assert [p["state"] for p in listed] == ["cancelled", "completed"]
