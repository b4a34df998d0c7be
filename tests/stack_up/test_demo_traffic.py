"""The demo traffic plan: the community's feature mix, retries that reuse event ids, malformed
payloads that earn the dead-letter reason they claim, a diurnal rate, and a hard bound."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest

from domain.errors import InvalidInput
from meter.schema import SchemaViolation, decode_usage_event, encode
from stack.demo_history import DAILY_MIX, DEMO_WALLET
from stack.demo_traffic import TickPlan, TrafficConfig, TrafficGenerator, diurnal_factor

NOW = datetime(2026, 3, 14, 10, 0, tzinfo=UTC)


def plan_all(config: TrafficConfig, tick_s: float = 0.1) -> list[TickPlan]:
    generator = TrafficGenerator(config)
    plans, elapsed = [], 0.0
    while generator.remaining:
        plans.append(generator.plan(elapsed, tick_s, NOW))
        elapsed += tick_s
    return plans


def test_count_bounds_every_kind_of_message() -> None:
    plans = plan_all(TrafficConfig(rate=50, count=500, seed=3, start_hour=12))
    assert sum(p.size for p in plans) == 500
    events = [e for p in plans for e in p.events]
    assert len({e.event_id for e in events}) == len(events)  # distinct ids for new events
    assert sum(len(p.malformed) for p in plans) == 500 // 40
    assert sum(len(p.retries) for p in plans) > 0


def test_event_ids_are_numbered_per_run_and_valid_on_the_wire() -> None:
    config = TrafficConfig(rate=20, count=100, seed=1, run_id="r1", start_hour=12)
    events = [e for p in plan_all(config) for e in p.events]
    expected = ["demo:r1:000001", "demo:r1:000002", "demo:r1:000003"]
    assert [e.event_id for e in events][:3] == expected
    assert {e.wallet_id for e in events} == {DEMO_WALLET}
    for event in events:
        assert decode_usage_event(encode(event)) == event


def test_the_mix_follows_the_communitys_day() -> None:
    plans = plan_all(TrafficConfig(rate=200, count=20_000, seed=7, start_hour=12, ai_burst_per_s=0))
    seen = Counter(e.feature for p in plans for e in p.events)
    total = sum(seen.values())
    weights = dict(DAILY_MIX)
    for feature, weight in DAILY_MIX:
        expected = weight / sum(weights.values())
        assert abs(seen[feature] / total - expected) < 0.02, feature


def test_retries_resend_an_earlier_event_unchanged() -> None:
    plans = plan_all(TrafficConfig(rate=30, count=600, seed=5, start_hour=12))
    sent: dict[str, object] = {}
    for plan in plans:
        for retry in plan.retries:
            assert sent[retry.event_id] == retry  # same id, same payload, sent before
        sent.update({e.event_id: e for e in plan.events})


def test_malformed_payloads_earn_the_reason_they_claim_and_name_the_run() -> None:
    config = TrafficConfig(rate=50, count=200, seed=2, malformed_every=2, run_id="bad1")
    letters = [m for p in plan_all(config) for m in p.malformed]
    assert len({m.expected_reason for m in letters}) == 5
    for letter in letters:
        assert b"bad1" in letter.payload
        with pytest.raises(SchemaViolation) as caught:
            decode_usage_event(letter.payload)
        assert caught.value.reason.value == letter.expected_reason


def test_ai_bursts_are_runs_of_ai_requests() -> None:
    generator = TrafficGenerator(
        TrafficConfig(rate=0.01, count=1_000, seed=4, ai_burst_per_s=10, start_hour=12)
    )
    plan = generator.plan(0.0, 1.0, NOW)  # a burst is certain at 10 per second
    assert generator.ai_bursts == 1
    assert len(plan.events) >= 5
    assert all(e.feature.startswith("ai.") for e in plan.events)
    assert len({e.member_id for e in plan.events}) == 1


def test_rate_is_diurnal_around_the_mean() -> None:
    hourly = [diurnal_factor(hour / 24) for hour in range(24)]
    assert abs(sum(hourly) / 24 - 1) < 1e-9
    assert diurnal_factor(3 / 24) < 0.5 < 1.5 < diurnal_factor(20 / 24)
    generator = TrafficGenerator(TrafficConfig(rate=10, day_s=240, start_hour=0))
    assert generator.rate_at(0) < generator.rate_at(200)  # night, then the evening peak


@pytest.mark.parametrize(
    "changes",
    [
        {"rate": 0},
        {"duration_s": None, "count": None},
        {"count": 0},
        {"run_id": "has space"},
        {"members": ()},
    ],
)
def test_bad_configs_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        TrafficConfig(**changes)  # type: ignore[arg-type]
