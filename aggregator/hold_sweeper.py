"""The expired-hold sweeper: releases holds whose TTL passed, across all wallets.

Cluster note: each wallet's hold state lives in its own slot, so finding due holds across
wallets needs one cross-slot structure, the index ``P:{hold-index-<n>}`` (a zset of
``{wallet_id}hold_id`` by expiry, sharded by ``KeySpace.hold_index_shards``). It is only a hint:
the decision to expire is taken by ``hold_release.lua`` on the wallet's own slot, which checks
the hold's record and its expiry, so stale entries are harmless, several sweepers may run at
once, and a hold still resolves exactly once when a capture or release races with a sweep.
"""

from __future__ import annotations

from dataclasses import dataclass

from aggregator.hold_types import HoldOutcome, HoldResult
from aggregator.holds import expire_hold
from aggregator.policy import require_now_ms
from aggregator.redis_keys import parse_hold_index_member
from aggregator.replies import text
from aggregator.wallet_store import WalletStore
from domain.money import require_int


@dataclass(frozen=True, slots=True)
class SweepReport:
    """One sweep: the holds this sweep expired, and the index entries it examined.

    ``rescheduled`` entries pointed at holds not yet due (their index score is corrected);
    ``dropped`` ones at holds already resolved or never created.
    """

    expired: tuple[HoldResult, ...]
    examined: int
    rescheduled: int
    dropped: int

    @property
    def expired_credits(self) -> int:
        return sum(hold.released for hold in self.expired)


async def sweep_expired(store: WalletStore, now_ms: int, limit: int = 500) -> SweepReport:
    """Expire up to ``limit`` holds due at ``now_ms`` (expires_at_ms <= now_ms).

    Run it periodically (every few seconds); a full report means more may be due. Each
    expired hold's credits are back in available when this returns.
    """
    require_now_ms(now_ms)
    require_int(limit, field="limit", minimum=1, maximum=100_000)
    expired: list[HoldResult] = []
    examined = rescheduled = dropped = 0
    for index in store.keys.hold_index_keys():
        due = await store.client.zrangebyscore(index, "-inf", now_ms, start=0, num=limit - examined)
        for entry in due:
            member = text(entry)
            wallet_id, hold_id = parse_hold_index_member(member)
            result = await expire_hold(store, wallet_id, hold_id, now_ms)
            examined += 1
            if result.outcome is HoldOutcome.NOT_DUE:
                await store.client.zadd(index, {member: result.expires_at_ms})
                rescheduled += 1
                continue
            # expire_hold already dropped the entry for every resolved hold.
            if result.outcome is HoldOutcome.EXPIRED:
                expired.append(result)
            else:
                dropped += 1
        if examined >= limit:
            break
    return SweepReport(tuple(expired), examined, rescheduled, dropped)
