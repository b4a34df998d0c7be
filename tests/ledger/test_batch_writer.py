"""Batched settlement: idempotent on event id, every event accounted for, chain intact."""

from __future__ import annotations

import pytest

from domain.errors import InvalidAmount, InvalidInput
from settlement.ledger.batch_writer import BatchWriter, UsageCharge
from settlement.ledger.operations import Ledger
from settlement.ledger.wallets import Wallets
from tests.ledger.helpers import assert_consistent, count_transactions


async def _wallet(wallets: Wallets, ledger: Ledger, wallet_id: str, credits: int) -> None:
    await wallets.create(wallet_id, owner_type="community", owner_id=wallet_id)
    await ledger.adjust(wallet_id, f"fund-{wallet_id}", credits, actor="t", reason="fund")


async def test_batch_posts_rejects_and_deduplicates(
    wallets: Wallets, ledger: Ledger, batch_writer: BatchWriter, ledger_db_url: str
) -> None:
    await _wallet(wallets, ledger, "wal_a", 100)
    await _wallet(wallets, ledger, "wal_b", 10)
    charges = [
        UsageCharge("e1", "wal_a", 40, "api.export_data", member_id="m1"),
        UsageCharge("e2", "wal_b", 8, "community.upload_banner"),
        UsageCharge("e3", "wal_b", 8, "community.upload_banner"),  # unaffordable now
        UsageCharge("e1", "wal_a", 40, "api.export_data"),  # duplicate inside the batch
        UsageCharge("e4", "wal_missing", 1, "api.basic_request"),
        UsageCharge("e5", "wal_a", 60, "api.export_data"),
    ]
    outcome = await batch_writer.post_usage(charges)
    assert [p.event_id for p in outcome.posted] == ["e1", "e2", "e5"]
    assert outcome.duplicates == ("e1",)
    assert {(r.event_id, r.code) for r in outcome.rejected} == {
        ("e3", "insufficient_credits"),
        ("e4", "unknown_wallet"),
    }
    assert (await wallets.get("wal_a")).balances.available == 0
    assert (await wallets.get("wal_b")).balances.available == 2
    assert outcome.versions == {
        "wal_a": (await wallets.get("wal_a")).head_seq,
        "wal_b": (await wallets.get("wal_b")).head_seq,
    }
    assert outcome.versions["wal_a"] == 3  # funding + e1 + e5

    again = await batch_writer.post_usage(charges[:2] + charges[5:])
    assert again.posted == ()
    assert set(again.duplicates) == {"e1", "e2", "e5"}
    # A single-op deduction of a batch-posted event is a replay, not a second charge.
    replay = await ledger.deduct_usage("wal_a", "e1", 40, feature="api.export_data")
    assert replay.replayed
    await assert_consistent(ledger_db_url)


async def test_large_batch_interleaved_with_single_ops_keeps_the_chain(
    wallets: Wallets, ledger: Ledger, batch_writer: BatchWriter, ledger_db_url: str
) -> None:
    await _wallet(wallets, ledger, "wal_big", 1_000_000)
    for round_ in range(3):
        charges = [
            UsageCharge(f"r{round_}-{i}", "wal_big", 1 + i % 7, "api.basic_request")
            for i in range(2_000)
        ]
        outcome = await batch_writer.post_usage(charges)
        assert len(outcome.posted) == 2_000
        await ledger.deduct_usage("wal_big", f"single-{round_}", 5, feature="ai.moderation")
    assert await count_transactions(ledger_db_url, "wal_big") == 1 + 3 * 2_001
    report = await assert_consistent(ledger_db_url)
    assert report.postings == 2 * (1 + 3 * 2_001)


async def test_empty_batch_is_a_no_op(batch_writer: BatchWriter) -> None:
    outcome = await batch_writer.post_usage([])
    assert outcome.posted == ()
    assert outcome.duplicates == ()
    assert outcome.rejected == ()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"credits": 0}, InvalidAmount),
        ({"credits": 2.5}, InvalidAmount),
        ({"event_id": ""}, InvalidInput),
        ({"wallet_id": "has space"}, InvalidInput),
        ({"feature": ""}, InvalidInput),
    ],
)
def test_usage_charge_validates_on_construction(kwargs: dict[str, object], error: type) -> None:
    base: dict[str, object] = {
        "event_id": "e",
        "wallet_id": "w",
        "credits": 1,
        "feature": "api.basic_request",
    }
    with pytest.raises(error):
        UsageCharge(**{**base, **kwargs})  # type: ignore[arg-type]
