"""The seed document's SQL runs unchanged against our schema, and agrees with the service's answers."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from generation_analytics.v1 import analytics_pb2, events_pb2, pipeline_pb2
from tests.factories import make_event
from tests.fix_server import LiveServer

SEED = Path(__file__).parents[1] / "docs" / "seed" / "generation_analytics_examples.md"
SQL_BLOCKS = re.findall(r"```sql\n(.*?)```", SEED.read_text(), flags=re.DOTALL)


def test_the_seed_has_sql_blocks() -> None:
    assert len(SQL_BLOCKS) == 9  # raw events, slow, users, hourly, models, errors, peak hours, cohorts, monitoring


@pytest.fixture
def loaded(live_server: LiveServer) -> LiveServer:
    now = datetime.now(UTC) - timedelta(minutes=1)
    users = [str(uuid.uuid4()) for _ in range(4)]
    events = []
    for i in range(240):
        when = now - timedelta(hours=i * 0.7)
        user = users[i % 4]
        events.append(
            make_event("request", user_id=user, timestamp=when, queue_length=i % 9, model_checkpoint="sdxl-1.0")
        )
        ok = i % 6 != 0
        events.append(
            make_event(
                "completion",
                user_id=user,
                timestamp=when + timedelta(seconds=20),
                success=ok,
                duration_ms=500 + 97 * i,
                model_checkpoint=["sdxl-1.0", "flux-dev", ""][i % 3],
                error_type="" if ok else ["OutOfMemory", "Timeout"][i % 2],
                error_message="" if ok else f"worker {i % 3} failed",
            )
        )
    live_server.events.RecordEvents(events_pb2.RecordEventsRequest(events=events))
    live_server.pipeline.RunTransfer(pipeline_pb2.RunTransferRequest())
    live_server.pipeline.RunAggregation(pipeline_pb2.RunAggregationRequest())
    return live_server


@pytest.mark.parametrize("block", SQL_BLOCKS, ids=[b.strip().splitlines()[0][:60] for b in SQL_BLOCKS])
def test_seed_sql_runs_unchanged(loaded: LiveServer, block: str) -> None:
    with psycopg.connect(loaded.settings.postgres.dsn) as conn, conn.cursor() as cur:
        cur.execute(block.encode())
        results = []
        while True:
            results.append(cur.fetchall())
            if not cur.nextset():
                break
    assert all(rows for rows in results), "every seed query finds data in a loaded database"


def test_seed_model_comparison_agrees_with_get_model_performance(loaded: LiveServer) -> None:
    [query] = [b for b in SQL_BLOCKS if "Model performance comparison" in b]
    with psycopg.connect(loaded.settings.postgres.dsn) as conn:
        rows = conn.execute(query.encode()).fetchall()
    seed = {r[0]: (r[1], r[2], r[3]) for r in rows}
    reply = loaded.analytics.GetModelPerformance(analytics_pb2.GetModelPerformanceRequest(days=30))
    ours = {
        m.model_checkpoint: (m.total_generations, m.successful_generations, m.failed_generations) for m in reply.models
    }
    assert ours == seed


def test_seed_hourly_metrics_agree_with_get_trends(loaded: LiveServer) -> None:
    [query] = [b for b in SQL_BLOCKS if "Hourly metrics for last 7 days" in b]
    with psycopg.connect(loaded.settings.postgres.dsn) as conn:
        rows = conn.execute(query.encode()).fetchall()
    trends = loaded.analytics.GetTrends(analytics_pb2.GetTrendsRequest(days=7))
    by_hour = {p.timestamp.ToDatetime(tzinfo=UTC): p for p in trends.data_points}
    for row in rows:
        point = by_hour[row[0]]
        assert (row[1], row[2], row[3], row[4]) == (
            point.total_requests,
            point.successful_generations,
            point.failed_generations,
            point.cancelled_generations,
        )
        assert row[6] == point.unique_users
        assert row[8] == point.total_images_generated
