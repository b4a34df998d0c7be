"""Every ledger operation against the real PostgreSQL: effects, idempotency, refusals."""

from __future__ import annotations

import pytest

from domain.errors import (
    IdempotencyConflict,
    InsufficientCredits,
    InvalidAmount,
    InvalidInput,
    NotFound,
    StateConflict,
    UnknownWallet,
)
from domain.ledger_rules import Phase, TxnType
from settlement.ledger.operations import Ledger
from settlement.ledger.wallets import Wallets
from tests.ledger.helpers import assert_consistent, count_transactions, posting_balance

W = "wal_ops"


@pytest.fixture
async def funded(wallets: Wallets, ledger: Ledger) -> str:
    await wallets.create(W, owner_type="community", owner_id="community-1")
    await ledger.purchase_pending(W, "pay_1", 5000, member_id="owner-1")
    await ledger.purchase_confirm(W, "pay_1", bonus_credits=500)
    return W


async def test_purchase_moves_pending_to_available_with_bonus(
    wallets: Wallets, ledger: Ledger, ledger_db_url: str
) -> None:
    await wallets.create(W, owner_type="community", owner_id="c")
    pending = await ledger.purchase_pending(W, "pay_1", 5000)
    assert pending.phase is Phase.PENDING
    wallet = await wallets.get(W)
    assert (wallet.balances.pending, wallet.balances.available) == (5000, 0)

    confirmed = await ledger.purchase_confirm(W, "pay_1", bonus_credits=500)
    assert confirmed.bonus is not None
    assert confirmed.bonus.type is TxnType.BONUS_CREDIT
    wallet = await wallets.get(W)
    assert wallet.balances.available == 5500
    assert wallet.balances.pending == 0
    assert wallet.balances.lifetime_purchased == 5000
    assert await posting_balance(ledger_db_url, W, "available") == 5500
    await assert_consistent(ledger_db_url)


async def test_confirm_is_idempotent_and_returns_the_original(
    funded: str, ledger: Ledger, ledger_db_url: str
) -> None:
    before = await count_transactions(ledger_db_url)
    again = await ledger.purchase_confirm(W, "pay_1", bonus_credits=500)
    assert again.purchase.replayed
    assert again.bonus is not None
    assert again.bonus.credits == 500
    assert await count_transactions(ledger_db_url) == before


async def test_failed_purchase_cannot_then_be_confirmed(
    wallets: Wallets, ledger: Ledger, ledger_db_url: str
) -> None:
    await wallets.create(W, owner_type="user", owner_id="u1")
    await ledger.purchase_pending(W, "pay_f", 1500)
    failed = await ledger.purchase_fail(W, "pay_f")
    assert failed.phase is Phase.VOIDED
    with pytest.raises(StateConflict, match="already voided"):
        await ledger.purchase_confirm(W, "pay_f")
    wallet = await wallets.get(W)
    assert (wallet.balances.available, wallet.balances.pending) == (0, 0)
    await assert_consistent(ledger_db_url)


async def test_usage_deduction_and_insufficient_credits_change_nothing(
    funded: str, ledger: Ledger, wallets: Wallets, ledger_db_url: str
) -> None:
    txn = await ledger.deduct_usage(W, "ev-1", 15, feature="ai.summary", member_id="m1")
    assert (txn.balance_before, txn.balance_after) == (5500, 5485)
    before = await wallets.get(W)
    with pytest.raises(InsufficientCredits):
        await ledger.deduct_usage(W, "ev-2", 999_999, feature="api.export_data")
    after = await wallets.get(W)
    assert after == before
    assert after.balances.lifetime_used == 15
    await assert_consistent(ledger_db_url)


async def test_same_key_different_request_is_a_conflict(funded: str, ledger: Ledger) -> None:
    await ledger.deduct_usage(W, "ev-1", 15, feature="ai.summary")
    replay = await ledger.deduct_usage(W, "ev-1", 15, feature="ai.summary")
    assert replay.replayed
    with pytest.raises(IdempotencyConflict):
        await ledger.deduct_usage(W, "ev-1", 16, feature="ai.summary")


async def test_usage_reversal_never_exceeds_the_charge(
    funded: str, ledger: Ledger, wallets: Wallets, ledger_db_url: str
) -> None:
    await ledger.deduct_usage(W, "ev-1", 20, feature="api.export_data")
    await ledger.reverse_usage(W, "rev-1", "ev-1", 15, reason="export failed")
    with pytest.raises(InvalidAmount, match="already reversed"):
        await ledger.reverse_usage(W, "rev-2", "ev-1", 6, reason="again")
    await ledger.reverse_usage(W, "rev-3", "ev-1", 5, reason="rest")
    with pytest.raises(NotFound):
        await ledger.reverse_usage(W, "rev-4", "no-such-event", 1, reason="x")
    assert (await wallets.get(W)).balances.available == 5500
    await assert_consistent(ledger_db_url)


async def test_purchase_refund_claws_back_bonus_and_is_bounded(
    funded: str, ledger: Ledger, wallets: Wallets, ledger_db_url: str
) -> None:
    refund = await ledger.refund_purchase(W, "ref-1", "pay_1", base_credits=2500, bonus_credits=250)
    assert refund.type is TxnType.REFUND
    assert (await wallets.get(W)).balances.available == 2750
    with pytest.raises(InvalidAmount, match="refund exceeds"):
        await ledger.refund_purchase(W, "ref-2", "pay_1", base_credits=2501, bonus_credits=0)
    await ledger.refund_purchase(W, "ref-3", "pay_1", base_credits=2500, bonus_credits=250)
    wallet = await wallets.get(W)
    assert wallet.balances.available == 0
    assert wallet.balances.lifetime_purchased == 5000  # monotonic
    with pytest.raises(NotFound):
        await ledger.refund_purchase(W, "ref-4", "pay_missing", base_credits=1, bonus_credits=0)
    await assert_consistent(ledger_db_url)


async def test_hold_capture_releases_the_rest_and_resolves_once(
    funded: str, ledger: Ledger, wallets: Wallets, ledger_db_url: str
) -> None:
    await ledger.hold_usage(W, "hold-1", 100, feature="ai.assistant_reply", member_id="m2")
    wallet = await wallets.get(W)
    assert (wallet.balances.available, wallet.balances.reserved) == (5400, 100)
    with pytest.raises(InvalidInput, match="only 100 are reserved"):
        await ledger.capture_hold(W, "hold-1", 101)
    captured = await ledger.capture_hold(W, "hold-1", 37)
    assert captured.type is TxnType.USAGE_DEDUCTION
    assert captured.feature == "ai.assistant_reply"
    wallet = await wallets.get(W)
    assert (wallet.balances.available, wallet.balances.reserved) == (5463, 0)
    assert wallet.balances.lifetime_used == 37
    with pytest.raises(StateConflict, match="already posted"):
        await ledger.release_hold(W, "hold-1")
    assert (await ledger.capture_hold(W, "hold-1", 37)).replayed

    await ledger.hold_usage(W, "hold-2", 50, feature="ai.search")
    released = await ledger.release_hold(W, "hold-2", expired=True)
    assert released.phase is Phase.EXPIRED
    assert (await wallets.get(W)).balances.available == 5463
    await assert_consistent(ledger_db_url)


async def test_payouts_only_from_community_earnings(
    funded: str, ledger: Ledger, wallets: Wallets, ledger_db_url: str
) -> None:
    with pytest.raises(InsufficientCredits, match="payout_eligible"):
        await ledger.hold_payout(W, "po-1", 100)
    await ledger.adjust(W, "earn-1", 300, actor="ops@commdesk", reason="community_earnings")
    await ledger.hold_payout(W, "po-2", 200)
    wallet = await wallets.get(W)
    assert (wallet.balances.locked, wallet.balances.payout_eligible) == (200, 100)
    await ledger.complete_payout(W, "po-2")
    await ledger.hold_payout(W, "po-3", 100)
    await ledger.cancel_payout(W, "po-3")
    with pytest.raises(StateConflict):
        await ledger.complete_payout(W, "po-3")
    wallet = await wallets.get(W)
    assert (wallet.balances.locked, wallet.balances.payout_eligible) == (0, 100)
    assert wallet.balances.available == 5500 + 300 - 200
    await assert_consistent(ledger_db_url)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"actor": "", "reason": "goodwill"}, InvalidInput),
        ({"actor": "ops", "reason": "  "}, InvalidInput),
    ],
)
async def test_adjustment_requires_actor_and_reason(
    funded: str, ledger: Ledger, kwargs: dict[str, str], error: type[Exception]
) -> None:
    with pytest.raises(error):
        await ledger.adjust(W, "adj-x", 10, **kwargs)


async def test_negative_adjustment_cannot_overdraw(
    funded: str, ledger: Ledger, wallets: Wallets
) -> None:
    await ledger.adjust(W, "adj-1", -500, actor="ops", reason="duplicate bonus")
    assert (await wallets.get(W)).balances.available == 5000
    with pytest.raises(InsufficientCredits):
        await ledger.adjust(W, "adj-2", -5001, actor="ops", reason="too much")


@pytest.mark.parametrize("credits", [0, -5, 1.5, 5.0, True, "10", None])
async def test_bad_credit_amounts_are_refused(
    funded: str, ledger: Ledger, ledger_db_url: str, credits: object
) -> None:
    before = await count_transactions(ledger_db_url)
    with pytest.raises(InvalidAmount):
        await ledger.deduct_usage(W, "ev-bad", credits, feature="api.basic_request")  # type: ignore[arg-type]
    assert await count_transactions(ledger_db_url) == before


async def test_unknown_wallet_and_bad_ids(ledger: Ledger, wallets: Wallets) -> None:
    with pytest.raises(UnknownWallet):
        await ledger.deduct_usage("wal_missing", "ev", 1, feature="api.basic_request")
    with pytest.raises(InvalidInput):
        await ledger.deduct_usage("bad wallet id!", "ev", 1, feature="api.basic_request")
    with pytest.raises(InvalidInput):
        await ledger.deduct_usage("wal_x", "", 1, feature="api.basic_request")
    with pytest.raises(InvalidInput):
        await wallets.create("wal_y", owner_type="galaxy", owner_id="g")
    with pytest.raises(InvalidInput):
        await ledger.deduct_usage("wal_x", "ev", 1, feature="f", metadata={"x": 1.5})


async def test_wallet_creation_is_idempotent_per_owner(wallets: Wallets) -> None:
    first = await wallets.create("wal_a", owner_type="user", owner_id="u-a")
    assert await wallets.create("wal_a", owner_type="user", owner_id="u-a") == first
    with pytest.raises(IdempotencyConflict):
        await wallets.create("wal_a", owner_type="user", owner_id="u-b")
    with pytest.raises(IdempotencyConflict):
        await wallets.create("wal_b", owner_type="user", owner_id="u-a")
