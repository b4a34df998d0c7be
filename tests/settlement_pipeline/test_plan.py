"""The pure part of a batch: decoding, and what each sink gets from an authorised event."""

from __future__ import annotations

from domain.pricing import load_catalogue
from meter.schema import Decision, SchemaReason, encode
from settlement.worker import (
    decode_batch,
    plan_batch,
    pricing_version_number,
    settlement_id,
)
from tests.settlement_pipeline.support import NOW, as_records, usage_authorized


def test_undecodable_records_are_set_aside_with_their_reason() -> None:
    good = encode(usage_authorized("ev-1", "wal_p", 7))
    decoded, poison = decode_batch(as_records("t", [b"\xff", good, b"[]", b""]))
    assert [d.event.event_id for d in decoded] == ["ev-1"]
    assert [(r.offset, exc.reason) for r, exc in poison] == [
        (0, SchemaReason.MALFORMED_JSON),
        (2, SchemaReason.NOT_AN_OBJECT),
        (3, SchemaReason.MALFORMED_JSON),
    ]


def test_a_plan_keeps_the_first_copy_and_splits_free_and_charged_events() -> None:
    charged = usage_authorized("ev-1", "wal_p", 7)
    free = usage_authorized("ev-2", "wal_p", 0, feature="community.invite_member")
    plan = plan_batch([charged, free, charged], load_catalogue(), NOW)
    assert plan.repeated == 1
    assert [c.event_id for c in plan.charges] == ["ev-1"]
    assert [(e.settlement_id, e.charge is None) for e in plan.events] == [
        ("ev-1", False),
        ("ev-2", True),
    ]
    rows = [e.row for e in plan.events]
    assert [(r.category, r.credits, r.pricing_version) for r in rows if r] == [
        ("api", 7, 1),
        ("community", 0, 1),
    ]


def test_what_the_ledger_cannot_take_is_refused_before_it() -> None:
    too_long = usage_authorized("ev-1", "w" * 100, 7)  # valid on the wire, too long for the ledger
    plan = plan_batch([too_long], load_catalogue(), NOW)
    assert plan.events == ()
    (refusal,) = plan.refused
    assert (refusal.reason, refusal.settlement_id) == ("invalid_request", "ev-1")


def test_ledger_metadata_keeps_floats_as_text_and_a_non_numeric_pricing_tag() -> None:
    tagged = usage_authorized(
        "ev-1", "wal_p", 7, metadata={"latency_s": 1.5, "ok": True}, pricing_version="2026-03"
    )
    (event,) = plan_batch([tagged], load_catalogue(), NOW).events
    assert event.charge is not None
    assert event.charge.pricing_version is None
    assert dict(event.charge.metadata) == {
        "latency_s": "1.5",
        "ok": True,
        "pricing_version_tag": "2026-03",
    }
    assert event.row is not None
    assert event.row.pricing_version == 0


def test_a_captured_hold_settles_under_its_hold_id_in_every_sink() -> None:
    captured = usage_authorized("ev-ai", "wal_p", 25, feature="ai.summary", hold_id="hold-1")
    assert captured.decision is Decision.HOLD_CAPTURED
    assert settlement_id(captured) == "hold-1"
    assert settlement_id(usage_authorized("ev-x", "wal_p", 1)) == "ev-x"
    (event,) = plan_batch([captured], load_catalogue(), NOW).events
    assert event.charge is not None
    assert event.row is not None
    assert (event.charge.event_id, event.row.event_id) == ("hold-1", "hold-1")
    assert event.charge.metadata["event_id"] == "ev-ai"  # the producer's id stays traceable


def test_features_of_another_pricing_version_keep_their_key_category() -> None:
    unknown = usage_authorized("ev-1", "wal_p", 3, feature="storage.cold_archive_v9")
    (event,) = plan_batch([unknown], load_catalogue(), NOW).events
    assert event.row is not None
    assert event.row.category == "storage"


def test_pricing_version_numbers() -> None:
    assert pricing_version_number("3") == 3
    assert pricing_version_number("2026-03-01") is None
    assert pricing_version_number("9" * 10) is None  # beyond the ledger's integer column
