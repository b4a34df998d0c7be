"""Turn a posting request into the exact rows to write (no I/O; shared by both write paths)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from domain.hash_chain import ChainLink, MetadataValue, link_hash
from domain.ledger_rules import Account, Balances, Plan


@dataclass(frozen=True, slots=True)
class PostRequest:
    """What to post: the plan, its idempotency key and its references."""

    wallet_id: str
    source: str
    source_id: str
    plan: Plan
    member_id: str | None = None
    feature: str | None = None
    pricing_version: int | None = None
    opens_ref: str | None = None  # two-phase: the transfer this transaction opens
    resolves_ref: str | None = None  # two-phase: the transfer this transaction resolves
    group_ref: str | None = None  # refunds and reversals: the original they belong to
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChainHead:
    """A wallet's state at the head of its chain."""

    balances: Balances
    seq: int
    hash: str


@dataclass(frozen=True, slots=True)
class PreparedTxn:
    row: tuple[Any, ...]
    account_ids: tuple[int, ...]
    amounts: tuple[int, ...]
    head: ChainHead


def prepare(
    request: PostRequest,
    head: ChainHead,
    txn_id: int,
    created_at: datetime,
    account_ids: Mapping[Account, int],
) -> PreparedTxn:
    """Rows for one transaction and the wallet's new head; raises InsufficientCredits."""
    plan = request.plan
    after = head.balances.apply(plan.type, plan.phase, plan.legs)
    seq = head.seq + 1
    link = ChainLink(
        wallet_id=request.wallet_id,
        seq=seq,
        txn_id=txn_id,
        txn_type=plan.type.value,
        phase=plan.phase.value if plan.phase else None,
        source=request.source,
        source_id=request.source_id,
        credits=plan.credits,
        legs=tuple((leg.account.value, leg.amount) for leg in plan.legs),
        balances_after=after.as_tuple(),
        member_id=request.member_id,
        metadata=request.metadata,
        created_at=created_at,
    )
    digest = link_hash(link, head.hash)
    row = (
        txn_id,
        request.wallet_id,
        seq,
        link.txn_type,
        link.phase,
        request.source,
        request.source_id,
        plan.credits,
        head.balances.available,
        *after.as_tuple(),
        request.member_id,
        request.feature,
        request.pricing_version,
        request.opens_ref,
        request.resolves_ref,
        request.group_ref,
        Jsonb(dict(request.metadata)),
        created_at,
        head.hash,
        digest,
    )
    return PreparedTxn(
        row=row,
        account_ids=tuple(account_ids[leg.account] for leg in plan.legs),
        amounts=tuple(leg.amount for leg in plan.legs),
        head=ChainHead(after, seq, digest),
    )
