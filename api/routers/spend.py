"""Spending: ``POST /wallet/consume`` (flow 1), ``POST /usage/events`` (flow 2 over HTTP) and
holds (flow 3: reserve an estimate, capture the actual, release the rest).

Consume and capture go through the SDK's :class:`meter.consume.CreditConsumer`: the same
atomic Redis authorisation as the stream, the event made durable on ``usage.authorized``
(acks=all) before the answer. Their event id is the request's ``event_id`` or one derived
from the ``Idempotency-Key``, so a retry can never be charged twice even without the
idempotency record. Ingested events go to ``usage.events`` through the SDK's producer, with
the SDK's validation: one invalid event refuses the whole batch, nothing is produced.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request, Response

from aggregator.admission import VerdictCode, admit, now_ms
from aggregator.claim import RequestClaim
from aggregator.hold_types import HoldOutcome, HoldRequest, HoldResult
from aggregator.holds import release_hold, reserve_hold
from api.auth import IdemKey, Services, UsageWriter, Writer, member_of, wallet_of
from api.idempotency import ClaimingAction, derived_id, run_claiming, run_idempotent
from api.keys import Principal, Scope
from api.services import ApiServices
from api.usage_models import (
    ConsumeOut,
    ConsumeRequest,
    HoldCaptureIn,
    HoldOut,
    HoldRequestIn,
    UsageAccepted,
    UsageBatch,
    refusal_error,
)
from domain.errors import (
    Forbidden,
    InvalidInput,
    NotFound,
    StateConflict,
    Unavailable,
    UnknownFeature,
)
from meter.consume import ConsumeResult
from meter.schema import SchemaViolation, UsageEvent, make_usage_event
from settlement.reconciler import reconcile_wallet

router = APIRouter(tags=["spending"])


def _member(principal: Principal, requested: str | None) -> str:
    """The member a spend is recorded against. Only ``usage:write`` keys (platform services)
    may attribute usage to another member of the wallet."""
    own = member_of(principal)
    if requested is None or requested == own:
        return own
    if Scope.USAGE_WRITE in principal.scopes or Scope.ADMIN in principal.scopes:
        return requested
    raise Forbidden("only a usage:write key may record usage for another member")


def _event(wallet_id: str, member_id: str, **fields: object) -> UsageEvent:
    try:
        return make_usage_event(wallet_id=wallet_id, member_id=member_id, **fields)
    except SchemaViolation as exc:
        raise InvalidInput(exc.message, **{**exc.details, "reason": exc.reason.value}) from None


def _consume_out(wallet_id: str, event_id: str, result: ConsumeResult) -> ConsumeOut:
    if not result.authorized:
        raise refusal_error(
            result.outcome,
            message="",
            credits=result.credits,
            available=result.available_after,
            retry_after_ms=result.retry_after_ms,
        )
    return ConsumeOut(
        wallet_id=wallet_id,
        event_id=event_id,
        outcome=result.outcome.value,
        credits=result.credits,
        available_after=result.available_after,
        replayed=result.replayed,
    )


@router.post(
    "/wallet/consume",
    response_model=ConsumeOut,
    summary="Spend credits on one operation now (authorised atomically, settled in batches)",
    responses={402: {"description": "insufficient_credits"}, 429: {"description": "caps"}},
)
async def consume(
    body: ConsumeRequest,
    request: Request,
    principal: Writer,
    services: Services,
    key: IdemKey,
) -> Response:
    wallet_id, action = consume_action(services, principal, body, key)
    return await run_claiming(request, wallet_id, key, action)


def consume_action(
    services: ApiServices, principal: Principal, body: ConsumeRequest, key: str
) -> tuple[str, ClaimingAction]:
    """The idempotency scope (the wallet) and the action of one consume, for the route above
    and for the fast lane (:mod:`api.fast_lane`). Raises ``Forbidden`` at once for a member the
    key may not spend for. The action takes the key's claim in the authorisation script, with
    the decision (:mod:`aggregator.claim`)."""
    wallet_id = wallet_of(principal)
    member_id = _member(principal, body.member_id)
    event_id = body.event_id or derived_id("evt", wallet_id, key)

    async def action(claim: RequestClaim) -> tuple[int, ConsumeOut]:
        event = _event(
            wallet_id,
            member_id,
            event_id=event_id,
            feature=body.feature,
            quantity=body.quantity,
            occurred_at=services.clock.now(),
            metadata=body.metadata,
        )
        result = await services.consumer.consume(event, claim)
        return 200, _consume_out(wallet_id, event_id, result)

    return wallet_id, action


@router.post(
    "/usage/events",
    response_model=UsageAccepted,
    status_code=202,
    summary="Ingest metered usage for services that cannot speak Kafka (into usage.events)",
)
async def ingest_events(
    body: UsageBatch, request: Request, principal: UsageWriter, services: Services, key: IdemKey
) -> Response:
    wallet_id = wallet_of(principal)
    now = services.clock.now()
    events: list[UsageEvent] = []
    problems: list[dict[str, object]] = []
    for index, item in enumerate(body.events):
        try:
            events.append(
                _event(
                    wallet_id,
                    _member(principal, item.member_id),
                    event_id=item.event_id,
                    feature=item.feature,
                    quantity=item.quantity,
                    occurred_at=item.occurred_at or now,
                    metadata=item.metadata,
                )
            )
            services.catalogue.operation(item.feature)
        except (InvalidInput, UnknownFeature) as exc:
            problems.append({"index": index, "code": exc.code, "message": exc.message})
    if problems:
        raise InvalidInput(
            f"{len(problems)} of {len(body.events)} events are invalid; nothing was accepted",
            errors=problems,
        )

    async def action() -> tuple[int, UsageAccepted]:
        await services.usage_producer.record_many(events)
        return 202, UsageAccepted(
            accepted=len(events),
            event_ids=[e.event_id for e in events],
            topic=services.config.topics.usage_events,
        )

    return await run_idempotent(request, wallet_id, key, action)


def _hold_out(result: HoldResult) -> HoldOut:
    expires = (
        datetime.fromtimestamp(result.expires_at_ms / 1000, UTC) if result.expires_at_ms else None
    )
    return HoldOut(
        hold_id=result.hold_id,
        state=result.state.value if result.state else None,
        credits=result.credits,
        captured=result.captured,
        released=result.released,
        expires_at=expires,
        available_after=result.available_after,
    )


_REFUSAL_VALUES = frozenset(o.value for o in HoldOutcome) & frozenset(c.value for c in VerdictCode)


def _hold_refusal(result: HoldResult) -> None:
    outcome = result.outcome
    if outcome is HoldOutcome.NOT_FOUND:
        raise NotFound(f"hold {result.hold_id!r} not found", field="hold_id")
    if outcome in (HoldOutcome.ALREADY_RESOLVED, HoldOutcome.EXPIRED):
        raise StateConflict(
            f"hold {result.hold_id!r} is already {result.state.value if result.state else 'gone'}",
            state=result.state.value if result.state else None,
        )
    if outcome.value in _REFUSAL_VALUES:  # an authorisation gate refused the reservation
        raise refusal_error(
            VerdictCode(outcome.value),
            message="",
            credits=result.credits,
            available=result.available_after,
            retry_after_ms=0,
        )


async def _reserve(services: ApiServices, request: HoldRequest) -> HoldResult:
    result = await reserve_hold(services.mirror, request)
    if result.outcome is HoldOutcome.WALLET_NOT_LOADED:
        await reconcile_wallet(services.pool, services.mirror, request.wallet_id)
        result = await reserve_hold(services.mirror, request)
        if result.outcome is HoldOutcome.WALLET_NOT_LOADED:
            raise Unavailable("the wallet mirror could not be loaded; retry")
    return result


@router.post(
    "/wallet/holds",
    response_model=HoldOut,
    status_code=201,
    summary="Reserve an estimate for variable-cost work (released when it expires)",
)
async def create_hold(
    body: HoldRequestIn, request: Request, principal: Writer, services: Services, key: IdemKey
) -> Response:
    wallet_id = wallet_of(principal)
    member_id = _member(principal, body.member_id)
    hold_id = derived_id("hold", wallet_id, key)

    async def action() -> tuple[int, HoldOut]:
        now = services.clock.now()
        probe = _event(
            wallet_id,
            member_id,
            event_id=hold_id,
            feature=body.feature,
            quantity=1,
            occurred_at=now,
        )
        admitted = admit(probe, services.catalogue, services.caps, now)
        operation = services.catalogue.operation(body.feature)
        credits = (
            services.catalogue.price_tokens(body.feature, body.estimated_quantity)
            if operation.token_priced
            else services.catalogue.price(body.feature, body.estimated_quantity)
        )
        await _remember_hold(services, wallet_id, hold_id, body, member_id)
        result = await _reserve(
            services,
            HoldRequest(
                hold_id=hold_id,
                wallet_id=wallet_id,
                member_id=member_id,
                credits=credits,
                ttl_ms=body.ttl_seconds * 1000,
                now_ms=now_ms(now),
                tier=admitted.tier,
                limits=admitted.limits,
            ),
        )
        _hold_refusal(result)
        return 201, _hold_out(result)

    return await run_idempotent(request, wallet_id, key, action)


@router.post(
    "/wallet/holds/{hold_id}/capture",
    response_model=ConsumeOut,
    summary="Charge the actual amount (never more than held); the rest returns to available",
)
async def capture(
    hold_id: str,
    body: HoldCaptureIn,
    request: Request,
    principal: Writer,
    services: Services,
    key: IdemKey,
) -> Response:
    """``quantity`` 0 means the work was not done: the whole hold is released instead."""
    wallet_id = wallet_of(principal)

    async def action() -> tuple[int, ConsumeOut | HoldOut]:
        feature, member_id = await _hold_meta(services, wallet_id, hold_id)
        if body.quantity == 0:
            return await _release_now(services, wallet_id, hold_id)
        event = _event(
            wallet_id,
            member_id,
            event_id=hold_id,
            feature=feature,
            quantity=body.quantity,
            occurred_at=services.clock.now(),
            metadata=body.metadata,
            hold_id=hold_id,
        )
        return 200, _consume_out(wallet_id, hold_id, await services.consumer.consume(event))

    return await run_idempotent(request, wallet_id, key, action)


def _meta_key(services: ApiServices, wallet_id: str, hold_id: str) -> str:
    return f"{services.config.key_prefix}:holdmeta:{{{wallet_id}}}:{hold_id}"


async def _remember_hold(
    services: ApiServices, wallet_id: str, hold_id: str, body: HoldRequestIn, member_id: str
) -> None:
    """What a capture must charge (feature, member) is kept beside the hold; the hold itself
    lives in the mirror's atomic scripts, which know credits, not features."""
    key = _meta_key(services, wallet_id, hold_id)
    await services.redis.hset(key, mapping={"feature": body.feature, "member_id": member_id})
    await services.redis.expire(key, body.ttl_seconds + 7 * 86_400)


async def _hold_meta(services: ApiServices, wallet_id: str, hold_id: str) -> tuple[str, str]:
    raw = await services.redis.hmget(
        _meta_key(services, wallet_id, hold_id), "feature", "member_id"
    )
    if raw[0] is None or raw[1] is None:
        raise NotFound(f"hold {hold_id!r} not found", field="hold_id")
    return raw[0].decode(), raw[1].decode()


async def _release_now(services: ApiServices, wallet_id: str, hold_id: str) -> tuple[int, HoldOut]:
    result = await release_hold(services.mirror, wallet_id, hold_id, now_ms(services.clock.now()))
    if result.outcome not in (HoldOutcome.RELEASED, HoldOutcome.DUPLICATE):
        _hold_refusal(result)
    return 200, _hold_out(result)


@router.post(
    "/wallet/holds/{hold_id}/release",
    response_model=HoldOut,
    summary="Release a whole hold back to available",
)
async def release(
    hold_id: str, request: Request, principal: Writer, services: Services, key: IdemKey
) -> Response:
    wallet_id = wallet_of(principal)

    async def action() -> tuple[int, HoldOut]:
        await _hold_meta(services, wallet_id, hold_id)  # another wallet's hold: 404
        return await _release_now(services, wallet_id, hold_id)

    return await run_idempotent(request, wallet_id, key, action)
