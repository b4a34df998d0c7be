"""Suspicious-burn detection (SPEC §5): pure detectors fed once per batch, time passed in.

Two signals per wallet, each scored 0-100 (50 at its threshold, 75 at twice it, 100 at four
times):

* ``rapid_burn``: credits charged in the sliding window (``window_ms``) are at least
  ``burn_factor`` times what the wallet's own baseline predicts for a window. The baseline is
  an EWMA of credits per ``bucket_ms`` bucket (seeded by the wallet's first bucket, then weight
  ``baseline_weight_pct`` for the newest one), floored at ``baseline_floor_credits`` so a
  wallet without history is not judged against zero; bursts under ``min_burn_credits`` are
  ignored.
* ``retry_storm``: the same event id re-sent at new log positions (client retries, each
  answered ``duplicate`` by the mirror) at least ``resend_threshold`` times in the window, or
  the same (feature, member) at least ``repeat_threshold`` times in the window (a webhook or
  queue loop). Our own redelivery of a position (a batch retried after a crash) is not a
  client retry and is not counted.

State is in memory, per worker: partitions are keyed by wallet, so each wallet's events reach
one worker; after a rebalance or restart its baseline re-learns from the floor, so a heavy
wallet may raise one alert in its first bucket (alerts are advisory, never a charge; seeding
baselines from the analytics store would remove that). :class:`AlertGate` keeps alerts to one
per wallet per ``alert_cooldown_ms``; record an alert only once it is published, so a batch
retried after a failed publish raises it again.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from meter.schema import BurnWindow, SuspiciousBurn

_K = TypeVar("_K")

RAPID_BURN = "rapid_burn"
RETRY_STORM = "retry_storm"


@dataclass(frozen=True, slots=True)
class AnomalySettings:
    window_ms: int = 300_000
    bucket_ms: int = 60_000
    baseline_weight_pct: int = 10
    baseline_floor_credits: int = 20
    burn_factor: int = 8
    min_burn_credits: int = 500
    resend_threshold: int = 20
    repeat_threshold: int = 600
    alert_cooldown_ms: int = 300_000
    max_wallets: int = 200_000

    def __post_init__(self) -> None:
        assert 0 < self.bucket_ms <= self.window_ms
        assert 0 < self.baseline_weight_pct <= 100
        assert min(self.burn_factor, self.resend_threshold, self.repeat_threshold) >= 1


@dataclass(frozen=True, slots=True)
class Observation:
    """One delivered event as the detectors see it.

    ``delivery`` names the log position (``partition@offset``); ``credits`` are the credits
    newly charged by this delivery (0 for refusals and replays).
    """

    wallet_id: str
    event_id: str
    operation: str
    delivery: str
    credits: int


@dataclass(frozen=True, slots=True)
class Finding:
    wallet_id: str
    reason_codes: tuple[str, ...]
    score: int
    window_start_ms: int
    window_end_ms: int
    credits_in_window: int
    events_in_window: int


@dataclass(frozen=True, slots=True)
class _Seen:
    at_ms: int
    event_id: str
    delivery: str
    operation: str
    credits: int
    resend: bool


@dataclass(slots=True)
class _Wallet:
    """One wallet's window (exact, by event) and baseline (EWMA over closed buckets)."""

    bucket_start_ms: int
    bucket_credits: int = 0
    closed_buckets: int = 0
    baseline: float = 0.0
    seen: deque[_Seen] = field(default_factory=deque)
    credits: int = 0
    resends: int = 0
    positions: Counter[tuple[str, str]] = field(default_factory=Counter)
    deliveries_of: Counter[str] = field(default_factory=Counter)
    operations: Counter[str] = field(default_factory=Counter)


def score(ratio: float) -> int:
    """50 at the threshold (ratio 1), +25 per doubling, clamped to 0-100."""
    if ratio <= 0:
        return 0
    return max(0, min(100, round(50 + 25 * math.log2(ratio))))


class BurnDetector:
    """Feed it each batch's observations with the batch's time; it returns what trips."""

    def __init__(self, settings: AnomalySettings | None = None) -> None:
        self.settings = settings or AnomalySettings()
        self._wallets: OrderedDict[str, _Wallet] = OrderedDict()

    def observe(self, observations: Iterable[Observation], now_ms: int) -> tuple[Finding, ...]:
        touched: dict[str, _Wallet] = {}
        for observation in observations:
            wallet = self._wallet(observation.wallet_id, now_ms)
            self._add(wallet, observation, now_ms)
            touched[observation.wallet_id] = wallet
        findings = (self._assess(wallet_id, w, now_ms) for wallet_id, w in touched.items())
        return tuple(f for f in findings if f is not None)

    def _wallet(self, wallet_id: str, now_ms: int) -> _Wallet:
        wallet = self._wallets.get(wallet_id)
        if wallet is None:
            wallet = _Wallet(bucket_start_ms=now_ms - now_ms % self.settings.bucket_ms)
            self._wallets[wallet_id] = wallet
            if len(self._wallets) > self.settings.max_wallets:
                self._wallets.popitem(last=False)  # least recently seen
        self._wallets.move_to_end(wallet_id)
        self._advance(wallet, now_ms)
        return wallet

    def _advance(self, wallet: _Wallet, now_ms: int) -> None:
        """Close elapsed baseline buckets and drop events that left the window."""
        s = self.settings
        elapsed = (now_ms - wallet.bucket_start_ms) // s.bucket_ms
        if elapsed > 0:
            weight = s.baseline_weight_pct / 100
            if wallet.closed_buckets == 0:  # the first bucket seeds the baseline
                wallet.baseline = float(wallet.bucket_credits)
            else:
                wallet.baseline += weight * (wallet.bucket_credits - wallet.baseline)
            wallet.baseline *= (1 - weight) ** (elapsed - 1)  # the empty buckets since
            wallet.closed_buckets += elapsed
            wallet.bucket_credits = 0
            wallet.bucket_start_ms += elapsed * s.bucket_ms
        while wallet.seen and wallet.seen[0].at_ms <= now_ms - s.window_ms:
            self._forget(wallet, wallet.seen.popleft())

    @staticmethod
    def _forget(wallet: _Wallet, old: _Seen) -> None:
        wallet.credits -= old.credits
        wallet.resends -= old.resend
        _decrement(wallet.positions, (old.event_id, old.delivery))
        _decrement(wallet.deliveries_of, old.event_id)
        _decrement(wallet.operations, old.operation)

    @staticmethod
    def _add(wallet: _Wallet, observation: Observation, now_ms: int) -> None:
        position = (observation.event_id, observation.delivery)
        if position in wallet.positions:
            return  # our own redelivery of a position already counted
        resend = observation.event_id in wallet.deliveries_of
        wallet.positions[position] += 1
        wallet.deliveries_of[observation.event_id] += 1
        wallet.operations[observation.operation] += 1
        wallet.credits += observation.credits
        wallet.bucket_credits += observation.credits
        wallet.resends += resend
        wallet.seen.append(
            _Seen(now_ms, observation.event_id, observation.delivery, observation.operation,
                  observation.credits, resend)
        )  # fmt: skip

    def _assess(self, wallet_id: str, wallet: _Wallet, now_ms: int) -> Finding | None:
        s = self.settings
        scores: dict[str, int] = {}
        expected = max(wallet.baseline, s.baseline_floor_credits) * s.window_ms / s.bucket_ms
        burn_ratio = wallet.credits / (expected * s.burn_factor)
        if wallet.credits >= s.min_burn_credits and burn_ratio >= 1:
            scores[RAPID_BURN] = score(burn_ratio)
        top_repeat = max(wallet.operations.values(), default=0)
        storm_ratio = max(wallet.resends / s.resend_threshold, top_repeat / s.repeat_threshold)
        if storm_ratio >= 1:
            scores[RETRY_STORM] = score(storm_ratio)
        if not scores:
            return None
        start_ms = max(wallet.seen[0].at_ms, now_ms - s.window_ms) if wallet.seen else now_ms
        return Finding(
            wallet_id=wallet_id,
            reason_codes=tuple(sorted(scores)),
            score=min(100, max(scores.values()) + 10 * (len(scores) - 1)),
            window_start_ms=start_ms,
            window_end_ms=max(now_ms, start_ms + 1),
            credits_in_window=wallet.credits,
            events_in_window=len(wallet.seen),
        )


class AlertGate:
    """At most one alert per wallet per cooldown. :meth:`due` only looks; :meth:`record`
    (after the alerts are published) starts the cooldown."""

    def __init__(self, cooldown_ms: int) -> None:
        self._cooldown_ms = cooldown_ms
        self._last_ms: dict[str, int] = {}

    def due(self, findings: Iterable[Finding], now_ms: int) -> tuple[Finding, ...]:
        return tuple(f for f in findings if self._cooled(f.wallet_id, now_ms))

    def _cooled(self, wallet_id: str, now_ms: int) -> bool:
        last = self._last_ms.get(wallet_id)
        return last is None or now_ms - last >= self._cooldown_ms

    def record(self, findings: Iterable[Finding], now_ms: int) -> None:
        for finding in findings:
            self._last_ms[finding.wallet_id] = now_ms
        horizon = now_ms - self._cooldown_ms
        if len(self._last_ms) > 10_000:  # forget wallets whose cooldown is long over
            self._last_ms = {w: t for w, t in self._last_ms.items() if t > horizon}


def to_alert(finding: Finding, detected_at_ms: int) -> SuspiciousBurn:
    """The ``alerts.suspicious-burn`` payload; the alert id is derived, so a retry repeats it."""
    digest = hashlib.sha256(f"{finding.wallet_id}|{finding.window_end_ms}".encode()).hexdigest()
    return SuspiciousBurn(
        alert_id=f"sb-{digest[:32]}",
        wallet_id=finding.wallet_id,
        reason_codes=finding.reason_codes,
        score=finding.score,
        window=BurnWindow(
            start=_instant(finding.window_start_ms), end=_instant(finding.window_end_ms)
        ),
        credits_in_window=finding.credits_in_window,
        events_in_window=finding.events_in_window,
        detected_at=_instant(detected_at_ms),
    )


def _decrement(counter: Counter[_K], key: _K) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


def _instant(ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
