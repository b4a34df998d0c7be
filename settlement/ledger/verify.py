"""``credits ledger verify``: recompute every balance from the postings and re-walk every chain.

Trusts nothing the writer stored: for each wallet it replays the postings in chain order through
the same pure rule the writer used (:meth:`Balances.apply`), recomputes each hash, and compares
with the stored snapshots, the chain links and the wallet row. Rows altered or deleted by someone
who bypassed the immutability triggers (a superuser with triggers disabled) show up as
discrepancies naming the wallet, the transaction, and the expected and found values.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from domain.errors import CreditsError
from domain.hash_chain import GENESIS_HASH, ChainLink, link_hash
from domain.ledger_rules import Balances, Bucket, Leg, Phase, TxnType, parse_account
from settlement.ledger.sql import WALLET_COLUMNS, wallet_from_row
from settlement.ledger.writer import Conn

WALK = """
SELECT t.id, t.wallet_id, t.seq, t.type, t.phase, t.source, t.source_id, t.credits,
       t.balance_before, t.balance_after, t.pending_after, t.reserved_after, t.locked_after,
       t.lifetime_purchased_after, t.lifetime_used_after, t.payout_eligible_after,
       t.member_id, t.metadata, t.created_at, t.prev_hash, t.hash,
       coalesce(array_agg(a.name ORDER BY a.name) FILTER (WHERE p.txn_id IS NOT NULL), '{}'),
       coalesce(array_agg(p.amount ORDER BY a.name) FILTER (WHERE p.txn_id IS NOT NULL), '{}'),
       coalesce(array_agg(a.wallet_id ORDER BY a.name) FILTER (WHERE p.txn_id IS NOT NULL), '{}')
FROM ledger_transactions t
LEFT JOIN ledger_postings p ON p.txn_id = t.id
LEFT JOIN ledger_accounts a ON a.id = p.account_id
GROUP BY t.id
ORDER BY t.wallet_id, t.seq, t.id
"""


@dataclass(frozen=True, slots=True)
class Discrepancy:
    wallet_id: str | None
    txn_id: int | None
    check: str
    expected: str
    found: str

    def __str__(self) -> str:
        where = f"wallet {self.wallet_id}" if self.wallet_id else "ledger"
        txn = f" txn {self.txn_id}" if self.txn_id is not None else ""
        return f"{where}{txn}: {self.check}: expected {self.expected}, found {self.found}"


@dataclass(slots=True)
class VerifyReport:
    wallets: int = 0
    transactions: int = 0
    postings: int = 0
    discrepancies: list[Discrepancy] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.discrepancies

    def summary(self) -> str:
        verdict = "OK" if self.ok else f"FAILED with {len(self.discrepancies)} discrepancies"
        return (
            f"ledger verify {verdict}: {self.wallets} wallets, {self.transactions} transactions, "
            f"{self.postings} postings"
        )


@dataclass(slots=True)
class _Walk:
    """Running state of one wallet's chain."""

    wallet_id: str
    balances: Balances = field(default_factory=Balances)
    seq: int = 0
    hash: str = GENESIS_HASH


async def verify_ledger(conn: Conn) -> VerifyReport:
    report = VerifyReport()
    await _check_orphans(conn, report)
    walks: dict[str, _Walk] = {}
    async for row in _stream(conn):
        wallet_id = str(row[1])
        walk = walks.setdefault(wallet_id, _Walk(wallet_id))
        _check_txn(walk, row, report)
    cur = await conn.execute(f"SELECT {WALLET_COLUMNS} FROM wallets ORDER BY id")
    for wallet_row in await cur.fetchall():
        wallet = wallet_from_row(wallet_row)
        report.wallets += 1
        walk = walks.pop(wallet.id, _Walk(wallet.id))
        _compare(report, wallet.id, None, "wallet balances", walk.balances, wallet.balances)
        _compare(report, wallet.id, None, "chain head seq", walk.seq, wallet.head_seq)
        _compare(report, wallet.id, None, "chain head hash", walk.hash, wallet.head_hash)
    for wallet_id in walks:
        report.discrepancies.append(
            Discrepancy(wallet_id, None, "wallet row", "a wallet row", "transactions only")
        )
    return report


async def _stream(conn: Conn) -> AsyncIterator[tuple[Any, ...]]:
    async with conn.transaction(), conn.cursor(name="ledger_verify") as cur:
        cur.itersize = 5000
        await cur.execute(WALK)
        async for row in cur:
            yield row


async def _check_orphans(conn: Conn, report: VerifyReport) -> None:
    """Postings whose transaction is gone, and transactions that do not sum to zero."""
    cur = await conn.execute(
        "SELECT p.txn_id, count(*) FROM ledger_postings p "
        "LEFT JOIN ledger_transactions t ON t.id = p.txn_id WHERE t.id IS NULL GROUP BY p.txn_id"
    )
    for txn_id, count in await cur.fetchall():
        report.discrepancies.append(
            Discrepancy(None, txn_id, "orphan postings", "a transaction row", f"{count} postings")
        )
    cur = await conn.execute("SELECT count(*) FROM ledger_postings")
    row = await cur.fetchone()
    report.postings = int(row[0]) if row else 0


def _check_txn(walk: _Walk, row: tuple[Any, ...], report: VerifyReport) -> None:
    txn_id, wallet_id, seq = int(row[0]), walk.wallet_id, int(row[2])
    report.transactions += 1
    _compare(report, wallet_id, txn_id, "chain sequence", walk.seq + 1, seq)
    _compare(report, wallet_id, txn_id, "chain link (prev_hash)", walk.hash, row[19])
    names, amounts, owners = row[21], row[22], row[23]
    _compare(report, wallet_id, txn_id, "postings sum", 0, sum(amounts))
    foreign = [n for n, owner in zip(names, owners, strict=True) if owner not in (None, wallet_id)]
    if foreign:
        report.discrepancies.append(
            Discrepancy(
                wallet_id, txn_id, "posting account", "this wallet's accounts", str(foreign)
            )
        )
    legs = tuple(Leg(parse_account(n), int(a)) for n, a in zip(names, amounts, strict=True) if a)
    stored_after = Balances(*(int(v) for v in row[9:16]))
    _compare(report, wallet_id, txn_id, "balance_before", walk.balances.available, row[8])
    try:
        replayed = walk.balances.apply(TxnType(row[3]), Phase(row[4]) if row[4] else None, legs)
    except (CreditsError, ValueError) as exc:
        report.discrepancies.append(
            Discrepancy(wallet_id, txn_id, "replay", "non-negative balances", str(exc))
        )
        replayed = stored_after
    _compare(report, wallet_id, txn_id, "balances after", replayed, stored_after)
    wallet_legs = {n: a for n, a in zip(names, amounts, strict=True) if not n.startswith("p")}
    _compare(
        report,
        wallet_id,
        txn_id,
        "available change",
        row[9] - row[8],
        wallet_legs.get(Bucket.AVAILABLE.value, 0),
    )
    link = ChainLink(
        wallet_id=wallet_id,
        seq=seq,
        txn_id=txn_id,
        txn_type=row[3],
        phase=row[4],
        source=row[5],
        source_id=row[6],
        credits=int(row[7]),
        legs=tuple(zip(names, (int(a) for a in amounts), strict=True)),
        balances_after=stored_after.as_tuple(),
        member_id=row[16],
        metadata=row[17],
        created_at=row[18],
    )
    _compare(report, wallet_id, txn_id, "hash", link_hash(link, str(row[19])), row[20])
    walk.balances, walk.seq, walk.hash = replayed, seq, str(row[20])


def _compare(
    report: VerifyReport,
    wallet_id: str | None,
    txn_id: int | None,
    check: str,
    expected: object,
    found: object,
) -> None:
    if expected != found:
        report.discrepancies.append(
            Discrepancy(wallet_id, txn_id, check, _show(expected), _show(found))
        )


def _show(value: object) -> str:
    if isinstance(value, Balances):
        names = (
            "available",
            "pending",
            "reserved",
            "locked",
            "lifetime_purchased",
            "lifetime_used",
            "payout_eligible",
        )
        return (
            "{" + ", ".join(f"{n}={v}" for n, v in zip(names, value.as_tuple(), strict=True)) + "}"
        )
    return repr(value)
