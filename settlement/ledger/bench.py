"""``credits bench ledger``: one DB transaction per usage event vs batched settlement.

Both sides run in the same process against the same server with the same durability settings
(``synchronous_commit`` as configured), on two fresh databases holding identical wallets, over
the *same* events. Each side is verified afterwards, so a fast wrong answer cannot win.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from settlement.ledger.batch_writer import BatchWriter, UsageCharge
from settlement.ledger.db import open_pool
from settlement.ledger.operations import Ledger
from settlement.ledger.verify import verify_ledger
from settlement.ledger.wallets import Wallets

FEATURES = (
    ("api.basic_request", 1),
    ("ai.summary", 15),
    ("queue.email_send", 1),
    ("webhooks.trigger", 1),
    ("api.heavy_query", 5),
)


@dataclass(frozen=True, slots=True)
class SideResult:
    events: int
    postings: int
    seconds: float
    verified: bool

    @property
    def postings_per_s(self) -> float:
        return self.postings / self.seconds


def make_events(count: int, wallets: int, seed: int = 7) -> list[UsageCharge]:
    rng = random.Random(seed)
    events = []
    for index in range(count):
        feature, credits = rng.choice(FEATURES)
        events.append(
            UsageCharge(
                event_id=f"bench-{index:08d}",
                wallet_id=f"bench_w{rng.randrange(wallets):04d}",
                credits=credits,
                feature=feature,
                member_id=f"m{rng.randrange(50)}",
                pricing_version=1,
            )
        )
    return events


async def _fund(url: str, wallets: int, credits_each: int) -> None:
    pool = await open_pool(url, max_size=2)
    try:
        registry, ledger = Wallets(pool), Ledger(pool)
        for index in range(wallets):
            wallet_id = f"bench_w{index:04d}"
            await registry.create(wallet_id, owner_type="community", owner_id=wallet_id)
            await ledger.adjust(
                wallet_id,
                f"fund-{wallet_id}",
                credits_each,
                actor="bench",
                reason="benchmark funding",
            )
    finally:
        await pool.close()


async def _verified(url: str) -> bool:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        return (await verify_ledger(conn)).ok


async def run_naive(url: str, events: Sequence[UsageCharge]) -> SideResult:
    """Baseline: each event is its own transaction through the single-op writer."""
    pool = await open_pool(url, max_size=1)
    try:
        ledger = Ledger(pool)
        started = time.perf_counter()
        for event in events:
            await ledger.deduct_usage(
                event.wallet_id,
                event.event_id,
                event.credits,
                feature=event.feature,
                member_id=event.member_id,
                pricing_version=event.pricing_version,
            )
        elapsed = time.perf_counter() - started
    finally:
        await pool.close()
    return SideResult(len(events), 2 * len(events), elapsed, await _verified(url))


async def run_batched(url: str, events: Sequence[UsageCharge], batch_size: int) -> SideResult:
    pool = await open_pool(url, max_size=1)
    posted = 0
    try:
        writer = BatchWriter(pool)
        started = time.perf_counter()
        for start in range(0, len(events), batch_size):
            outcome = await writer.post_usage(events[start : start + batch_size])
            posted += len(outcome.posted)
        elapsed = time.perf_counter() - started
    finally:
        await pool.close()
    assert posted == len(events), f"batched side posted {posted} of {len(events)}"
    return SideResult(len(events), 2 * posted, elapsed, await _verified(url))
