"""Races against the real PostgreSQL: no lost update, no overdraft, no double post."""

from __future__ import annotations

import asyncio

import pytest

from domain.errors import InsufficientCredits
from settlement.ledger.batch_writer import BatchOutcome, BatchWriter, UsageCharge
from settlement.ledger.operations import Ledger
from settlement.ledger.wallets import Wallets
from tests.ledger.helpers import assert_consistent, count_transactions, posting_balance

W = "wal_race"


async def _fund(wallets: Wallets, ledger: Ledger, credits: int) -> None:
    await wallets.create(W, owner_type="community", owner_id="race")
    await ledger.adjust(W, "fund", credits, actor="test", reason="funding")


async def test_64_concurrent_deductions_exactly_the_affordable_number_succeed(
    wallets: Wallets, ledger: Ledger, ledger_db_url: str
) -> None:
    await _fund(wallets, ledger, 15 * 20 + 7)  # affords exactly 20 AI summaries

    async def deduct(index: int) -> bool:
        try:
            await ledger.deduct_usage(W, f"ev-{index}", 15, feature="ai.summary")
        except InsufficientCredits:
            return False
        return True

    results = await asyncio.gather(*(deduct(i) for i in range(64)))
    assert sum(results) == 20
    wallet = await wallets.get(W)
    assert wallet.balances.available == 7
    assert wallet.balances.lifetime_used == 300
    assert await posting_balance(ledger_db_url, W, "available") == 7
    await assert_consistent(ledger_db_url)


async def test_same_source_id_100_times_sequential_and_concurrent_is_one_transaction(
    wallets: Wallets, ledger: Ledger, ledger_db_url: str
) -> None:
    await _fund(wallets, ledger, 10_000)
    first = await ledger.deduct_usage(W, "ev-once", 5, feature="api.heavy_query")
    for _ in range(99):
        again = await ledger.deduct_usage(W, "ev-once", 5, feature="api.heavy_query")
        assert again.id == first.id
        assert again.replayed

    racing = await asyncio.gather(
        *(ledger.deduct_usage(W, "ev-race", 5, feature="api.heavy_query") for _ in range(100))
    )
    assert len({txn.id for txn in racing}) == 1
    assert sum(not txn.replayed for txn in racing) == 1
    assert await count_transactions(ledger_db_url, W) == 1 + 2
    assert (await wallets.get(W)).balances.available == 10_000 - 10
    await assert_consistent(ledger_db_url)


async def test_concurrent_purchase_confirmations_post_credits_once(
    wallets: Wallets, ledger: Ledger, ledger_db_url: str
) -> None:
    await wallets.create(W, owner_type="user", owner_id="buyer")
    await ledger.purchase_pending(W, "pay_race", 5000)
    confirmations = await asyncio.gather(
        *(ledger.purchase_confirm(W, "pay_race", bonus_credits=500) for _ in range(30))
    )
    assert len({c.purchase.id for c in confirmations}) == 1
    assert (await wallets.get(W)).balances.available == 5500
    await assert_consistent(ledger_db_url)


async def test_concurrent_batches_and_single_ops_on_shared_wallets(
    wallets: Wallets, ledger: Ledger, batch_writer: BatchWriter, ledger_db_url: str
) -> None:
    ids = [f"wal_s{i}" for i in range(5)]
    for wallet_id in ids:
        await wallets.create(wallet_id, owner_type="community", owner_id=wallet_id)
        await ledger.adjust(wallet_id, f"fund-{wallet_id}", 1_000, actor="t", reason="fund")
    # Batches touch the wallets in different orders; the writer locks in id order, so no deadlock.
    batches = [
        [
            UsageCharge(f"b{b}-e{i}", ids[(i * (b + 1)) % 5], 3, "api.basic_request")
            for i in range(200)
        ]
        for b in range(4)
    ]
    singles = [ledger.deduct_usage(ids[i % 5], f"single-{i}", 2, feature="x") for i in range(40)]
    results = await asyncio.gather(*(batch_writer.post_usage(b) for b in batches), *singles)
    outcomes = [r for r in results if isinstance(r, BatchOutcome)]
    assert len(outcomes) == 4
    posted = sum(len(o.posted) for o in outcomes)
    rejected = sum(len(o.rejected) for o in outcomes)
    assert posted + rejected == 800
    spent = sum([1_000 - (await wallets.get(w)).balances.available for w in ids])
    assert spent == posted * 3 + 40 * 2
    await assert_consistent(ledger_db_url)


@pytest.mark.parametrize("workers", [8])
async def test_no_lost_update_under_mixed_credit_and_debit(
    wallets: Wallets, ledger: Ledger, ledger_db_url: str, workers: int
) -> None:
    await _fund(wallets, ledger, 1_000)

    async def worker(n: int) -> None:
        for i in range(25):
            await ledger.adjust(W, f"add-{n}-{i}", 3, actor="t", reason="topup")
            await ledger.deduct_usage(W, f"use-{n}-{i}", 2, feature="api.basic_request")

    await asyncio.gather(*(worker(n) for n in range(workers)))
    assert (await wallets.get(W)).balances.available == 1_000 + workers * 25
    await assert_consistent(ledger_db_url)
