-- Secrets every replica must share, generated once by whichever replica needs one first (e.g. the key
-- that signs ListEvents page tokens, unless GA_PAGE_TOKEN_SECRET sets it).
CREATE TABLE service_secrets (
    name       text        PRIMARY KEY,
    value      bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
