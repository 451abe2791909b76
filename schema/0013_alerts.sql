-- Alerts (docs/design.md, README "Alerts"): rules over the rollups, one state row per rule, every state
-- transition with the value that caused it, and an outbox of webhook deliveries with their attempts.

CREATE TABLE alert_rules (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name              text             NOT NULL,
    metric            text             NOT NULL,
    scope_kind        text             NOT NULL,
    scope_value       text             NOT NULL DEFAULT '',
    comparison        text             NOT NULL,
    threshold         double precision NOT NULL,
    window_minutes    integer          NOT NULL,
    min_samples       bigint           NOT NULL,
    pending_for_s     integer          NOT NULL,
    repeat_interval_s integer          NOT NULL,
    labels            jsonb            NOT NULL DEFAULT '{}'::jsonb,
    -- [{"url": ..., "secret": "whsec_...", "format": "standard" | "slack"}, ...]
    targets           jsonb            NOT NULL DEFAULT '[]'::jsonb,
    enabled           boolean          NOT NULL DEFAULT true,
    created_at        timestamptz      NOT NULL DEFAULT now(),
    updated_at        timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT alert_rules_name_key UNIQUE (name),
    CONSTRAINT alert_rules_scope_check CHECK (scope_kind IN ('everything', 'checkpoint', 'error_type', 'error_group')),
    CONSTRAINT alert_rules_comparison_check CHECK (comparison IN ('gt', 'ge', 'lt', 'le')),
    CONSTRAINT alert_rules_positive_check
        CHECK (window_minutes > 0 AND min_samples >= 0 AND pending_for_s >= 0 AND repeat_interval_s >= 0)
);
COMMENT ON TABLE alert_rules IS 'Alert rules: a metric of a scope compared with a threshold over a window.';

-- One row per rule. `evaluated_tick` is the start of the last evaluation tick that evaluated the rule:
-- an evaluator claims a rule (FOR UPDATE SKIP LOCKED) only while it is older than the current tick, so
-- each rule is evaluated once per tick however many replicas run.
CREATE TABLE alert_state (
    rule_id          bigint           PRIMARY KEY REFERENCES alert_rules (id) ON DELETE CASCADE,
    state            text             NOT NULL DEFAULT 'ok',
    since            timestamptz      NOT NULL DEFAULT now(),
    value            double precision,
    samples          bigint           NOT NULL DEFAULT 0,
    evaluated_at     timestamptz,
    evaluated_tick   timestamptz,
    last_notified_at timestamptz,
    error            text             NOT NULL DEFAULT '',
    CONSTRAINT alert_state_state_check
        CHECK (state IN ('ok', 'pending', 'firing', 'resolved', 'no_data', 'error'))
);

CREATE TABLE alert_events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rule_id    bigint           NOT NULL REFERENCES alert_rules (id) ON DELETE CASCADE,
    at         timestamptz      NOT NULL,
    from_state text             NOT NULL,
    to_state   text             NOT NULL,
    value      double precision,
    threshold  double precision NOT NULL,
    samples    bigint           NOT NULL,
    message    text             NOT NULL DEFAULT ''
);
COMMENT ON TABLE alert_events IS 'Every state transition of every rule, with the value that caused it.';
CREATE INDEX alert_events_rule_idx ON alert_events (rule_id, id);

-- The outbox: evaluation inserts a row per target and notification in its own transaction and never
-- waits on a receiver; the delivery job claims due rows (a lease in next_attempt_at), posts them, and
-- records each attempt. The body is stored as sent, so every retry carries the same signed bytes.
CREATE TABLE alert_deliveries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rule_id         bigint      NOT NULL REFERENCES alert_rules (id) ON DELETE CASCADE,
    event_id        bigint      NOT NULL REFERENCES alert_events (id) ON DELETE CASCADE,
    webhook_id      text        NOT NULL,
    url             text        NOT NULL,
    format          text        NOT NULL,
    secret          text        NOT NULL,
    body            text        NOT NULL,
    status          text        NOT NULL DEFAULT 'pending',
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    created_at      timestamptz NOT NULL,
    delivered_at    timestamptz,
    last_error      text        NOT NULL DEFAULT '',
    CONSTRAINT alert_deliveries_webhook_id_key UNIQUE (webhook_id),
    CONSTRAINT alert_deliveries_status_check CHECK (status IN ('pending', 'delivered', 'failed'))
);
CREATE INDEX alert_deliveries_due_idx ON alert_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX alert_deliveries_event_idx ON alert_deliveries (event_id);

CREATE TABLE alert_delivery_attempts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id bigint      NOT NULL REFERENCES alert_deliveries (id) ON DELETE CASCADE,
    at          timestamptz NOT NULL,
    status_code integer,
    error       text        NOT NULL DEFAULT '',
    duration_ms double precision NOT NULL
);
CREATE INDEX alert_delivery_attempts_delivery_idx ON alert_delivery_attempts (delivery_id, id);
