"""Auto-recharge rules: settings validation, the start decision, retries and auto-disable."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.auto_recharge import (
    AutoRechargeSettings,
    FailureAction,
    InvalidAutoRechargeSettings,
    InvalidPaymentMethodToken,
    RechargeHistory,
    RechargePolicy,
    StartVerdict,
    after_declined,
    pending_expired,
    settings_from,
    should_start,
)
from domain.errors import CreditsError, InvalidAmount, InvalidInput
from domain.quote import FeeSchedule

NOW = datetime(2026, 3, 14, 6, 0, tzinfo=UTC)
POLICY = RechargePolicy()
TOKEN_CODE = "invalid_payment_method_token"
QUIET = RechargeHistory(in_flight=False, last_started_at=None, started_today=0)


def valid(**overrides: object) -> AutoRechargeSettings:
    fields: dict[str, object] = {
        "threshold_credits": 200,
        "amount_rupees": 150,
        "payment_method_token": "tok_sandbox_card_4111",
        "daily_max": 3,
    }
    fields.update(overrides)
    return settings_from(**fields)  # type: ignore[arg-type]


def test_valid_settings_are_enabled_and_in_paise() -> None:
    settings = valid()
    assert settings.enabled
    assert settings.amount_paise == 15_000
    assert settings.threshold_credits == 200
    assert not settings.disabled().enabled


@pytest.mark.parametrize(
    ("field", "value", "error", "code"),
    [
        ("amount_rupees", 149, InvalidAmount, "invalid_amount"),
        ("amount_rupees", 200_001, InvalidAmount, "invalid_amount"),
        ("amount_rupees", 150.0, InvalidAmount, "invalid_amount"),
        ("amount_rupees", "150", InvalidAmount, "invalid_amount"),
        ("amount_rupees", True, InvalidAmount, "invalid_amount"),
        ("threshold_credits", 0, InvalidAutoRechargeSettings, "invalid_auto_recharge_settings"),
        ("threshold_credits", -5, InvalidAutoRechargeSettings, "invalid_auto_recharge_settings"),
        ("threshold_credits", 2.5, InvalidAutoRechargeSettings, "invalid_auto_recharge_settings"),
        ("daily_max", 0, InvalidAutoRechargeSettings, "invalid_auto_recharge_settings"),
        ("daily_max", 25, InvalidAutoRechargeSettings, "invalid_auto_recharge_settings"),
        ("daily_max", None, InvalidAutoRechargeSettings, "invalid_auto_recharge_settings"),
        ("payment_method_token", "", InvalidPaymentMethodToken, TOKEN_CODE),
        ("payment_method_token", "a b c d", InvalidPaymentMethodToken, TOKEN_CODE),
        ("payment_method_token", 1234, InvalidPaymentMethodToken, TOKEN_CODE),
        ("payment_method_token", "t" * 129, InvalidPaymentMethodToken, TOKEN_CODE),
    ],
)  # fmt: skip
def test_bad_settings_raise_typed_errors(
    field: str, value: object, error: type[CreditsError], code: str
) -> None:
    with pytest.raises(error) as raised:
        valid(**{field: value})
    assert raised.value.code == code
    assert isinstance(raised.value, InvalidInput)
    assert raised.value.details["field"] == field


def test_amount_bounds_follow_the_fee_schedule() -> None:
    schedule = FeeSchedule(max_amount_paise=50_000)
    assert settings_from(
        threshold_credits=1, amount_rupees=500, payment_method_token="tok_1234",
        daily_max=1, schedule=schedule,
    ).amount_paise == 50_000  # fmt: skip
    with pytest.raises(InvalidAmount):
        settings_from(
            threshold_credits=1, amount_rupees=501, payment_method_token="tok_1234",
            daily_max=1, schedule=schedule,
        )  # fmt: skip


@pytest.mark.parametrize(
    ("settings", "available", "history", "verdict"),
    [
        (None, 10, QUIET, StartVerdict.NOT_CONFIGURED),
        (valid().disabled(), 10, QUIET, StartVerdict.DISABLED),
        (valid(), 200, QUIET, StartVerdict.ABOVE_THRESHOLD),
        (valid(), 199, QUIET, StartVerdict.START),
        (valid(), 0, QUIET, StartVerdict.START),
        (valid(), 10, RechargeHistory(True, NOW - timedelta(days=1), 0), StartVerdict.IN_FLIGHT),
        (valid(), 10, RechargeHistory(False, NOW - timedelta(seconds=599), 1),
         StartVerdict.COOLING_DOWN),
        (valid(), 10, RechargeHistory(False, NOW - timedelta(seconds=600), 1), StartVerdict.START),
        (valid(), 10, RechargeHistory(False, NOW - timedelta(hours=2), 3),
         StartVerdict.DAILY_MAX_REACHED),
    ],
)  # fmt: skip
def test_start_decision(
    settings: AutoRechargeSettings | None,
    available: int,
    history: RechargeHistory,
    verdict: StartVerdict,
) -> None:
    assert should_start(settings, available, history, NOW, POLICY) is verdict


def test_daily_max_counts_the_kolkata_day() -> None:
    # 18:29 UTC is 23:59 IST; 18:30 UTC is already the next day in Kolkata.
    before_midnight = datetime(2026, 3, 14, 18, 29, tzinfo=UTC)
    assert POLICY.local_day(before_midnight) == "2026-03-14"
    assert POLICY.local_day(before_midnight + timedelta(minutes=1)) == "2026-03-15"


def test_backoff_schedule_then_give_up() -> None:
    plans = [
        after_declined(n, n, NOW, RechargePolicy(disable_after_failures=10)) for n in (1, 2, 3, 4)
    ]
    assert [p.action for p in plans] == [FailureAction.RETRY] * 3 + [FailureAction.GIVE_UP]
    assert [p.retry_at - NOW for p in plans[:3] if p.retry_at] == [
        timedelta(seconds=60), timedelta(seconds=300), timedelta(seconds=1800)
    ]  # fmt: skip
    assert plans[3].retry_at is None


def test_consecutive_failures_disable() -> None:
    policy = RechargePolicy(disable_after_failures=3)
    assert after_declined(1, 2, NOW, policy).action is FailureAction.RETRY
    plan = after_declined(1, 3, NOW, policy)
    assert plan.action is FailureAction.DISABLE
    assert plan.retry_at is None


def test_pending_timeout() -> None:
    assert not pending_expired(NOW, NOW + timedelta(seconds=1799), POLICY)
    assert pending_expired(NOW, NOW + timedelta(seconds=1800), POLICY)


@pytest.mark.parametrize(
    "fields",
    [{"cooldown_s": -1}, {"retry_delays_s": (-1,)}, {"disable_after_failures": 0},
     {"pending_timeout_s": 0}, {"timezone": "Mars/Olympus"}],
)  # fmt: skip
def test_bad_policy_is_refused(fields: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        RechargePolicy(**fields)  # type: ignore[arg-type]


histories = st.builds(
    RechargeHistory,
    in_flight=st.booleans(),
    last_started_at=st.none()
    | st.integers(0, 86_400 * 3).map(lambda s: NOW - timedelta(seconds=s)),
    started_today=st.integers(0, 30),
)


@given(
    threshold=st.integers(1, 100_000),
    available=st.integers(0, 200_000),
    daily_max=st.integers(1, 24),
    history=histories,
)
def test_start_only_when_every_condition_holds(
    threshold: int, available: int, daily_max: int, history: RechargeHistory
) -> None:
    settings = valid(threshold_credits=threshold, daily_max=daily_max)
    verdict = should_start(settings, available, history, NOW, POLICY)
    cooled = history.last_started_at is None or NOW - history.last_started_at >= timedelta(
        seconds=POLICY.cooldown_s
    )
    expected = (
        available < threshold
        and not history.in_flight
        and cooled
        and history.started_today < daily_max
    )
    assert (verdict is StartVerdict.START) == expected
    assert should_start(settings.disabled(), available, history, NOW, POLICY) is (
        StartVerdict.DISABLED
    )


@given(
    tries=st.integers(1, 10),
    streak=st.integers(1, 20),
    delays=st.lists(st.integers(0, 3600), max_size=6).map(tuple),
    disable_after=st.integers(1, 10),
)
def test_failure_plan_is_total_and_bounded(
    tries: int, streak: int, delays: tuple[int, ...], disable_after: int
) -> None:
    policy = RechargePolicy(retry_delays_s=delays, disable_after_failures=disable_after)
    plan = after_declined(tries, streak, NOW, policy)
    if streak >= disable_after:
        assert plan.action is FailureAction.DISABLE
    elif tries <= len(delays):
        assert plan.action is FailureAction.RETRY
        assert plan.retry_at == NOW + timedelta(seconds=delays[tries - 1])
    else:
        assert plan.action is FailureAction.GIVE_UP
    # never more tries than the schedule allows
    assert plan.action is not FailureAction.RETRY or tries < policy.max_tries


@given(rupees=st.integers(-1000, 300_000))
def test_amount_is_accepted_exactly_within_bounds(rupees: int) -> None:
    if 150 <= rupees <= 200_000:
        assert valid(amount_rupees=rupees).amount_paise == rupees * 100
    else:
        with pytest.raises(InvalidAmount):
            valid(amount_rupees=rupees)
