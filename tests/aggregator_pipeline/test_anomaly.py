"""Suspicious-burn detectors with frozen time (pure)."""

from __future__ import annotations

from aggregator.anomaly import (
    RAPID_BURN,
    RETRY_STORM,
    AlertGate,
    AnomalySettings,
    BurnDetector,
    Observation,
    score,
    to_alert,
)
from meter.schema import decode_suspicious_burn, encode

T0 = 1_773_464_400_000  # a bucket boundary (2026-03-14T05:00Z)
MINUTE = 60_000
SETTINGS = AnomalySettings(
    window_ms=5 * MINUTE,
    bucket_ms=MINUTE,
    baseline_weight_pct=20,
    baseline_floor_credits=10,
    burn_factor=8,
    min_burn_credits=200,
    resend_threshold=5,
    repeat_threshold=50,
    alert_cooldown_ms=10 * MINUTE,
)


def obs(n: int, credits: int, *, wallet: str = "w1", event_id: str | None = None) -> Observation:
    return Observation(
        wallet_id=wallet,
        event_id=event_id or f"{wallet}-e{n}",
        operation=f"api.export_data/m{n % 7}",
        delivery=f"p0@{n}",
        credits=credits,
    )


def steady(detector: BurnDetector, minutes: int, credits_per_minute: int) -> int:
    """Feed a normal wallet: ``credits_per_minute`` each minute; returns the next offset."""
    n = 0
    for minute in range(minutes):
        batch = [obs(n + i, credits_per_minute // 10) for i in range(10)]
        n += 10
        assert detector.observe(batch, T0 + minute * MINUTE) == ()
    return n


def test_score_is_50_at_threshold_and_saturates() -> None:
    assert [score(r) for r in (0, 0.5, 1, 2, 4, 100)] == [0, 25, 50, 75, 100, 100]


def test_steady_usage_learns_a_baseline_and_never_alerts() -> None:
    detector = BurnDetector(SETTINGS)
    steady(detector, 30, credits_per_minute=100)


def test_a_burst_far_above_the_wallets_own_baseline_is_rapid_burn() -> None:
    detector = BurnDetector(SETTINGS)
    n = steady(detector, 20, credits_per_minute=20)  # baseline ~20/min, window expects ~100
    now = T0 + 20 * MINUTE
    burst = [obs(n + i, 20) for i in range(100)]  # 2,000 credits in one go: 20x the window
    (finding,) = detector.observe(burst, now)
    assert finding.reason_codes == (RAPID_BURN,)
    assert finding.score >= 75
    assert finding.credits_in_window >= 2_000
    assert finding.window_end_ms == now
    assert finding.window_start_ms < now


def test_a_new_wallet_is_judged_against_the_floor_not_zero() -> None:
    detector = BurnDetector(SETTINGS)
    assert detector.observe([obs(i, 10) for i in range(10)], T0) == ()  # 100 credits: fine
    (finding,) = detector.observe([obs(10 + i, 20) for i in range(20)], T0 + 1_000)
    assert finding.reason_codes == (RAPID_BURN,)  # 500 >= 8 x (10 x 5) and >= 200


def test_the_window_slides_old_burn_out() -> None:
    detector = BurnDetector(SETTINGS)
    assert detector.observe([obs(i, 19) for i in range(10)], T0) == ()  # 190 < min_burn
    later = T0 + 6 * MINUTE
    assert detector.observe([obs(10 + i, 19) for i in range(10)], later) == ()


def test_the_same_event_resent_at_new_offsets_is_a_retry_storm() -> None:
    detector = BurnDetector(SETTINGS)
    resends = [Observation("w1", "same-id", "webhooks.trigger/m1", f"p0@{n}", 0) for n in range(7)]
    (finding,) = detector.observe(resends, T0)
    assert finding.reason_codes == (RETRY_STORM,)
    assert finding.score == score(6 / 5)


def test_our_own_redelivery_of_a_position_is_not_counted() -> None:
    detector = BurnDetector(SETTINGS)
    batch = [obs(n, 0, event_id="e-same") for n in range(1)] * 10  # one position, ten times
    assert detector.observe(batch, T0) == ()
    assert detector.observe(batch, T0 + 1_000) == ()


def test_the_same_operation_repeated_is_a_retry_storm() -> None:
    detector = BurnDetector(SETTINGS)
    loop = [
        Observation("w1", f"e{n}", "webhooks.retry_attempt/m1", f"p0@{n}", 0) for n in range(60)
    ]
    (finding,) = detector.observe(loop, T0)
    assert finding.reason_codes == (RETRY_STORM,)


def test_both_signals_raise_the_score() -> None:
    detector = BurnDetector(SETTINGS)
    burst = [Observation("w1", f"e{n}", "ai.summary/m1", f"p0@{n}", 15) for n in range(60)]
    (finding,) = detector.observe(burst, T0)
    assert finding.reason_codes == (RAPID_BURN, RETRY_STORM)
    # The higher score (900 credits vs 8 x 50 expected: 2.25x) plus 10 for a second reason.
    assert finding.score == score(900 / 400) + 10 == 89


def test_alert_gate_allows_one_alert_per_wallet_per_cooldown() -> None:
    detector = BurnDetector(SETTINGS)
    gate = AlertGate(SETTINGS.alert_cooldown_ms)
    findings = detector.observe([obs(i, 50) for i in range(20)], T0)
    assert len(gate.due(findings, T0)) == 1
    assert len(gate.due(findings, T0)) == 1  # not recorded (publish failed): still due
    gate.record(findings, T0)
    assert gate.due(findings, T0 + MINUTE) == ()
    assert len(gate.due(findings, T0 + SETTINGS.alert_cooldown_ms)) == 1


def test_the_alert_is_a_valid_suspicious_burn_payload() -> None:
    detector = BurnDetector(SETTINGS)
    (finding,) = detector.observe([obs(i, 50) for i in range(20)], T0)
    alert = to_alert(finding, T0 + 5)
    assert decode_suspicious_burn(encode(alert)) == alert
    assert alert.alert_id == to_alert(finding, T0 + 9).alert_id  # a retry repeats the id
    assert (alert.credits_in_window, alert.events_in_window) == (1_000, 20)
