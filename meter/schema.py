"""The versioned wire contract of the metering topics (schema v1), with encode and decode.

One frozen, strict pydantic model per topic payload: :class:`UsageEvent` (``usage.events``),
:class:`UsageAuthorized`, :class:`UsageRejected`, :data:`WalletEvent` (a union discriminated by
``type``), :class:`SuspiciousBurn` and :class:`DeadLetter`. ``meter/examples/<topic>/`` holds
example payloads every consumer is tested against (``tests/meter/examples.py`` loads them).

Contract rules:

* Every payload carries ``"schema_version": 1``. A message without it, or with another value, is
  refused (``missing_field`` / ``unsupported_schema_version``), never guessed at.
* Unknown fields are refused (``unknown_field``): a typo such as ``"quantiy"`` must not turn into
  a silently defaulted field. Adding a field therefore means a new schema version, and consumers
  are upgraded before producers.
* No coercion: ``"5"``, ``5.0`` and ``true`` are not the integer ``5``.
* Timestamps are RFC 3339 with an explicit offset (``Z`` or ``+05:30``); digits beyond
  microseconds are truncated.
* Decoding never returns a half-valid value: it returns a model or raises :class:`SchemaViolation`
  whose ``reason`` is one stable :class:`SchemaReason` code (what a dead letter records).

Valid usage events that the business rules refuse (no credits, cap reached) go to
``usage.rejected``; payloads that are not valid v1 go to the dead-letter topic.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import to_json

from domain.errors import InvalidInput
from meter import topics

SCHEMA_VERSION: Final = 1
MAX_EVENT_BYTES: Final = 16 * 1024  # a usage event: ids, a feature key and <= 4 KiB of metadata
MAX_ENVELOPE_BYTES: Final = 1024 * 1024  # other payloads; a dead letter embeds the raw message
MAX_DEAD_LETTER_RAW_BYTES: Final = 256 * 1024  # base64 grows it by a third; stays under 1 MiB
DEAD_LETTER_PREVIEW_CHARS: Final = 4096
MAX_QUANTITY: Final = 1_000_000_000
METADATA_MAX_KEYS: Final = 32
METADATA_MAX_BYTES: Final = 4096
METADATA_MAX_STRING: Final = 512
_INT64_MAX: Final = 2**63 - 1  # metadata integers must fit the analytics store's Int64


class SchemaReason(StrEnum):
    """Stable reason codes for a payload that is not valid v1 (dead letters record them)."""

    MALFORMED_JSON = "malformed_json"
    NOT_AN_OBJECT = "not_an_object"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    MISSING_FIELD = "missing_field"
    UNKNOWN_FIELD = "unknown_field"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    INVALID_EVENT_ID = "invalid_event_id"
    INVALID_WALLET_ID = "invalid_wallet_id"
    INVALID_MEMBER_ID = "invalid_member_id"
    INVALID_HOLD_ID = "invalid_hold_id"
    INVALID_FEATURE = "invalid_feature"
    INVALID_QUANTITY = "invalid_quantity"
    INVALID_AMOUNT = "invalid_amount"
    INVALID_TIMESTAMP = "invalid_timestamp"
    INVALID_METADATA = "invalid_metadata"
    INVALID_FIELD = "invalid_field"


class SchemaViolation(InvalidInput):
    """A payload is not valid v1. Never retryable: dead-letter it with ``reason`` and move on."""

    code = "invalid_event"

    def __init__(self, reason: SchemaReason, message: str, **details: object) -> None:
        super().__init__(message, reason=reason.value, **details)
        self.reason = reason


# --- field types -------------------------------------------------------------------------------

Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
"""Event, wallet, member, hold and alert ids: 1-128 of ``A-Z a-z 0-9 _ . : -``."""

FeatureKey = Annotated[
    str, StringConstraints(max_length=64, pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
]
"""A pricing-catalogue key such as ``ai.summary``: dot-separated lower_snake segments."""

ReasonCode = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
"""A stable machine-readable code such as ``insufficient_credits``."""

VersionTag = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
Credits = Annotated[int, Field(ge=0)]
Message = Annotated[str, StringConstraints(max_length=2048)]
SchemaVersion = Annotated[int, Field(ge=SCHEMA_VERSION, le=SCHEMA_VERSION)]  # strict: not `true`


_RFC3339: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


def _parse_timestamp(value: object) -> datetime:
    """RFC 3339 with an offset, from a JSON string or an aware ``datetime`` (Python callers)."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and _RFC3339.fullmatch(value):
        try:
            parsed = datetime.fromisoformat(value.upper())
        except ValueError:  # well-formed but impossible, e.g. month 13 or 25:00
            raise ValueError(f"not a valid date-time: {value!r}") from None
    else:
        raise ValueError(f"expected an RFC 3339 timestamp with an offset, got {value!r}")
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError("timestamp must carry an offset (Z or +05:30)")
    return parsed


Timestamp = Annotated[datetime, PlainValidator(_parse_timestamp)]


def _metadata_scalar(value: object) -> str | int | float | bool | None:
    """Flat means flat: no objects or arrays, and no NaN or infinities."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("metadata numbers must be finite")
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise ValueError("metadata values must be a string, number, boolean or null")


MetadataValue = Annotated[str | int | float | bool | None, PlainValidator(_metadata_scalar)]


_NO_METADATA: Final[Mapping[str, MetadataValue]] = MappingProxyType({})


def _freeze_metadata(value: Mapping[str, MetadataValue]) -> Mapping[str, MetadataValue]:
    """Bound the flat metadata object and make it read-only."""
    if not value:  # the usual case: nothing to bound, one shared empty mapping
        return _NO_METADATA
    if len(value) > METADATA_MAX_KEYS:
        raise ValueError(f"at most {METADATA_MAX_KEYS} metadata keys, got {len(value)}")
    for key, item in value.items():
        if not 1 <= len(key) <= 64:
            raise ValueError(f"metadata key {key[:64]!r} must be 1-64 characters")
        if isinstance(item, str) and len(item) > METADATA_MAX_STRING:
            raise ValueError(f"metadata[{key!r}] is longer than {METADATA_MAX_STRING} characters")
        if isinstance(item, int) and not isinstance(item, bool) and abs(item) > _INT64_MAX:
            raise ValueError(f"metadata[{key!r}] does not fit in 64 bits")
    encoded = json.dumps(dict(value), separators=(",", ":"), ensure_ascii=False).encode()
    if len(encoded) > METADATA_MAX_BYTES:
        raise ValueError(f"metadata is larger than {METADATA_MAX_BYTES} bytes")
    return MappingProxyType(dict(value))


def _no_metadata() -> Mapping[str, MetadataValue]:
    return _NO_METADATA


Metadata = Annotated[
    Mapping[str, MetadataValue], AfterValidator(_freeze_metadata), PlainSerializer(dict)
]


class _Contract(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    schema_version: SchemaVersion = SCHEMA_VERSION


# --- usage.events ------------------------------------------------------------------------------


class UsageEvent(_Contract):
    """One metered use of a feature. ``event_id`` is the client-chosen idempotency key: a retry
    reuses it, and every stage downstream deduplicates on it."""

    event_id: Identifier
    wallet_id: Identifier
    member_id: Identifier
    feature: FeatureKey
    quantity: Annotated[int, Field(ge=1, le=MAX_QUANTITY)]
    occurred_at: Timestamp
    metadata: Metadata = Field(default_factory=_no_metadata)
    hold_id: Identifier | None = None


# --- usage.authorized / usage.rejected ---------------------------------------------------------


class Decision(StrEnum):
    AUTHORIZED = "authorized"  # charged against available credits
    HOLD_CAPTURED = "hold_captured"  # charged against the hold named by event.hold_id


class UsageAuthorized(_Contract):
    """The event was priced and its ``credits`` reserved in Redis; settlement posts it once."""

    event: UsageEvent
    credits: Credits
    pricing_version: VersionTag
    authorised_at: Timestamp
    decision: Decision


class UsageRejected(_Contract):
    """A valid event the business rules refused; ``reason`` is a stable code
    (``insufficient_credits``, ``daily_cap_reached``, ``premium_paused``, ...)."""

    event: UsageEvent
    reason: ReasonCode
    message: Message
    rejected_at: Timestamp


# --- wallet.events -----------------------------------------------------------------------------


class _WalletEventBase(_Contract):
    event_id: Identifier
    wallet_id: Identifier
    occurred_at: Timestamp


class BalanceChanged(_WalletEventBase):
    type: Literal["balance_changed"]
    available_credits: Credits
    reserved_credits: Credits
    delta_credits: int
    cause: ReasonCode  # usage, purchase, bonus, refund, adjustment, hold_released, ...
    source_id: Identifier  # the event or transaction that moved the balance


class LowBalance(_WalletEventBase):
    type: Literal["low_balance"]
    available_credits: Credits
    threshold_credits: Annotated[int, Field(ge=1)]


class PremiumPaused(_WalletEventBase):
    type: Literal["premium_paused"]
    reason: ReasonCode


class PremiumResumed(_WalletEventBase):
    type: Literal["premium_resumed"]


class RechargeRequested(_WalletEventBase):
    type: Literal["recharge_requested"]
    recharge_id: Identifier
    amount_paise: Annotated[int, Field(ge=1)]


class RechargeSucceeded(_WalletEventBase):
    type: Literal["recharge_succeeded"]
    recharge_id: Identifier
    amount_paise: Annotated[int, Field(ge=1)]
    credits: Annotated[int, Field(ge=1)]


class RechargeFailed(_WalletEventBase):
    type: Literal["recharge_failed"]
    recharge_id: Identifier
    reason: ReasonCode
    message: Message
    will_retry: bool


PaymentStateName = Literal[
    "idle", "processing", "pending", "success", "failed", "partially_refunded", "refunded"
]


class PaymentStateChanged(_WalletEventBase):
    """A payment moved to ``state`` (domain/payments.py). ``credits_added`` is what the wallet
    gained when it succeeded (purchased + bonus, else 0); ``refunded_paise`` is the cumulative
    amount refunded. Auto-recharge watches these for its charges (``purpose``)."""

    type: Literal["payment_state_changed"]
    payment_id: Identifier
    state: PaymentStateName
    previous_state: PaymentStateName | None
    purpose: Literal["add_funds", "auto_recharge"]
    amount_paise: Annotated[int, Field(ge=1)]
    credits_added: Credits
    refunded_paise: Credits
    failure_reason: ReasonCode | None = None
    retry_of: Identifier | None = None


WalletEvent = Annotated[
    BalanceChanged
    | LowBalance
    | PremiumPaused
    | PremiumResumed
    | RechargeRequested
    | RechargeSucceeded
    | RechargeFailed
    | PaymentStateChanged,
    Field(discriminator="type"),
]


# --- alerts.suspicious-burn --------------------------------------------------------------------


class BurnWindow(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    start: Timestamp
    end: Timestamp

    @model_validator(mode="after")
    def _ordered(self) -> BurnWindow:
        if self.end <= self.start:
            raise ValueError("window end must be after its start")
        return self


class SuspiciousBurn(_Contract):
    """A wallet burnt credits abnormally fast in ``window``; ``score`` is 0-100 confidence."""

    alert_id: Identifier
    wallet_id: Identifier
    reason_codes: Annotated[tuple[ReasonCode, ...], Field(min_length=1, max_length=16)]
    score: Annotated[int, Field(ge=0, le=100)]
    window: BurnWindow
    credits_in_window: Credits
    events_in_window: Credits
    detected_at: Timestamp


# --- usage.dead-letter -------------------------------------------------------------------------


def _check_base64(value: str) -> str:
    try:
        base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not base64: {exc}") from None
    return value


Base64 = Annotated[str, AfterValidator(_check_base64)]


class MessageSource(BaseModel):
    """Where a consumed message came from; ``key_base64`` is its Kafka key (a wallet id)."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    topic: Annotated[str, StringConstraints(min_length=1, max_length=249)]
    partition: Annotated[int, Field(ge=0)]
    offset: Annotated[int, Field(ge=0)]
    key_base64: Base64 | None = None


class DeadLetter(_Contract):
    """A message no consumer could accept, kept with why. Build it with :meth:`capture`."""

    reason: ReasonCode
    message: Message
    details: Annotated[dict[str, str], Field(max_length=32)]
    source: MessageSource
    raw_base64: Base64  # lossless; the first MAX_DEAD_LETTER_RAW_BYTES bytes of the message
    raw_preview: str | None  # the first 4096 characters as UTF-8 text, when it is, for people
    raw_size_bytes: Annotated[int, Field(ge=0)]
    raw_truncated: bool
    dead_lettered_at: Timestamp

    @classmethod
    def capture(
        cls,
        raw: bytes,
        *,
        reason: str,
        message: str,
        source: MessageSource,
        at: datetime,
        details: Mapping[str, object] | None = None,
    ) -> DeadLetter:
        """Wrap ``raw`` (truncated to :data:`MAX_DEAD_LETTER_RAW_BYTES`) with its failure."""
        kept = raw[:MAX_DEAD_LETTER_RAW_BYTES]
        try:
            preview: str | None = kept.decode("utf-8")[:DEAD_LETTER_PREVIEW_CHARS]
        except UnicodeDecodeError:  # binary, or a multi-byte character cut at the limit
            preview = None
        return cls(
            reason=reason,
            message=message[:2048],
            details={str(k)[:64]: str(v)[:512] for k, v in (details or {}).items()},
            source=source,
            raw_base64=base64.b64encode(kept).decode("ascii"),
            raw_preview=preview,
            raw_size_bytes=len(raw),
            raw_truncated=len(kept) < len(raw),
            dead_lettered_at=at,
        )

    def raw(self) -> bytes:
        """The kept bytes of the original message (``raw_base64`` was checked on construction)."""
        return base64.b64decode(self.raw_base64, validate=True)


# --- encode / decode ---------------------------------------------------------------------------


def encode(message: BaseModel) -> bytes:
    """Compact JSON bytes of any contract model (what goes on the wire)."""
    return to_json(message)


def _decoder(kind: Any, max_bytes: int) -> Callable[[bytes], Any]:
    adapter: TypeAdapter[Any] = TypeAdapter(kind)

    def decode(raw: bytes) -> Any:
        if len(raw) > max_bytes:
            raise SchemaViolation(
                SchemaReason.PAYLOAD_TOO_LARGE, f"{len(raw)} bytes > {max_bytes}", size=len(raw)
            )
        try:
            value = adapter.validate_json(raw, strict=True)
        except ValidationError as exc:
            raise _violation(exc, _json_or_none(raw)) from None
        _require_version(value, "")
        return value

    return decode


def _json_or_none(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def make_usage_event(**fields: object) -> UsageEvent:
    """Build a :class:`UsageEvent` from Python values (``occurred_at`` an aware ``datetime`` or
    an RFC 3339 string), raising :class:`SchemaViolation` with a stable reason when invalid."""
    try:
        return UsageEvent.model_validate(fields)
    except ValidationError as exc:
        raise _violation(exc, fields) from None


def _require_version(model: BaseModel, path: str) -> None:
    """A defaulted ``schema_version`` is fine in Python, but the wire must state it."""
    if isinstance(model, _Contract) and "schema_version" not in model.model_fields_set:
        field = f"{path}schema_version"
        raise SchemaViolation(SchemaReason.MISSING_FIELD, f"{field}: field required", field=field)
    for name in type(model).model_fields:
        child = getattr(model, name)
        if isinstance(child, BaseModel):
            _require_version(child, f"{path}{name}.")


_FIELD_REASONS: Final[Mapping[str, SchemaReason]] = {
    "schema_version": SchemaReason.UNSUPPORTED_SCHEMA_VERSION,
    "event_id": SchemaReason.INVALID_EVENT_ID,
    "wallet_id": SchemaReason.INVALID_WALLET_ID,
    "member_id": SchemaReason.INVALID_MEMBER_ID,
    "hold_id": SchemaReason.INVALID_HOLD_ID,
    "feature": SchemaReason.INVALID_FEATURE,
    "quantity": SchemaReason.INVALID_QUANTITY,
    "metadata": SchemaReason.INVALID_METADATA,
    "window": SchemaReason.INVALID_TIMESTAMP,
    "credits": SchemaReason.INVALID_AMOUNT,
}


def _reason_for_field(name: str) -> SchemaReason | None:
    if name in _FIELD_REASONS:
        return _FIELD_REASONS[name]
    if name.endswith(("_credits", "_paise")):
        return SchemaReason.INVALID_AMOUNT
    if name.endswith("_at"):
        return SchemaReason.INVALID_TIMESTAMP
    return None


def _violation(exc: ValidationError, payload: object) -> SchemaViolation:
    errors = exc.errors(include_url=False, include_input=False)
    # An unknown field explains a typo better than the "missing" error the typo also causes.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    kind, loc = first["type"], tuple(str(part) for part in first["loc"])
    field = ".".join(loc)
    detail = f"{field}: {first['msg']}" if field else first["msg"]
    if kind == "json_invalid":
        return SchemaViolation(SchemaReason.MALFORMED_JSON, detail)
    if _declares_other_version(payload):
        return SchemaViolation(
            SchemaReason.UNSUPPORTED_SCHEMA_VERSION, f"only schema_version {SCHEMA_VERSION} is read"
        )
    reason = {
        "missing": SchemaReason.MISSING_FIELD,
        "union_tag_not_found": SchemaReason.MISSING_FIELD,
        "extra_forbidden": SchemaReason.UNKNOWN_FIELD,
        "union_tag_invalid": SchemaReason.UNKNOWN_EVENT_TYPE,
        "model_type": SchemaReason.NOT_AN_OBJECT if not loc else None,
        "model_attributes_type": SchemaReason.NOT_AN_OBJECT if not loc else None,
    }.get(kind)
    if reason is None:
        # Outermost known field wins, so metadata {"quantity": []} is invalid_metadata.
        found = (_reason_for_field(part) for part in loc)
        reason = next((r for r in found if r is not None), SchemaReason.INVALID_FIELD)
    return SchemaViolation(reason, detail, field=field, errors=exc.error_count())


def _declares_other_version(payload: object) -> bool:
    """Version is judged first: a v2 payload is unsupported, not a list of v1 field errors."""
    if not isinstance(payload, Mapping) or "schema_version" not in payload:
        return False
    version = payload["schema_version"]
    return type(version) is not int or version != SCHEMA_VERSION


# One decoder per topic: raw message bytes -> frozen model, or SchemaViolation (never a partial).
decode_usage_event: Callable[[bytes], UsageEvent] = _decoder(UsageEvent, MAX_EVENT_BYTES)
decode_usage_authorized: Callable[[bytes], UsageAuthorized] = _decoder(
    UsageAuthorized, MAX_ENVELOPE_BYTES
)
decode_usage_rejected: Callable[[bytes], UsageRejected] = _decoder(
    UsageRejected, MAX_ENVELOPE_BYTES
)
decode_wallet_event: Callable[[bytes], WalletEvent] = _decoder(WalletEvent, MAX_ENVELOPE_BYTES)
decode_suspicious_burn: Callable[[bytes], SuspiciousBurn] = _decoder(
    SuspiciousBurn, MAX_ENVELOPE_BYTES
)
decode_dead_letter: Callable[[bytes], DeadLetter] = _decoder(DeadLetter, MAX_ENVELOPE_BYTES)

#: The decoder for each topic's payload, by default topic name.
DECODERS: Final[Mapping[str, Callable[[bytes], BaseModel]]] = MappingProxyType(
    {
        topics.USAGE_EVENTS: decode_usage_event,
        topics.USAGE_AUTHORIZED: decode_usage_authorized,
        topics.USAGE_REJECTED: decode_usage_rejected,
        topics.WALLET_EVENTS: decode_wallet_event,
        topics.SUSPICIOUS_BURN: decode_suspicious_burn,
        topics.USAGE_DEAD_LETTER: decode_dead_letter,
    }
)
