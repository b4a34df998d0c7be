"""Money in end to end on real PostgreSQL, Redis and Tansu, with the sandbox gateway.

Covers: credits posted exactly once whichever of client confirmation and webhook comes first,
in any order, any number of times (also concurrently); forged, unsigned and stale webhooks
refused and logged with nothing posted; re-deliveries answered as duplicates; failed payment
then retry; pending UPI then a later success; a declining card; the state log never going
backwards; the payment_state_changed wallet event on Kafka.
"""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaConsumer

from api.payments import razorpay_webhooks as rw
from api.payments.sandbox import DECLINED_CARD, SUCCESS_CARD
from domain.errors import SignatureInvalid, StateConflict
from domain.payments import RANK, PaymentMethod, PaymentState
from meter.schema import PaymentStateChanged, decode_wallet_event
from tests.api.payments.conftest import Rig

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.kafka]
S = PaymentState


async def _pay(rig: Rig, method: PaymentMethod, rupees: int = 500, key: str = "k1"):  # type: ignore[no-untyped-def]
    return await rig.service.create_payment(
        wallet_id=rig.wallet_id, member_id=rig.member_id, amount_rupees=rupees,
        method=method, idempotency_key=key,
    )  # fmt: skip


async def _assert_forward_only(rig: Rig, payment_id: str) -> None:
    log = await rig.store.transitions(payment_id)
    ranks = [RANK[S(to)] for _, to, _ in log]
    assert ranks == sorted(ranks), log


async def test_confirmation_and_webhooks_post_credits_exactly_once_in_any_order(rig: Rig) -> None:
    view = await _pay(rig, PaymentMethod.upi("success@razorpay"))
    assert view.payment.state is S.PROCESSING
    assert view.action is not None
    assert view.action.signature is not None
    hook = rig.gateway.event("payment.captured", view.action.payment_id)
    confirm = rig.service.confirm(
        rig.wallet_id, view.payment.id, order_id=view.action.order_id,
        gateway_payment_id=view.action.payment_id or "", signature=view.action.signature,
    )  # fmt: skip
    calls = [confirm] + [rig.service.handle_webhook(hook.body, hook.headers) for _ in range(6)]
    calls += [
        rig.service.confirm(
            rig.wallet_id, view.payment.id, order_id=view.action.order_id,
            gateway_payment_id=view.action.payment_id or "", signature=view.action.signature,
        )
        for _ in range(4)
    ]  # fmt: skip
    random.shuffle(calls)
    await asyncio.gather(*calls)
    payment = await rig.service.get_payment(rig.wallet_id, view.payment.id)
    assert payment.state is S.SUCCESS
    assert await rig.ledger_available() == 5_500  # 5,000 + 500 bonus, once
    assert await rig.mirror_available() == 5_500
    outcomes = [o for _, o, _ in await rig.store.webhook_log("sandbox")]
    assert outcomes.count("applied") + outcomes.count("ignored") == 1
    assert outcomes.count("duplicate") == 5
    # A late re-delivery, and a stale 'pending' report, change nothing.
    assert (await rig.service.handle_webhook(hook.body, hook.headers)).outcome == "duplicate"
    await rig.service.apply_gateway_outcome(view.payment.id, S.PENDING, cause="test")
    assert await rig.ledger_available() == 5_500
    await _assert_forward_only(rig, view.payment.id)


async def test_forged_unsigned_and_stale_webhooks_are_refused_logged_and_post_nothing(
    rig: Rig,
) -> None:
    view = await _pay(rig, PaymentMethod.card(SUCCESS_CARD))
    hook = rig.gateway.event("payment.captured")
    forged = {**hook.headers, "X-Razorpay-Signature": rw.hmac_hex("not-the-secret", hook.body)}
    unsigned = {k: v for k, v in hook.headers.items() if k != "X-Razorpay-Signature"}
    old = json.loads(hook.body)
    old["created_at"] = int((datetime.now(UTC) - timedelta(days=3)).timestamp())
    stale_body = json.dumps(old).encode()
    stale = {
        **hook.headers,
        "X-Razorpay-Signature": rw.hmac_hex("sandbox_webhook_secret", stale_body),
    }
    tampered = hook.body.replace(b'"amount":60200', b'"amount":99999')
    for body, headers, reason in [
        (hook.body, forged, "bad_signature"),
        (hook.body, unsigned, "missing_signature"),
        (stale_body, stale, "stale"),
        (tampered, hook.headers, "bad_signature"),
    ]:
        with pytest.raises(SignatureInvalid) as caught:
            await rig.service.handle_webhook(body, headers)
        assert caught.value.details["reason"] == reason
    assert [(o, r) for _, o, r in await rig.store.webhook_log("sandbox")] == [
        ("refused", "bad_signature"),
        ("refused", "missing_signature"),
        ("refused", "stale"),
        ("refused", "bad_signature"),
    ]
    assert (await rig.service.get_payment(rig.wallet_id, view.payment.id)).state is S.PROCESSING
    assert await rig.ledger_available() == 0
    # The genuine delivery still works after the forgeries claimed its event id.
    assert (await rig.service.handle_webhook(hook.body, hook.headers)).outcome == "applied"
    assert await rig.ledger_available() == 5_500


async def test_a_forged_client_confirmation_is_refused(rig: Rig) -> None:
    view = await _pay(rig, PaymentMethod.upi("success@razorpay"))
    assert view.action is not None
    with pytest.raises(SignatureInvalid):
        await rig.service.confirm(
            rig.wallet_id, view.payment.id, order_id=view.action.order_id,
            gateway_payment_id=view.action.payment_id or "", signature="0" * 64,
        )  # fmt: skip
    assert await rig.ledger_available() == 0


async def test_failed_payment_then_retry_succeeds(rig: Rig) -> None:
    failed = await _pay(rig, PaymentMethod.upi("failure@razorpay"))
    assert failed.payment.state is S.FAILED
    assert failed.payment.failure_reason == "upi_declined"
    hook = rig.gateway.event("payment.failed")
    assert (await rig.service.handle_webhook(hook.body, hook.headers)).outcome == "ignored"
    with pytest.raises(StateConflict):
        await rig.service.retry_payment(
            rig.wallet_id, (await _pay(rig, PaymentMethod.upi("a@okhdfc"), key="k2")).payment.id,
            member_id=rig.member_id, idempotency_key="r0",
        )  # fmt: skip
    retry = await rig.service.retry_payment(
        rig.wallet_id, failed.payment.id, member_id=rig.member_id, idempotency_key="r1",
        method=PaymentMethod.upi("success@razorpay"),
    )  # fmt: skip
    again = await rig.service.retry_payment(
        rig.wallet_id, failed.payment.id, member_id=rig.member_id, idempotency_key="r2"
    )
    assert again.payment.id == retry.payment.id
    assert retry.payment.retry_of == failed.payment.id
    captured = rig.gateway.event(
        "payment.captured", retry.action.payment_id if retry.action else None
    )
    await rig.service.handle_webhook(captured.body, captured.headers)
    assert (await rig.service.get_payment(rig.wallet_id, retry.payment.id)).state is S.SUCCESS
    assert await rig.ledger_available() == 5_500
    await _assert_forward_only(rig, failed.payment.id)


async def test_pending_upi_then_later_success_by_webhook(rig: Rig) -> None:
    view = await _pay(rig, PaymentMethod.upi("pending@razorpay"), rupees=150)
    assert view.payment.state is S.PENDING
    assert (await rig.wallets.get(rig.wallet_id)).balances.pending == 1_500
    assert view.action is not None
    assert view.action.payment_id is not None
    rig.gateway.resolve_pending(view.action.payment_id, succeed=True)
    hook = rig.gateway.event("payment.captured", view.action.payment_id)
    assert (await rig.service.handle_webhook(hook.body, hook.headers)).outcome == "applied"
    assert await rig.ledger_available() == 1_500
    assert (await rig.wallets.get(rig.wallet_id)).balances.pending == 0


async def test_declining_card_fails_and_a_capture_after_failure_is_a_conflict(rig: Rig) -> None:
    view = await _pay(rig, PaymentMethod.card(DECLINED_CARD))
    assert view.payment.state is S.FAILED
    assert view.payment.failure_reason == "card_declined"
    with pytest.raises(StateConflict):
        await rig.service.apply_gateway_outcome(view.payment.id, S.SUCCESS, cause="test")
    assert await rig.ledger_available() == 0


async def test_idempotent_create_and_saved_token_for_auto_recharge(rig: Rig) -> None:
    first = await _pay(rig, PaymentMethod.saved_token("tok_sandbox_ok"), rupees=150, key="ar")
    second = await _pay(rig, PaymentMethod.saved_token("tok_sandbox_ok"), rupees=150, key="ar")
    assert first.payment.id == second.payment.id
    assert len(rig.gateway.payments) == 1  # charged once
    declined = await _pay(rig, PaymentMethod.saved_token("tok_sandbox_declined"), key="ar2")
    assert declined.payment.state is S.FAILED


async def test_state_changes_are_published_as_wallet_events(rig: Rig) -> None:
    view = await _pay(rig, PaymentMethod.upi("success@razorpay"))
    hook = rig.gateway.event("payment.captured")
    await rig.service.handle_webhook(hook.body, hook.headers)
    consumer = AIOKafkaConsumer(
        rig.topics.wallet_events, bootstrap_servers=rig.bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=5_000)
        events = [decode_wallet_event(m.value) for b in batches.values() for m in b if m.value]
    finally:
        await consumer.stop()
    states = [
        e.state for e in events
        if isinstance(e, PaymentStateChanged) and e.payment_id == view.payment.id
    ]  # fmt: skip
    assert states == ["processing", "success"]
