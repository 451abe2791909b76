-- Pipeline bookkeeping: which hours need re-aggregation, entries that could not be stored, job runs,
-- and a dense integer id per user for the user bitmaps kept in the rollups.

-- Hours that received events since they were last aggregated. Transfer upserts a fresh version in the
-- same transaction as the events; aggregation deletes a mark only if its version is still the one it
-- read, so events that arrive while an hour is being aggregated always cause another pass.
CREATE SEQUENCE generation_dirty_hours_version_seq;
CREATE TABLE generation_dirty_hours (
    hour      timestamptz PRIMARY KEY,
    version   bigint      NOT NULL,
    -- When the hour first became dirty: rollups reflect every event stored before this moment.
    marked_at timestamptz NOT NULL DEFAULT now()
);

-- Stream entries transfer could not store (undecodable, invalid, or delivered too often).
CREATE TABLE generation_events_dead_letter (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_entry_id  text        NOT NULL UNIQUE,
    payload          bytea,
    reason           text        NOT NULL,
    deliveries       integer     NOT NULL,
    dead_lettered_at timestamptz NOT NULL DEFAULT now()
);

-- The last run of each pipeline job, by whichever replica ran it.
CREATE TABLE pipeline_job_runs (
    job           text PRIMARY KEY,
    replica       text             NOT NULL,
    started_at    timestamptz      NOT NULL,
    duration_s    double precision NOT NULL,
    processed     bigint           NOT NULL,
    error         text,
    last_error    text,
    last_error_at timestamptz
);

-- Dense small integers for users, so the set of users of an hour fits a compact bitmap.
CREATE TABLE generation_users (
    uid     integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id uuid NOT NULL UNIQUE
);
