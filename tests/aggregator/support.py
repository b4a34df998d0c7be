"""Helpers shared by the mirror tests: building requests, loading wallets, auditing state."""

from __future__ import annotations

from dataclasses import dataclass

from aggregator.decision import AuthRequest, WalletStatus
from aggregator.mirror import WalletMirror, load_wallet, snapshot
from aggregator.policy import Limits, Tier
from aggregator.replies import integer, text
from aggregator.wallet_store import WalletStore

NOW_MS = 1_750_000_000_000


def request(
    event_id: str,
    credits: int,
    *,
    wallet_id: str = "w1",
    member_id: str = "m1",
    tier: Tier = Tier.CORE,
    now_ms: int = NOW_MS,
    limits: Limits | None = None,
) -> AuthRequest:
    return AuthRequest(event_id, wallet_id, member_id, credits, tier, now_ms, limits or Limits())


async def load(
    store: WalletStore,
    available: int,
    *,
    wallet_id: str = "w1",
    version: int = 1,
    status: WalletStatus | None = None,
) -> None:
    result = await load_wallet(
        store, wallet_id, ledger_available=available, ledger_version=version, status=status
    )
    assert result.outcome == "loaded"


@dataclass(frozen=True, slots=True)
class Audit:
    mirror: WalletMirror
    in_flight: dict[str, int]
    holds: dict[str, int]


async def audit(store: WalletStore, wallet_id: str = "w1") -> Audit:
    """Read the wallet and check the mirror's structural invariants.

    Balances are never negative, and the cached totals equal the maps they summarise
    (reserved = in-flight entries + active holds; every active hold has an expiry entry).
    """
    mirror = await snapshot(store, wallet_id)
    assert mirror is not None, "wallet not loaded"
    keys = store.keys.wallet(wallet_id)
    raw_flight = await store.client.hgetall(keys.in_flight)
    raw_holds = await store.client.hgetall(keys.holds)
    in_flight = {text(k): integer(v) for k, v in raw_flight.items()}
    holds = {text(k): integer(v) for k, v in raw_holds.items()}
    expiring = {text(m) for m in await store.client.zrange(keys.hold_exp, 0, -1)}
    assert mirror.available >= 0
    assert all(v >= 0 for v in in_flight.values())
    assert all(v > 0 for v in holds.values())
    assert mirror.in_flight_total == sum(in_flight.values())
    assert mirror.holds_total == sum(holds.values())
    assert expiring == set(holds)
    return Audit(mirror, in_flight, holds)
