"""Ledger schema: wallets, accounts, transactions, postings and their database-side guards.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TXN_TYPES = (
    "CREDIT_PURCHASE",
    "USAGE_DEDUCTION",
    "BONUS_CREDIT",
    "REFUND",
    "PAYOUT_HOLD",
    "PAYOUT_RELEASE",
    "ADMIN_ADJUSTMENT",
    "USAGE_HOLD",
    "USAGE_HOLD_RELEASE",
)
PLATFORM_ACCOUNTS = (
    "platform:purchases",
    "platform:bonus_pool",
    "platform:revenue",
    "platform:payout_clearing",
    "platform:adjustments",
    "platform:earnings",
)


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{value}'" for value in values)


UPGRADE = f"""
CREATE TABLE wallets (
    id text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_.:-]{{1,64}}$'),
    owner_type text NOT NULL CHECK (owner_type IN ('user', 'community', 'organization')),
    owner_id text NOT NULL CHECK (length(owner_id) BETWEEN 1 AND 128),
    status text NOT NULL DEFAULT 'active'
        CHECK (status IN ('active', 'premium_paused', 'frozen')),
    available bigint NOT NULL DEFAULT 0 CHECK (available >= 0),
    pending bigint NOT NULL DEFAULT 0 CHECK (pending >= 0),
    reserved bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    locked bigint NOT NULL DEFAULT 0 CHECK (locked >= 0),
    lifetime_purchased bigint NOT NULL DEFAULT 0 CHECK (lifetime_purchased >= 0),
    lifetime_used bigint NOT NULL DEFAULT 0 CHECK (lifetime_used >= 0),
    payout_eligible bigint NOT NULL DEFAULT 0 CHECK (payout_eligible >= 0),
    version bigint NOT NULL DEFAULT 0 CHECK (version >= 0),
    head_seq bigint NOT NULL DEFAULT 0 CHECK (head_seq >= 0),
    head_hash text NOT NULL DEFAULT '{"0" * 64}',
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (owner_type, owner_id)
);

CREATE TABLE wallet_members (
    wallet_id text NOT NULL REFERENCES wallets (id),
    member_id text NOT NULL CHECK (member_id ~ '^[A-Za-z0-9_.:@-]{{1,128}}$'),
    role text NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (wallet_id, member_id)
);

CREATE TABLE ledger_accounts (
    id serial PRIMARY KEY,
    wallet_id text REFERENCES wallets (id),
    name text NOT NULL,
    CHECK ((wallet_id IS NULL) = (name LIKE 'platform:%')),
    UNIQUE NULLS NOT DISTINCT (wallet_id, name)
);
INSERT INTO ledger_accounts (wallet_id, name)
SELECT NULL, unnest(ARRAY[{_in(PLATFORM_ACCOUNTS)}]);

CREATE SEQUENCE ledger_txn_id_seq;

CREATE TABLE ledger_transactions (
    id bigint PRIMARY KEY,
    wallet_id text NOT NULL REFERENCES wallets (id),
    seq bigint NOT NULL CHECK (seq >= 1),
    type text NOT NULL CHECK (type IN ({_in(TXN_TYPES)})),
    phase text CHECK (phase IN ('pending', 'posted', 'voided', 'expired')),
    source text NOT NULL CHECK (length(source) BETWEEN 1 AND 64),
    source_id text NOT NULL CHECK (length(source_id) BETWEEN 1 AND 256),
    credits bigint NOT NULL CHECK (credits > 0),
    balance_before bigint NOT NULL CHECK (balance_before >= 0),
    balance_after bigint NOT NULL CHECK (balance_after >= 0),
    pending_after bigint NOT NULL CHECK (pending_after >= 0),
    reserved_after bigint NOT NULL CHECK (reserved_after >= 0),
    locked_after bigint NOT NULL CHECK (locked_after >= 0),
    lifetime_purchased_after bigint NOT NULL CHECK (lifetime_purchased_after >= 0),
    lifetime_used_after bigint NOT NULL CHECK (lifetime_used_after >= 0),
    payout_eligible_after bigint NOT NULL CHECK (payout_eligible_after >= 0),
    member_id text,
    feature text,
    pricing_version integer,
    opens_ref text,
    resolves_ref text,
    group_ref text,
    metadata jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    created_at timestamptz NOT NULL,
    prev_hash text NOT NULL,
    hash text NOT NULL,
    UNIQUE (source, source_id),
    UNIQUE (wallet_id, seq)
);
-- A two-phase transfer is opened once and resolved (posted, voided, expired) exactly once.
CREATE UNIQUE INDEX ledger_transactions_opens_ref ON ledger_transactions (opens_ref)
    WHERE opens_ref IS NOT NULL;
CREATE UNIQUE INDEX ledger_transactions_resolves_ref ON ledger_transactions (resolves_ref)
    WHERE resolves_ref IS NOT NULL;
CREATE INDEX ledger_transactions_group_ref ON ledger_transactions (group_ref)
    WHERE group_ref IS NOT NULL;
CREATE INDEX ledger_transactions_wallet_time ON ledger_transactions (wallet_id, created_at, id);

CREATE TABLE ledger_postings (
    txn_id bigint NOT NULL REFERENCES ledger_transactions (id),
    account_id integer NOT NULL REFERENCES ledger_accounts (id),
    amount bigint NOT NULL CHECK (amount <> 0),
    PRIMARY KEY (txn_id, account_id)
);

-- Ledger rows are immutable: corrections are new transactions.
CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger rows are immutable: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END $$;

CREATE TRIGGER ledger_transactions_immutable BEFORE UPDATE OR DELETE ON ledger_transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_transactions_no_truncate BEFORE TRUNCATE ON ledger_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_postings_immutable BEFORE UPDATE OR DELETE ON ledger_postings
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_postings_no_truncate BEFORE TRUNCATE ON ledger_postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_accounts_immutable BEFORE UPDATE OR DELETE ON ledger_accounts
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_accounts_no_truncate BEFORE TRUNCATE ON ledger_accounts
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER wallets_no_delete BEFORE DELETE ON wallets
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();

-- Every statement that inserts postings inserts whole transactions that sum to zero.
CREATE FUNCTION ledger_postings_balance() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT txn_id, sum(amount) AS total INTO bad FROM new_postings
        GROUP BY txn_id HAVING sum(amount) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'postings of transaction % sum to %, not zero', bad.txn_id, bad.total
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER ledger_postings_sum_zero AFTER INSERT ON ledger_postings
    REFERENCING NEW TABLE AS new_postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_postings_balance();

-- The wallet-facing view of SPEC §3.
CREATE VIEW wallet_transactions AS
SELECT t.id, t.wallet_id, t.type, t.phase, t.credits, t.balance_before, t.balance_after,
       t.source, t.source_id, t.member_id, t.feature, t.metadata, t.created_at
FROM ledger_transactions t;
"""

DOWNGRADE = """
DROP VIEW wallet_transactions;
DROP TABLE ledger_postings;
DROP TABLE ledger_transactions;
DROP SEQUENCE ledger_txn_id_seq;
DROP TABLE ledger_accounts;
DROP TABLE wallet_members;
DROP TABLE wallets;
DROP FUNCTION ledger_postings_balance();
DROP FUNCTION ledger_refuse_change();
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
