"""Batched settlement of usage events: many deductions, one PostgreSQL transaction.

Order inside the transaction: lock the batch's wallets (sorted, so concurrent batches cannot
deadlock) -> drop events already in the ledger (idempotent on event id) -> prepare every row in
memory (pure; an unaffordable event is rejected, not posted) -> COPY transactions -> COPY postings
(the zero-sum trigger checks the whole statement) -> one UPDATE moves every wallet's balances and
chain head. A crash anywhere before COMMIT writes nothing; a retried batch finds its events posted
and reports them as duplicates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg_pool import AsyncConnectionPool

from domain import ledger_rules as rules
from domain.clock import Clock, SystemClock
from domain.errors import CreditsError, InvalidInput
from domain.hash_chain import MetadataValue
from domain.money import require_credits
from settlement.ledger.accounts import AccountDirectory
from settlement.ledger.prepare import ChainHead, PostRequest, PreparedTxn, prepare
from settlement.ledger.records import MEMBER_ID_RE, WALLET_ID_RE, require_id, require_metadata
from settlement.ledger.sql import TXN_COLUMNS, WALLET_COLUMNS, wallet_from_row
from settlement.ledger.writer import Conn

UPDATE_WALLETS = """
UPDATE wallets AS w SET
    available = v.available, pending = v.pending, reserved = v.reserved, locked = v.locked,
    lifetime_purchased = v.lifetime_purchased, lifetime_used = v.lifetime_used,
    payout_eligible = v.payout_eligible, version = w.version + 1,
    head_seq = v.head_seq, head_hash = v.head_hash
FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[],
            %s::bigint[], %s::bigint[], %s::bigint[], %s::text[], %s::bigint[])
    AS v(id, available, pending, reserved, locked, lifetime_purchased, lifetime_used,
         payout_eligible, head_seq, head_hash, version)
WHERE w.id = v.id AND w.version = v.version
"""


@dataclass(frozen=True, slots=True)
class UsageCharge:
    """One priced usage event to settle. ``event_id`` is its idempotency key."""

    event_id: str
    wallet_id: str
    credits: int
    feature: str
    member_id: str | None = None
    pricing_version: int | None = None
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require_id(self.event_id, field="event_id")
        require_id(self.wallet_id, field="wallet_id", pattern=WALLET_ID_RE)
        require_credits(self.credits)
        if not isinstance(self.feature, str) or not self.feature:
            raise InvalidInput("feature is required", field="feature")
        if self.member_id is not None:
            require_id(self.member_id, field="member_id", pattern=MEMBER_ID_RE)
        require_metadata(self.metadata)


@dataclass(frozen=True, slots=True)
class PostedUsage:
    event_id: str
    wallet_id: str
    txn_id: int
    credits: int


@dataclass(frozen=True, slots=True)
class RejectedUsage:
    event_id: str
    wallet_id: str
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """Every input event lands in exactly one of these."""

    posted: tuple[PostedUsage, ...]
    duplicates: tuple[str, ...]
    rejected: tuple[RejectedUsage, ...]
    # Each locked wallet's ledger version (chain position) after the commit; the Redis mirror
    # takes it with the settle so that it can order settles against reloads.
    versions: Mapping[str, int] = field(default_factory=dict)


class BatchWriter:
    def __init__(self, pool: AsyncConnectionPool[Conn], clock: Clock | None = None) -> None:
        self.pool = pool
        self.clock: Clock = clock or SystemClock()
        self.accounts = AccountDirectory()

    async def post_usage(self, charges: Sequence[UsageCharge]) -> BatchOutcome:
        """Settle ``charges`` in one database transaction (see the module docstring)."""
        if not charges:
            return BatchOutcome((), (), ())
        async with self.pool.connection() as conn, conn.transaction():
            return await self._post(conn, charges)

    async def _post(self, conn: Conn, charges: Sequence[UsageCharge]) -> BatchOutcome:
        heads, versions = await _lock(conn, {c.wallet_id for c in charges})
        known = await self._already_posted(conn, [c.event_id for c in charges])
        fresh, duplicates, rejected = _split(charges, heads, known)
        accounts = await self.accounts.for_wallets(conn, heads)
        ids = await _reserve_ids(conn, len(fresh))
        now = self.clock.now()
        prepared: list[PreparedTxn] = []
        posted: list[PostedUsage] = []
        for charge in fresh:
            request = _request(charge)
            try:
                txn = prepare(
                    request,
                    heads[charge.wallet_id],
                    ids[len(prepared)],
                    now,
                    accounts[charge.wallet_id],
                )
            except CreditsError as exc:
                rejected.append(
                    RejectedUsage(charge.event_id, charge.wallet_id, exc.code, str(exc))
                )
                continue
            heads[charge.wallet_id] = txn.head
            prepared.append(txn)
            posted.append(
                PostedUsage(charge.event_id, charge.wallet_id, txn.row[0], charge.credits)
            )
        await _copy(conn, prepared)
        await _move_heads(conn, heads, versions, {p.wallet_id for p in posted})
        versions = {wallet_id: head.seq for wallet_id, head in heads.items()}
        return BatchOutcome(tuple(posted), tuple(duplicates), tuple(rejected), versions)

    @staticmethod
    async def _already_posted(conn: Conn, event_ids: list[str]) -> set[str]:
        cur = await conn.execute(
            "SELECT source_id FROM ledger_transactions WHERE source = 'usage' "
            "AND source_id = ANY(%s)",
            (event_ids,),
        )
        return {str(row[0]) for row in await cur.fetchall()}


async def _lock(conn: Conn, wallet_ids: set[str]) -> tuple[dict[str, ChainHead], dict[str, int]]:
    """Lock the wallets in id order (no deadlocks between batches); heads and versions."""
    cur = await conn.execute(
        f"SELECT {WALLET_COLUMNS} FROM wallets WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
        (sorted(wallet_ids),),
    )
    heads: dict[str, ChainHead] = {}
    versions: dict[str, int] = {}
    for row in await cur.fetchall():
        wallet = wallet_from_row(row)
        heads[wallet.id] = ChainHead(wallet.balances, wallet.head_seq, wallet.head_hash)
        versions[wallet.id] = wallet.version
    return heads, versions


async def _move_heads(
    conn: Conn, heads: dict[str, ChainHead], versions: dict[str, int], changed: set[str]
) -> None:
    if not changed:
        return
    order = sorted(changed)
    columns: list[list[Any]] = [order]
    columns.extend([heads[w].balances.as_tuple()[i] for w in order] for i in range(7))
    columns.append([heads[w].seq for w in order])
    columns.append([heads[w].hash for w in order])
    columns.append([versions[w] for w in order])
    cur = await conn.execute(UPDATE_WALLETS, columns)
    assert cur.rowcount == len(order), "every wallet in the batch is locked by us"


def _split(
    charges: Sequence[UsageCharge], heads: Mapping[str, ChainHead], known: set[str]
) -> tuple[list[UsageCharge], list[str], list[RejectedUsage]]:
    fresh: list[UsageCharge] = []
    duplicates: list[str] = []
    rejected: list[RejectedUsage] = []
    seen: set[str] = set()
    for charge in charges:
        if charge.event_id in known or charge.event_id in seen:
            duplicates.append(charge.event_id)
        elif charge.wallet_id not in heads:
            msg = f"wallet {charge.wallet_id!r} does not exist"
            rejected.append(RejectedUsage(charge.event_id, charge.wallet_id, "unknown_wallet", msg))
        else:
            fresh.append(charge)
        seen.add(charge.event_id)
    return fresh, duplicates, rejected


def _request(charge: UsageCharge) -> PostRequest:
    return PostRequest(
        charge.wallet_id,
        "usage",
        charge.event_id,
        rules.usage(charge.credits),
        member_id=charge.member_id,
        feature=charge.feature,
        pricing_version=charge.pricing_version,
        metadata=charge.metadata,
    )


async def _reserve_ids(conn: Conn, count: int) -> list[int]:
    if not count:
        return []
    cur = await conn.execute(
        "SELECT nextval('ledger_txn_id_seq') FROM generate_series(1, %s)", (count,)
    )
    return [int(row[0]) for row in await cur.fetchall()]


async def _copy(conn: Conn, prepared: list[PreparedTxn]) -> None:
    if not prepared:
        return
    async with conn.cursor() as cur:
        async with cur.copy(f"COPY ledger_transactions ({TXN_COLUMNS}) FROM STDIN") as copy:
            for txn in prepared:
                await copy.write_row(txn.row)
        async with cur.copy("COPY ledger_postings (txn_id, account_id, amount) FROM STDIN") as copy:
            await copy.write(_postings_text(prepared))


def _postings_text(prepared: Sequence[PreparedTxn]) -> bytes:
    """The postings in COPY text format, formatted at once: three integers a line need no
    escaping, and one write costs a fraction of a ``write_row`` per posting."""
    lines: list[str] = []
    for txn in prepared:
        txn_id = txn.row[0]
        for account_id, amount in zip(txn.account_ids, txn.amounts, strict=True):
            # type() is int, not isinstance: a bool or a float must never be written as a number
            assert type(txn_id) is type(account_id) is type(amount) is int, "postings are ints"
            lines.append(f"{txn_id}\t{account_id}\t{amount}\n")
    return "".join(lines).encode("ascii")
