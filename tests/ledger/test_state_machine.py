"""Random operation sequences against the real ledger, checked against an independent model.

After every step: the wallet row equals the model, every bucket equals the sum of its postings,
nothing is negative, and replaying any earlier request changes nothing. Each example verifies
the whole ledger (sums to zero, hash chain) at teardown.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable
from typing import Any, TypeVar

import psycopg
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)

from domain.errors import InsufficientCredits
from settlement.ledger.db import open_pool
from settlement.ledger.operations import Ledger
from settlement.ledger.verify import verify_ledger
from settlement.ledger.wallets import Wallets

T = TypeVar("T")
_wallet_numbers = itertools.count()
amounts = st.integers(min_value=1, max_value=3_000)


class LedgerMachine(RuleBasedStateMachine):
    pending = Bundle("pending")
    confirmed = Bundle("confirmed")
    holds = Bundle("holds")
    payouts = Bundle("payouts")

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.loop = asyncio.new_event_loop()
        self.pool = self.run(open_pool(url, max_size=2))
        self.ledger = Ledger(self.pool)
        self.wallet = f"wal_sm{next(_wallet_numbers)}"
        self.run(
            Wallets(self.pool).create(self.wallet, owner_type="community", owner_id=self.wallet)
        )
        self.model = {"available": 0, "pending": 0, "reserved": 0, "locked": 0, "eligible": 0}
        self.ids = itertools.count()
        self.replays: list[Any] = []

    def run(self, coro: Awaitable[T]) -> T:
        return self.loop.run_until_complete(coro)  # type: ignore[arg-type,unused-ignore]

    def key(self, prefix: str) -> str:
        return f"{self.wallet}-{prefix}-{next(self.ids)}"

    def teardown(self) -> None:
        async def check() -> None:
            async with await psycopg.AsyncConnection.connect(self.url) as conn:
                report = await verify_ledger(conn)
            assert report.ok, [str(d) for d in report.discrepancies]

        try:
            self.run(check())
        finally:
            self.run(self.pool.close())
            self.loop.close()

    def spend(self, bucket: str, credits: int, call: Any) -> bool:
        """Run ``call``; it must succeed iff the model has ``credits`` in ``bucket``."""
        try:
            self.run(call())
        except InsufficientCredits:
            assert self.model[bucket] < credits
            return False
        assert self.model[bucket] >= credits
        return True

    @rule(target=pending, credits=amounts)
    def buy(self, credits: int) -> tuple[str, int]:
        payment = self.key("pay")
        self.run(self.ledger.purchase_pending(self.wallet, payment, credits))
        self.model["pending"] += credits
        self.replays.append(lambda: self.ledger.purchase_pending(self.wallet, payment, credits))
        return payment, credits

    @rule(target=confirmed, purchase=consumes(pending), bonus=st.integers(0, 500))
    def confirm(self, purchase: tuple[str, int], bonus: int) -> tuple[str, int, int]:
        payment, credits = purchase
        self.run(self.ledger.purchase_confirm(self.wallet, payment, bonus_credits=bonus))
        self.model["pending"] -= credits
        self.model["available"] += credits + bonus
        self.replays.append(lambda: self.ledger.purchase_confirm(self.wallet, payment))
        return payment, credits, bonus

    @rule(purchase=consumes(pending))
    def fail(self, purchase: tuple[str, int]) -> None:
        self.run(self.ledger.purchase_fail(self.wallet, purchase[0]))
        self.model["pending"] -= purchase[1]

    @rule(credits=amounts)
    def use(self, credits: int) -> None:
        event = self.key("ev")

        def call() -> Awaitable[Any]:
            return self.ledger.deduct_usage(self.wallet, event, credits, feature="f")

        ok = self.spend("available", credits, call)
        if ok:
            self.model["available"] -= credits
            self.replays.append(
                lambda: self.ledger.deduct_usage(self.wallet, event, credits, feature="f")
            )

    @rule(purchase=consumes(confirmed), base_share=st.integers(1, 100))
    def refund(self, purchase: tuple[str, int, int], base_share: int) -> None:
        payment, credits, bonus = purchase
        base = max(1, credits * base_share // 100)
        clawback = bonus * base // credits
        refund_id = self.key("ref")

        def call() -> Awaitable[Any]:
            return self.ledger.refund_purchase(
                self.wallet, refund_id, payment, base_credits=base, bonus_credits=clawback
            )

        ok = self.spend("available", base + clawback, call)
        if ok:
            self.model["available"] -= base + clawback

    @rule(target=holds, credits=amounts)
    def hold(self, credits: int) -> tuple[str, int] | None:
        hold_id = self.key("hold")

        def call() -> Awaitable[Any]:
            return self.ledger.hold_usage(self.wallet, hold_id, credits, feature="ai")

        ok = self.spend("available", credits, call)
        if not ok:
            return None
        self.model["available"] -= credits
        self.model["reserved"] += credits
        return hold_id, credits

    @rule(held=consumes(holds), share=st.integers(0, 100))
    def resolve_hold(self, held: tuple[str, int] | None, share: int) -> None:
        if held is None:
            return
        hold_id, credits = held
        captured = credits * share // 100
        if captured:
            self.run(self.ledger.capture_hold(self.wallet, hold_id, captured))
        else:
            self.run(self.ledger.release_hold(self.wallet, hold_id))
        self.model["reserved"] -= credits
        self.model["available"] += credits - captured

    @rule(credits=st.integers(-2_000, 2_000).filter(bool), earnings=st.booleans())
    def adjust(self, credits: int, earnings: bool) -> None:
        reason = "community_earnings" if earnings else "goodwill"
        adjustment_id = self.key("adj")

        def call() -> Awaitable[Any]:
            return self.ledger.adjust(
                self.wallet, adjustment_id, credits, actor="ops", reason=reason
            )

        short = self.model["available"] + credits < 0 or (
            earnings and self.model["eligible"] + credits < 0
        )
        try:
            self.run(call())
        except InsufficientCredits:
            assert short
            return
        assert not short
        self.model["available"] += credits
        if earnings:
            self.model["eligible"] += credits

    @rule(target=payouts, credits=amounts)
    def payout(self, credits: int) -> tuple[str, int] | None:
        payout_id = self.key("po")
        limit = min(self.model["available"], self.model["eligible"])
        try:
            self.run(self.ledger.hold_payout(self.wallet, payout_id, credits))
        except InsufficientCredits:
            assert limit < credits
            return None
        assert limit >= credits
        self.model["available"] -= credits
        self.model["locked"] += credits
        self.model["eligible"] -= credits
        return payout_id, credits

    @rule(held=consumes(payouts), complete=st.booleans())
    def resolve_payout(self, held: tuple[str, int] | None, complete: bool) -> None:
        if held is None:
            return
        payout_id, credits = held
        if complete:
            self.run(self.ledger.complete_payout(self.wallet, payout_id))
        else:
            self.run(self.ledger.cancel_payout(self.wallet, payout_id))
            self.model["available"] += credits
            self.model["eligible"] += credits
        self.model["locked"] -= credits

    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        if self.replays:
            self.run(data.draw(st.sampled_from(self.replays))())

    @invariant()
    def balances_match_model_and_postings(self) -> None:
        async def read() -> tuple[Any, ...]:
            async with self.pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT w.available, w.pending, w.reserved, w.locked, w.payout_eligible, "
                    "array_agg(a.name || '=' || coalesce((SELECT sum(amount) FROM ledger_postings p"
                    " WHERE p.account_id = a.id), 0) ORDER BY a.name) "
                    "FROM wallets w JOIN ledger_accounts a ON a.wallet_id = w.id "
                    "WHERE w.id = %s GROUP BY w.id",
                    (self.wallet,),
                )
                row = await cur.fetchone()
                assert row is not None
                return tuple(row)

        available, pending, reserved, locked, eligible, sums = self.run(read())
        m = self.model
        assert (available, pending, reserved, locked, eligible) == (
            m["available"],
            m["pending"],
            m["reserved"],
            m["locked"],
            m["eligible"],
        )
        assert min(available, pending, reserved, locked, eligible) >= 0
        assert sums == [
            f"available={available}",
            f"locked={locked}",
            f"pending={pending}",
            f"reserved={reserved}",
        ]


def test_random_operation_sequences_conserve_credits(ledger_db_url: str) -> None:
    run_state_machine_as_test(
        lambda: LedgerMachine(ledger_db_url),  # type: ignore[arg-type]
        settings=settings(
            max_examples=30,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
