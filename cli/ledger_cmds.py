"""``credits ledger ...`` and ``credits wallet ...``: migrate, verify, inspect."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

import psycopg

from cli.common import add_database_option, require_database_url, run
from domain.errors import UnknownWallet
from settlement.ledger.db import open_pool
from settlement.ledger.migrate import upgrade
from settlement.ledger.verify import verify_ledger
from settlement.ledger.wallets import Wallets


def register(subparsers: Any) -> None:
    ledger = subparsers.add_parser("ledger", help="the ledger: migrate, verify")
    commands = ledger.add_subparsers(dest="ledger_command", required=True, metavar="COMMAND")

    migrate = commands.add_parser("migrate", help="apply schema migrations")
    add_database_option(migrate)
    migrate.add_argument("--revision", default="head")
    migrate.set_defaults(handler=_migrate)

    verify = commands.add_parser(
        "verify", help="recompute every balance from postings and re-walk every hash chain"
    )
    add_database_option(verify)
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(handler=_verify)

    wallet = subparsers.add_parser("wallet", help="inspect wallets")
    wallet_commands = wallet.add_subparsers(dest="wallet_command", required=True)
    show = wallet_commands.add_parser("show", help="a wallet's balances")
    add_database_option(show)
    show.add_argument("wallet_id")
    show.set_defaults(handler=_show_wallet)
    history = wallet_commands.add_parser("transactions", help="a wallet's latest transactions")
    add_database_option(history)
    history.add_argument("wallet_id")
    history.add_argument("--limit", type=int, default=20)
    history.set_defaults(handler=_wallet_transactions)


def _migrate(args: argparse.Namespace) -> int:
    upgrade(require_database_url(args), args.revision)
    print(f"migrated to {args.revision}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    async def go() -> int:
        async with await psycopg.AsyncConnection.connect(require_database_url(args)) as conn:
            report = await verify_ledger(conn)
        if args.json:
            print(
                json.dumps(
                    {
                        "ok": report.ok,
                        "wallets": report.wallets,
                        "transactions": report.transactions,
                        "postings": report.postings,
                        "discrepancies": [asdict(d) for d in report.discrepancies],
                    }
                )
            )
        else:
            for discrepancy in report.discrepancies:
                print(discrepancy)
            print(report.summary())
        return 0 if report.ok else 1

    return run(go())


def _show_wallet(args: argparse.Namespace) -> int:
    async def go() -> int:
        pool = await open_pool(require_database_url(args), max_size=1)
        try:
            wallet = await Wallets(pool).get(args.wallet_id)
        finally:
            await pool.close()
        print(
            json.dumps(
                {
                    "id": wallet.id,
                    "owner_type": wallet.owner_type,
                    "owner_id": wallet.owner_id,
                    "status": wallet.status,
                    **dict(
                        zip(
                            (
                                "available",
                                "pending",
                                "reserved",
                                "locked",
                                "lifetime_purchased",
                                "lifetime_used",
                                "payout_eligible",
                            ),
                            wallet.balances.as_tuple(),
                            strict=True,
                        )
                    ),
                },
                indent=2,
            )
        )
        return 0

    return run(go())


def _wallet_transactions(args: argparse.Namespace) -> int:
    async def go() -> int:
        async with await psycopg.AsyncConnection.connect(require_database_url(args)) as conn:
            cur = await conn.execute("SELECT 1 FROM wallets WHERE id = %s", (args.wallet_id,))
            if await cur.fetchone() is None:
                raise UnknownWallet(f"wallet {args.wallet_id!r} does not exist")
            cur = await conn.execute(
                "SELECT created_at, type, credits, balance_before, balance_after, source, "
                "source_id FROM wallet_transactions WHERE wallet_id = %s "
                "ORDER BY created_at DESC, id DESC LIMIT %s",
                (args.wallet_id, max(1, min(args.limit, 1000))),
            )
            for row in await cur.fetchall():
                print(
                    f"{row[0]:%Y-%m-%d %H:%M:%S}  {row[1]:<18} {row[2]:>8}  "
                    f"{row[3]:>8} -> {row[4]:<8} {row[5]}/{row[6]}"
                )
        return 0

    return run(go())
