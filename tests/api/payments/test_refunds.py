"""Purchase refunds: proportional bonus claw-back, ledger + mirror + gateway, idempotent, and
refused when the credits were spent. Also the mirror's debit script on the real Redis."""

from __future__ import annotations

import pytest

from aggregator import mirror as mirror_ops
from aggregator.mirror_debit import DebitOutcome, debit
from aggregator.wallet_store import WalletStore
from domain.errors import IdempotencyConflict, InsufficientCredits, StateConflict
from domain.payments import PaymentMethod, PaymentState
from tests.api.payments.conftest import Rig

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.kafka]
S = PaymentState


async def _paid(rig: Rig, rupees: int = 500) -> str:
    view = await rig.service.create_payment(
        wallet_id=rig.wallet_id, member_id=rig.member_id, amount_rupees=rupees,
        method=PaymentMethod.upi("success@razorpay"), idempotency_key=f"buy{rupees}",
    )  # fmt: skip
    hook = rig.gateway.event("payment.captured")
    await rig.service.handle_webhook(hook.body, hook.headers)
    return view.payment.id


async def test_partial_then_full_refund_claws_back_the_bonus_proportionally(rig: Rig) -> None:
    payment_id = await _paid(rig)  # ₹500: 5,000 + 500 bonus
    half = await rig.service.refund_purchase(
        rig.wallet_id, payment_id, 25_000, idempotency_key="rf1", member_id=rig.member_id
    )
    assert (half.base_credits_removed, half.bonus_credits_clawed_back) == (2_500, 250)
    assert half.gst_refund_paise == 4_500  # 18% of ₹250; the platform fee is retained
    assert half.state == "initiated"
    assert await rig.ledger_available() == 2_750
    assert await rig.mirror_available() == 2_750
    replay = await rig.service.refund_purchase(
        rig.wallet_id, payment_id, 25_000, idempotency_key="rf1"
    )
    assert replay.id == half.id
    assert await rig.ledger_available() == 2_750
    with pytest.raises(IdempotencyConflict):
        await rig.service.refund_purchase(rig.wallet_id, payment_id, 100, idempotency_key="rf1")
    record = await rig.service.get_payment(rig.wallet_id, payment_id)
    assert record.state is S.PARTIALLY_REFUNDED
    rest = await rig.service.refund_purchase(
        rig.wallet_id, payment_id, 25_000, idempotency_key="rf2"
    )
    assert rest.bonus_credits_clawed_back == 250
    assert await rig.ledger_available() == 0
    assert await rig.mirror_available() == 0
    record = await rig.service.get_payment(rig.wallet_id, payment_id)
    assert record.state is S.REFUNDED
    assert (record.refunded_credits, record.refunded_bonus_credits) == (5_000, 500)
    with pytest.raises(StateConflict):
        await rig.service.refund_purchase(rig.wallet_id, payment_id, 10, idempotency_key="rf3")
    # The gateway's refund.processed webhook marks the refund processed, once.
    hook = rig.gateway.event("refund.processed")
    assert (await rig.service.handle_webhook(hook.body, hook.headers)).outcome == "applied"
    assert (await rig.service.handle_webhook(hook.body, hook.headers)).outcome == "duplicate"
    gateway_payment = rig.gateway.payments[record.gateway_payment_id or ""]
    assert gateway_payment.refunded_paise == half.total_refund_paise + rest.total_refund_paise


async def test_refund_of_spent_credits_is_refused_with_the_refundable_amount(rig: Rig) -> None:
    payment_id = await _paid(rig)
    await rig.ledger.adjust(rig.wallet_id, "spend1", -5_000, actor="tests", reason="usage")
    await mirror_ops.load_wallet(
        rig.mirror, rig.wallet_id, ledger_available=500,
        ledger_version=(await rig.wallets.get(rig.wallet_id)).head_seq,
    )  # fmt: skip
    with pytest.raises(InsufficientCredits) as caught:
        await rig.service.refund_purchase(rig.wallet_id, payment_id, 50_000, idempotency_key="x")
    assert caught.value.details["max_refundable_paise"] == 4_540  # 454 + 45 bonus <= 500
    assert await rig.ledger_available() == 500
    assert (await rig.service.get_payment(rig.wallet_id, payment_id)).state is S.SUCCESS


async def test_a_refund_of_an_unpaid_payment_is_a_state_conflict(rig: Rig) -> None:
    view = await rig.service.create_payment(
        wallet_id=rig.wallet_id, member_id=rig.member_id, amount_rupees=150,
        method=PaymentMethod.upi("pending@razorpay"), idempotency_key="p",
    )  # fmt: skip
    with pytest.raises(StateConflict):
        await rig.service.refund_purchase(rig.wallet_id, view.payment.id, 100, idempotency_key="y")


async def test_debit_script_is_idempotent_versioned_and_never_negative(
    mirror: WalletStore,
) -> None:
    await mirror_ops.load_wallet(mirror, "wd", ledger_available=100, ledger_version=5)
    first = await debit(mirror, "wd", 30, "r1", ledger_version=6)
    assert (first.outcome, first.available_after) == (DebitOutcome.DEBITED, 70)
    again = await debit(mirror, "wd", 30, "r1", ledger_version=6)
    assert (again.outcome, again.available_after) == (DebitOutcome.DUPLICATE, 70)
    short = await debit(mirror, "wd", 500, "r2", ledger_version=7)
    assert (short.available_after, short.shortfall) == (0, 430)
    empty = await debit(mirror, "wd", 10, "r3", ledger_version=8)
    assert (empty.available_after, empty.shortfall) == (0, 10)
    stale = await mirror_ops.load_wallet(mirror, "wd", ledger_available=100, ledger_version=7)
    assert stale.outcome is mirror_ops.LoadOutcome.STALE  # the debit's version 8 is applied
    await mirror_ops.load_wallet(mirror, "wd", ledger_available=40, ledger_version=9)
    reflected = await debit(mirror, "wd", 10, "r4", ledger_version=9)
    assert (reflected.outcome, reflected.available_after) == (DebitOutcome.ALREADY_REFLECTED, 40)
    assert (await debit(mirror, "nope", 5, "r1")).outcome is DebitOutcome.WALLET_NOT_LOADED
