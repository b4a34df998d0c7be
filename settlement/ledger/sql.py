"""SQL shared by the ledger's writers and readers (one place for column lists)."""

from __future__ import annotations

from typing import Any

from domain.ledger_rules import Balances, Phase, TxnType
from settlement.ledger.records import TxnRecord, WalletRecord

BALANCE_COLUMNS = (
    "available, pending, reserved, locked, lifetime_purchased, lifetime_used, payout_eligible"
)
WALLET_COLUMNS = (
    f"id, owner_type, owner_id, status, {BALANCE_COLUMNS}, version, head_seq, head_hash"
)

TXN_COLUMNS = (
    "id, wallet_id, seq, type, phase, source, source_id, credits, balance_before, balance_after, "
    "pending_after, reserved_after, locked_after, lifetime_purchased_after, lifetime_used_after, "
    "payout_eligible_after, member_id, feature, pricing_version, opens_ref, resolves_ref, "
    "group_ref, metadata, created_at, prev_hash, hash"
)
TXN_COLUMN_COUNT = len(TXN_COLUMNS.split(","))

INSERT_TXN = (
    f"INSERT INTO ledger_transactions ({TXN_COLUMNS}) "
    f"VALUES ({', '.join(['%s'] * TXN_COLUMN_COUNT)})"
)

INSERT_POSTINGS = (
    "INSERT INTO ledger_postings (txn_id, account_id, amount) "
    "SELECT %s, unnest(%s::int[]), unnest(%s::bigint[])"
)

UPDATE_WALLET = (
    "UPDATE wallets SET available = %s, pending = %s, reserved = %s, locked = %s, "
    "lifetime_purchased = %s, lifetime_used = %s, payout_eligible = %s, "
    "version = version + 1, head_seq = %s, head_hash = %s WHERE id = %s AND version = %s"
)

READ_RECORD_COLUMNS = (
    "id, wallet_id, seq, type, phase, source, source_id, credits, balance_before, "
    "balance_after, member_id, feature, metadata, created_at, hash"
)


def wallet_from_row(row: tuple[Any, ...]) -> WalletRecord:
    return WalletRecord(
        id=row[0],
        owner_type=row[1],
        owner_id=row[2],
        status=row[3],
        balances=Balances(*row[4:11]),
        version=row[11],
        head_seq=row[12],
        head_hash=row[13],
    )


def txn_from_row(row: tuple[Any, ...], *, replayed: bool = False) -> TxnRecord:
    return TxnRecord(
        id=row[0],
        wallet_id=row[1],
        seq=row[2],
        type=TxnType(row[3]),
        phase=Phase(row[4]) if row[4] else None,
        source=row[5],
        source_id=row[6],
        credits=row[7],
        balance_before=row[8],
        balance_after=row[9],
        member_id=row[10],
        feature=row[11],
        metadata=row[12],
        created_at=row[13],
        hash=row[14],
        replayed=replayed,
    )
