"""API schema: API keys, payments (with their transitions, webhooks and refunds) and
auto-recharge (settings, recharges, outbox, notifications).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24

The statements live in ``migrations/sql/0002/``: one ``<nn>_<area>.up.sql`` per area, applied
in name order, and its ``.down.sql``, applied in reverse order, so each area reads as plain
SQL. Like every revision, this one is frozen once released: later changes are new revisions.
"""

from __future__ import annotations

from pathlib import Path

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SQL_DIR = Path(__file__).resolve().parent.parent / "sql" / "0002"


def upgrade() -> None:
    for path in sorted(SQL_DIR.glob("*.up.sql")):
        op.execute(path.read_text(encoding="utf-8"))


def downgrade() -> None:
    for path in sorted(SQL_DIR.glob("*.down.sql"), reverse=True):
        op.execute(path.read_text(encoding="utf-8"))
