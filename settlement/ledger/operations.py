"""Every ledger operation of SPEC §3, each idempotent on its ``(source, source_id)``.

Inputs are validated before anything is locked; state rules (a purchase confirmed once, a hold
captured for no more than it reserved, refunds never beyond what was bought) are checked with the
wallet locked, so a refusal leaves nothing written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg_pool import AsyncConnectionPool

from domain import ledger_rules as rules
from domain.clock import Clock
from domain.errors import InvalidAmount, InvalidInput, NotFound, StateConflict
from domain.ledger_rules import Phase, TxnType
from domain.money import require_credits
from settlement.ledger.lookups import (
    find_by_source,
    group_metadata_sums,
    open_transfer,
    resolved_transfer,
)
from settlement.ledger.prepare import PostRequest
from settlement.ledger.records import (
    MEMBER_ID_RE,
    WALLET_ID_RE,
    TxnRecord,
    WalletRecord,
    require_id,
    require_metadata,
)
from settlement.ledger.writer import Conn, LedgerWriter


@dataclass(frozen=True, slots=True)
class PurchaseConfirmation:
    purchase: TxnRecord
    bonus: TxnRecord | None


def _member(member_id: str | None) -> str | None:
    return (
        None
        if member_id is None
        else require_id(member_id, field="member_id", pattern=MEMBER_ID_RE)
    )


def _wallet(wallet_id: str) -> str:
    return require_id(wallet_id, field="wallet_id", pattern=WALLET_ID_RE)


def _text(value: object, field: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 256:
        raise InvalidInput(f"{field} is required (1-256 characters)", field=field)
    return value.strip()


class Ledger:
    """The ledger's public operations. Construct once per process with a connection pool."""

    def __init__(self, pool: AsyncConnectionPool[Conn], clock: Clock | None = None) -> None:
        self.writer = LedgerWriter(pool, clock)

    async def _one(
        self,
        request: PostRequest,
        expected: Mapping[str, object],
        check: Any = None,
    ) -> TxnRecord:
        async def build(conn: Conn, wallet: WalletRecord) -> Sequence[PostRequest]:
            if check is not None:
                await check(conn, wallet)
            return (request,)

        records = await self.writer.post(
            request.wallet_id, request.source, request.source_id, build, expected
        )
        return records[0]

    # -- money in ---------------------------------------------------------------------------

    async def purchase_pending(
        self,
        wallet_id: str,
        payment_id: str,
        credits: int,
        *,
        member_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> TxnRecord:
        """Credits bought but not yet paid for: issuer -> pending (not spendable)."""
        payment_id = require_id(payment_id, field="payment_id")
        request = PostRequest(
            _wallet(wallet_id),
            "purchase",
            payment_id,
            rules.purchase_pending(credits),
            member_id=_member(member_id),
            opens_ref=f"purchase:{payment_id}",
            metadata=require_metadata(metadata),
        )
        return await self._one(request, {"type": TxnType.CREDIT_PURCHASE, "credits": credits})

    async def purchase_confirm(
        self, wallet_id: str, payment_id: str, *, bonus_credits: int = 0
    ) -> PurchaseConfirmation:
        """Payment captured: pending -> available, plus the pack bonus, in one DB transaction."""
        wallet_id, payment_id = _wallet(wallet_id), require_id(payment_id, field="payment_id")
        require_credits(bonus_credits, field="bonus_credits", positive=False)
        ref = f"purchase:{payment_id}"

        async def build(conn: Conn, wallet: WalletRecord) -> Sequence[PostRequest]:
            opened = await open_transfer(conn, wallet_id, ref, "purchase")
            meta = {"base_credits": opened.credits, "bonus_credits": bonus_credits}
            confirm = PostRequest(
                wallet_id,
                "purchase.confirm",
                payment_id,
                rules.purchase_confirmed(opened.credits),
                member_id=opened.member_id,
                resolves_ref=ref,
                metadata=meta,
            )
            if not bonus_credits:
                return (confirm,)
            granted = PostRequest(
                wallet_id,
                "purchase.bonus",
                payment_id,
                rules.bonus(bonus_credits),
                member_id=opened.member_id,
                metadata={"payment_id": payment_id},
            )
            return (confirm, granted)

        records = await self.writer.post(
            wallet_id, "purchase.confirm", payment_id, build, {"type": TxnType.CREDIT_PURCHASE}
        )
        if len(records) == 2:
            return PurchaseConfirmation(records[0], records[1])
        bonus = None
        if records[0].replayed:
            async with self.writer.pool.connection() as conn:
                bonus = await find_by_source(conn, "purchase.bonus", payment_id, replayed=True)
        return PurchaseConfirmation(records[0], bonus)

    async def purchase_fail(self, wallet_id: str, payment_id: str) -> TxnRecord:
        """Payment failed: the pending credits return to the issuer."""
        wallet_id, payment_id = _wallet(wallet_id), require_id(payment_id, field="payment_id")
        ref = f"purchase:{payment_id}"

        async def build(conn: Conn, wallet: WalletRecord) -> Sequence[PostRequest]:
            opened = await open_transfer(conn, wallet_id, ref, "purchase")
            return (
                PostRequest(
                    wallet_id,
                    "purchase.fail",
                    payment_id,
                    rules.purchase_failed(opened.credits),
                    member_id=opened.member_id,
                    resolves_ref=ref,
                ),
            )

        records = await self.writer.post(
            wallet_id, "purchase.fail", payment_id, build, {"type": TxnType.CREDIT_PURCHASE}
        )
        return records[0]

    async def grant_bonus(
        self, wallet_id: str, bonus_id: str, credits: int, *, reason: str
    ) -> TxnRecord:
        """A promotional bonus (pack bonuses are posted by :meth:`purchase_confirm`)."""
        request = PostRequest(
            _wallet(wallet_id),
            "bonus",
            require_id(bonus_id, field="bonus_id"),
            rules.bonus(credits),
            metadata={"reason": _text(reason, "reason")},
        )
        return await self._one(request, {"type": TxnType.BONUS_CREDIT, "credits": credits})

    async def refund_purchase(
        self,
        wallet_id: str,
        refund_id: str,
        payment_id: str,
        *,
        base_credits: int,
        bonus_credits: int,
        metadata: Mapping[str, Any] | None = None,
    ) -> TxnRecord:
        """Money refunded: purchased credits and the clawed-back bonus leave the wallet.

        Cumulative refunds of a purchase never exceed its base credits or its bonus.
        """
        wallet_id, payment_id = _wallet(wallet_id), require_id(payment_id, field="payment_id")
        refund_id = require_id(refund_id, field="refund_id")
        plan = rules.purchase_refund(base_credits, bonus_credits)
        meta = {
            **require_metadata(metadata),
            "payment_id": payment_id,
            "base_credits": base_credits,
            "bonus_credits": bonus_credits,
        }

        async def check(conn: Conn, wallet: WalletRecord) -> None:
            confirmed = await resolved_transfer(conn, f"purchase:{payment_id}")
            if confirmed is None or confirmed.wallet_id != wallet_id:
                raise NotFound(f"no confirmed purchase {payment_id!r} on wallet {wallet_id!r}")
            if confirmed.phase is not Phase.POSTED:
                raise StateConflict(f"purchase {payment_id!r} was not paid; nothing to refund")
            base_done, bonus_done = await group_metadata_sums(
                conn, f"refund:{payment_id}", "base_credits", "bonus_credits"
            )
            bought = (
                int(confirmed.metadata["base_credits"] or 0),
                int(confirmed.metadata["bonus_credits"] or 0),
            )
            if base_done + base_credits > bought[0] or bonus_done + bonus_credits > bought[1]:
                raise InvalidAmount(
                    f"refund exceeds purchase {payment_id!r}: {base_done}+{base_credits} of "
                    f"{bought[0]} credits, {bonus_done}+{bonus_credits} of {bought[1]} bonus",
                    field="base_credits",
                )

        request = PostRequest(
            wallet_id,
            "purchase.refund",
            refund_id,
            plan,
            group_ref=f"refund:{payment_id}",
            metadata=meta,
        )
        return await self._one(request, {"type": TxnType.REFUND, "credits": plan.credits}, check)

    # -- usage ------------------------------------------------------------------------------

    async def deduct_usage(
        self,
        wallet_id: str,
        event_id: str,
        credits: int,
        *,
        feature: str,
        member_id: str | None = None,
        pricing_version: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> TxnRecord:
        """One usage event: available -> revenue. Batches go through the batch writer."""
        request = PostRequest(
            _wallet(wallet_id),
            "usage",
            require_id(event_id, field="event_id"),
            rules.usage(credits),
            member_id=_member(member_id),
            feature=_text(feature, "feature"),
            pricing_version=pricing_version,
            metadata=require_metadata(metadata),
        )
        return await self._one(request, {"type": TxnType.USAGE_DEDUCTION, "credits": credits})

    async def reverse_usage(
        self, wallet_id: str, reversal_id: str, event_id: str, credits: int, *, reason: str
    ) -> TxnRecord:
        """Give back (part of) a usage deduction; never more than the event was charged."""
        wallet_id, event_id = _wallet(wallet_id), require_id(event_id, field="event_id")
        plan = rules.usage_reversal(credits)

        async def check(conn: Conn, wallet: WalletRecord) -> None:
            original = await find_by_source(conn, "usage", event_id)
            if original is None or original.wallet_id != wallet_id:
                raise NotFound(f"no usage event {event_id!r} on wallet {wallet_id!r}")
            (done,) = await group_metadata_sums(conn, f"reversal:{event_id}", "reversed_credits")
            if done + credits > original.credits:
                raise InvalidAmount(
                    f"cannot reverse {credits} credits of event {event_id!r}: "
                    f"{done} of its {original.credits} are already reversed",
                    field="credits",
                )

        request = PostRequest(
            wallet_id,
            "usage.reversal",
            require_id(reversal_id, field="reversal_id"),
            plan,
            group_ref=f"reversal:{event_id}",
            metadata={
                "event_id": event_id,
                "reversed_credits": credits,
                "reason": _text(reason, "reason"),
            },
        )
        return await self._one(request, {"type": TxnType.REFUND, "credits": credits}, check)

    async def hold_usage(
        self,
        wallet_id: str,
        hold_id: str,
        credits: int,
        *,
        feature: str,
        member_id: str | None = None,
    ) -> TxnRecord:
        """Reserve an estimate (available -> reserved) for variable-cost work."""
        hold_id = require_id(hold_id, field="hold_id")
        request = PostRequest(
            _wallet(wallet_id),
            "hold",
            hold_id,
            rules.hold(credits),
            member_id=_member(member_id),
            feature=_text(feature, "feature"),
            opens_ref=f"hold:{hold_id}",
        )
        return await self._one(request, {"type": TxnType.USAGE_HOLD, "credits": credits})

    async def capture_hold(self, wallet_id: str, hold_id: str, credits: int) -> TxnRecord:
        """Charge the actual amount (1..reserved); the rest of the hold returns to available."""
        wallet_id, hold_id = _wallet(wallet_id), require_id(hold_id, field="hold_id")
        require_credits(credits)

        async def build(conn: Conn, wallet: WalletRecord) -> Sequence[PostRequest]:
            opened = await open_transfer(conn, wallet_id, f"hold:{hold_id}", "hold")
            return (
                PostRequest(
                    wallet_id,
                    "hold.capture",
                    hold_id,
                    rules.hold_captured(opened.credits, credits),
                    member_id=opened.member_id,
                    feature=opened.feature,
                    resolves_ref=f"hold:{hold_id}",
                    metadata={"reserved_credits": opened.credits},
                ),
            )

        expected = {"type": TxnType.USAGE_DEDUCTION, "credits": credits}
        return (await self.writer.post(wallet_id, "hold.capture", hold_id, build, expected))[0]

    async def release_hold(
        self, wallet_id: str, hold_id: str, *, expired: bool = False
    ) -> TxnRecord:
        """Return a whole hold to available (cancelled, or expired when ``expired``)."""
        wallet_id, hold_id = _wallet(wallet_id), require_id(hold_id, field="hold_id")
        phase = Phase.EXPIRED if expired else Phase.VOIDED

        async def build(conn: Conn, wallet: WalletRecord) -> Sequence[PostRequest]:
            opened = await open_transfer(conn, wallet_id, f"hold:{hold_id}", "hold")
            return (
                PostRequest(
                    wallet_id,
                    "hold.release",
                    hold_id,
                    rules.hold_released(opened.credits, phase),
                    member_id=opened.member_id,
                    feature=opened.feature,
                    resolves_ref=f"hold:{hold_id}",
                ),
            )

        expected = {"type": TxnType.USAGE_HOLD_RELEASE}
        return (await self.writer.post(wallet_id, "hold.release", hold_id, build, expected))[0]

    # -- payouts and adjustments ------------------------------------------------------------

    async def hold_payout(
        self, wallet_id: str, payout_id: str, credits: int, *, member_id: str | None = None
    ) -> TxnRecord:
        """Lock payout-eligible credits (community earnings only) for a payout."""
        payout_id = require_id(payout_id, field="payout_id")
        request = PostRequest(
            _wallet(wallet_id),
            "payout",
            payout_id,
            rules.payout_held(credits),
            member_id=_member(member_id),
            opens_ref=f"payout:{payout_id}",
        )
        return await self._one(request, {"type": TxnType.PAYOUT_HOLD, "credits": credits})

    async def complete_payout(self, wallet_id: str, payout_id: str) -> TxnRecord:
        return await self._resolve_payout(wallet_id, payout_id, completed=True)

    async def cancel_payout(self, wallet_id: str, payout_id: str) -> TxnRecord:
        return await self._resolve_payout(wallet_id, payout_id, completed=False)

    async def _resolve_payout(
        self, wallet_id: str, payout_id: str, *, completed: bool
    ) -> TxnRecord:
        wallet_id, payout_id = _wallet(wallet_id), require_id(payout_id, field="payout_id")
        source = "payout.complete" if completed else "payout.cancel"

        async def build(conn: Conn, wallet: WalletRecord) -> Sequence[PostRequest]:
            opened = await open_transfer(conn, wallet_id, f"payout:{payout_id}", "payout")
            plan = (rules.payout_completed if completed else rules.payout_cancelled)(opened.credits)
            return (
                PostRequest(
                    wallet_id,
                    source,
                    payout_id,
                    plan,
                    member_id=opened.member_id,
                    resolves_ref=f"payout:{payout_id}",
                ),
            )

        expected = {"type": TxnType.PAYOUT_RELEASE}
        return (await self.writer.post(wallet_id, source, payout_id, build, expected))[0]

    async def adjust(
        self,
        wallet_id: str,
        adjustment_id: str,
        credits: int,
        *,
        actor: str,
        reason: str,
        note: str | None = None,
    ) -> TxnRecord:
        """A manual, signed admin adjustment; ``actor`` and ``reason`` are required.

        ``reason="community_earnings"`` credits payout-eligible earnings.
        """
        actor, reason = _text(actor, "actor"), _text(reason, "reason")
        plan = rules.admin_adjustment(credits, reason)
        meta: dict[str, str | int | bool | None] = {"actor": actor, "reason": reason}
        meta["delta_credits"] = credits
        if note:
            meta["note"] = _text(note, "note")
        request = PostRequest(
            _wallet(wallet_id),
            "admin",
            require_id(adjustment_id, field="adjustment_id"),
            plan,
            metadata=meta,
        )
        return await self._one(request, {"type": TxnType.ADMIN_ADJUSTMENT, "credits": abs(credits)})
