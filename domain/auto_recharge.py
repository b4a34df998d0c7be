"""Auto-recharge rules (SPEC §7): settings, the start decision, retries and auto-disable. Pure.

When a wallet's available credits fall below its threshold, its saved (tokenised) payment method
is charged for the configured amount: at most one recharge in flight per wallet, a cooldown
between recharges, at most ``daily_max`` recharges per calendar day in Asia/Kolkata. A declined
charge is retried with backoff (:meth:`RechargePolicy.retry_delay`); after
``disable_after_failures`` consecutive declined charges auto-recharge turns itself off.

Vocabulary: a *recharge* is one decision to top a wallet up (one row, one ``recharge_id``); a
*try* is one charge of the saved token for it (each with its own payment idempotency key).
Storage enforces "one in flight" (a partial unique index); this module decides everything else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

from domain.caps import day_key, require_zone
from domain.errors import InvalidAmount, InvalidInput, StateConflict
from domain.money import PAISE_PER_RUPEE, format_inr, require_int
from domain.quote import DEFAULT_FEE_SCHEDULE, FeeSchedule

TIMEZONE: Final = "Asia/Kolkata"
MAX_THRESHOLD_CREDITS: Final = 10_000_000
MAX_DAILY_RECHARGES: Final = 24
_TOKEN: Final = re.compile(r"^[A-Za-z0-9_.:@-]{4,128}$")


class InvalidAutoRechargeSettings(InvalidInput):
    """An auto-recharge setting is out of range; ``field`` names it. Nothing was changed."""

    code = "invalid_auto_recharge_settings"


class InvalidPaymentMethodToken(InvalidAutoRechargeSettings):
    """The saved payment-method token is not a gateway token (4-128 of ``A-Za-z0-9_.:@-``)."""

    code = "invalid_payment_method_token"


class AutoRechargeNotConfigured(StateConflict):
    """The wallet has no auto-recharge settings yet: enable it first."""

    code = "auto_recharge_not_configured"


@dataclass(frozen=True, slots=True)
class AutoRechargeSettings:
    """One wallet's auto-recharge settings, validated on construction (see :func:`settings_from`).

    ``amount_paise`` is whole rupees between the add-funds minimum (₹150) and the per-payment
    maximum of the fee schedule it was validated against.
    """

    enabled: bool
    threshold_credits: int
    amount_paise: int
    payment_method_token: str
    daily_max: int

    def __post_init__(self) -> None:
        # Built by settings_from (bad input) or from storage (already valid): a bug if not.
        assert isinstance(self.enabled, bool)
        assert 1 <= self.threshold_credits <= MAX_THRESHOLD_CREDITS
        assert self.amount_paise > 0
        assert self.amount_paise % PAISE_PER_RUPEE == 0
        assert _TOKEN.fullmatch(self.payment_method_token)
        assert 1 <= self.daily_max <= MAX_DAILY_RECHARGES

    def disabled(self) -> AutoRechargeSettings:
        return AutoRechargeSettings(
            False,
            self.threshold_credits,
            self.amount_paise,
            self.payment_method_token,
            self.daily_max,
        )


def settings_from(
    *,
    threshold_credits: object,
    amount_rupees: object,
    payment_method_token: object,
    daily_max: object,
    schedule: FeeSchedule = DEFAULT_FEE_SCHEDULE,
) -> AutoRechargeSettings:
    """Validate what a caller sent and return enabled settings.

    Raises :class:`InvalidAutoRechargeSettings` (``field``: threshold_credits, daily_max),
    :class:`~domain.errors.InvalidAmount` (amount_rupees: not a whole number, below ₹150 or above
    the per-payment maximum) or :class:`InvalidPaymentMethodToken`.
    """
    threshold = _setting(threshold_credits, "threshold_credits", 1, MAX_THRESHOLD_CREDITS)
    daily = _setting(daily_max, "daily_max", 1, MAX_DAILY_RECHARGES)
    rupees = require_int(amount_rupees, field="amount_rupees")
    amount_paise = rupees * PAISE_PER_RUPEE
    if not schedule.min_amount_paise <= amount_paise <= schedule.max_amount_paise:
        raise InvalidAmount(
            f"auto-recharge amount must be between {format_inr(schedule.min_amount_paise)} and "
            f"{format_inr(schedule.max_amount_paise)}, got {format_inr(amount_paise)}",
            field="amount_rupees",
            value=rupees,
        )
    if not isinstance(payment_method_token, str) or not _TOKEN.fullmatch(payment_method_token):
        raise InvalidPaymentMethodToken(
            "payment_method_token must be a saved gateway token (4-128 of A-Za-z0-9_.:@-)",
            field="payment_method_token",
        )
    return AutoRechargeSettings(True, threshold, amount_paise, payment_method_token, daily)


def _setting(value: object, field: str, minimum: int, maximum: int) -> int:
    try:
        return require_int(value, field=field, minimum=minimum, maximum=maximum)
    except InvalidAmount as exc:
        raise InvalidAutoRechargeSettings(exc.message, field=field) from exc


@dataclass(frozen=True, slots=True)
class RechargePolicy:
    """Platform-wide knobs. ``retry_delays_s[i]`` is the wait after failed try ``i + 1``; a
    recharge makes ``len(retry_delays_s) + 1`` tries at most."""

    cooldown_s: int = 600
    retry_delays_s: tuple[int, ...] = (60, 300, 1800)
    disable_after_failures: int = 6
    pending_timeout_s: int = 1800
    timezone: str = TIMEZONE

    def __post_init__(self) -> None:
        require_zone(self.timezone)
        checks = {
            "cooldown_s": self.cooldown_s >= 0,
            "retry_delays_s": all(d >= 0 for d in self.retry_delays_s),
            "disable_after_failures": self.disable_after_failures >= 1,
            "pending_timeout_s": self.pending_timeout_s >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise InvalidInput(f"recharge policy: {name} is out of range", field=name)

    @property
    def max_tries(self) -> int:
        return len(self.retry_delays_s) + 1

    def retry_delay(self, failed_try: int) -> timedelta | None:
        """The wait after failed try number ``failed_try`` (1-based); None: no try is left."""
        assert failed_try >= 1
        if failed_try > len(self.retry_delays_s):
            return None
        return timedelta(seconds=self.retry_delays_s[failed_try - 1])

    def local_day(self, instant: datetime) -> str:
        """The calendar day (``YYYY-MM-DD`` in :attr:`timezone`) the daily maximum counts in."""
        return day_key(instant, self.timezone)


@dataclass(frozen=True, slots=True)
class RechargeHistory:
    """What storage knows about a wallet's recharges at the moment of a decision."""

    in_flight: bool
    last_started_at: datetime | None
    started_today: int  # recharges started on the local day of the decision, any outcome


class StartVerdict(StrEnum):
    START = "start"
    NOT_CONFIGURED = "not_configured"
    DISABLED = "disabled"
    ABOVE_THRESHOLD = "above_threshold"
    IN_FLIGHT = "in_flight"
    COOLING_DOWN = "cooling_down"
    DAILY_MAX_REACHED = "daily_max_reached"


def should_start(
    settings: AutoRechargeSettings | None,
    available_credits: int,
    history: RechargeHistory,
    now: datetime,
    policy: RechargePolicy,
) -> StartVerdict:
    """Whether a balance observation of ``available_credits`` at ``now`` starts a recharge.

    Checked in this order (the verdict names the first that fails): configured, enabled,
    strictly below the threshold, none in flight, ``cooldown_s`` elapsed since the last start,
    fewer than ``daily_max`` started today (Asia/Kolkata).
    """
    assert available_credits >= 0
    if settings is None:
        return StartVerdict.NOT_CONFIGURED
    if not settings.enabled:
        return StartVerdict.DISABLED
    if available_credits >= settings.threshold_credits:
        return StartVerdict.ABOVE_THRESHOLD
    if history.in_flight:
        return StartVerdict.IN_FLIGHT
    last = history.last_started_at
    if last is not None and now - last < timedelta(seconds=policy.cooldown_s):
        return StartVerdict.COOLING_DOWN
    if history.started_today >= settings.daily_max:
        return StartVerdict.DAILY_MAX_REACHED
    return StartVerdict.START


class FailureAction(StrEnum):
    RETRY = "retry"  # wait, then charge again
    GIVE_UP = "give_up"  # the recharge failed; auto-recharge stays on
    DISABLE = "disable"  # the recharge failed and auto-recharge turns off


@dataclass(frozen=True, slots=True)
class FailurePlan:
    action: FailureAction
    retry_at: datetime | None
    consecutive_failures: int


def after_declined(
    failed_try: int, consecutive_failures: int, now: datetime, policy: RechargePolicy
) -> FailurePlan:
    """What follows a declined charge: try number ``failed_try`` of its recharge failed and the
    wallet now has ``consecutive_failures`` declines in a row (this one included)."""
    assert failed_try >= 1
    assert consecutive_failures >= 1
    if consecutive_failures >= policy.disable_after_failures:
        return FailurePlan(FailureAction.DISABLE, None, consecutive_failures)
    delay = policy.retry_delay(failed_try)
    if delay is None:
        return FailurePlan(FailureAction.GIVE_UP, None, consecutive_failures)
    return FailurePlan(FailureAction.RETRY, now + delay, consecutive_failures)


def pending_expired(charging_since: datetime, now: datetime, policy: RechargePolicy) -> bool:
    """A charge still pending at the gateway after ``pending_timeout_s`` counts as declined."""
    return now - charging_since >= timedelta(seconds=policy.pending_timeout_s)
