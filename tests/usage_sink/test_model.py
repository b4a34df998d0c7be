"""UsageRow refuses what ClickHouse could not store faithfully."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from domain.errors import InvalidAmount, InvalidInput
from settlement.usage_sink import UsageRow

AT = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
VALID: dict[str, Any] = {
    "event_id": "evt-1",
    "wallet_id": "wallet-1",
    "member_id": "member-1",
    "feature": "ai.summary",
    "category": "ai",
    "quantity": 3,
    "credits": 12,
    "pricing_version": 2,
    "occurred_at": AT,
    "settled_at": AT + timedelta(seconds=1),
}


def make(**changes: Any) -> UsageRow:
    return UsageRow(**{**VALID, **changes})


def test_a_valid_row_is_frozen() -> None:
    row = make()
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.credits = 5  # type: ignore[misc]


def test_zero_amounts_and_no_member_are_allowed() -> None:
    row = make(quantity=0, credits=0, pricing_version=0, member_id=None)
    assert (row.quantity, row.credits, row.member_id) == (0, 0, None)


def test_timestamps_are_normalised_to_utc() -> None:
    ist = timezone(timedelta(hours=5, minutes=30))
    row = make(occurred_at=datetime(2024, 3, 1, 17, 30, tzinfo=ist))
    assert row.occurred_at == AT
    assert row.occurred_at.tzinfo is UTC


@pytest.mark.parametrize("field", ["event_id", "wallet_id", "feature", "category", "member_id"])
@pytest.mark.parametrize("value", ["", "tab\there", "new\nline", "x" * 257, 42])
def test_bad_identifiers_are_refused(field: str, value: object) -> None:
    with pytest.raises(InvalidInput):
        make(**{field: value})


@pytest.mark.parametrize("field", ["quantity", "credits", "pricing_version"])
@pytest.mark.parametrize("value", [-1, 1.0, True, "3", None])
def test_bad_amounts_are_refused(field: str, value: object) -> None:
    with pytest.raises(InvalidAmount):
        make(**{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [("credits", 10**12 + 1), ("quantity", 10**12 + 1), ("pricing_version", 2**32)],
)
def test_amounts_beyond_storage_are_refused(field: str, value: int) -> None:
    with pytest.raises(InvalidAmount):
        make(**{field: value})


@pytest.mark.parametrize("field", ["occurred_at", "settled_at"])
@pytest.mark.parametrize(
    "value",
    [
        datetime(2024, 3, 1, 12, 0),  # naive
        datetime(1999, 12, 31, 23, 59, tzinfo=UTC),
        datetime(2100, 1, 1, tzinfo=UTC),
        "2024-03-01T12:00:00Z",
        AT.date(),
    ],
)
def test_bad_timestamps_are_refused(field: str, value: object) -> None:
    with pytest.raises(InvalidInput):
        make(**{field: value})


def test_unicode_and_punctuation_in_ids_are_fine() -> None:
    assert make(wallet_id="wället/ü'\\1").wallet_id == "wället/ü'\\1"
