"""Model-based test: random sequences of every mirror operation against a tiny Python model.

After every step the mirror must equal the model, be non-negative, keep its cached totals
equal to its maps, and conserve credits:
available + in-flight + held + settled == initial + credited.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from aggregator.authorize import authorize, release, settle
from aggregator.decision import Outcome
from aggregator.hold_sweeper import sweep_expired
from aggregator.hold_types import HoldOutcome, HoldRequest
from aggregator.holds import capture_hold, release_hold, reserve_hold
from aggregator.mirror import credit
from aggregator.policy import Tier
from aggregator.wallet_store import WalletStore
from stack.redis_cleanup import unlink_key_space
from tests.aggregator.support import NOW_MS, audit, load, request
from tests.redis_support import new_client, new_keyspace

T = TypeVar("T")
CREDITS = st.integers(min_value=0, max_value=40)
TIERS = st.sampled_from(list(Tier))


@dataclass
class Hold:
    credits: int
    expires_at_ms: int


class MirrorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.client = new_client()
        self.store = WalletStore.create(self.client, new_keyspace())
        self.now_ms = NOW_MS
        self.serial = 0
        self.initial = self.available = self.credited = self.settled = 0
        self.in_flight: dict[str, int] = {}
        self.decided: dict[str, int] = {}
        self.holds: dict[str, Hold] = {}

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def fresh(self, kind: str) -> str:
        self.serial += 1
        return f"{kind}{self.serial}"

    def teardown(self) -> None:
        self.run(unlink_key_space(self.client, self.store.keys))
        self.run(self.client.aclose())
        self.loop.close()

    @initialize(balance=st.integers(min_value=0, max_value=150))
    def start(self, balance: int) -> None:
        self.run(load(self.store, balance))
        self.initial = self.available = balance

    def expected_refusal(self, credits: int, tier: Tier) -> Outcome | None:
        if credits > 0 and tier is Tier.PREMIUM and self.available == 0:
            return Outcome.PREMIUM_PAUSED
        if credits > self.available:
            return Outcome.INSUFFICIENT_CREDITS
        return None

    @rule(credits=CREDITS, tier=TIERS)
    def authorize_new(self, credits: int, tier: Tier) -> None:
        event_id = self.fresh("e")
        decision = self.run(authorize(self.store, request(event_id, credits, tier=tier)))
        assert decision.outcome is (self.expected_refusal(credits, tier) or Outcome.AUTHORIZED)
        self.decided[event_id] = credits
        if decision.authorized:
            self.available -= credits
            self.in_flight[event_id] = credits

    @precondition(lambda self: self.decided)
    @rule(data=st.data())
    def redeliver(self, data: st.DataObject) -> None:
        event_id = data.draw(st.sampled_from(sorted(self.decided)))
        decision = self.run(authorize(self.store, request(event_id, self.decided[event_id])))
        assert decision.outcome is Outcome.DUPLICATE

    @precondition(lambda self: self.decided)
    @rule(data=st.data())
    def settle_some(self, data: st.DataObject) -> None:
        ids = data.draw(st.lists(st.sampled_from(sorted(self.decided)), max_size=6))
        result = self.run(settle(self.store, "w1", ids))
        expected = [e for e in dict.fromkeys(ids) if e in self.in_flight]
        assert result.settled_event_ids == tuple(expected)
        for event_id in expected:
            self.settled += self.in_flight.pop(event_id)

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def release_one(self, data: st.DataObject) -> None:
        event_id = data.draw(st.sampled_from(sorted(self.in_flight)))
        result = self.run(release(self.store, "w1", event_id))
        assert result.released
        self.available += self.in_flight.pop(event_id)
        self.decided.pop(event_id)  # a released id may be authorised afresh, not redelivered

    @rule(credits=st.integers(min_value=1, max_value=40), ttl_ms=st.integers(1, 5_000))
    def reserve(self, credits: int, ttl_ms: int) -> None:
        hold_id = self.fresh("h")
        req = HoldRequest(hold_id, "w1", "m1", credits, ttl_ms, self.now_ms)
        result = self.run(reserve_hold(self.store, req))
        refusal = self.expected_refusal(credits, Tier.PREMIUM)
        assert result.outcome == (refusal.value if refusal else HoldOutcome.HELD.value)
        if refusal is None:
            self.available -= credits
            self.holds[hold_id] = Hold(credits, self.now_ms + ttl_ms)

    def expire_due(self) -> None:
        for hold_id, hold in list(self.holds.items()):
            if hold.expires_at_ms <= self.now_ms:
                self.available += self.holds.pop(hold_id).credits

    @precondition(lambda self: self.holds)
    @rule(data=st.data())
    def capture(self, data: st.DataObject) -> None:
        hold_id = data.draw(st.sampled_from(sorted(self.holds)))
        hold = self.holds[hold_id]
        actual = data.draw(st.integers(min_value=0, max_value=hold.credits + 5))
        result = self.run(capture_hold(self.store, "w1", hold_id, actual, self.now_ms))
        if hold.expires_at_ms <= self.now_ms:
            assert result.outcome is HoldOutcome.EXPIRED
        elif actual > hold.credits:
            assert result.outcome is HoldOutcome.EXCEEDS_HOLD
            return
        else:
            assert result.outcome is HoldOutcome.CAPTURED
            self.in_flight[hold_id] = actual
            self.decided[hold_id] = actual
            self.available -= actual
        self.available += self.holds.pop(hold_id).credits

    @precondition(lambda self: self.holds)
    @rule(data=st.data())
    def void(self, data: st.DataObject) -> None:
        hold_id = data.draw(st.sampled_from(sorted(self.holds)))
        result = self.run(release_hold(self.store, "w1", hold_id, self.now_ms))
        due = self.holds[hold_id].expires_at_ms <= self.now_ms
        assert result.outcome is (HoldOutcome.EXPIRED if due else HoldOutcome.RELEASED)
        self.available += self.holds.pop(hold_id).credits

    @rule(elapsed_ms=st.integers(min_value=0, max_value=3_000))
    def sweep(self, elapsed_ms: int) -> None:
        self.now_ms += elapsed_ms
        due = {h for h, hold in self.holds.items() if hold.expires_at_ms <= self.now_ms}
        report = self.run(sweep_expired(self.store, self.now_ms))
        assert {h.hold_id for h in report.expired} == due
        self.expire_due()

    @rule(credits=st.integers(min_value=1, max_value=50))
    def purchase(self, credits: int) -> None:
        self.run(credit(self.store, "w1", credits, self.fresh("p")))
        self.available += credits
        self.credited += credits

    @invariant()
    def mirror_matches_the_model(self) -> None:
        state = self.run(audit(self.store))
        assert state.mirror.available == self.available
        assert state.in_flight == self.in_flight
        assert state.holds == {h: hold.credits for h, hold in self.holds.items()}
        total = state.mirror.available + state.mirror.reserved + self.settled
        assert total == self.initial + self.credited


TestMirrorMachine = MirrorMachine.TestCase
TestMirrorMachine.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
