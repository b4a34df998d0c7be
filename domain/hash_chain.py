"""The per-wallet hash chain over ledger transactions (pure).

Each transaction's hash commits to its identity, its legs, the wallet's balances after it and the
previous transaction's hash, so altering, deleting or inserting any row breaks the chain from that
point on. The encoding is canonical JSON, so the writer and the verifier compute it identically.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

GENESIS_HASH = "0" * 64

MetadataValue = str | int | bool | None


@dataclass(frozen=True, slots=True)
class ChainLink:
    """The hashed content of one transaction in its wallet's chain."""

    wallet_id: str
    seq: int
    txn_id: int
    txn_type: str
    phase: str | None
    source: str
    source_id: str
    credits: int
    legs: tuple[tuple[str, int], ...]  # (account name, signed amount), sorted by name
    balances_after: tuple[int, ...]
    member_id: str | None
    metadata: Mapping[str, MetadataValue]
    created_at: datetime


@lru_cache(maxsize=64)  # a settlement batch stamps every row with the same instant
def canonical_time(instant: datetime) -> str:
    """UTC, microsecond precision: what PostgreSQL's timestamptz round-trips exactly."""
    assert instant.tzinfo is not None, "ledger timestamps are timezone-aware"
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def link_hash(link: ChainLink, prev_hash: str) -> str:
    body = json.dumps(
        [
            link.wallet_id,
            link.seq,
            link.txn_id,
            link.txn_type,
            link.phase,
            link.source,
            link.source_id,
            link.credits,
            sorted(link.legs),
            list(link.balances_after),
            link.member_id,
            dict(sorted(link.metadata.items())),
            canonical_time(link.created_at),
        ],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(f"{prev_hash}|{body}".encode()).hexdigest()
