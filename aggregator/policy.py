"""What a caller asks the mirror to enforce: tier, daily cap and rate limits (pure, validated).

Caps and limits are resolved by the caller (pricing catalogue, wallet overrides, SPEC §5) and
passed in; the Lua scripts only enforce them. The daily cap's ``day_key`` is the caller's
calendar day in Asia/Kolkata (e.g. ``2025-04-01``), so the day boundary is the caller's clock,
not Redis'.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from aggregator.redis_keys import WalletKeys, require_token
from domain.errors import InvalidInput
from domain.money import require_int

MAX_CREDITS = 10**12
"""Upper bound of one amount: keeps every sum exact in Lua's doubles (< 2**53)."""
MAX_NOW_MS = 2**53 // 1000
"""Upper bound of ``now_ms``: rate limiting works in microseconds, exact below 2**53."""
MAX_WINDOW_MS = 86_400_000


class Tier(StrEnum):
    """Core features keep working while a wallet is premium-paused; premium ones pause."""

    CORE = "core"
    PREMIUM = "premium"


class CapClass(StrEnum):
    """The operation families with a daily cap (SPEC §5: AI requests, webhooks, emails)."""

    AI = "ai"
    WEBHOOKS = "webhooks"
    EMAILS = "emails"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``limit`` operations per ``window_ms``, as a smooth rate with a burst of ``limit``.

    ``scope`` names the limit (``api``, ``ai``, ``webhook-retries``...): each scope has its own
    counter, so several limits can apply to one wallet or member.
    """

    limit: int
    window_ms: int
    scope: str = "all"

    def __post_init__(self) -> None:
        require_int(self.limit, field="rate_limit", minimum=1, maximum=1_000_000)
        require_int(self.window_ms, field="rate_window_ms", minimum=1, maximum=MAX_WINDOW_MS)
        require_token(self.scope, field="rate_scope")


@dataclass(frozen=True, slots=True)
class DailyCap:
    """At most ``limit`` units per calendar day for ``cap_class``.

    The cap counts operations: each admitted operation adds ``units`` (1 by default; a caller
    may count a batched event as its quantity, e.g. 50 for one bulk email to 50 recipients).
    An operation that would pass the limit is refused whole; ``limit`` 0 refuses everything.
    """

    cap_class: CapClass
    limit: int
    day_key: str
    units: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.cap_class, CapClass):
            raise InvalidInput("cap_class must be a CapClass", field="cap_class")
        require_int(self.limit, field="cap_limit", minimum=0, maximum=10**9)
        require_int(self.units, field="cap_units", minimum=1, maximum=1_000_000)
        require_token(self.day_key, field="day_key")


@dataclass(frozen=True, slots=True)
class Limits:
    """The cap and rate limits that apply to one operation; all optional."""

    daily_cap: DailyCap | None = None
    wallet_rate: RateLimit | None = None
    member_rate: RateLimit | None = None


def require_tier(value: object) -> Tier:
    if not isinstance(value, Tier):
        raise InvalidInput("tier must be a Tier (core | premium)", field="tier")
    return value


def require_now_ms(value: object) -> int:
    return require_int(value, field="now_ms", minimum=0, maximum=MAX_NOW_MS)


def admission_keys(keys: WalletKeys, member_id: str, limits: Limits) -> tuple[str, str, str]:
    """KEYS for lib.lua's admission: cap counter, wallet rate, member rate (or placeholders)."""
    cap, wallet_rate, member_rate = limits.daily_cap, limits.wallet_rate, limits.member_rate
    return (
        keys.cap(cap.cap_class, cap.day_key) if cap else keys.unused,
        keys.wallet_rate(wallet_rate.scope) if wallet_rate else keys.unused,
        keys.member_rate(member_rate.scope, member_id) if member_rate else keys.unused,
    )


def admission_args(
    credits: int, tier: Tier, now_ms: int, limits: Limits, *, cap_ttl_ms: int
) -> tuple[int | str, ...]:
    """ARGV for lib.lua's ``parse_policy``, in its order; -1 / 0 mean "no cap" / "no limit"."""
    cap, wallet_rate, member_rate = limits.daily_cap, limits.wallet_rate, limits.member_rate
    return (
        credits,
        tier.value,
        now_ms,
        cap.limit if cap else -1,
        cap.units if cap else 0,
        cap_ttl_ms,
        wallet_rate.limit if wallet_rate else 0,
        wallet_rate.window_ms if wallet_rate else 0,
        member_rate.limit if member_rate else 0,
        member_rate.window_ms if member_rate else 0,
    )


def ledger_version_arg(ledger_version: int | None) -> int:
    """A wallet's ledger version (per-wallet monotonic sequence) as ARGV; -1 when unknown."""
    if ledger_version is None:
        return -1
    return require_int(ledger_version, field="ledger_version", minimum=0, maximum=2**53)
