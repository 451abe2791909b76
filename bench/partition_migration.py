"""How long migration 0016 (generation_events partitioned by week) holds a populated table.

A scratch database is migrated up to 0015 (the unpartitioned table), filled with `--events` events spread
over the last 60 days (with the indexes every migration up to 0015 made), then migration 0016 is applied
and timed: it takes the table's exclusive lock for that long (recording goes on into Redis meanwhile; transfer
waits). Then the rows, the ids and the counters are checked to agree.

    .venv/bin/python -m bench.partition_migration [--events 1000000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import psycopg

from bench.common import Figure, print_figures, scratch_database
from generation_analytics.service.migrate import load_migrations, migrate

FILL = """
INSERT INTO generation_events (event_id, event_type, generation_id, user_id, timestamp, duration_ms, success,
                               model_checkpoint)
SELECT gen_random_uuid(), 'completion', 'g' || i,
       ('00000000-0000-4000-8000-' || lpad((i %% 5000)::text, 12, '0'))::uuid,
       now() - (i %% (60 * 24 * 60)) * interval '1 minute', 500 + i %% 20000, i %% 10 <> 0, 'sdxl-' || i %% 7
FROM generate_series(1, %(events)s) AS i
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    shipped = load_migrations()
    with tempfile.TemporaryDirectory() as folder:
        for m in shipped:
            if m.version < 16:
                (Path(folder) / f"{m.version:04d}_{m.name}.sql").write_text(m.sql)
        with scratch_database(schema=Path(folder)) as dsn:
            with psycopg.connect(dsn, autocommit=True) as conn:
                started = time.monotonic()
                conn.execute(FILL, {"events": args.events})
                conn.execute("VACUUM ANALYZE generation_events")
                print(f"filled {args.events:,} events in {time.monotonic() - started:.1f} s")
            for m in shipped:
                if m.version >= 16:
                    (Path(folder) / f"{m.version:04d}_{m.name}.sql").write_text(m.sql)
            started = time.monotonic()
            applied = migrate(dsn, folder=Path(folder))
            took = time.monotonic() - started
            with psycopg.connect(dsn) as conn:
                row = conn.execute(
                    "SELECT (SELECT count(*) FROM generation_events), (SELECT count(*) FROM generation_event_ids),"
                    " (SELECT sum(events) FROM generation_event_counts)"
                ).fetchone()
    assert applied == [m.version for m in shipped if m.version >= 16]
    assert row is not None and row[0] == row[1] == row[2] == args.events, row
    print_figures(
        "Migration 0016 on a populated table",
        [
            Figure(
                f"0016 on {args.events:,} events (exclusive lock held)",
                f"{took:.1f} s ({args.events / took:,.0f} events/s)",
            )
        ],
    )


if __name__ == "__main__":
    main()
