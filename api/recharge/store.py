"""PostgreSQL storage of auto-recharge: settings, recharges, the event outbox, notifications.

"One recharge in flight per wallet" is enforced here, by the database: :meth:`claim` locks the
wallet's settings row (``FOR UPDATE``), so claims for one wallet are serialised and each sees
the previous one's committed row (cooldown and daily maximum are exact), and the partial unique
index ``auto_recharges_one_in_flight`` refuses a second in-flight row whatever code inserts it.
Every transition is a compare-and-set on (state, tries), so a stale worker changes nothing.
Wallet events are written to the outbox in the transaction that causes them (published by the
worker afterwards), so a crash never loses an announcement nor announces an uncommitted change.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from psycopg_pool import AsyncConnectionPool

from api.recharge.records import Notification, Recharge
from domain.auto_recharge import (
    AutoRechargeNotConfigured,
    AutoRechargeSettings,
    FailureAction,
    FailurePlan,
    RechargeHistory,
    RechargePolicy,
    StartVerdict,
    after_declined,
    should_start,
)
from domain.clock import Clock
from meter.schema import RechargeFailed, RechargeRequested, RechargeSucceeded, encode
from settlement.ledger.writer import Conn

IN_FLIGHT = ("pending", "charging", "retry_wait")
_RECHARGE_COLUMNS = (
    "id, wallet_id, state, amount_paise, tries, next_try_at, lease_until, charging_since, "
    "payment_id, credits_added, failure_reason, failure_message, created_at, finished_at, "
    "payment_method_token"
)


@dataclass(frozen=True, slots=True)
class Leases:
    """How long a try may run before another worker takes it over, how soon a pending payment
    is asked about again, and how soon a try is repeated after a gateway outage."""

    charge_s: int = 60
    pending_poll_s: int = 15
    outage_retry_s: int = 30


@dataclass(frozen=True, slots=True)
class Claim:
    verdict: StartVerdict
    recharge: Recharge | None


class RechargeStore:
    def __init__(
        self,
        pool: AsyncConnectionPool[Conn],
        clock: Clock,
        policy: RechargePolicy | None = None,
        leases: Leases | None = None,
    ) -> None:
        self._pool, self._clock = pool, clock
        self.policy = policy or RechargePolicy()
        self.leases = leases or Leases()

    # --- settings ------------------------------------------------------------------------------

    async def save_settings(
        self, wallet_id: str, settings: AutoRechargeSettings, actor: str
    ) -> None:
        """Create or replace the wallet's settings; enabling resets the failure streak."""
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO auto_recharge_settings (wallet_id, enabled, threshold_credits,"
                " amount_paise, payment_method_token, daily_max, consecutive_failures,"
                " disabled_reason, updated_by, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, 0, NULL, %s, %s)"
                " ON CONFLICT (wallet_id) DO UPDATE SET enabled = excluded.enabled,"
                " threshold_credits = excluded.threshold_credits,"
                " amount_paise = excluded.amount_paise,"
                " payment_method_token = excluded.payment_method_token,"
                " daily_max = excluded.daily_max, consecutive_failures = 0,"
                " disabled_reason = NULL, updated_by = excluded.updated_by,"
                " updated_at = excluded.updated_at",
                (
                    wallet_id,
                    settings.enabled,
                    settings.threshold_credits,
                    settings.amount_paise,
                    settings.payment_method_token,
                    settings.daily_max,
                    actor,
                    self._clock.now(),
                ),
            )

    async def disable(self, wallet_id: str, actor: str) -> AutoRechargeSettings:
        """Turn auto-recharge off (a recharge already in flight finishes); idempotent.
        Raises :class:`AutoRechargeNotConfigured` if the wallet never enabled it."""
        now = self._clock.now()
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE auto_recharge_settings SET enabled = false,"
                " disabled_reason = COALESCE(disabled_reason, 'by_member'),"
                " updated_by = %s, updated_at = %s WHERE wallet_id = %s"
                " RETURNING enabled, threshold_credits, amount_paise, payment_method_token,"
                " daily_max",
                (actor, now, wallet_id),
            )
            row = await cur.fetchone()
            # A try being charged right now finishes; one waiting for its next try stops here.
            await conn.execute(
                "UPDATE auto_recharges SET state = 'failed', failure_reason = 'disabled',"
                " failure_message = 'auto-recharge was turned off', lease_until = NULL,"
                " finished_at = %s, updated_at = %s"
                " WHERE wallet_id = %s AND state IN ('pending', 'retry_wait')",
                (now, now, wallet_id),
            )
        if row is None:
            raise AutoRechargeNotConfigured(
                "auto-recharge was never enabled for this wallet", wallet_id=wallet_id
            )
        return AutoRechargeSettings(*row)

    async def settings(self, wallet_id: str) -> tuple[AutoRechargeSettings, str | None] | None:
        """The wallet's settings and why they are disabled (None while enabled), or None."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT enabled, threshold_credits, amount_paise, payment_method_token,"
                " daily_max, disabled_reason FROM auto_recharge_settings WHERE wallet_id = %s",
                (wallet_id,),
            )
            row = await cur.fetchone()
        if row is None:
            return None
        return AutoRechargeSettings(*row[:5]), row[5]

    async def enabled_wallets(self, limit: int = 10_000) -> list[str]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT wallet_id FROM auto_recharge_settings WHERE enabled"
                " ORDER BY wallet_id LIMIT %s",
                (limit,),
            )
            return [str(row[0]) for row in await cur.fetchall()]

    # --- claiming a recharge -------------------------------------------------------------------

    async def claim(self, wallet_id: str, available_credits: int, trigger_event_id: str) -> Claim:
        """Decide whether this balance observation starts a recharge and, if so, insert it
        (state ``pending``, due now) with its ``recharge_requested`` event, in one transaction."""
        now = self._clock.now()
        today = date.fromisoformat(self.policy.local_day(now))
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT enabled, threshold_credits, amount_paise, payment_method_token,"
                " daily_max FROM auto_recharge_settings WHERE wallet_id = %s FOR UPDATE",
                (wallet_id,),
            )
            row = await cur.fetchone()
            settings = AutoRechargeSettings(*row) if row is not None else None
            history = await _history(conn, wallet_id, today) if settings else _NO_HISTORY
            verdict = should_start(settings, available_credits, history, now, self.policy)
            if verdict is not StartVerdict.START or settings is None:
                return Claim(verdict, None)
            recharge_id = f"rch_{secrets.token_hex(16)}"
            cur = await conn.execute(
                "INSERT INTO auto_recharges (id, wallet_id, state, amount_paise,"
                " payment_method_token, trigger_event_id, trigger_available_credits, local_day,"
                " next_try_at, created_at, updated_at)"
                " VALUES (%s, %s, 'pending', %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (wallet_id) WHERE state IN ('pending', 'charging', 'retry_wait')"
                f" DO NOTHING RETURNING {_RECHARGE_COLUMNS}",
                (
                    recharge_id,
                    wallet_id,
                    settings.amount_paise,
                    settings.payment_method_token,
                    trigger_event_id,
                    available_credits,
                    today,
                    now,
                    now,
                    now,
                ),
            )
            inserted = await cur.fetchone()
            if inserted is None:  # unreachable under the row lock; the index is the backstop
                return Claim(StartVerdict.IN_FLIGHT, None)
            recharge = Recharge(*inserted)
            event = RechargeRequested(
                type="recharge_requested",
                event_id=f"rch-req:{recharge_id}",
                wallet_id=wallet_id,
                occurred_at=now,
                recharge_id=recharge_id,
                amount_paise=settings.amount_paise,
            )
            await _outbox(conn, event.event_id, wallet_id, encode(event), now)
        return Claim(verdict, recharge)

    # --- leasing tries -------------------------------------------------------------------------

    async def lease_due(self, limit: int = 50, recharge_id: str | None = None) -> list[Recharge]:
        """Take the recharges whose next try is due (or whose lease expired) and lease them to
        this worker. A new try (from pending / retry_wait) increments ``tries``; taking over an
        expired ``charging`` lease keeps it, so the same idempotency key is charged again."""
        now = self._clock.now()
        lease_until = now + timedelta(seconds=self.leases.charge_s)
        only = " AND id = %(id)s" if recharge_id is not None else ""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE auto_recharges r SET"
                " tries = r.tries + CASE WHEN r.state = 'charging' THEN 0 ELSE 1 END,"
                " charging_since = CASE WHEN r.state = 'charging' THEN r.charging_since"
                "   ELSE %(now)s END,"
                " state = 'charging', lease_until = %(lease)s, updated_at = %(now)s"
                " WHERE r.id IN (SELECT id FROM auto_recharges WHERE ("
                "   (state IN ('pending', 'retry_wait') AND next_try_at <= %(now)s)"
                "   OR (state = 'charging' AND lease_until <= %(now)s))" + only + ""
                "   ORDER BY next_try_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
                f" RETURNING {_RECHARGE_COLUMNS}",
                {"now": now, "lease": lease_until, "limit": limit, "id": recharge_id},
            )
            return [Recharge(*row) for row in await cur.fetchall()]

    async def still_pending(self, recharge: Recharge, payment_id: str | None) -> bool:
        """The try's payment is pending: ask again after ``pending_poll_s``."""
        delay = self.leases.pending_poll_s
        async with self._pool.connection() as conn:
            return await _release(conn, recharge, self._clock.now(), delay, payment_id)

    async def gateway_unavailable(self, recharge: Recharge) -> bool:
        """The gateway could not be reached: repeat this try (same key) after a pause."""
        delay = self.leases.outage_retry_s
        async with self._pool.connection() as conn:
            return await _release(conn, recharge, self._clock.now(), delay, recharge.payment_id)

    async def nudge(self, payment_id: str) -> bool:
        """The payment of a pending try changed state: make the try due now (the scheduler
        asks the payment service for the outcome instead of waiting for the poll interval)."""
        now = self._clock.now()
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE auto_recharges SET lease_until = %s, updated_at = %s"
                " WHERE payment_id = %s AND state = 'charging' AND lease_until > %s",
                (now, now, payment_id, now),
            )
            return cur.rowcount > 0

    # --- outcomes ------------------------------------------------------------------------------

    async def succeeded(self, recharge: Recharge, payment_id: str | None, credits: int) -> bool:
        """Finish the recharge as succeeded; reset the failure streak; notify; announce."""
        now = self._clock.now()
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE auto_recharges SET state = 'succeeded', payment_id = %s,"
                " credits_added = %s, lease_until = NULL, finished_at = %s, updated_at = %s"
                " WHERE id = %s AND state = 'charging' AND tries = %s",
                (payment_id, credits, now, now, recharge.id, recharge.tries),
            )
            if cur.rowcount != 1:
                return False
            await conn.execute(
                "UPDATE auto_recharge_settings SET consecutive_failures = 0 WHERE wallet_id = %s",
                (recharge.wallet_id,),
            )
            event = RechargeSucceeded(
                type="recharge_succeeded",
                event_id=f"rch-ok:{recharge.id}",
                wallet_id=recharge.wallet_id,
                occurred_at=now,
                recharge_id=recharge.id,
                amount_paise=recharge.amount_paise,
                credits=credits,
            )
            await _outbox(conn, event.event_id, recharge.wallet_id, encode(event), now)
            rupees = recharge.amount_paise // 100
            await _notify(
                conn,
                recharge,
                "recharge_succeeded",
                "ok",
                f"Auto-recharge added {credits:,} credits (₹{rupees:,} charged to your saved "
                "payment method).",
                now,
            )
        return True

    async def declined(self, recharge: Recharge, reason: str, message: str) -> FailurePlan | None:
        """Record a declined try: retry later, give the recharge up, or also disable
        auto-recharge (:func:`~domain.auto_recharge.after_declined`). None: the try was stale."""
        try:
            return await self._declined(recharge, reason, message)
        except _StaleTry:
            return None

    async def _declined(self, recharge: Recharge, reason: str, message: str) -> FailurePlan:
        now = self._clock.now()
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE auto_recharge_settings SET"
                " consecutive_failures = consecutive_failures + 1 WHERE wallet_id = %s"
                " RETURNING consecutive_failures",
                (recharge.wallet_id,),
            )
            streak_row = await cur.fetchone()
            assert streak_row is not None, "a recharge always has settings"
            plan = after_declined(recharge.tries, streak_row[0], now, self.policy)
            retrying = plan.action is FailureAction.RETRY
            cur = await conn.execute(
                "UPDATE auto_recharges SET state = %s, next_try_at = COALESCE(%s, next_try_at),"
                " lease_until = NULL, failure_reason = %s, failure_message = %s,"
                " finished_at = %s, updated_at = %s"
                " WHERE id = %s AND state = 'charging' AND tries = %s",
                (
                    "retry_wait" if retrying else "failed",
                    plan.retry_at,
                    reason,
                    message[:2048],
                    None if retrying else now,
                    now,
                    recharge.id,
                    recharge.tries,
                ),
            )
            if cur.rowcount != 1:
                raise _StaleTry  # rolls the streak increment back
            await _record_decline(conn, recharge, plan, reason, message, now)
        return plan

    # --- reads ---------------------------------------------------------------------------------

    async def recent(self, wallet_id: str, limit: int = 20) -> list[Recharge]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_RECHARGE_COLUMNS} FROM auto_recharges WHERE wallet_id = %s"
                " ORDER BY created_at DESC, id LIMIT %s",
                (wallet_id, limit),
            )
            return [Recharge(*row) for row in await cur.fetchall()]

    async def notifications(self, wallet_id: str, limit: int = 50) -> list[Notification]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT id, kind, message, recharge_id, created_at FROM wallet_notifications"
                " WHERE wallet_id = %s ORDER BY id DESC LIMIT %s",
                (wallet_id, limit),
            )
            return [Notification(*row) for row in await cur.fetchall()]

    # --- outbox --------------------------------------------------------------------------------

    async def unpublished(self, limit: int = 200) -> list[tuple[int, str, bytes]]:
        """(seq, wallet_id, payload) of events not yet published, oldest first."""
        async with self._pool.connection() as conn:
            return await _unpublished(conn, limit, lock=False)

    async def publish_outbox(
        self, publish: Callable[[list[tuple[int, str, bytes]]], Awaitable[None]], limit: int = 200
    ) -> int:
        """Publish up to ``limit`` unpublished events with ``publish`` (which returns once the
        broker acknowledged them) and mark them, holding their rows locked meanwhile, so
        concurrent workers do not publish one event twice. A crash before the mark publishes
        them again (consumers deduplicate on ``event_id``)."""
        async with self._pool.connection() as conn, conn.transaction():
            rows = await _unpublished(conn, limit, lock=True)
            if rows:
                await publish(rows)
                await conn.execute(
                    "UPDATE auto_recharge_outbox SET published_at = %s WHERE seq = ANY(%s)",
                    (self._clock.now(), [seq for seq, _, _ in rows]),
                )
        return len(rows)


async def _unpublished(conn: Conn, limit: int, *, lock: bool) -> list[tuple[int, str, bytes]]:
    cur = await conn.execute(
        "SELECT seq, wallet_id, payload FROM auto_recharge_outbox WHERE published_at IS NULL"
        " ORDER BY seq LIMIT %s" + (" FOR UPDATE SKIP LOCKED" if lock else ""),
        (limit,),
    )
    return [(int(s), str(w), bytes(p)) for s, w, p in await cur.fetchall()]


class _StaleTry(Exception):
    """Another worker already resolved this try; raised to roll the transaction back."""


_NO_HISTORY = RechargeHistory(in_flight=False, last_started_at=None, started_today=0)


async def _history(conn: Conn, wallet_id: str, today: date) -> RechargeHistory:
    cur = await conn.execute(
        "SELECT bool_or(state IN ('pending', 'charging', 'retry_wait')), max(created_at),"
        " count(*) FILTER (WHERE local_day = %s) FROM auto_recharges WHERE wallet_id = %s",
        (today, wallet_id),
    )
    row = await cur.fetchone()
    assert row is not None
    return RechargeHistory(bool(row[0]), row[1], int(row[2]))


async def _release(
    conn: Conn, recharge: Recharge, now: datetime, delay_s: int, payment_id: str | None
) -> bool:
    cur = await conn.execute(
        "UPDATE auto_recharges SET lease_until = %s, payment_id = %s, updated_at = %s"
        " WHERE id = %s AND state = 'charging' AND tries = %s",
        (now + timedelta(seconds=delay_s), payment_id, now, recharge.id, recharge.tries),
    )
    return cur.rowcount == 1


async def _record_decline(
    conn: Conn, recharge: Recharge, plan: FailurePlan, reason: str, message: str, now: datetime
) -> None:
    retrying = plan.action is FailureAction.RETRY
    event = RechargeFailed(
        type="recharge_failed",
        event_id=f"rch-fail:{recharge.id}:{recharge.tries}",
        wallet_id=recharge.wallet_id,
        occurred_at=now,
        recharge_id=recharge.id,
        reason=reason,
        message=message[:2048],
        will_retry=retrying,
    )
    await _outbox(conn, event.event_id, recharge.wallet_id, encode(event), now)
    when = f" We will try again at {plan.retry_at:%H:%M} UTC." if plan.retry_at else ""
    await _notify(
        conn,
        recharge,
        "recharge_failed",
        f"failed:{recharge.tries}",
        f"Auto-recharge could not charge your saved payment method ({reason}).{when}",
        now,
    )
    if plan.action is FailureAction.DISABLE:
        await conn.execute(
            "UPDATE auto_recharge_settings SET enabled = false,"
            " disabled_reason = 'repeated_failures', updated_by = 'auto-recharge',"
            " updated_at = %s WHERE wallet_id = %s",
            (now, recharge.wallet_id),
        )
        await _notify(
            conn,
            recharge,
            "auto_recharge_disabled",
            "disabled",
            f"Auto-recharge was turned off after {plan.consecutive_failures} failed charges "
            "in a row. Update your payment method and enable it again.",
            now,
        )


async def _outbox(conn: Conn, event_id: str, wallet_id: str, payload: bytes, now: Any) -> None:
    await conn.execute(
        "INSERT INTO auto_recharge_outbox (event_id, wallet_id, payload, created_at)"
        " VALUES (%s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING",
        (event_id, wallet_id, payload, now),
    )


async def _notify(
    conn: Conn, recharge: Recharge, kind: str, dedupe: str, message: str, now: datetime
) -> None:
    await conn.execute(
        "INSERT INTO wallet_notifications (wallet_id, kind, dedupe_key, message, recharge_id,"
        " created_at) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (recharge.wallet_id, kind, f"{recharge.id}:{dedupe}", message, recharge.id, now),
    )
