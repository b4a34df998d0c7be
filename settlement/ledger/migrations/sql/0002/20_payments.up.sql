-- Payments (SPEC §6): one row per payment attempt, its append-only state log, every webhook
-- delivery (refused ones too, with why), and purchase refunds. Money in integer paise, credits
-- in whole credits; the ledger (ledger_transactions) stays the only record of balances.
CREATE TABLE payments (
    id text PRIMARY KEY CHECK (id ~ '^pmt_[a-f0-9]{24}$'),
    wallet_id text NOT NULL REFERENCES wallets (id),
    member_id text,
    purpose text NOT NULL CHECK (purpose IN ('add_funds', 'auto_recharge')),
    method text NOT NULL
        CHECK (method IN ('upi', 'card', 'netbanking', 'wallet', 'saved_token')),
    method_detail text NOT NULL CHECK (length(method_detail) BETWEEN 1 AND 300),
    amount_paise bigint NOT NULL CHECK (amount_paise > 0),
    gst_paise bigint NOT NULL CHECK (gst_paise >= 0),
    platform_fee_paise bigint NOT NULL CHECK (platform_fee_paise >= 0),
    total_paise bigint NOT NULL
        CHECK (total_paise = amount_paise + gst_paise + platform_fee_paise),
    credits bigint NOT NULL CHECK (credits > 0),
    bonus_credits bigint NOT NULL CHECK (bonus_credits >= 0),
    state text NOT NULL CHECK (state IN (
        'idle', 'processing', 'pending', 'success', 'failed', 'partially_refunded', 'refunded'
    )),
    -- The last state whose effects (mirror update, wallet event) completed; NULL: none yet.
    effects_state text,
    gateway text NOT NULL CHECK (gateway IN ('razorpay', 'sandbox')),
    gateway_order_id text UNIQUE,
    gateway_payment_id text UNIQUE,
    failure_reason text CHECK (failure_reason ~ '^[a-z][a-z0-9_]{0,63}$'),
    retry_of text UNIQUE REFERENCES payments (id),
    refunded_paise bigint NOT NULL DEFAULT 0
        CHECK (refunded_paise >= 0 AND refunded_paise <= amount_paise),
    refunded_credits bigint NOT NULL DEFAULT 0
        CHECK (refunded_credits >= 0 AND refunded_credits <= credits),
    refunded_bonus_credits bigint NOT NULL DEFAULT 0
        CHECK (refunded_bonus_credits >= 0 AND refunded_bonus_credits <= bonus_credits),
    idempotency_key text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    request_hash text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (wallet_id, idempotency_key),
    CHECK ((state = 'failed') = (failure_reason IS NOT NULL))
);
CREATE INDEX payments_wallet_created ON payments (wallet_id, created_at DESC);
CREATE INDEX payments_effects_due ON payments (id) WHERE effects_state IS DISTINCT FROM state;

-- Every state change, in order; never updated or deleted.
CREATE TABLE payment_transitions (
    id bigserial PRIMARY KEY,
    payment_id text NOT NULL REFERENCES payments (id),
    from_state text,
    to_state text NOT NULL,
    cause text NOT NULL CHECK (cause ~ '^[a-z][a-z0-9_]{0,63}$'),
    detail text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payment_transitions_payment ON payment_transitions (payment_id, id);
CREATE TRIGGER payment_transitions_immutable BEFORE UPDATE OR DELETE ON payment_transitions
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();

-- Every webhook delivery, accepted or refused. Only accepted deliveries claim their event id,
-- so a forged delivery cannot block the genuine one; a re-delivery is logged as a duplicate.
CREATE TABLE payment_webhooks (
    id bigserial PRIMARY KEY,
    gateway text NOT NULL,
    event_id text,
    event_type text,
    outcome text NOT NULL
        CHECK (outcome IN ('applied', 'ignored', 'duplicate', 'conflict', 'refused')),
    refusal_reason text CHECK (refusal_reason IN (
        'missing_signature', 'bad_signature', 'stale', 'replay', 'malformed', 'unknown_payment'
    )),
    payment_id text,
    body_sha256 text NOT NULL,
    body bytea NOT NULL,
    detail text,
    received_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((outcome = 'refused') = (refusal_reason IS NOT NULL))
);
CREATE UNIQUE INDEX payment_webhooks_accepted_event ON payment_webhooks (gateway, event_id)
    WHERE outcome IN ('applied', 'ignored', 'conflict');
CREATE INDEX payment_webhooks_payment ON payment_webhooks (payment_id);
CREATE TRIGGER payment_webhooks_immutable BEFORE UPDATE OR DELETE ON payment_webhooks
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();

-- Purchase refunds: credits left the wallet through ledger.refund_purchase (source id = id).
CREATE TABLE payment_refunds (
    id text PRIMARY KEY CHECK (id ~ '^rfd_[a-f0-9]{24}$'),
    payment_id text NOT NULL REFERENCES payments (id),
    wallet_id text NOT NULL REFERENCES wallets (id),
    member_id text,
    amount_paise bigint NOT NULL CHECK (amount_paise > 0),
    gst_refund_paise bigint NOT NULL CHECK (gst_refund_paise >= 0),
    fee_refund_paise bigint NOT NULL CHECK (fee_refund_paise >= 0),
    total_refund_paise bigint NOT NULL
        CHECK (total_refund_paise = amount_paise + gst_refund_paise + fee_refund_paise),
    base_credits_removed bigint NOT NULL CHECK (base_credits_removed >= 0),
    bonus_credits_clawed_back bigint NOT NULL CHECK (bonus_credits_clawed_back >= 0),
    -- gateway_pending: credits left the wallet, the gateway refund is not created yet (retry
    -- with the same key); initiated: the gateway accepted it; processed: refund.processed.
    state text NOT NULL CHECK (state IN ('gateway_pending', 'initiated', 'processed')),
    gateway_refund_id text UNIQUE,
    idempotency_key text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (payment_id, idempotency_key)
);
CREATE INDEX payment_refunds_wallet ON payment_refunds (wallet_id, created_at DESC);
