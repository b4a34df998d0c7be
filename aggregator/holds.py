"""Two-phase holds on the Redis mirror: reserve, capture, release, expire.

Every hold operation is one atomic script on the wallet's slot; the hold's record makes each
resolution happen exactly once whoever races (capture, release, the sweeper). Besides, every
hold is listed in the sweeper's global index (``hold_sweeper``), which is written *before* the
hold exists and cleaned *after* it resolves, so no hold can be missing from it: the index may
hold stale entries (the sweeper drops them), never miss a live hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

from aggregator.hold_types import (
    HoldOutcome,
    HoldRequest,
    HoldResult,
    HoldState,
    classify_existing,
    hold_result_from_reply,
)
from aggregator.policy import MAX_CREDITS, admission_args, admission_keys, require_now_ms
from aggregator.redis_keys import WalletKeys, hold_index_member, require_id
from aggregator.replies import as_list, text
from aggregator.wallet_store import WalletStore
from domain.errors import IdempotencyConflict
from domain.money import require_int


async def reserve_hold(store: WalletStore, request: HoldRequest) -> HoldResult:
    """Phase one: available -> held for ``request.ttl_ms``; idempotent on the hold id.

    Outcomes: ``HELD``; ``DUPLICATE`` (same hold id and amount, still held: nothing more is
    taken); ``ALREADY_RESOLVED`` (the id was captured, released or expired: never re-held);
    or an authorisation refusal (nothing written, may be retried with the same id).
    Raises ``IdempotencyConflict`` if the held hold id was taken for another amount.
    """
    keys = store.keys.wallet(request.wallet_id)
    index = store.keys.hold_index(request.wallet_id)
    member = hold_index_member(request.wallet_id, request.hold_id)
    # Index first (LT: keep the earliest expiry on retries): a crash after this line leaves a
    # stale entry the sweeper drops; the reverse order could leave a hold nobody expires.
    await store.client.zadd(index, {member: request.expires_at_ms}, lt=True)
    raw = await store.scripts.hold_reserve(
        keys=[
            keys.wallet,
            keys.holds,
            keys.hold_exp,
            keys.hold(request.hold_id),
            *admission_keys(keys, request.member_id, request.limits),
        ],
        args=[
            request.hold_id,
            request.member_id,
            request.expires_at_ms,
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
    result = _shaped(request.wallet_id, request.hold_id, as_list(raw), HoldState.HELD)
    if result.outcome is HoldOutcome.DUPLICATE and result.credits != request.credits:
        raise IdempotencyConflict(
            f"hold {request.hold_id} is already held for {result.credits} credits",
            hold_id=request.hold_id,
            credits=request.credits,
        )
    return result


async def capture_hold(
    store: WalletStore, wallet_id: str, hold_id: str, actual_credits: int, now_ms: int
) -> HoldResult:
    """Phase two: charge ``actual_credits`` (<= held) and return the rest to available.

    The captured amount becomes an in-flight usage event with ``event_id = hold_id``: the
    caller produces that event to ``usage.authorized`` like any authorised consume, and
    :func:`aggregator.authorize.release` undoes it if the produce fails. Outcomes:
    ``CAPTURED``; ``DUPLICATE`` (captured before with this amount); ``EXPIRED`` (the hold was
    due, so it expired instead); ``EXCEEDS_HOLD`` (more than held: nothing changes);
    ``ALREADY_RESOLVED``; ``NOT_FOUND``. Raises ``IdempotencyConflict`` if an event with the
    hold's id is already known.
    """
    require_id(hold_id, field="hold_id")
    require_int(actual_credits, field="actual_credits", minimum=0, maximum=MAX_CREDITS)
    require_now_ms(now_ms)
    keys = store.keys.wallet(wallet_id)
    raw = await store.scripts.hold_capture(
        keys=[*_hold_keys(keys, hold_id), keys.in_flight, keys.event(hold_id)],
        args=[hold_id, actual_credits, now_ms, store.record_ttl_ms],
    )
    reply = as_list(raw)
    if text(reply[0]) == "event_id_conflict":
        raise IdempotencyConflict(
            f"hold {hold_id} cannot settle as event {hold_id}: that event id is already used",
            hold_id=hold_id,
        )
    result = _shaped(wallet_id, hold_id, reply, HoldState.CAPTURED, actual_credits)
    await _unindex_if_resolved(store, result)
    return result


async def release_hold(store: WalletStore, wallet_id: str, hold_id: str, now_ms: int) -> HoldResult:
    """Void a hold: everything held returns to available. Idempotent.

    Outcomes: ``RELEASED``; ``DUPLICATE``; ``EXPIRED`` (it was due: resolved as expired, same
    credits back); ``ALREADY_RESOLVED`` (captured or expired earlier); ``NOT_FOUND``.
    """
    return await _release(store, wallet_id, hold_id, now_ms, mode="release")


async def expire_hold(store: WalletStore, wallet_id: str, hold_id: str, now_ms: int) -> HoldResult:
    """Expire one hold if it is due (the sweeper's step). Never releases a hold early.

    Outcomes: ``EXPIRED``; ``NOT_DUE``; ``DUPLICATE`` (it had expired already);
    ``ALREADY_RESOLVED`` (captured or released); ``TOMBSTONED`` (no such hold: the id is
    marked expired so a reservation racing with the sweep cannot create it afterwards).
    """
    return await _release(store, wallet_id, hold_id, now_ms, mode="expire")


async def _release(
    store: WalletStore,
    wallet_id: str,
    hold_id: str,
    now_ms: int,
    *,
    mode: Literal["release", "expire"],
) -> HoldResult:
    require_id(hold_id, field="hold_id")
    require_now_ms(now_ms)
    keys = store.keys.wallet(wallet_id)
    raw = await store.scripts.hold_release(
        keys=list(_hold_keys(keys, hold_id)),
        args=[hold_id, now_ms, store.record_ttl_ms, mode],
    )
    repeat_of = HoldState.RELEASED if mode == "release" else HoldState.EXPIRED
    result = _shaped(wallet_id, hold_id, as_list(raw), repeat_of)
    await _unindex_if_resolved(store, result)
    return result


def _hold_keys(keys: WalletKeys, hold_id: str) -> tuple[str, str, str, str]:
    return keys.wallet, keys.holds, keys.hold_exp, keys.hold(hold_id)


def _shaped(
    wallet_id: str,
    hold_id: str,
    reply: Sequence[object],
    repeat_of: HoldState,
    captured: int | None = None,
) -> HoldResult:
    result = hold_result_from_reply(wallet_id, hold_id, reply)
    if result.outcome is not HoldOutcome.ALREADY_RESOLVED:
        return result
    return replace(result, outcome=classify_existing(result, repeat_of, captured))


async def _unindex_if_resolved(store: WalletStore, result: HoldResult) -> None:
    """Drop the sweeper's index entry once the hold has resolved (best effort: a leftover
    entry is dropped by the sweeper when it finds the hold resolved)."""
    if result.state not in (None, HoldState.HELD):
        member = hold_index_member(result.wallet_id, result.hold_id)
        await store.client.zrem(store.keys.hold_index(result.wallet_id), member)
