"""The v1 wire contract: examples, strictness, stable reason codes, round trips."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from domain.errors import InvalidInput
from meter.schema import (
    DECODERS,
    MAX_DEAD_LETTER_RAW_BYTES,
    MAX_EVENT_BYTES,
    BurnWindow,
    DeadLetter,
    Decision,
    LowBalance,
    MessageSource,
    SchemaReason,
    SchemaViolation,
    SuspiciousBurn,
    UsageAuthorized,
    UsageEvent,
    decode_dead_letter,
    decode_suspicious_burn,
    decode_usage_authorized,
    decode_usage_event,
    decode_wallet_event,
    encode,
    make_usage_event,
)
from meter.topics import TopicNames
from tests.meter.examples import Example, all_examples, invalid_examples, valid_examples

IST = timezone(timedelta(hours=5, minutes=30))
AT = datetime(2026, 3, 14, 10, 15, 30, tzinfo=IST)


def event_fields(**overrides: object) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "schema_version": 1,
        "event_id": "svc:0001",
        "wallet_id": "wal_1",
        "member_id": "mem_1",
        "feature": "ai.summary",
        "quantity": 3,
        "occurred_at": "2026-03-14T10:15:30+05:30",
        "metadata": {"channel": "whatsapp"},
    }
    fields.update(overrides)
    return fields


def raw_event(**overrides: object) -> bytes:
    return json.dumps(event_fields(**overrides)).encode()


def reason_of(raw: bytes) -> SchemaReason:
    with pytest.raises(SchemaViolation) as caught:
        decode_usage_event(raw)
    return caught.value.reason


# --- examples: the contract every consumer is tested against ------------------------------------


@pytest.mark.parametrize("example", all_examples(), ids=lambda e: e.id)
def test_every_example_decodes_or_fails_with_its_reason(example: Example) -> None:
    decode = DECODERS[example.topic]
    if example.expected_reason is None:
        decoded = decode(example.raw)
        assert decode(encode(decoded)) == decoded  # what we encode, we read back identically
    else:
        with pytest.raises(SchemaViolation) as caught:
            decode(example.raw)
        assert caught.value.reason is example.expected_reason


def test_every_topic_has_valid_and_invalid_examples() -> None:
    for topic in TopicNames().all():
        assert valid_examples(topic), topic
        assert invalid_examples(topic), topic
    assert set(DECODERS) == set(TopicNames().all())


# --- usage events -------------------------------------------------------------------------------


def test_valid_event_round_trips_compactly() -> None:
    event = decode_usage_event(raw_event(hold_id="hold_9"))
    assert event.quantity == 3
    assert event.occurred_at == AT
    assert event.hold_id == "hold_9"
    assert dict(event.metadata) == {"channel": "whatsapp"}
    wire = encode(event)
    assert b" " not in wire.replace(b"ai.summary", b"")  # compact separators
    assert decode_usage_event(wire) == event
    assert json.loads(wire)["occurred_at"] == "2026-03-14T10:15:30+05:30"  # offset preserved


@pytest.mark.parametrize(
    ("quantity", "why"),
    [
        ("5", "string"),
        (5.0, "float"),
        (True, "bool"),
        (0, "zero"),
        (-1, "negative"),
        (10**9 + 1, "too large"),
        (None, "null"),
    ],
)
def test_quantity_is_a_strict_positive_integer(quantity: object, why: str) -> None:
    assert reason_of(raw_event(quantity=quantity)) is SchemaReason.INVALID_QUANTITY, why


def test_quantity_float_literal_is_refused_even_when_whole() -> None:
    raw = raw_event().replace(b'"quantity": 3', b'"quantity": 3.0')
    assert reason_of(raw) is SchemaReason.INVALID_QUANTITY


@pytest.mark.parametrize(
    "value",
    [
        "2026-03-14T10:15:30",
        "2026-03-14 10:15:30Z",
        "2026-03-14T10:15Z",
        "14/03/2026",
        "2026-13-01T00:00:00Z",
        1773463530,
        "",
    ],
)
def test_occurred_at_must_be_rfc3339_with_offset(value: object) -> None:
    assert reason_of(raw_event(occurred_at=value)) is SchemaReason.INVALID_TIMESTAMP


def test_timestamps_accept_z_lowercase_and_nanoseconds() -> None:
    event = decode_usage_event(raw_event(occurred_at="2026-03-14t04:45:30.123456789z"))
    assert event.occurred_at == datetime(2026, 3, 14, 4, 45, 30, 123456, tzinfo=UTC)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("event_id", "", SchemaReason.INVALID_EVENT_ID),
        ("event_id", "x" * 129, SchemaReason.INVALID_EVENT_ID),
        ("event_id", "has space", SchemaReason.INVALID_EVENT_ID),
        ("event_id", "line\n", SchemaReason.INVALID_EVENT_ID),
        ("event_id", 42, SchemaReason.INVALID_EVENT_ID),
        ("wallet_id", "wal/1", SchemaReason.INVALID_WALLET_ID),
        ("member_id", None, SchemaReason.INVALID_MEMBER_ID),
        ("hold_id", "", SchemaReason.INVALID_HOLD_ID),
        ("feature", "ai..summary", SchemaReason.INVALID_FEATURE),
        ("feature", "Ai.summary", SchemaReason.INVALID_FEATURE),
        ("schema_version", 2, SchemaReason.UNSUPPORTED_SCHEMA_VERSION),
        ("schema_version", True, SchemaReason.UNSUPPORTED_SCHEMA_VERSION),
        ("schema_version", "1", SchemaReason.UNSUPPORTED_SCHEMA_VERSION),
    ],
)
def test_field_errors_have_stable_reasons(field: str, value: object, reason: SchemaReason) -> None:
    assert reason_of(raw_event(**{field: value})) is reason


def test_event_id_accepts_the_full_charset_at_max_length() -> None:
    event_id = ("Az09_.:-" * 16)[:128]
    assert decode_usage_event(raw_event(event_id=event_id)).event_id == event_id


@pytest.mark.parametrize(
    "metadata",
    [
        {"nested": {"a": 1}},
        {"list": [1, 2]},
        {f"k{i}": i for i in range(33)},
        {"long": "x" * 513},
        {"": "empty key"},
        {"big": 2**63},
        {"blob": "x" * 400, **{f"k{i}": "y" * 400 for i in range(10)}},
        ["not", "an", "object"],
    ],
)
def test_metadata_is_flat_and_bounded(metadata: object) -> None:
    assert reason_of(raw_event(metadata=metadata)) is SchemaReason.INVALID_METADATA


def test_metadata_non_finite_numbers_are_refused() -> None:
    raw = raw_event().replace(b'"whatsapp"', b"NaN")
    assert reason_of(raw) in (SchemaReason.INVALID_METADATA, SchemaReason.MALFORMED_JSON)


def test_metadata_is_read_only() -> None:
    event = decode_usage_event(raw_event())
    with pytest.raises(TypeError):
        event.metadata["channel"] = "sms"  # type: ignore[index]
    with pytest.raises(ValidationError):
        event.quantity = 4  # type: ignore[misc]


def test_empty_metadata_is_read_only_and_encodes_as_an_empty_object() -> None:
    events = [decode_usage_event(raw_event(metadata={})) for _ in range(2)]
    defaulted = event_fields()
    del defaulted["metadata"]
    events.append(decode_usage_event(json.dumps(defaulted).encode()))
    for event in events:
        assert dict(event.metadata) == {}
        with pytest.raises(TypeError):
            event.metadata["channel"] = "sms"  # type: ignore[index]
        assert json.loads(encode(event))["metadata"] == {}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", SchemaReason.MALFORMED_JSON),
        (b"{", SchemaReason.MALFORMED_JSON),
        (b"\xff\xfe{}", SchemaReason.MALFORMED_JSON),
        (b"[]", SchemaReason.NOT_AN_OBJECT),
        (b'"event"', SchemaReason.NOT_AN_OBJECT),
        (b"null", SchemaReason.NOT_AN_OBJECT),
        (b"{}", SchemaReason.MISSING_FIELD),
    ],
)
def test_payload_shape_errors(raw: bytes, reason: SchemaReason) -> None:
    assert reason_of(raw) is reason


def test_schema_version_is_required_on_the_wire() -> None:
    fields = event_fields()
    del fields["schema_version"]
    with pytest.raises(SchemaViolation) as caught:
        decode_usage_event(json.dumps(fields).encode())
    assert caught.value.reason is SchemaReason.MISSING_FIELD
    assert caught.value.details["field"] == "schema_version"


def test_a_newer_version_is_unsupported_rather_than_a_list_of_field_errors() -> None:
    fields = event_fields(schema_version=2, units="tokens")
    del fields["quantity"]
    assert reason_of(json.dumps(fields).encode()) is SchemaReason.UNSUPPORTED_SCHEMA_VERSION


def test_a_typo_is_an_unknown_field_not_a_missing_one() -> None:
    fields = event_fields(quantiy=3)
    del fields["quantity"]
    with pytest.raises(SchemaViolation) as caught:
        decode_usage_event(json.dumps(fields).encode())
    assert caught.value.reason is SchemaReason.UNKNOWN_FIELD
    assert caught.value.details["field"] == "quantiy"


def test_oversized_payload_is_refused_before_parsing() -> None:
    raw = b"{" + b" " * MAX_EVENT_BYTES + b"}"
    assert reason_of(raw) is SchemaReason.PAYLOAD_TOO_LARGE


def test_schema_violation_is_invalid_input_and_not_retryable() -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_usage_event(b"{")
    assert isinstance(caught.value, SchemaViolation)
    assert caught.value.code == "invalid_event"
    assert not caught.value.retryable
    assert caught.value.details["reason"] == "malformed_json"


def test_make_usage_event_takes_python_values_and_raises_typed_errors() -> None:
    fields = event_fields(occurred_at=AT)
    del fields["schema_version"]
    event = make_usage_event(**fields)
    assert event.schema_version == 1
    assert decode_usage_event(encode(event)) == event
    with pytest.raises(SchemaViolation) as caught:
        make_usage_event(**{**fields, "quantity": 2.0})
    assert caught.value.reason is SchemaReason.INVALID_QUANTITY
    with pytest.raises(SchemaViolation) as naive:
        make_usage_event(**{**fields, "occurred_at": datetime(2026, 3, 14)})
    assert naive.value.reason is SchemaReason.INVALID_TIMESTAMP


# --- envelopes ----------------------------------------------------------------------------------


def usage_event() -> UsageEvent:
    return decode_usage_event(raw_event())


def test_authorized_envelope_round_trip_and_nested_reasons() -> None:
    envelope = UsageAuthorized(
        event=usage_event(),
        credits=12,
        pricing_version="2026-03-01",
        authorised_at=AT,
        decision=Decision.AUTHORIZED,
    )
    assert decode_usage_authorized(encode(envelope)) == envelope
    as_json = json.loads(encode(envelope))
    as_json["event"]["quantity"] = "3"
    with pytest.raises(SchemaViolation) as caught:
        decode_usage_authorized(json.dumps(as_json).encode())
    assert caught.value.reason is SchemaReason.INVALID_QUANTITY
    assert caught.value.details["field"] == "event.quantity"
    as_json["event"]["quantity"], as_json["credits"] = 3, 1.0
    with pytest.raises(SchemaViolation) as amount:
        decode_usage_authorized(json.dumps(as_json).encode())
    assert amount.value.reason is SchemaReason.INVALID_AMOUNT


def test_wallet_events_are_discriminated_by_type() -> None:
    low = LowBalance(
        type="low_balance",
        event_id="wev_1",
        wallet_id="wal_1",
        occurred_at=AT,
        available_credits=5,
        threshold_credits=100,
    )
    decoded = decode_wallet_event(encode(low))
    assert isinstance(decoded, LowBalance)
    assert decoded == low
    as_json = json.loads(encode(low))
    as_json["type"] = "balance_exploded"
    with pytest.raises(SchemaViolation) as caught:
        decode_wallet_event(json.dumps(as_json).encode())
    assert caught.value.reason is SchemaReason.UNKNOWN_EVENT_TYPE


def test_suspicious_burn_window_must_be_ordered() -> None:
    alert = SuspiciousBurn(
        alert_id="alrt_1",
        wallet_id="wal_1",
        reason_codes=("burn_rate_spike",),
        score=90,
        window=BurnWindow(start=AT, end=AT + timedelta(minutes=5)),
        credits_in_window=4000,
        events_in_window=1000,
        detected_at=AT + timedelta(minutes=5),
    )
    assert decode_suspicious_burn(encode(alert)) == alert
    as_json = json.loads(encode(alert))
    as_json["window"]["end"] = as_json["window"]["start"]
    with pytest.raises(SchemaViolation) as caught:
        decode_suspicious_burn(json.dumps(as_json).encode())
    assert caught.value.reason is SchemaReason.INVALID_TIMESTAMP


def test_dead_letter_keeps_raw_bytes_and_truncates_huge_ones() -> None:
    source = MessageSource(
        topic="usage.events", partition=2, offset=99, key_base64=base64.b64encode(b"w").decode()
    )
    binary = b"\x00\xff not json"
    letter = DeadLetter.capture(
        binary, reason="malformed_json", message="bad", source=source, at=AT, details={"n": 1}
    )
    decoded = decode_dead_letter(encode(letter))
    assert decoded.raw() == binary
    assert decoded.raw_preview is None  # not UTF-8
    assert decoded.details == {"n": "1"}
    huge = b"x" * (MAX_DEAD_LETTER_RAW_BYTES + 10)
    big = DeadLetter.capture(huge, reason="payload_too_large", message="", source=source, at=AT)
    assert big.raw_truncated
    assert big.raw_size_bytes == len(huge)
    assert big.raw() == huge[:MAX_DEAD_LETTER_RAW_BYTES]
    assert big.raw_preview is not None
    assert len(big.raw_preview) == 4096
    assert decode_dead_letter(encode(big)) == big
