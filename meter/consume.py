"""Synchronous consumption (flow 1), and the authorisation step it shares with the stream.

:class:`EventAuthorizer` is the one code path that decides a usage event against the Redis
mirror: price and admit it (``aggregator.admission``), authorise it, or capture its hold,
loading the wallet from the ledger when the mirror does not have it. The SDK's
:class:`CreditConsumer` and the aggregator's pipeline both call it, then produce what the
verdict says with :func:`verdict_messages` through a :class:`DecisionProducer`.

``CreditConsumer.consume`` step by step, and what a crash (or a failure) after each step does:

1. admit: pure; an unknown feature raises :class:`~domain.errors.UnknownFeature`, nothing done.
2. authorise in Redis (atomic, idempotent on ``event_id``): credits move available -> reserved.
   Crash now: the reservation is in flight with no ``usage.authorized`` message. The caller's
   retry with the same ``event_id`` gets the original decision back and produces the message
   (the client owns recovery, STYLE 6); a reservation no retry ever claims stays in flight
   until an operator's reconciliation releases it (the mirror reports it as in flight).
3. produce ``UsageAuthorized`` to ``usage.authorized`` (acks=all) and await the ack. If it
   fails, the reservation is released and :class:`~meter.producer.PublishFailed` (retryable)
   raised: the event is not charged, a retry may authorise it afresh. (A replayed decision is
   never released: its first delivery may already be in the log.)
4. produce wallet events (low balance, premium paused), awaited; a failure raises
   ``PublishFailed`` but keeps the charge (its usage message is durable): the retry replays
   the decision and produces the wallet events again, under the same derived ids.

Refusals are produced to ``usage.rejected`` too (decision: yes), best effort: analytics and
abuse detection read refusals there, but a refusal changed no balance, so the caller gets its
answer even when Kafka is down (the failure is logged and the message lost).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool

from aggregator.admission import (
    Verdict,
    VerdictCode,
    admit,
    mirror_event_id,
    now_ms,
    refused,
    verdict_of_capture,
    verdict_of_decision,
)
from aggregator.authorize import authorize, authorize_many, release
from aggregator.claim import RequestClaim
from aggregator.decision import AuthRequest, Decision, Outcome
from aggregator.hold_types import HoldOutcome
from aggregator.holds import capture_hold
from aggregator.wallet_store import WalletStore
from domain.caps import CapsConfig
from domain.clock import Clock
from domain.errors import (
    IdempotencyConflict,
    InvalidInput,
    Unavailable,
    UnknownFeature,
    UnknownWallet,
)
from domain.pricing import PricingCatalogue
from meter.producer import Delivery, PublishFailed, UsageProducer
from meter.schema import Decision as AuthorizedAs
from meter.schema import (
    LowBalance,
    PremiumPaused,
    UsageAuthorized,
    UsageEvent,
    UsageRejected,
    encode,
)
from meter.topics import TopicNames, wallet_key
from settlement.ledger.writer import Conn
from settlement.reconciler import reconcile_wallet

log = logging.getLogger(__name__)

FOLLOW_UP_CONCURRENCY = 64
"""Wallets a batch decides one event at a time (holds, loads) at once."""

EXHAUSTED = "credits_exhausted"
"""The ``reason`` of a premium pause caused by the wallet running out of credits."""


@dataclass(frozen=True, slots=True)
class Outbound:
    """One message to produce: keyed by wallet id; ``ref`` names it in errors."""

    topic: str
    key: bytes
    value: bytes
    ref: str


class DecisionProducer(UsageProducer):
    """A :class:`UsageProducer` that also publishes decisions, wallet events and alerts."""

    async def publish(self, messages: Sequence[Outbound]) -> tuple[Delivery, ...]:
        """Send every message (per topic in order, topics concurrently); return once every one
        is acknowledged (acks=all). Raises :class:`PublishFailed` naming the refs not acked;
        some of the others may have been written (consumers deduplicate)."""
        if len({m.topic for m in messages}) == 1:  # the usual case (one usage message)
            keyed = [(m.key, m.value) for m in messages]
            return await self._publish(messages[0].topic, keyed, [m.ref for m in messages])
        by_topic: dict[str, list[Outbound]] = defaultdict(list)
        for message in messages:
            by_topic[message.topic].append(message)
        results = await asyncio.gather(
            *(
                self._publish(topic, [(m.key, m.value) for m in group], [m.ref for m in group])
                for topic, group in by_topic.items()
            ),
            return_exceptions=True,
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            refs = [ref for r in failed if isinstance(r, PublishFailed) for ref in r.event_ids]
            raise PublishFailed(f"publishing failed: {failed[0]!r}", event_ids=refs) from failed[0]
        return tuple(d for r in results if not isinstance(r, BaseException) for d in r)


def derived_id(kind: str, event_id: str) -> str:
    """A stable id for a message derived from an event (a retry derives the same one)."""
    candidate = f"{kind}:{event_id}"
    if len(candidate) <= 128:
        return candidate
    return f"{kind}:{hashlib.sha256(event_id.encode()).hexdigest()[:48]}"


def usage_message(
    verdict: Verdict, *, topics: TopicNames, pricing_version: str, at: datetime
) -> Outbound:
    """``UsageAuthorized`` for an authorised verdict, ``UsageRejected`` for a refusal."""
    event = verdict.event
    if verdict.authorized:
        kind = (
            AuthorizedAs.HOLD_CAPTURED
            if verdict.code is VerdictCode.HOLD_CAPTURED
            else AuthorizedAs.AUTHORIZED
        )
        payload = encode(
            UsageAuthorized(
                event=event,
                credits=verdict.credits,
                pricing_version=pricing_version,
                authorised_at=at,
                decision=kind,
            )
        )
        return Outbound(
            topics.usage_authorized, wallet_key(event.wallet_id), payload, event.event_id
        )
    rejection = UsageRejected(
        event=event, reason=verdict.code.value, message=verdict.message, rejected_at=at
    )
    return Outbound(
        topics.usage_rejected, wallet_key(event.wallet_id), encode(rejection), event.event_id
    )


def wallet_messages(
    verdict: Verdict, *, topics: TopicNames, low_balance_threshold: int, at: datetime
) -> tuple[Outbound, ...]:
    """``LowBalance`` once per downward crossing of the threshold (0 disables it), and
    ``PremiumPaused`` on the authorisation that exhausted the wallet. Ids derive from the
    event, so a replay re-announces under the same id and consumers deduplicate."""
    event, key = verdict.event, wallet_key(verdict.event.wallet_id)
    out: list[Outbound] = []
    if low_balance_threshold > 0 and verdict.crossed_below(low_balance_threshold):
        low = LowBalance(
            type="low_balance",
            event_id=derived_id("low", event.event_id),
            wallet_id=event.wallet_id,
            occurred_at=at,
            available_credits=verdict.available_after,
            threshold_credits=low_balance_threshold,
        )
        out.append(Outbound(topics.wallet_events, key, encode(low), low.event_id))
    if verdict.authorized and verdict.paused_now:
        paused = PremiumPaused(
            type="premium_paused",
            event_id=derived_id("paused", event.event_id),
            wallet_id=event.wallet_id,
            occurred_at=at,
            reason=EXHAUSTED,
        )
        out.append(Outbound(topics.wallet_events, key, encode(paused), paused.event_id))
    return tuple(out)


class EventAuthorizer:
    """Decides usage events against the mirror; shared by the SDK and the aggregator.

    :meth:`decide` raises :class:`~domain.errors.UnknownFeature` (and ``InvalidInput``) for an
    event that cannot be admitted, and infrastructure errors (Redis, PostgreSQL,
    :class:`~domain.errors.Unavailable`) as they come: every step is idempotent on the event
    id, so the caller may simply ask again.
    """

    def __init__(
        self,
        store: WalletStore,
        pool: AsyncConnectionPool[Conn],
        catalogue: PricingCatalogue,
        caps: CapsConfig,
        clock: Clock,
    ) -> None:
        self.store, self.pool, self.catalogue, self.caps, self.clock = (
            store, pool, catalogue, caps, clock,
        )  # fmt: skip
        self.pricing_version = str(catalogue.version)

    async def decide(self, event: UsageEvent, claim: RequestClaim | None = None) -> Verdict:
        """Decide one event. A ``claim`` is taken by the authorisation script, atomically with
        the decision (:mod:`aggregator.claim`; raises ``ClaimHeld`` if its record exists); a hold
        capture does not take it."""
        request = admit(event, self.catalogue, self.caps, self.clock.now())
        try:
            if event.hold_id is not None:
                return await self._capture(event, request)
            return verdict_of_decision(event, await self._authorize(request, claim))
        except UnknownWallet as exc:
            return refused(event, VerdictCode.UNKNOWN_WALLET, exc.message, request.credits)
        except IdempotencyConflict as exc:
            return refused(event, VerdictCode.IDEMPOTENCY_CONFLICT, exc.message, request.credits)

    async def decide_many(self, events: Sequence[UsageEvent]) -> list[Verdict]:
        """Decide ``events`` as :meth:`decide` would one after another, sharing Redis round trips.

        Each wallet's events are decided in the given order. The plain authorisations go in
        one round trip (:func:`~aggregator.authorize.authorize_many`); a wallet with a hold
        capture in the batch goes one event at a time, and a wallet the mirror has not loaded
        is loaded from the ledger and its waiting events asked once more, in order. (If the
        wallet is loaded by someone else mid-batch, its earlier events may then be decided
        after its later ones: each decision is still atomic and idempotent.) Unlike
        :meth:`decide`, an event that cannot be admitted (unknown feature, invalid amount) is
        refused with its reason, not raised. Infrastructure errors raise, as in :meth:`decide`.
        """
        now = self.clock.now()
        verdicts: list[Verdict | None] = [None] * len(events)
        one_by_one = {e.wallet_id for e in events if e.hold_id is not None}
        batched: list[tuple[int, AuthRequest]] = []
        for index, event in enumerate(events):
            if event.wallet_id in one_by_one:
                continue
            try:
                batched.append((index, admit(event, self.catalogue, self.caps, now)))
            except UnknownFeature as exc:
                verdicts[index] = refused(event, VerdictCode.UNKNOWN_FEATURE, exc.message)
            except InvalidInput as exc:
                verdicts[index] = refused(event, VerdictCode.INVALID_REQUEST, exc.message)
        decisions = await authorize_many(self.store, [request for _, request in batched])
        unloaded: dict[str, list[tuple[int, AuthRequest]]] = defaultdict(list)
        for (index, request), decision in zip(batched, decisions, strict=True):
            event = events[index]
            if isinstance(decision, IdempotencyConflict):
                verdicts[index] = refused(
                    event, VerdictCode.IDEMPOTENCY_CONFLICT, decision.message, request.credits
                )
            elif decision.outcome is Outcome.WALLET_NOT_LOADED:
                unloaded[request.wallet_id].append((index, request))
            else:
                verdicts[index] = verdict_of_decision(event, decision)
        chains: dict[str, list[tuple[int, UsageEvent]]] = defaultdict(list)
        for index, event in enumerate(events):
            if event.wallet_id in one_by_one:
                chains[event.wallet_id].append((index, event))
        slots = asyncio.Semaphore(FOLLOW_UP_CONCURRENCY)
        await _every(
            *(self._decide_chain(chain, verdicts, slots) for chain in chains.values()),
            *(
                self._load_and_decide(wallet_id, waiting, events, verdicts, slots)
                for wallet_id, waiting in unloaded.items()
            ),
        )
        assert all(v is not None for v in verdicts), "every event is decided"
        return [v for v in verdicts if v is not None]

    async def _decide_chain(
        self,
        chain: Sequence[tuple[int, UsageEvent]],
        verdicts: list[Verdict | None],
        slots: asyncio.Semaphore,
    ) -> None:
        async with slots:
            await self._decide_each(chain, verdicts)

    async def _decide_each(
        self, chain: Sequence[tuple[int, UsageEvent]], verdicts: list[Verdict | None]
    ) -> None:
        for index, event in chain:
            try:
                verdicts[index] = await self.decide(event)
            except UnknownFeature as exc:
                verdicts[index] = refused(event, VerdictCode.UNKNOWN_FEATURE, exc.message)
            except InvalidInput as exc:
                verdicts[index] = refused(event, VerdictCode.INVALID_REQUEST, exc.message)

    async def _load_and_decide(
        self,
        wallet_id: str,
        waiting: Sequence[tuple[int, AuthRequest]],
        events: Sequence[UsageEvent],
        verdicts: list[Verdict | None],
        slots: asyncio.Semaphore,
    ) -> None:
        async with slots:
            await self._load_then_authorize(wallet_id, waiting, events, verdicts)

    async def _load_then_authorize(
        self,
        wallet_id: str,
        waiting: Sequence[tuple[int, AuthRequest]],
        events: Sequence[UsageEvent],
        verdicts: list[Verdict | None],
    ) -> None:
        """Load ``wallet_id`` from the ledger, then decide its waiting events in order."""
        try:
            await reconcile_wallet(self.pool, self.store, wallet_id)
        except UnknownWallet as exc:
            for index, request in waiting:
                verdicts[index] = refused(
                    events[index], VerdictCode.UNKNOWN_WALLET, exc.message, request.credits
                )
            return
        for index, request in waiting:
            event = events[index]
            try:
                verdicts[index] = verdict_of_decision(event, await self._authorize(request))
            except UnknownWallet as exc:
                verdicts[index] = refused(
                    event, VerdictCode.UNKNOWN_WALLET, exc.message, request.credits
                )
            except IdempotencyConflict as exc:
                verdicts[index] = refused(
                    event, VerdictCode.IDEMPOTENCY_CONFLICT, exc.message, request.credits
                )

    async def release(self, verdict: Verdict) -> None:
        """Undo a fresh authorisation whose message could not be produced."""
        assert verdict.authorized, "only an authorisation holds a reservation"
        assert not verdict.replayed, "a replay's first delivery may already be in the log"
        await release(self.store, verdict.event.wallet_id, mirror_event_id(verdict.event))

    async def _authorize(self, request: AuthRequest, claim: RequestClaim | None = None) -> Decision:
        """Authorise; on ``wallet_not_loaded`` load the wallet from the ledger and ask once more
        (a wallet not loaded took no claim, so the second ask takes it)."""
        decision = await authorize(self.store, request, claim)
        if decision.outcome is not Outcome.WALLET_NOT_LOADED:
            return decision
        await reconcile_wallet(self.pool, self.store, request.wallet_id)
        decision = await authorize(self.store, request, claim)
        if decision.outcome is Outcome.WALLET_NOT_LOADED:
            raise Unavailable(f"wallet {request.wallet_id} is unloaded again right after a load")
        return decision

    async def _capture(self, event: UsageEvent, request: AuthRequest) -> Verdict:
        """Capture ``min(price, held)`` from the event's hold (a capture never exceeds it)."""
        assert event.hold_id is not None
        at = now_ms(self.clock.now())
        result = await capture_hold(self.store, event.wallet_id, event.hold_id, request.credits, at)
        if result.outcome is HoldOutcome.EXCEEDS_HOLD:
            result = await capture_hold(
                self.store, event.wallet_id, event.hold_id, result.credits, at
            )
        return verdict_of_capture(event, request.credits, result)


async def _every(*steps: Any) -> None:
    """Await every step to its end, then raise the first failure (none is left running)."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


@dataclass(frozen=True, slots=True)
class ConsumeResult:
    """``outcome`` is a :class:`VerdictCode`: ``authorized``/``hold_captured`` or the refusal
    reason. ``replayed``: this event id was decided before and this is that decision."""

    outcome: VerdictCode
    credits: int
    available_after: int
    retry_after_ms: int = 0
    replayed: bool = False

    @property
    def authorized(self) -> bool:
        return self.outcome in (VerdictCode.AUTHORIZED, VerdictCode.HOLD_CAPTURED)


class CreditConsumer:
    """``consume_credits(...)`` for services: authorise now, answer with the new balance."""

    def __init__(
        self,
        store: WalletStore,
        producer: DecisionProducer,
        pool: AsyncConnectionPool[Conn],
        catalogue: PricingCatalogue,
        caps: CapsConfig,
        clock: Clock,
        *,
        topics: TopicNames | None = None,
        low_balance_threshold: int = 200,
    ) -> None:
        self._authorizer = EventAuthorizer(store, pool, catalogue, caps, clock)
        self._producer = producer
        self._clock = clock
        self._topics = topics or TopicNames()
        self._low_balance_threshold = low_balance_threshold

    async def consume(self, event: UsageEvent, claim: RequestClaim | None = None) -> ConsumeResult:
        """Authorise ``event`` and make it durable on ``usage.authorized`` (module docstring).

        Raises ``UnknownFeature``/``InvalidInput`` (the caller's bug, never retry),
        ``PublishFailed`` or ``Unavailable`` (retry with the same ``event_id``). The API passes
        its request's idempotency ``claim``, taken with the authorisation (``ClaimHeld`` if
        another request holds it: nothing was decided).
        """
        verdict = await self._authorizer.decide(event, claim)
        at = self._clock.now()
        usage = usage_message(
            verdict, topics=self._topics, pricing_version=self._authorizer.pricing_version, at=at
        )
        if not verdict.authorized:
            await self._publish_refusal(usage)
        else:
            await self._publish_or_release(verdict, usage)
            wallet = wallet_messages(
                verdict, topics=self._topics, low_balance_threshold=self._low_balance_threshold,
                at=at,
            )  # fmt: skip
            if wallet:
                await self._producer.publish(wallet)
        return ConsumeResult(
            verdict.code, verdict.credits, verdict.available_after, verdict.retry_after_ms,
            verdict.replayed,
        )  # fmt: skip

    async def _publish_or_release(self, verdict: Verdict, usage: Outbound) -> None:
        try:
            await self._producer.publish((usage,))
        except PublishFailed:
            if not verdict.replayed:
                await self._authorizer.release(verdict)
            raise

    async def _publish_refusal(self, usage: Outbound) -> None:
        try:
            await self._producer.publish((usage,))
        except PublishFailed as exc:
            log.warning("refusal of %s not recorded on usage.rejected: %s", usage.ref, exc)
