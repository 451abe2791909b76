"""The HTTP JSON gateway: the seed's paths, every field present, real JSON numbers, clear 400s."""

from __future__ import annotations

import logging
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


def get_raw(server: LiveServer, path_and_query: str) -> requests.Response:
    """GET a target exactly as written (no re-encoding by `requests`)."""
    return requests.get(server.http + path_and_query, timeout=10)


@pytest.mark.parametrize(
    ("query", "field", "says"),
    [
        ("days=7_0", "days", "digits 0-9"),  # int() takes "7_0" as 70
        ("days=%2B7", "days", "digits 0-9"),  # "+7"
        ("days=%207", "days", "digits 0-9"),  # " 7"
        ("days=7%20", "days", "digits 0-9"),  # "7 "
        ("days=%D9%A7", "days", "digits 0-9"),  # "٧", ARABIC-INDIC DIGIT SEVEN
        ("days=%EF%BC%97", "days", "digits 0-9"),  # "７", FULLWIDTH DIGIT SEVEN
        ("days=-7", "days", "digits 0-9"),
        ("days=" + "9" * 5000, "days", "too many digits"),  # beyond what int() converts
        ("days=7&days=8", "days", "given 2 times"),
        ("days=7&days=7", "days", "given 2 times"),  # even when they agree: one way to ask
        ("days=", "days", "must not be empty (omit it for the default)"),
        ("days", "days", "must not be empty (omit it for the default)"),
    ],
)
def test_integers_are_ascii_digits_given_once_and_not_empty(
    live_server: LiveServer, query: str, field: str, says: str
) -> None:
    response = get_raw(live_server, f"{PREFIX}/overview?{query}")
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT" and error["field"] == field
    assert says in error["message"]


@pytest.mark.parametrize(
    ("path", "query", "field"),
    [
        ("/trends", "interval=", "interval"),
        ("/trends", "interval=daily&interval=hourly", "interval"),
        ("/events", "success=", "success"),
        ("/events", "page_token=", "page_token"),
        ("/events", "user_id=", "user_id"),
        ("/events", "page_size=%D9%A3", "page_size"),
        ("/events", "success=%C4%B0", "success"),  # "İ": no Unicode case mapping onto the words
        ("/users", "limit=1_0", "limit"),
    ],
)
def test_every_parameter_follows_the_same_rules(live_server: LiveServer, path: str, query: str, field: str) -> None:
    response = get_raw(live_server, f"{PREFIX}{path}?{query}")
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == field


@pytest.mark.parametrize("query", ["days=7", "days=007", "success=TRUE&days=3", "success=No", "success=1", "success=0",
                                   "success=yes", "order=SLOWEST&page_size=5"])  # fmt: skip
def test_good_parameters_are_accepted(live_server: LiveServer, query: str) -> None:
    response = get_raw(live_server, f"{PREFIX}/events?{query}")
    assert response.status_code == 200, response.text


def test_wrong_method_answers_json_405_with_allow(live_server: LiveServer) -> None:
    for path in (f"{PREFIX}/overview", "/healthz", "/metrics"):
        response = requests.post(live_server.http + path, json={}, timeout=10)
        assert response.status_code == 405
        assert response.headers["Content-Type"].startswith("application/json")
        assert set(response.headers["Allow"].split(",")) == {"GET", "HEAD"}
        error = response.json()["error"]
        assert error["code"] == "METHOD_NOT_ALLOWED" and "POST" in error["message"]


def no_error_logged(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


def test_too_long_url_answers_json_414_without_an_error_logged(
    live_server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    assert get_raw(live_server, f"{PREFIX}/overview?days=7&dayz=" + "x" * 8000).status_code == 400  # 8,1xx: fine
    response = get_raw(live_server, f"{PREFIX}/overview?days=7&x=" + "x" * 8190)
    assert response.status_code == 414
    assert response.json()["error"]["code"] == "URI_TOO_LONG"
    assert "8190" in response.json()["error"]["message"]
    no_error_logged(caplog)


def test_too_large_header_answers_json_431_without_an_error_logged(
    live_server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    fine = requests.get(f"{live_server.http}{PREFIX}/overview", headers={"X-Big": "x" * 8000}, timeout=10)
    assert fine.status_code == 200
    for size in (8190, 20_000):
        response = requests.get(f"{live_server.http}{PREFIX}/overview", headers={"X-Big": "x" * size}, timeout=10)
        assert response.status_code == 431, size
        error = response.json()["error"]
        assert error["code"] == "REQUEST_HEADER_FIELDS_TOO_LARGE" and "X-Big" in error["message"]
    # Every path, the open ones too.
    assert requests.get(f"{live_server.http}/healthz", headers={"X-Big": "x" * 9000}, timeout=10).status_code == 431
    no_error_logged(caplog)


def test_requests_beyond_the_parser_limit_are_refused_without_a_traceback(
    live_server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    secret = "ga_secret_" + "s" * 100_000
    for request in (
        lambda: requests.get(f"{live_server.http}/healthz", headers={"Authorization": f"Bearer {secret}"}, timeout=10),
        lambda: get_raw(live_server, f"{PREFIX}/overview?x=" + "x" * 100_000),
    ):
        try:
            response = request()
        except requests.ConnectionError:
            continue  # the server may close before the client has finished sending: refused all the same
        assert response.status_code == 400
    no_error_logged(caplog)
    refused = [r.getMessage() for r in caplog.records if "refused an unreadable request" in r.getMessage()]
    assert refused and all("ga_secret_" not in line for line in refused)
    assert requests.get(f"{live_server.http}/healthz", timeout=10).status_code == 200, "the gateway still serves"


def test_readiness_and_liveness(live_server: LiveServer) -> None:
    live = requests.get(f"{live_server.http}/healthz", timeout=10)
    assert live.status_code == 200 and live.json() == {"status": "SERVING"}
    ready = requests.get(f"{live_server.http}/readyz", timeout=10)
    assert ready.status_code == 200
    assert ready.json() == {"status": "SERVING", "redis": "up", "postgres": "up"}


def test_metrics_say_the_stream_figures_are_current(loaded: LiveServer) -> None:
    body = requests.get(f"{loaded.http}/metrics", timeout=10).text
    assert "ga_stream_up 1.0" in body and "ga_stream_length " in body
