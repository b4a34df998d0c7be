"""usage_balance_changes (pure): one balance_changed per wallet charged in a settled batch."""

from __future__ import annotations

from datetime import UTC, datetime

from aggregator.authorize import SettleResult
from meter.schema import decode_wallet_event, encode
from settlement.balance_events import usage_balance_changes
from settlement.ledger.batch_writer import PostedUsage

AT = datetime(2026, 3, 14, 10, 0, tzinfo=UTC)


def settled(wallet_id: str, available: int, reserved: int, *, loaded: bool = True) -> SettleResult:
    return SettleResult(
        wallet_id=wallet_id, loaded=loaded, settled_event_ids=(), settled_credits=0,
        late_event_ids=(), unknown_event_ids=(), available_after=available,
        reserved_after=reserved, shortfall=0,
    )  # fmt: skip


def posted(event_id: str, wallet_id: str, credits: int) -> PostedUsage:
    return PostedUsage(event_id=event_id, wallet_id=wallet_id, txn_id=1, credits=credits)


def test_each_charged_wallet_is_announced_once_with_its_state_after_the_batch() -> None:
    changes = usage_balance_changes(
        [posted("e1", "w1", 10), posted("e2", "w2", 5), posted("e3", "w1", 7)],
        [settled("w1", 900, 40), settled("w2", 95, 0)],
        {"w1": 12, "w2": 3},
        AT,
    )
    by_wallet = {c.wallet_id: c for c in changes}
    assert len(changes) == 2
    one = by_wallet["w1"]
    assert (one.available_credits, one.reserved_credits, one.delta_credits) == (900, 40, -17)
    assert (one.cause, one.source_id, one.event_id) == ("usage", "e3", "balance:usage:w1:12")
    assert one.occurred_at == AT
    assert by_wallet["w2"].delta_credits == -5
    # Valid on the wire (the contract's own decoder reads it back).
    assert decode_wallet_event(encode(one)) == one


def test_wallets_without_credits_posted_or_not_in_the_mirror_are_not_announced() -> None:
    changes = usage_balance_changes(
        [posted("free", "w_free", 0), posted("e1", "w_gone", 10)],
        [settled("w_free", 50, 0), settled("w_gone", 0, 0, loaded=False), settled("w3", 7, 0)],
        {"w_gone": 4},
        AT,
    )
    assert changes == ()


def test_the_same_state_is_announced_under_the_same_id() -> None:
    args = ([posted("e1", "w1", 10)], [settled("w1", 90, 0)], {"w1": 5}, AT)
    assert usage_balance_changes(*args)[0].event_id == usage_balance_changes(*args)[0].event_id
    # Without a ledger version, the last posted event names the state.
    (change,) = usage_balance_changes([posted("e9", "w1", 1)], [settled("w1", 9, 0)], {}, AT)
    assert change.event_id == "balance:usage:w1:e9"
