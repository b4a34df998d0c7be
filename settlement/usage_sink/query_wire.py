"""JSON shapes of the usage query service, shared by the server (settlement) and the client (API).

Kept beside the query functions so a change of shape is one diff for both ends. Decoding is
strict: anything unexpected raises :class:`~domain.errors.Unavailable` (the peer is broken or
of another version — retrying elsewhere may help, the caller's input was fine).
"""

from __future__ import annotations

from datetime import date
from typing import Any, Final

from domain.errors import CreditsError, InvalidInput, NotFound, Unavailable
from settlement.usage_sink.model import (
    BreakdownBy,
    BreakdownKey,
    BreakdownRow,
    DailyCategoryCredits,
    UsageTotals,
)

WIRE_VERSION: Final = "v1"
PATH_TOTALS: Final = f"/{WIRE_VERSION}/totals"
PATH_BREAKDOWN: Final = f"/{WIRE_VERSION}/breakdown"
PATH_DAILY: Final = f"/{WIRE_VERSION}/daily-by-category"
PATH_HEALTH: Final = "/health"

Json = dict[str, Any]


def encode_totals(totals: UsageTotals) -> Json:
    return {"credits": totals.credits, "events": totals.events}


def decode_totals(body: Any) -> UsageTotals:
    try:
        return UsageTotals(_int(body["credits"]), _int(body["events"]))
    except (KeyError, TypeError) as exc:
        raise _bad_reply(exc) from exc


def encode_breakdown(rows: list[BreakdownRow]) -> Json:
    return {
        "rows": [
            {
                "key": row.key.isoformat() if isinstance(row.key, date) else row.key,
                "credits": row.credits,
                "events": row.events,
                "quantity": row.quantity,
            }
            for row in rows
        ]
    }


def decode_breakdown(body: Any, by: BreakdownBy) -> list[BreakdownRow]:
    try:
        return [
            BreakdownRow(
                key=_key(row["key"], by),
                credits=_int(row["credits"]),
                events=_int(row["events"]),
                quantity=_int(row["quantity"]),
            )
            for row in body["rows"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise _bad_reply(exc) from exc


def encode_daily(rows: list[DailyCategoryCredits]) -> Json:
    return {
        "rows": [
            {"day": row.day.isoformat(), "category": row.category, "credits": row.credits}
            for row in rows
        ]
    }


def decode_daily(body: Any) -> list[DailyCategoryCredits]:
    try:
        return [
            DailyCategoryCredits(
                date.fromisoformat(row["day"]), str(row["category"]), _int(row["credits"])
            )
            for row in body["rows"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise _bad_reply(exc) from exc


def encode_error(exc: CreditsError) -> Json:
    field = exc.details.get("field")
    return {"code": exc.code, "message": exc.message, "field": field}


def error_status(exc: CreditsError) -> int:
    """HTTP status of a typed error: the client maps it back to the same class family."""
    if isinstance(exc, InvalidInput):
        return 400
    if isinstance(exc, NotFound):
        return 404
    return 503


def decode_error(status: int, body: Any) -> CreditsError:
    """The typed error a non-2xx reply stands for (bad input stays bad input)."""
    message = body.get("message") if isinstance(body, dict) else None
    field = body.get("field") if isinstance(body, dict) else None
    text = str(message or f"usage query service answered HTTP {status}")
    if status == 400:
        return InvalidInput(text, field=field)
    if status == 404:
        return NotFound(text)
    return Unavailable(f"usage query service failed: {text}")


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _key(raw: object, by: BreakdownBy) -> BreakdownKey:
    if raw is None:
        if by != "member":
            raise TypeError("only member breakdowns have empty keys")
        return None
    if not isinstance(raw, str):
        raise TypeError(f"expected a string key, got {raw!r}")
    return date.fromisoformat(raw) if by == "day" else raw


def _bad_reply(exc: BaseException) -> Unavailable:
    return Unavailable(f"usage query service sent a malformed reply: {exc!r}")
