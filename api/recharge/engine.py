"""Flow 6 step by step: a balance observation -> claim -> charge the saved token -> resolve.

1. observe: the wallet's current available credits (the Redis mirror when it holds the wallet:
   fresher than the event, so a stale low-balance after a recharge starts nothing; else the
   observed value) -> :meth:`RechargeStore.claim` (one transaction: row lock on the wallet's
   settings, :func:`~domain.auto_recharge.should_start`, insert ``pending`` + outbox event).
   Crash after the claim: the row is due now, and the scheduler (:meth:`drive_due`) charges it.
2. lease: ``pending`` / ``retry_wait`` due -> ``charging`` with ``tries + 1`` and a lease; one
   worker wins (``FOR UPDATE SKIP LOCKED``). Crash while charging: the lease expires and another
   worker charges the same try again, with the same idempotency key (no double charge).
3. charge through :class:`~api.recharge.charger.RechargeCharger` -> succeeded (notify, event),
   pending (ask again later, until ``pending_timeout_s``), declined (retry with backoff, give up,
   or auto-disable: :func:`~domain.auto_recharge.after_declined`), gateway unavailable (same try
   again later, not counted as a decline).
"""

from __future__ import annotations

import logging

import redis.exceptions

from aggregator.mirror import snapshot
from aggregator.wallet_store import WalletStore
from api.recharge.charger import ChargeRequest, ChargeResult, ChargeStatus, RechargeCharger
from api.recharge.records import Recharge
from api.recharge.store import Claim, RechargeStore
from domain.auto_recharge import pending_expired
from domain.clock import Clock
from domain.errors import Unavailable

log = logging.getLogger(__name__)


class RechargeEngine:
    def __init__(
        self,
        store: RechargeStore,
        charger: RechargeCharger,
        clock: Clock,
        mirror: WalletStore | None = None,
    ) -> None:
        self.store, self._charger, self._clock, self._mirror = store, charger, clock, mirror

    async def observe(self, wallet_id: str, observed_credits: int, trigger_id: str) -> Claim:
        """React to one balance observation; a started recharge is charged right away."""
        available = await self._current_available(wallet_id, observed_credits)
        claim = await self.store.claim(wallet_id, available, trigger_id)
        if claim.recharge is not None:
            log.info("auto-recharge %s started for %s", claim.recharge.id, wallet_id)
            for leased in await self.store.lease_due(1, claim.recharge.id):
                await self.charge(leased)
        return claim

    async def sweep(self) -> int:
        """Observe every enabled wallet the mirror holds (thresholds that no low-balance event
        announces, lost triggers). Returns how many recharges it started."""
        if self._mirror is None:
            return 0
        started = 0
        for wallet_id in await self.store.enabled_wallets():
            snap = await snapshot(self._mirror, wallet_id)
            if snap is not None:
                claim = await self.observe(wallet_id, snap.available, "sweep")
                started += claim.recharge is not None
        return started

    async def drive_due(self, limit: int = 50) -> int:
        """Charge every try that is due (retries, pending payments, expired leases)."""
        leased = await self.store.lease_due(limit)
        for recharge in leased:
            await self.charge(recharge)
        return len(leased)

    async def charge(self, recharge: Recharge) -> None:
        """Run one leased try to its next state."""
        request = ChargeRequest(
            wallet_id=recharge.wallet_id,
            recharge_id=recharge.id,
            amount_paise=recharge.amount_paise,
            payment_method_token=recharge.payment_method_token,
            idempotency_key=recharge.idempotency_key,
        )
        try:
            result = await self._charger.charge(request)
        except Unavailable as exc:
            log.warning("auto-recharge %s: gateway unavailable: %s", recharge.id, exc)
            await self.store.gateway_unavailable(recharge)
            return
        await self._resolve(recharge, result)

    async def _resolve(self, recharge: Recharge, result: ChargeResult) -> None:
        if result.status is ChargeStatus.SUCCEEDED:
            assert result.credits_added is not None
            await self.store.succeeded(recharge, result.payment_id, result.credits_added)
        elif result.status is ChargeStatus.DECLINED:
            await self.store.declined(recharge, result.reason, result.message)
        else:
            since = recharge.charging_since or recharge.created_at
            if pending_expired(since, self._clock.now(), self.store.policy):
                await self.store.declined(
                    recharge, "payment_pending_timeout", "the payment stayed pending too long"
                )
            else:
                await self.store.still_pending(recharge, result.payment_id)

    async def _current_available(self, wallet_id: str, observed_credits: int) -> int:
        if self._mirror is None:
            return observed_credits
        try:
            snap = await snapshot(self._mirror, wallet_id)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            log.warning("auto-recharge: mirror unreadable, using the observed balance: %s", exc)
            return observed_credits
        return snap.available if snap is not None else observed_credits
