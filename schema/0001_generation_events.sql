-- Raw generation events, one row per event_id. The seed's columns keep their names and meaning;
-- created_at is the ingest time (when transfer stored the row), timestamp when the event happened.
-- Every timestamp is timestamptz and the database works in UTC.

DO $$
BEGIN
    EXECUTE format('ALTER DATABASE %I SET timezone TO %L', current_database(), 'UTC');
END
$$;
SET timezone TO 'UTC';

CREATE TABLE generation_events (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id           uuid        NOT NULL,
    event_type         text        NOT NULL,
    generation_id      text        NOT NULL,
    user_id            uuid        NOT NULL,
    timestamp          timestamptz NOT NULL,
    duration_ms        bigint,
    success            boolean,
    error_type         text,
    error_message      text,
    model_checkpoint   text,
    generation_type    text,
    queue_length       integer,
    queue_wait_time_ms bigint,
    generation_time_ms bigint,
    batch_size         integer,
    image_width        integer,
    image_height       integer,
    prompt_tokens      integer,
    attributes         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT generation_events_event_id_key UNIQUE (event_id),
    CONSTRAINT generation_events_event_type_check
        CHECK (event_type IN ('request', 'completion', 'cancellation')),
    CONSTRAINT generation_events_non_negative_check
        CHECK (duration_ms >= 0 AND queue_length >= 0 AND queue_wait_time_ms >= 0
               AND generation_time_ms >= 0 AND batch_size >= 0 AND prompt_tokens >= 0)
);

COMMENT ON TABLE generation_events IS
    'Raw generation events (one row per event_id), written by transfer from the Redis stream.';
COMMENT ON COLUMN generation_events.created_at IS 'Ingest time: when transfer stored the row.';
COMMENT ON COLUMN generation_events.timestamp IS 'When the event happened (UTC).';

-- Time windows, "latest events", the seed's ORDER BY timestamp DESC, hourly aggregation, retention.
CREATE INDEX generation_events_timestamp_idx ON generation_events (timestamp);
-- Per-user history and recent activity.
CREATE INDEX generation_events_user_timestamp_idx ON generation_events (user_id, timestamp);
-- Slowest completions (the seed's "Find Slow Generations", ListEvents order=slowest).
CREATE INDEX generation_events_completion_duration_idx
    ON generation_events (duration_ms, id)
    WHERE event_type = 'completion' AND duration_ms IS NOT NULL;
