"""Real-time authorisation against the Redis mirror: authorize, settle, release.

The consume path (flow 1) and the aggregator (flow 2) both run :func:`authorize`; the
settlement stage calls :func:`settle` after its ledger transaction commits; a producer whose
``usage.authorized`` write failed calls :func:`release`. Each call is one atomic script on one
wallet's slot.

Lifecycle of an event id: authorize -> (authorized: in flight) -> settle (gone from flight;
its decision stays remembered for the record TTL, so a redelivery is a ``duplicate``) or
release (back to available; the id may be authorised again).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from aggregator.claim import ClaimHeld, RequestClaim
from aggregator.decision import AuthRequest, Decision, decision_from_reply
from aggregator.policy import MAX_CREDITS, admission_args, admission_keys, ledger_version_arg
from aggregator.redis_client import ScriptCall, run_scripts
from aggregator.redis_keys import require_id
from aggregator.replies import as_list, integer, text
from aggregator.wallet_store import WalletStore
from domain.errors import IdempotencyConflict
from domain.money import require_int

CLAIMED = "claimed"
"""authorize.lua's whole reply when the request's idempotency record already exists."""


async def authorize(
    store: WalletStore, request: AuthRequest, claim: RequestClaim | None = None
) -> Decision:
    """Authorise one operation atomically (idempotency, caps, rate limits, balance).

    On ``AUTHORIZED``: available -= credits, reserved += credits, the event is in flight, its
    cap counter and rate limits advance. Refusals change no balance or counter; final refusals
    are remembered like admissions (a redelivered event gets the same answer), transient ones
    (``RATE_LIMITED``, ``WALLET_NOT_LOADED``) are not. Refusals are not counted here: anomaly
    detection reads them from ``usage.rejected``, where every refusal goes with its code.
    Free operations (0 credits) pass a premium pause and an empty wallet, not a freeze, a cap
    or a rate limit. Raises ``IdempotencyConflict`` if the event id was already used for a
    different amount or member.

    With a ``claim`` (:mod:`aggregator.claim`), the script first sets the request's idempotency
    record, atomically with the decision, and marks it ``taken``; if the record already exists
    it decides nothing and :class:`~aggregator.claim.ClaimHeld` is raised.
    """
    script, keys, args = _authorize_call(store, request)
    if claim is not None:
        keys = [*keys, claim.key]
        args = [*args, claim.record, claim.ttl_ms]
    reply = as_list(await store.run_script(script, keys, args))
    if claim is not None:
        if text(reply[0]) == CLAIMED:
            raise ClaimHeld(claim.key)
        claim.taken = integer(reply[9]) == 1
    return decision_from_reply(request, reply)


async def authorize_many(
    store: WalletStore, requests: Sequence[AuthRequest]
) -> list[Decision | IdempotencyConflict]:
    """:func:`authorize` each request, one after another in the given order, in one round trip.

    Each authorisation is the same atomic script, so every answer is what awaiting
    :func:`authorize` for each request in turn would give (a wallet's requests keep their
    order). A reused event id answers with its :class:`IdempotencyConflict` in its place; any
    other failure raises, after which any prefix of the requests may have been decided: ask
    again with the same requests (idempotent on the event id).
    """
    replies = await run_scripts(store.client, [_authorize_call(store, r) for r in requests])
    decisions: list[Decision | IdempotencyConflict] = []
    for request, reply in zip(requests, replies, strict=True):
        if isinstance(reply, Exception):
            raise reply
        try:
            decisions.append(decision_from_reply(request, as_list(reply)))
        except IdempotencyConflict as conflict:
            decisions.append(conflict)
    return decisions


def _authorize_call(store: WalletStore, request: AuthRequest) -> ScriptCall:
    keys = store.keys.wallet(request.wallet_id)
    return (
        store.scripts.authorize,
        [
            keys.wallet,
            keys.in_flight,
            keys.event(request.event_id),
            *admission_keys(keys, request.member_id, request.limits),
        ],
        [
            request.event_id,
            request.member_id,
            store.record_ttl_ms,
            *admission_args(
                request.credits,
                request.tier,
                request.now_ms,
                request.limits,
                cap_ttl_ms=store.cap_ttl_ms,
            ),
        ],
    )


@dataclass(frozen=True, slots=True)
class SettleResult:
    """What :func:`settle` did.

    ``late_event_ids`` were released (their produce looked failed) yet reached the ledger: the
    mirror took their credits from available. ``recovered_event_ids`` had been authorised
    before the mirror was lost and rebuilt from an older ledger snapshot (no trace of them
    left): the mirror took their given credits from available. Either is short by
    ``shortfall`` when available could not cover it (never below zero; the mirror had promised
    those credits elsewhere, which the caller should treat as drift and reconcile).
    ``unknown_event_ids`` were neither in flight, released nor recoverable: already settled (a
    replay) or already reflected by the last load. If the wallet is not loaded nothing is
    settled (``loaded`` false).
    """

    wallet_id: str
    loaded: bool
    settled_event_ids: tuple[str, ...]
    settled_credits: int
    late_event_ids: tuple[str, ...]
    unknown_event_ids: tuple[str, ...]
    available_after: int
    reserved_after: int
    shortfall: int
    recovered_event_ids: tuple[str, ...] = ()


async def settle(
    store: WalletStore,
    wallet_id: str,
    event_ids: Iterable[str],
    *,
    ledger_version: int | None = None,
    credits: Mapping[str, int] | None = None,
) -> SettleResult:
    """Drop the reservations of events the ledger has committed; idempotent.

    ``ledger_version`` is the wallet's ledger version (a per-wallet monotonic sequence, such
    as its hash-chain position) after the committing transaction. Pass it: it lets the mirror
    refuse a reload from an older ledger snapshot, and correct one taken after this commit.

    ``credits`` maps event ids to the credits the ledger posted for them. Give it only for
    events *this* commit posted (not for replayed duplicates, whose posting may predate the
    mirror's last load): an id the mirror has no trace of, settled with its credits at a
    version newer than the mirror's load, was lost with the mirror, and its credits are taken
    from available once (see ``lua/settle.lua``). Without ``credits`` such an id is unknown.
    """
    call = SettleCall(wallet_id, tuple(event_ids), ledger_version, credits)
    ids = _settle_ids(call)
    script, keys, args = _settle_call(store, call, ids)
    return _settle_result(call.wallet_id, ids, await script(keys=keys, args=args))


@dataclass(frozen=True, slots=True)
class SettleCall:
    """The arguments of one :func:`settle` (see there)."""

    wallet_id: str
    event_ids: tuple[str, ...]
    ledger_version: int | None = None
    credits: Mapping[str, int] | None = None


async def settle_many(store: WalletStore, calls: Sequence[SettleCall]) -> list[SettleResult]:
    """:func:`settle` each call, one after another in the given order, in one round trip.

    Every settle is the same atomic script on one wallet; the answers are those of awaiting
    :func:`settle` for each call in turn. Raises on any failure, after which any prefix of the
    calls may have run: settle again (idempotent).
    """
    ids = [_settle_ids(c) for c in calls]
    replies = await run_scripts(
        store.client, [_settle_call(store, c, i) for c, i in zip(calls, ids, strict=True)]
    )
    results: list[SettleResult] = []
    for call, call_ids, reply in zip(calls, ids, replies, strict=True):
        if isinstance(reply, Exception):
            raise reply
        results.append(_settle_result(call.wallet_id, call_ids, reply))
    return results


def _settle_ids(call: SettleCall) -> tuple[str, ...]:
    return tuple(dict.fromkeys(require_id(e, field="event_id") for e in call.event_ids))


def _settle_call(store: WalletStore, call: SettleCall, ids: tuple[str, ...]) -> ScriptCall:
    amounts = call.credits or {}
    pairs: list[str | int] = []
    for e in ids:
        # -1: credits not given, the id is never debited as lost (see lua/settle.lua).
        given = (
            require_int(amounts[e], field="credits", maximum=MAX_CREDITS) if e in amounts else -1
        )
        pairs.extend((e, given))
    version = ledger_version_arg(call.ledger_version)
    keys = store.keys.wallet(call.wallet_id)
    return (
        store.scripts.settle,
        [keys.wallet, keys.in_flight, *(keys.event(e) for e in ids)],
        [version, store.record_ttl_ms, *pairs],
    )


def _settle_result(wallet_id: str, ids: tuple[str, ...], raw: object) -> SettleResult:
    reply = as_list(raw)
    if text(reply[0]) == "wallet_not_loaded":
        return SettleResult(wallet_id, False, (), 0, (), ids, 0, 0, 0)
    late, after_late = _id_list(reply, 5)
    unknown, after_unknown = _id_list(reply, after_late)
    recovered, _ = _id_list(reply, after_unknown)
    not_settled = {*late, *unknown, *recovered}
    settled = tuple(e for e in ids if e not in not_settled)
    return SettleResult(
        wallet_id=wallet_id,
        loaded=True,
        settled_event_ids=settled,
        settled_credits=integer(reply[1]),
        late_event_ids=late,
        unknown_event_ids=unknown,
        available_after=integer(reply[2]),
        reserved_after=integer(reply[3]),
        shortfall=integer(reply[4]),
        recovered_event_ids=recovered,
    )


def _id_list(reply: Sequence[object], at: int) -> tuple[tuple[str, ...], int]:
    """The counted id list starting at ``reply[at]``, and the index just after it."""
    count = integer(reply[at])
    return tuple(text(v) for v in reply[at + 1 : at + 1 + count]), at + 1 + count


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    """``released`` is false when the event was not in flight (settled, released or unknown)."""

    wallet_id: str
    event_id: str
    released: bool
    credits: int
    available_after: int
    reserved_after: int


async def release(store: WalletStore, wallet_id: str, event_id: str) -> ReleaseResult:
    """Undo an in-flight authorisation whose produce failed: reserved -> available.

    Idempotent, and a no-op once the event is settled. Afterwards the event id may be retried
    as a fresh authorisation (its remembered decision becomes ``released``); if the event
    reaches the ledger after all, :func:`settle` reports it as late and charges the mirror.
    """
    require_id(event_id, field="event_id")
    keys = store.keys.wallet(wallet_id)
    reply = as_list(
        await store.run_script(
            store.scripts.release,
            [keys.wallet, keys.in_flight, keys.event(event_id)],
            [event_id, store.record_ttl_ms],
        )
    )
    return ReleaseResult(
        wallet_id=wallet_id,
        event_id=event_id,
        released=text(reply[0]) == "released",
        credits=integer(reply[1]),
        available_after=integer(reply[2]),
        reserved_after=integer(reply[3]),
    )
