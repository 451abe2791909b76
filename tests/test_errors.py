"""What callers are told when something breaks: a clear code, a generic message with an error id the log
has with the details, and never database or Redis text (host names, SQL, constraint names, values)."""

from __future__ import annotations

import logging

import grpc
import psycopg
import pytest
import requests

from generation_analytics.v1 import analytics_pb2
from tests.fix_server import LiveServer


def test_an_unexpected_failure_answers_internal_with_an_error_id_and_no_internals(
    live_server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    with psycopg.connect(live_server.settings.postgres.dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE generation_metrics_hourly")  # a real Postgres error for every overview
    with pytest.raises(grpc.RpcError) as error:
        live_server.analytics.GetOverview(analytics_pb2.GetOverviewRequest())
    assert error.value.code() == grpc.StatusCode.INTERNAL
    details = error.value.details() or ""
    assert details.startswith("internal error (error id ") and "generation_metrics_hourly" not in details
    error_id = details.split("error id ")[1].rstrip(")")
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged and logged[0].levelno == logging.ERROR and logged[0].exc_info, "the log keeps the details"

    reply = requests.get(f"{live_server.http}/api/v1/analytics/generation/overview", timeout=10)
    assert reply.status_code == 500
    body = reply.json()["error"]
    assert body["code"] == "INTERNAL" and "error id" in body["message"]
    assert "generation_metrics_hourly" not in reply.text


def test_an_unknown_failure_never_leaks_as_unknown(live_server: LiveServer) -> None:
    """Python exceptions from the service's own code (not database errors) are INTERNAL too, not UNKNOWN
    with the exception's text."""
    with psycopg.connect(live_server.settings.postgres.dsn, autocommit=True) as conn:
        # A histogram of 5 bytes (pairs are 6): merging it raises ValueError in numpy, not in Postgres.
        conn.execute(
            "INSERT INTO generation_metrics_hourly (timestamp, total_requests, successful_generations,"
            " failed_generations, cancelled_generations, unique_users, total_images_generated, duration_count,"
            " duration_sum, queue_length_count, queue_length_sum, first_event_at, last_event_at, duration_hist)"
            " VALUES (date_trunc('hour', now()), 0, 1, 0, 0, 0, 1, 1, 100, 0, 0, now(), now(), '\\x0102030405')"
        )
    with pytest.raises(grpc.RpcError) as error:
        live_server.analytics.GetTrends(analytics_pb2.GetTrendsRequest(interval=analytics_pb2.INTERVAL_DAILY))
    assert error.value.code() == grpc.StatusCode.INTERNAL
    assert "buffer" not in (error.value.details() or "")  # numpy's message stays in the log
