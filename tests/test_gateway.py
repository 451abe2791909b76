"""The HTTP JSON gateway: the seed's paths, every field present, real JSON numbers, clear 400s."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from generation_analytics.v1 import events_pb2, pipeline_pb2
from tests.factories import make_event
from tests.fix_server import LiveServer

PREFIX = "/api/v1/analytics/generation"
USER = str(uuid.uuid4())


@pytest.fixture
def loaded(live_server: LiveServer) -> LiveServer:
    at = datetime.now(UTC) - timedelta(minutes=5)
    events = [make_event("request", user_id=USER, timestamp=at, queue_length=3, model_checkpoint="sdxl-1.0")]
    for i in range(6):
        failed = i % 3 == 0
        events.append(
            make_event(
                "completion",
                user_id=USER,
                timestamp=at,
                success=not failed,
                duration_ms=900 + i,
                model_checkpoint="sdxl-1.0",
                error_type="Timeout" if failed else "",
                error_message="slow" if failed else "",
            )
        )
    live_server.events.RecordEvents(events_pb2.RecordEventsRequest(events=events))
    live_server.pipeline.RunTransfer(pipeline_pb2.RunTransferRequest())
    live_server.pipeline.RunAggregation(pipeline_pb2.RunAggregationRequest())
    return live_server


def get(server: LiveServer, path: str, **params: Any) -> requests.Response:
    return requests.get(f"{server.http}{path}", params=params, timeout=10)


def is_rfc3339(value: str) -> bool:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).tzinfo is not None


ENDPOINTS: list[tuple[str, dict[str, Any], set[str]]] = [
    ("/overview", {"days": 7}, {"lookback_days", "total_requests", "successful_generations", "failed_generations",
      "cancelled_generations", "success_rate_pct", "avg_duration_ms", "p50_duration_ms", "p95_duration_ms",
      "p99_duration_ms", "unique_users", "total_images_generated", "avg_queue_length", "max_queue_length",
      "data_as_of", "pending_events"}),
    ("/trends", {"days": 7, "interval": "hourly"}, {"interval", "lookback_days", "total_data_points", "data_points"}),
    (f"/users/{USER}", {"days": 30}, {"user_id", "lookback_days", "total_requests", "successful_generations",
      "failed_generations", "cancelled_generations", "success_rate_pct", "avg_duration_ms", "p50_duration_ms",
      "p95_duration_ms", "total_images_generated", "first_generation_at", "last_generation_at", "failure_breakdown",
      "models_used", "recent_activity"}),
    ("/models", {"days": 30}, {"lookback_days", "models"}),
    ("/failures", {"days": 7}, {"lookback_days", "total_failures", "total_completions", "failure_rate_pct",
      "total_error_types", "error_types", "failure_trends"}),
    ("/peak-hours", {"days": 30}, {"lookback_days", "peak_hours", "heatmap"}),
    ("/events", {"days": 7, "page_size": 3}, {"events", "next_page_token"}),
    ("/users", {"days": 30, "limit": 5}, {"lookback_days", "users"}),
    ("/pipeline/status", {}, {"stream_length", "pending_entries", "dead_letter_count", "latest_event_at",
      "total_events", "hours_with_data", "last_transfer", "last_aggregation"}),
]  # fmt: skip


@pytest.mark.parametrize(("path", "params", "fields"), ENDPOINTS, ids=[e[0].split("/")[1] for e in ENDPOINTS])
def test_endpoint_answers_every_documented_field(
    loaded: LiveServer, path: str, params: dict[str, Any], fields: set[str]
) -> None:
    response = get(loaded, PREFIX + path, **params)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    data = response.json()
    assert fields <= set(data)


def test_numbers_are_numbers_and_times_are_rfc3339(loaded: LiveServer) -> None:
    overview = get(loaded, f"{PREFIX}/overview").json()
    assert type(overview["total_requests"]) is int and overview["total_requests"] == 1
    assert type(overview["successful_generations"]) is int and overview["successful_generations"] == 4
    assert isinstance(overview["success_rate_pct"], float)
    assert is_rfc3339(overview["data_as_of"])
    trends = get(loaded, f"{PREFIX}/trends", days=1, interval="daily").json()
    assert trends["interval"] == "daily"
    assert all(type(p["total_requests"]) is int and is_rfc3339(p["timestamp"]) for p in trends["data_points"])
    user = get(loaded, f"{PREFIX}/users/{USER}").json()
    assert user["failure_breakdown"] == [{"error_type": "Timeout", "count": 2}]
    row = user["recent_activity"][0]
    assert {"id", "event_id", "event_type", "generation_id", "user_id", "timestamp", "duration_ms", "success",
            "error_type", "model_checkpoint", "created_at"} <= set(row)  # fmt: skip
    assert row["event_type"] in {"request", "completion"} and type(row["id"]) is int


def test_zero_values_are_present(live_server: LiveServer) -> None:
    overview = get(live_server, f"{PREFIX}/overview").json()
    assert overview["total_requests"] == 0 and overview["p95_duration_ms"] == 0 and overview["unique_users"] == 0
    user = get(live_server, f"{PREFIX}/users/{uuid.uuid4()}").json()
    assert user["total_requests"] == 0 and user["first_generation_at"] is None and user["recent_activity"] == []


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/overview", {"days": "seven"}, "days"),
        ("/overview", {"days": 0}, "days"),
        ("/trends", {"interval": "weekly"}, "interval"),
        ("/users/not-a-user", {}, "user_id"),
        ("/events", {"success": "maybe"}, "success"),
        ("/events", {"order": "oldest"}, "order"),
        ("/events", {"page_token": "garbage"}, "page_token"),
        ("/users", {"limit": 100000}, "limit"),
        ("/overview", {"dayz": 3}, "dayz"),
    ],
)
def test_bad_parameters_answer_400_naming_the_field(
    live_server: LiveServer, path: str, params: dict[str, Any], field: str
) -> None:
    response = get(live_server, PREFIX + path, **params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT" and error["field"] == field and error["message"]


def test_unknown_path_answers_json_404(live_server: LiveServer) -> None:
    response = get(live_server, f"{PREFIX}/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"


def test_metrics_report_the_service(loaded: LiveServer) -> None:
    body = requests.get(f"{loaded.http}/metrics", timeout=10).text
    assert "ga_events_received_total 7.0" in body
    assert 'ga_job_runs_total{job="transfer",outcome="success"} 1.0' in body
    assert "ga_stream_backlog 0.0" in body
    assert 'ga_rpc_duration_seconds_count{code="OK",method="RecordEvents"} 1.0' in body
