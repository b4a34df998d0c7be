"""Rows the ledger returns: frozen, validated, integer credits."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from domain.errors import InvalidInput
from domain.hash_chain import MetadataValue
from domain.ledger_rules import Balances, Phase, TxnType

WALLET_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
SOURCE_ID_RE = re.compile(r"^[A-Za-z0-9_.:@/-]{1,200}$")
MEMBER_ID_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")
OWNER_TYPES = ("user", "community", "organization")
MEMBER_ROLES = ("owner", "admin", "member")
WALLET_STATUSES = ("active", "premium_paused", "frozen")
MAX_METADATA_KEYS = 32
MAX_METADATA_TEXT = 512


def require_id(value: object, *, field: str, pattern: re.Pattern[str] = SOURCE_ID_RE) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidInput(
            f"{field} must match {pattern.pattern}, got {value!r}", field=field, value=repr(value)
        )
    return value


def require_metadata(value: Mapping[str, Any] | None) -> dict[str, MetadataValue]:
    """A flat JSON object of short strings, whole numbers, booleans and nulls."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or len(value) > MAX_METADATA_KEYS:
        raise InvalidInput(f"metadata must be an object of at most {MAX_METADATA_KEYS} keys")
    clean: dict[str, MetadataValue] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not 1 <= len(key) <= 64:
            raise InvalidInput(f"metadata key {key!r} must be a string of 1-64 characters")
        if isinstance(item, float):
            raise InvalidInput(f"metadata {key!r}: floats are not allowed (use whole numbers)")
        if isinstance(item, str) and len(item) > MAX_METADATA_TEXT:
            raise InvalidInput(f"metadata {key!r}: text longer than {MAX_METADATA_TEXT} chars")
        if item is not None and not isinstance(item, str | int | bool):
            raise InvalidInput(f"metadata {key!r}: only strings, whole numbers, booleans, null")
        clean[key] = item
    return clean


@dataclass(frozen=True, slots=True)
class WalletRecord:
    id: str
    owner_type: str
    owner_id: str
    status: str
    balances: Balances
    version: int
    head_seq: int
    head_hash: str


@dataclass(frozen=True, slots=True)
class TxnRecord:
    """One ledger transaction as the wallet sees it. ``replayed`` marks an idempotent retry."""

    id: int
    wallet_id: str
    seq: int
    type: TxnType
    phase: Phase | None
    source: str
    source_id: str
    credits: int
    balance_before: int
    balance_after: int
    member_id: str | None
    feature: str | None
    metadata: Mapping[str, MetadataValue]
    created_at: datetime
    hash: str
    replayed: bool = field(default=False, compare=False)
