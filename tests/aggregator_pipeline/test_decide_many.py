"""EventAuthorizer.decide_many against real Redis and PostgreSQL: the verdicts of decide() one
event after another, with the batch's authorisations in one round trip."""

from __future__ import annotations

import pytest

from aggregator.admission import Verdict, VerdictCode, refused
from aggregator.mirror import snapshot
from domain.errors import InvalidInput, UnknownFeature
from meter.consume import EventAuthorizer
from meter.schema import UsageEvent
from tests.aggregator_pipeline.conftest import Rig, usage

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


def batch(prefix: str) -> list[UsageEvent]:
    """Two unloaded wallets (one runs dry), an unknown wallet and feature, a hold capture in
    the middle of a wallet's events, and a redelivery."""
    w1, w2 = f"{prefix}-w1", f"{prefix}-w2"
    events = [usage(f"{prefix}-e{i}", w1 if i % 2 else w2, "api.heavy_query") for i in range(12)]
    events += [
        usage(f"{prefix}-ghost", f"{prefix}-ghost"),
        usage(f"{prefix}-odd", w2, "no.such_feature"),
        usage(f"{prefix}-h1", f"{prefix}-w3", "api.heavy_query"),
        usage(f"{prefix}-cap", f"{prefix}-w3", "api.heavy_query", hold_id=f"{prefix}-hold"),
        usage(f"{prefix}-h2", f"{prefix}-w3", "api.heavy_query"),
        usage(f"{prefix}-e3", w1, "api.heavy_query"),  # redelivered
    ]
    return events


def shape(verdicts: list[Verdict], prefix: str) -> list[tuple[object, ...]]:
    return [
        (v.event.event_id.removeprefix(prefix), v.code, v.credits, v.available_after, v.replayed)
        for v in verdicts
    ]


async def fund(rig: Rig, prefix: str) -> None:
    await rig.fund(f"{prefix}-w1", 22)  # 4 of its 6 events at 5 credits
    await rig.fund(f"{prefix}-w2", 1_000)
    await rig.fund(f"{prefix}-w3", 1_000)


async def one_by_one(authorizer: EventAuthorizer, events: list[UsageEvent]) -> list[Verdict]:
    """What the aggregator did before decide_many: decide() per event, in order."""
    verdicts = []
    for event in events:
        try:
            verdicts.append(await authorizer.decide(event))
        except UnknownFeature as exc:
            verdicts.append(refused(event, VerdictCode.UNKNOWN_FEATURE, exc.message))
        except InvalidInput as exc:
            verdicts.append(refused(event, VerdictCode.INVALID_REQUEST, exc.message))
    return verdicts


async def test_the_verdicts_are_those_of_one_decide_per_event(rig: Rig) -> None:
    await fund(rig, "a")
    await fund(rig, "b")
    authorizer = rig.authorizer()
    expected = await one_by_one(authorizer, batch("a"))

    verdicts = await authorizer.decide_many(batch("b"))

    assert shape(verdicts, "b") == shape(expected, "a")
    codes = [v.code for v in verdicts]
    assert VerdictCode.INSUFFICIENT_CREDITS in codes  # w1 ran dry mid-batch
    assert {VerdictCode.UNKNOWN_WALLET, VerdictCode.UNKNOWN_FEATURE} <= set(codes)
    assert VerdictCode.HOLD_NOT_FOUND in codes
    assert verdicts[-1].replayed
    for wallet in ("w1", "w2", "w3"):
        a, b = await snapshot(rig.store, f"a-{wallet}"), await snapshot(rig.store, f"b-{wallet}")
        assert a is not None
        assert b is not None
        assert (b.available, b.in_flight_total) == (a.available, a.in_flight_total)
        assert b.available >= 0


async def test_a_redelivered_batch_gets_its_original_verdicts(rig: Rig) -> None:
    await fund(rig, "r")
    authorizer = rig.authorizer()
    first = await authorizer.decide_many(batch("r"))
    before = await snapshot(rig.store, "r-w1")

    again = await authorizer.decide_many(batch("r"))

    assert [v.code for v in again] == [v.code for v in first]
    assert all(v.replayed for v in again if v.authorized)
    assert await snapshot(rig.store, "r-w1") == before  # nothing reserved twice
