-- API keys (docs/design.md §8). A key is shown once, at creation, as
--   ga_<id>_<secret>
-- and only sha256(secret) is kept. Scopes: ingest (recording), read (questions, status, metrics),
-- admin (pipeline runs). Revoking keeps the row (and its history); it stops working within the
-- service's key cache period (GA_AUTH_CACHE_S).
CREATE TABLE api_keys (
    id           text        PRIMARY KEY,
    name         text        NOT NULL,
    scopes       text[]      NOT NULL,
    secret_hash  bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz,
    CONSTRAINT api_keys_scopes_check CHECK (scopes <@ ARRAY['ingest', 'read', 'admin'] AND cardinality(scopes) > 0)
);
COMMENT ON TABLE api_keys IS 'API keys: only a hash of each secret is stored.';
