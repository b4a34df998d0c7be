-- API keys: scoped, bound to one wallet and one member; only a SHA-256 of the secret is kept.
CREATE TABLE api_keys (
    id text PRIMARY KEY CHECK (id ~ '^[a-f0-9]{16}$'),
    wallet_id text NOT NULL REFERENCES wallets (id),
    member_id text NOT NULL,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    scopes text[] NOT NULL CHECK (
        cardinality(scopes) >= 1
        AND scopes <@ ARRAY['wallet:read', 'wallet:write', 'usage:write', 'admin']::text[]
    ),
    secret_sha256 bytea NOT NULL UNIQUE CHECK (length(secret_sha256) = 32),
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    FOREIGN KEY (wallet_id, member_id) REFERENCES wallet_members (wallet_id, member_id)
);
CREATE INDEX api_keys_wallet ON api_keys (wallet_id);
