"""The database refuses changes to ledger rows; verify catches a superuser who bypasses that."""

from __future__ import annotations

import asyncio
import sys

import psycopg
import pytest

from settlement.ledger.operations import Ledger
from settlement.ledger.wallets import Wallets
from tests.ledger.helpers import assert_consistent, verify

W = "wal_tamper"


@pytest.fixture
async def history(wallets: Wallets, ledger: Ledger, ledger_db_url: str) -> str:
    await wallets.create(W, owner_type="community", owner_id="t")
    await ledger.purchase_pending(W, "pay_1", 3000)
    await ledger.purchase_confirm(W, "pay_1", bonus_credits=200)
    for i in range(5):
        await ledger.deduct_usage(W, f"ev-{i}", 10 + i, feature="api.export_data")
    await assert_consistent(ledger_db_url)
    return ledger_db_url


async def _as_superuser_bypassing_triggers(url: str, *statements: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("SET session_replication_role = replica")
        for statement in statements:
            await conn.execute(statement)


async def _txn_id(url: str, source_id: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(
            "SELECT id FROM ledger_transactions WHERE source_id = %s AND source = 'usage'",
            (source_id,),
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger_transactions SET credits = 1",
        "DELETE FROM ledger_transactions",
        "TRUNCATE ledger_transactions CASCADE",
        "UPDATE ledger_postings SET amount = amount * 2",
        "DELETE FROM ledger_postings",
        "UPDATE ledger_accounts SET name = 'available'",
        "DELETE FROM wallets",
        "UPDATE wallets SET available = -1",
    ],
)
async def test_database_refuses_changes_to_ledger_rows(history: str, statement: str) -> None:
    async with await psycopg.AsyncConnection.connect(history, autocommit=True) as conn:
        with pytest.raises((psycopg.errors.RestrictViolation, psycopg.errors.CheckViolation)):
            await conn.execute(statement)
    await assert_consistent(history)


async def test_database_refuses_unbalanced_postings(history: str) -> None:
    txn = await _txn_id(history, "ev-0")
    async with await psycopg.AsyncConnection.connect(history, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.CheckViolation, match="sum to"):
            await conn.execute(
                "INSERT INTO ledger_postings (txn_id, account_id, amount) "
                "SELECT %s, id, 100 FROM ledger_accounts WHERE name = 'platform:bonus_pool'",
                (txn,),
            )


async def test_altered_posting_is_detected(history: str) -> None:
    txn = await _txn_id(history, "ev-2")
    await _as_superuser_bypassing_triggers(
        history, f"UPDATE ledger_postings SET amount = amount * 3 WHERE txn_id = {txn}"
    )
    report = await verify(history)
    checks = {(d.wallet_id, d.txn_id, d.check) for d in report.discrepancies}
    assert (W, txn, "hash") in checks
    assert (W, txn, "balances after") in checks
    assert (W, None, "wallet balances") in checks


async def test_altered_transaction_fields_are_detected(history: str) -> None:
    txn = await _txn_id(history, "ev-3")
    await _as_superuser_bypassing_triggers(
        history,
        f"UPDATE ledger_transactions SET credits = 1, metadata = '{{\"x\": 1}}' WHERE id = {txn}",
    )
    report = await verify(history)
    hash_issue = next(d for d in report.discrepancies if d.check == "hash")
    assert hash_issue.txn_id == txn
    assert hash_issue.wallet_id == W


async def test_deleted_transaction_is_detected(history: str) -> None:
    txn = await _txn_id(history, "ev-1")
    await _as_superuser_bypassing_triggers(
        history,
        f"DELETE FROM ledger_postings WHERE txn_id = {txn}",
        f"DELETE FROM ledger_transactions WHERE id = {txn}",
    )
    report = await verify(history)
    checks = {d.check for d in report.discrepancies}
    assert {"chain sequence", "chain link (prev_hash)", "wallet balances"} <= checks


async def test_deleted_tail_with_wallet_rewound_still_breaks_the_head(history: str) -> None:
    txn = await _txn_id(history, "ev-4")
    await _as_superuser_bypassing_triggers(
        history,
        f"DELETE FROM ledger_postings WHERE txn_id = {txn}",
        f"DELETE FROM ledger_transactions WHERE id = {txn}",
        f"UPDATE wallets SET available = available + 14, lifetime_used = lifetime_used - 14 "
        f"WHERE id = '{W}'",
    )
    report = await verify(history)
    assert {d.check for d in report.discrepancies} >= {"chain head seq", "chain head hash"}


async def test_inserted_posting_and_transaction_are_detected(history: str) -> None:
    txn = await _txn_id(history, "ev-0")
    await _as_superuser_bypassing_triggers(
        history,
        "INSERT INTO ledger_postings (txn_id, account_id, amount) "
        f"SELECT {txn}, id, 500 FROM ledger_accounts WHERE wallet_id = '{W}' "
        "AND name = 'locked'",
        # A forged transaction copied from the head, claiming the next sequence number.
        "INSERT INTO ledger_transactions SELECT nextval('ledger_txn_id_seq'), wallet_id, seq + 1, "
        "type, phase, source, source_id || '-forged', credits, balance_before, balance_after, "
        "pending_after, reserved_after, locked_after, lifetime_purchased_after, "
        "lifetime_used_after, payout_eligible_after, member_id, feature, pricing_version, "
        "opens_ref, resolves_ref, group_ref, metadata, created_at, hash, hash "
        f"FROM ledger_transactions WHERE wallet_id = '{W}' ORDER BY seq DESC LIMIT 1",
    )
    report = await verify(history)
    by_txn = {(d.txn_id, d.check) for d in report.discrepancies}
    assert (txn, "postings sum") in by_txn
    assert any(check == "hash" and t != txn for t, check in by_txn)


async def test_altered_wallet_row_is_detected(history: str) -> None:
    async with await psycopg.AsyncConnection.connect(history, autocommit=True) as conn:
        await conn.execute(f"UPDATE wallets SET available = available + 1000 WHERE id = '{W}'")
    report = await verify(history)
    (issue,) = report.discrepancies
    assert issue.check == "wallet balances"
    assert "available=3140" in issue.expected
    assert "available=4140" in issue.found


async def _cli(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_cli_verify_exit_codes_and_report(history: str) -> None:
    code, out = await _cli("ledger", "verify", "--database-url", history)
    assert code == 0, out
    assert "ledger verify OK: 1 wallets, 8 transactions, 16 postings" in out

    txn = await _txn_id(history, "ev-2")
    await _as_superuser_bypassing_triggers(
        history, f"UPDATE ledger_postings SET amount = -amount WHERE txn_id = {txn}"
    )
    code, out = await _cli("ledger", "verify", "--database-url", history)
    assert code == 1
    assert f"wallet {W} txn {txn}: hash: expected" in out
    assert "FAILED" in out


async def test_cli_refuses_bad_input(history: str) -> None:
    code, out = await _cli("ledger", "migrate", "--database-url", history, "--revision", "9999")
    assert code == 2
    assert "unknown migration revision" in out
    code, out = await _cli("wallet", "show", "--database-url", history, "wal_nope")
    assert code == 2
    assert "does not exist" in out
    code, out = await _cli("ledger", "verify", "--database-url", "mysql://x")
    assert code != 0
