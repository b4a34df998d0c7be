"""Razorpay's signatures and webhook payloads: verified and parsed (adapter and sandbox share it).

* Payment signature (checkout success handler):
  ``HMAC-SHA256(key_secret, f"{order_id}|{payment_id}")`` in lower-case hex.
* Webhook signature: ``HMAC-SHA256(webhook_secret, raw_body)`` in hex, in the
  ``X-Razorpay-Signature`` header, computed over the raw bytes (never a re-serialised body).
* Replay key: the ``X-Razorpay-Event-Id`` header. Freshness: the payload's ``created_at``
  (unix seconds) must be within ``max_age`` of now (and not ahead by more than ``max_skew``).

Signatures are compared with :func:`hmac.compare_digest` (constant time).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from api.payments.gateway import WebhookEvent, WebhookKind
from domain.errors import SignatureInvalid

SIGNATURE_HEADER = "x-razorpay-signature"
EVENT_ID_HEADER = "x-razorpay-event-id"
DEFAULT_MAX_AGE = timedelta(hours=36)
"""Razorpay re-delivers a failing webhook for up to 24 hours; older deliveries are refused."""
DEFAULT_MAX_SKEW = timedelta(minutes=5)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_REASON_CHARS = re.compile(r"[^a-z0-9_]+")


def hmac_hex(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def payment_signature(key_secret: str, order_id: str, payment_id: str) -> str:
    return hmac_hex(key_secret, f"{order_id}|{payment_id}".encode())


def signatures_match(expected: str, given: object) -> bool:
    """Constant-time comparison; anything but 64 lower-case hex characters never matches."""
    if not isinstance(given, str) or not _HEX64.fullmatch(given):
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def verify_payment_signature(
    key_secret: str, order_id: str, payment_id: str, signature: object
) -> None:
    if not signature:
        raise SignatureInvalid("payment signature is missing", reason="missing_signature")
    if not signatures_match(payment_signature(key_secret, order_id, payment_id), signature):
        raise SignatureInvalid("payment signature does not match", reason="bad_signature")


def lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {key.lower(): value for key, value in headers.items()}


def verify_webhook(
    webhook_secret: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    now: datetime,
    max_age: timedelta = DEFAULT_MAX_AGE,
    max_skew: timedelta = DEFAULT_MAX_SKEW,
) -> WebhookEvent:
    """Verify and parse one delivery; raise :class:`SignatureInvalid` with the reason to log."""
    lowered = lower_headers(headers)
    given = lowered.get(SIGNATURE_HEADER)
    if not given:
        raise SignatureInvalid("webhook signature header is missing", reason="missing_signature")
    if not signatures_match(hmac_hex(webhook_secret, body), given):
        raise SignatureInvalid("webhook signature does not match", reason="bad_signature")
    event_id = lowered.get(EVENT_ID_HEADER, "")
    if not event_id or len(event_id) > 128:
        raise SignatureInvalid("webhook event id header is missing", reason="malformed")
    payload = _json_object(body)
    created_at = _created_at(payload)
    if now - created_at > max_age or created_at - now > max_skew:
        raise SignatureInvalid(
            f"webhook created at {created_at.isoformat()} is outside the accepted window",
            reason="stale",
        )
    return _parse(event_id, payload, created_at)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise SignatureInvalid("webhook body is not JSON", reason="malformed") from None
    if not isinstance(payload, dict):
        raise SignatureInvalid("webhook body is not a JSON object", reason="malformed")
    return payload


def _created_at(payload: Mapping[str, Any]) -> datetime:
    value = payload.get("created_at")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SignatureInvalid("webhook created_at is missing", reason="malformed")
    return datetime.fromtimestamp(value, UTC)


def _entity(payload: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    body = payload.get("payload")
    holder = body.get(name) if isinstance(body, dict) else None
    entity = holder.get("entity") if isinstance(holder, dict) else None
    return entity if isinstance(entity, dict) else {}


def _text(entity: Mapping[str, Any], key: str) -> str | None:
    value = entity.get(key)
    return value if isinstance(value, str) and value else None


def _paise(entity: Mapping[str, Any], key: str) -> int | None:
    value = entity.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def reason_code(raw: str | None) -> str | None:
    """A gateway's error reason as a stable lower_snake code (``card_declined``)."""
    if not raw:
        return None
    code = _REASON_CHARS.sub("_", raw.lower()).strip("_")[:64]
    return code if code and code[0].isalpha() else f"gateway_{code}"[:64]


def _parse(event_id: str, payload: Mapping[str, Any], created_at: datetime) -> WebhookEvent:
    raw_type = payload.get("event")
    if not isinstance(raw_type, str):
        raise SignatureInvalid("webhook event type is missing", reason="malformed")
    try:
        kind = WebhookKind(raw_type)
    except ValueError:
        kind = WebhookKind.OTHER
    payment, refund = _entity(payload, "payment"), _entity(payload, "refund")
    notes = payment.get("notes")
    failure = _text(payment, "error_reason") or _text(payment, "error_code")
    return WebhookEvent(
        event_id=event_id,
        kind=kind,
        raw_type=raw_type,
        created_at=created_at,
        order_id=_text(payment, "order_id"),
        payment_id=_text(payment, "id") or _text(refund, "payment_id"),
        amount_paise=_paise(payment, "amount"),
        failure_reason=reason_code(failure) if kind is WebhookKind.PAYMENT_FAILED else None,
        refund_id=_text(refund, "id"),
        refund_amount_paise=_paise(refund, "amount"),
        notes={str(k): str(v) for k, v in notes.items()} if isinstance(notes, dict) else {},
    )
