-- Auto-recharge (SPEC §7): settings per wallet, recharges (one row per decision to top up, a
-- state machine), an outbox of the wallet events they announce, and notifications to the owner.

CREATE TABLE auto_recharge_settings (
    wallet_id text PRIMARY KEY REFERENCES wallets (id),
    enabled boolean NOT NULL,
    threshold_credits bigint NOT NULL CHECK (threshold_credits BETWEEN 1 AND 10000000),
    amount_paise bigint NOT NULL CHECK (amount_paise >= 15000 AND amount_paise % 100 = 0),
    payment_method_token text NOT NULL CHECK (payment_method_token ~ '^[A-Za-z0-9_.:@-]{4,128}$'),
    daily_max integer NOT NULL CHECK (daily_max BETWEEN 1 AND 24),
    -- declined charges in a row (any recharge); reset by a success or by enabling again
    consecutive_failures integer NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    disabled_reason text,
    updated_by text NOT NULL,
    updated_at timestamptz NOT NULL
);

-- States: pending (claimed, next try due at next_try_at) -> charging (a try holds the lease
-- until lease_until) -> succeeded | retry_wait (-> charging again) | failed.
CREATE TABLE auto_recharges (
    id text PRIMARY KEY CHECK (id ~ '^rch_[a-f0-9]{32}$'),
    wallet_id text NOT NULL REFERENCES auto_recharge_settings (wallet_id),
    state text NOT NULL
        CHECK (state IN ('pending', 'charging', 'retry_wait', 'succeeded', 'failed')),
    amount_paise bigint NOT NULL CHECK (amount_paise > 0),
    payment_method_token text NOT NULL,
    trigger_event_id text NOT NULL,
    trigger_available_credits bigint NOT NULL CHECK (trigger_available_credits >= 0),
    local_day date NOT NULL, -- Asia/Kolkata day of created_at: what daily_max counts
    tries integer NOT NULL DEFAULT 0 CHECK (tries >= 0),
    next_try_at timestamptz NOT NULL,
    lease_until timestamptz,
    charging_since timestamptz,
    payment_id text,
    credits_added bigint CHECK (credits_added > 0),
    failure_reason text,
    failure_message text,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    finished_at timestamptz,
    CHECK ((state IN ('succeeded', 'failed')) = (finished_at IS NOT NULL)),
    CHECK (state <> 'succeeded' OR credits_added IS NOT NULL)
);
-- The guarantee: at most one recharge in flight per wallet, whatever the number of workers.
CREATE UNIQUE INDEX auto_recharges_one_in_flight ON auto_recharges (wallet_id)
    WHERE state IN ('pending', 'charging', 'retry_wait');
CREATE INDEX auto_recharges_wallet_recent ON auto_recharges (wallet_id, created_at DESC);
CREATE INDEX auto_recharges_due ON auto_recharges (next_try_at)
    WHERE state IN ('pending', 'charging', 'retry_wait');

-- Wallet events written in the transaction that caused them, published afterwards (outbox).
CREATE TABLE auto_recharge_outbox (
    seq bigserial PRIMARY KEY,
    event_id text NOT NULL UNIQUE,
    wallet_id text NOT NULL REFERENCES wallets (id),
    payload bytea NOT NULL,
    created_at timestamptz NOT NULL,
    published_at timestamptz
);
CREATE INDEX auto_recharge_outbox_unpublished ON auto_recharge_outbox (seq)
    WHERE published_at IS NULL;

-- What the wallet owner is told (shown by GET /wallet/notifications).
CREATE TABLE wallet_notifications (
    id bigserial PRIMARY KEY,
    wallet_id text NOT NULL REFERENCES wallets (id),
    kind text NOT NULL CHECK (
        kind IN ('recharge_succeeded', 'recharge_failed', 'auto_recharge_disabled')
    ),
    dedupe_key text NOT NULL,
    message text NOT NULL CHECK (length(message) BETWEEN 1 AND 2048),
    recharge_id text REFERENCES auto_recharges (id),
    created_at timestamptz NOT NULL,
    read_at timestamptz,
    UNIQUE (wallet_id, dedupe_key)
);
CREATE INDEX wallet_notifications_recent ON wallet_notifications (wallet_id, id DESC);
