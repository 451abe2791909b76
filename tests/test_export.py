"""GPU time and its cost, and ExportEvents, against recomputations from the raw events the test sent.

GPU time (overview, models, users, top users ranked by it) and its price-table cost must equal sums over
the raw completions; an export must hold exactly the events ListEvents lists over all its pages, in the
same order, whichever way out it takes (gRPC, the client, HTTP CSV, the CLI's three formats).
"""

from __future__ import annotations

import csv
import io
import json
import time
import uuid
from datetime import UTC, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import grpc
import psycopg
import pyarrow.parquet as pq  # type: ignore[import-untyped,unused-ignore]
import pytest
import requests
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from generation_analytics.export import COLUMNS, cell, csv_text, flat_event
from generation_analytics.service.settings import SettingsError, load_settings, parse_gpu_prices
from generation_analytics.v1 import analytics_pb2, events_pb2
from tests import reference as ref
from tests.factories import make_event
from tests.fix_server import LiveServer
from tests.test_compare import in_range, previous_bounds
from tests.test_queries import ERRORS, MODELS, USERS, events_near_now, list_all, load, now, reset, stable

MS_PER_HOUR = 3_600_000
PRICE_TABLES = ["", "*=1.5", "sdxl-1.0=2.5", "sdxl-1.0=2.5,*=1.0", "sdxl-1.0=2.5,flux-dev=4.0,*=0.5", "flux-dev=0"]
SETTLED = hypothesis_settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# ---------------------------------------------------------------- GPU time: plain-Python recomputation


def gpu_ms(events: list[ref.Raw]) -> int:
    """Σ duration_ms over completions, successful and failed (no duration: 0)."""
    return sum(e.duration_ms or 0 for e in events if e.is_completion)


def price_of(table: str, checkpoint: str | None) -> float | None:
    """The table's price for a checkpoint, read from the text itself (not through parse_gpu_prices)."""
    entries = dict(part.split("=") for part in table.split(",") if part)
    if checkpoint and checkpoint in entries:
        return float(entries[checkpoint])
    return float(entries["*"]) if "*" in entries else None


def gpu_cost(table: str, events: list[ref.Raw]) -> float | None:
    if not table:
        return None
    return sum(
        (e.duration_ms or 0) / MS_PER_HOUR * (price_of(table, e.model_checkpoint) or 0.0)
        for e in events
        if e.is_completion
    )


def check_cost(message: Any, table: str, events: list[ref.Raw]) -> None:
    want = gpu_cost(table, events)
    if want is None:
        assert not message.HasField("gpu_cost")
    else:
        assert message.HasField("gpu_cost")
        assert message.gpu_cost == pytest.approx(want, rel=1e-9, abs=1e-9)


def check_gpu(server: LiveServer, raw: list[ref.Raw], days: int, table: str) -> None:
    overview, at = stable(lambda: server.analytics.GetOverview(analytics_pb2.GetOverviewRequest(days=days)))
    window = ref.in_window(raw, days, at)
    assert overview.gpu_time_ms == gpu_ms(window)
    check_cost(overview, table, window)

    models, at = stable(
        lambda: server.analytics.GetModelPerformance(
            analytics_pb2.GetModelPerformanceRequest(days=days, limit=1, compare_previous=True)
        )
    )
    window = ref.in_window(raw, days, at)
    previous = in_range(raw, previous_bounds(days, at))
    by_model = ref.group([e for e in window if e.model_checkpoint], lambda e: e.model_checkpoint)
    before_by_model = ref.group([e for e in previous if e.model_checkpoint], lambda e: e.model_checkpoint)
    listed = {m.model_checkpoint for m in models.models}
    for model in models.models:
        assert model.gpu_time_ms == gpu_ms(by_model[model.model_checkpoint])
        check_cost(model, table, by_model[model.model_checkpoint])
        before = before_by_model.get(model.model_checkpoint, [])
        assert model.previous.gpu_time_ms == gpu_ms(before)
        check_cost(model.previous, table, before)
    rest = [e for name, group in by_model.items() if name not in listed for e in group]
    if models.HasField("others"):
        assert models.others.gpu_time_ms == gpu_ms(rest)
        check_cost(models.others, table, rest)
        rest_before = [e for name, group in before_by_model.items() if name not in listed for e in group]
        assert models.others.previous.gpu_time_ms == gpu_ms(rest_before)
        check_cost(models.others.previous, table, rest_before)
    else:
        assert rest == []
    assert sum(m.gpu_time_ms for m in models.models) + models.others.gpu_time_ms == gpu_ms(
        [e for e in window if e.model_checkpoint]
    )

    for user in [*USERS, str(uuid.uuid4())]:
        request = analytics_pb2.GetUserAnalyticsRequest(user_id=user, days=days)
        reply, at = stable(lambda request=request: server.analytics.GetUserAnalytics(request))  # type: ignore[misc]
        mine = [e for e in ref.in_window(raw, days, at) if e.user_id == user]
        assert reply.gpu_time_ms == gpu_ms(mine)
        check_cost(reply, table, mine)

    for order, key in ((analytics_pb2.USER_ORDER_GPU_TIME, gpu_ms), (analytics_pb2.USER_ORDER_UNSPECIFIED, None)):
        ranked = analytics_pb2.ListTopUsersRequest(days=days, limit=3, order=order)
        top, at = stable(lambda ranked=ranked: server.analytics.ListTopUsers(ranked))  # type: ignore[misc]
        by_user = ref.group(ref.in_window(raw, days, at), lambda e: e.user_id)
        rank = key or (lambda events: ref.summarize(events).total_requests)
        assert [u.user_id for u in top.users] == sorted(by_user, key=lambda u: (-rank(by_user[u]), u))[:3]
        assert all(u.gpu_time_ms == gpu_ms(by_user[u.user_id]) for u in top.users)


@SETTLED
@given(
    events=st.lists(events_near_now(), max_size=60),
    days=st.sampled_from([1, 2, 3]),
    table=st.sampled_from(PRICE_TABLES),
)
def test_gpu_time_and_cost_match_the_raw_events(
    live_server: LiveServer, redis_url: str, events: list[events_pb2.GenerationEvent], days: int, table: str
) -> None:
    reset(live_server, redis_url)
    live_server.runtime.queries.prices = parse_gpu_prices(table)
    if events:
        load(live_server, events)
    check_gpu(live_server, [ref.from_message(e) for e in events], days, table)


def test_failed_completions_and_missing_durations_count_as_documented(live_server: LiveServer) -> None:
    at = now() - timedelta(minutes=1)
    user = str(uuid.uuid4())
    kinds: list[dict[str, Any]] = [
        {"success": True, "duration_ms": 1_000},
        {"success": False, "duration_ms": 500, "error_type": "Timeout"},
        {"success": True},  # no duration: counts 0
    ]
    events = [make_event("completion", user_id=user, timestamp=at, model_checkpoint="sdxl-1.0", **k) for k in kinds]
    events[2].ClearField("duration_ms")
    load(live_server, [*events, make_event("request", user_id=user, timestamp=at, model_checkpoint="sdxl-1.0")])
    live_server.runtime.queries.prices = parse_gpu_prices("sdxl-1.0=3.6")
    overview = live_server.analytics.GetOverview(analytics_pb2.GetOverviewRequest(days=1))
    assert overview.gpu_time_ms == 1_500
    assert overview.gpu_cost == pytest.approx(1_500 / MS_PER_HOUR * 3.6)
    top = live_server.analytics.ListTopUsers(analytics_pb2.ListTopUsersRequest(order=analytics_pb2.USER_ORDER_GPU_TIME))
    assert [(u.user_id, u.gpu_time_ms) for u in top.users] == [(user, 1_500)]


def test_gpu_time_through_the_client_http_and_cli(live_server: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    from generation_analytics.cli import main
    from generation_analytics.client import AnalyticsClient

    at = now() - timedelta(minutes=1)
    busy, slow = USERS[0], USERS[1]  # more requests / more GPU time
    events = [make_event("request", user_id=busy, timestamp=at) for _ in range(3)]
    events += [make_event("completion", user_id=slow, timestamp=at, success=True, duration_ms=90_000)]
    load(live_server, events)
    live_server.runtime.queries.prices = parse_gpu_prices("*=2")
    with AnalyticsClient(live_server.address) as client:
        assert [u.user_id for u in client.top_users(order="gpu_time").users] == [slow, busy]
        assert [u.user_id for u in client.top_users().users] == [busy, slow]
        assert client.overview(1).gpu_cost == pytest.approx(0.05)
        with pytest.raises(ValueError, match="order"):
            client.top_users(order="cost")
    base = f"{live_server.http}/api/v1/analytics/generation"
    users = requests.get(f"{base}/users", params={"order": "gpu_time"}, timeout=10).json()["users"]
    assert [(u["user_id"], u["gpu_time_ms"]) for u in users] == [(slow, 90_000), (busy, 0)]
    bad = requests.get(f"{base}/users", params={"order": "cost"}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "order"
    assert requests.get(f"{base}/models", timeout=10).json()["models"] == []  # no checkpoint named
    live_server.runtime.queries.prices = parse_gpu_prices("")
    assert requests.get(f"{base}/overview", timeout=10).json()["gpu_cost"] is None
    assert main(["top-users", "--target", live_server.address, "--order", "gpu_time", "--json"]) == 0
    assert [u["user_id"] for u in json.loads(capsys.readouterr().out)["users"]] == [slow, busy]


@pytest.mark.parametrize(
    ("text", "prices", "default"),
    [
        ("", {}, None),
        ("*=1", {}, 1.0),
        (" sdxl-1.0 = 2.5 , flux-dev=4.0,*=1.0 ", {"sdxl-1.0": 2.5, "flux-dev": 4.0}, 1.0),
        ("a=0,", {"a": 0.0}, None),
    ],
)
def test_price_tables_are_read(text: str, prices: dict[str, float], default: float | None) -> None:
    table = parse_gpu_prices(text)
    assert (dict(table.by_checkpoint), table.default, table.configured) == (prices, default, bool(text.strip(" ,")))
    assert load_settings({"GA_GPU_PRICES": text}).prices.table == table


@pytest.mark.parametrize("text", ["sdxl", "=2", "a=x", "a=-1", "a=nan", "a=inf", "a=1,a=2", "*=1,*=2"])
def test_bad_price_tables_are_refused_at_start(text: str) -> None:
    with pytest.raises(SettingsError, match="GA_GPU_PRICES"):
        load_settings({"GA_GPU_PRICES": text})


def test_a_checkpoint_without_a_price_costs_nothing() -> None:
    table = parse_gpu_prices("sdxl-1.0=2")
    assert (table.price("sdxl-1.0"), table.price("flux-dev"), table.price(None)) == (2.0, 0.0, 0.0)
    assert table.cost("sdxl-1.0", MS_PER_HOUR) == 2.0


# ---------------------------------------------------------------- export


@st.composite
def filters(draw: st.DrawFn) -> dict[str, Any]:
    """ListEvents' filters, each left out or set to a value that matches some of the events."""
    chosen: dict[str, Any] = {"days": draw(st.sampled_from([1, 2, 3]))}
    options: dict[str, Any] = {
        "user_id": st.sampled_from(USERS),
        "model_checkpoint": st.sampled_from([m for m in MODELS if m]),
        "event_type": st.sampled_from(["request", "completion", "cancellation"]),
        "success": st.booleans(),
        "error_type": st.sampled_from([e for e in ERRORS if e]),
        "min_duration_ms": st.sampled_from([0, 3, 1_000, 300_000]),
    }
    for name, values in options.items():
        if draw(st.booleans()):
            chosen[name] = draw(values)
    return chosen


EVENT_TYPES = {
    "request": events_pb2.EVENT_TYPE_REQUEST,
    "completion": events_pb2.EVENT_TYPE_COMPLETION,
    "cancellation": events_pb2.EVENT_TYPE_CANCELLATION,
}


def as_request(chosen: dict[str, Any]) -> dict[str, Any]:
    """The filters as request message fields (the event type as its enum number)."""
    return {k: EVENT_TYPES[v] if k == "event_type" else v for k, v in chosen.items()}


def cli_args(chosen: dict[str, Any]) -> list[str]:
    args = []
    for name, value in chosen.items():
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        args += [f"--{name.replace('_', '-')}", text]
    return args


def http_params(chosen: dict[str, Any]) -> dict[str, str]:
    return {k: (("true" if v else "false") if isinstance(v, bool) else str(v)) for k, v in chosen.items()}


def export_all_ways(server: LiveServer, chosen: dict[str, Any], folder: Path) -> dict[str, list[Any]]:
    """The events each way out gives for the filters: ids in order (and the parsed files)."""
    from generation_analytics.cli import main
    from generation_analytics.client import AnalyticsClient

    stub = [
        e
        for m in server.analytics.ExportEvents(analytics_pb2.ExportEventsRequest(**as_request(chosen)))
        for e in m.events
    ]
    with AnalyticsClient(server.address) as client:
        via_client = list(client.export_events(**chosen))
    reply = requests.get(
        f"{server.http}/api/v1/analytics/generation/events.csv", params=http_params(chosen), timeout=30
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["Content-Type"].startswith("text/csv")
    http_rows = list(csv.DictReader(io.StringIO(reply.text)))
    files = {}
    for fmt in ("csv", "jsonl", "parquet"):
        files[fmt] = folder / f"events.{fmt}"
        assert (
            main(
                ["export", "--target", server.address, "--format", fmt, "--output", str(files[fmt]), *cli_args(chosen)]
            )
            == 0
        )
    cli_csv = files["csv"].read_bytes().decode("utf-8")
    jsonl = [json.loads(line) for line in files["jsonl"].read_text(encoding="utf-8").splitlines()]
    parquet = pq.read_table(files["parquet"]).to_pylist()
    # One row shape whichever way: the CLI's CSV is byte for byte the gateway's.
    assert cli_csv == reply.text
    assert cli_csv == csv_text([flat_event(e) for e in stub], header=True)
    assert [list(row) for row in http_rows[:1]] == [list(COLUMNS)] * min(len(http_rows), 1)
    for line, event in zip(jsonl, stub, strict=True):
        assert line["timestamp"] == cell(event.event.timestamp.ToDatetime(tzinfo=UTC))
        assert line["duration_ms"] == (event.event.duration_ms if event.event.HasField("duration_ms") else None)
    for row, event in zip(parquet, stub, strict=True):
        assert row["timestamp"] == event.event.timestamp.ToDatetime(tzinfo=UTC)
        assert row["user_id"] == event.event.user_id and row["event_type"] == flat_event(event)["event_type"]
        assert dict(row["attributes"]) == dict(event.event.attributes)
    return {
        "grpc": [e.id for e in stub],
        "client": [e.id for e in via_client],
        "http": [int(row["id"]) for row in http_rows],
        "csv": [int(row["id"]) for row in csv.DictReader(io.StringIO(cli_csv))],
        "jsonl": [line["id"] for line in jsonl],
        "parquet": [row["id"] for row in parquet],
    }


@SETTLED
@given(events=st.lists(events_near_now(), max_size=50), chosen=filters())
def test_an_export_holds_exactly_what_list_events_lists(
    live_server: LiveServer, redis_url: str, events: list[events_pb2.GenerationEvent], chosen: dict[str, Any]
) -> None:
    reset(live_server, redis_url)
    if events:
        load(live_server, events)
    hour = now().replace(minute=0, second=0, microsecond=0)
    listed = list_all(live_server, **as_request(chosen))
    with TemporaryDirectory() as folder:
        exported = export_all_ways(live_server, chosen, Path(folder))
    if listed is None or now().replace(minute=0, second=0, microsecond=0) != hour:
        return  # the hour turned: the window moved between the calls
    want = [e.id for e in listed]
    assert exported == dict.fromkeys(exported, want)


def many_events(n: int) -> list[events_pb2.GenerationEvent]:
    at = now() - timedelta(minutes=5)
    return [make_event("request", timestamp=at - timedelta(microseconds=i)) for i in range(n)]


def test_a_long_export_comes_in_batches_newest_first(live_server: LiveServer) -> None:
    load(live_server, many_events(4_500))
    messages = list(live_server.analytics.ExportEvents(analytics_pb2.ExportEventsRequest(days=1)))
    assert [len(m.events) for m in messages] == [2_000, 2_000, 500]
    stamps = [(e.event.timestamp.ToDatetime(), e.id) for m in messages for e in m.events]
    assert stamps == sorted(stamps, reverse=True)


def test_large_events_come_in_messages_of_about_a_megabyte(live_server: LiveServer) -> None:
    dsn = live_server.settings.postgres.dsn
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO generation_events (event_id, event_type, generation_id, user_id, timestamp, error_message)"
            " SELECT gen_random_uuid(), 'request', 'g' || i, %s, now() - i * interval '1 ms', repeat('m', 4096)"
            " FROM generate_series(1, 3000) AS i",
            (USERS[0],),
        )
    messages = list(live_server.analytics.ExportEvents(analytics_pb2.ExportEventsRequest(days=1)))
    assert sum(len(m.events) for m in messages) == 3_000
    assert len(messages) > 3_000 * 4_096 // (1 << 20)
    assert max(m.ByteSize() for m in messages) <= 1.1 * (1 << 20)


def open_transactions(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND xact_start IS NOT NULL"
        ).fetchone()
    assert row is not None
    return int(row[0])


def insert_raw(dsn: str, n: int) -> None:
    """n request rows straight into generation_events (an export reads raw rows only), ~0.5 kB each:
    more than gRPC's flow control lets the server send ahead of a client that does not read."""
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO generation_events (event_id, event_type, generation_id, user_id, timestamp, error_message)"
            " SELECT gen_random_uuid(), 'request', 'g' || i, %s, now() - interval '5 minutes' - i * interval '1 ms',"
            " repeat('x', 400) FROM generate_series(1, %s) AS i",
            (USERS[0], n),
        )


def wait_until_no_transaction(dsn: str) -> None:
    deadline = time.monotonic() + 10
    while open_transactions(dsn) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_transactions(dsn) == 0, "the cancelled export still holds its transaction"


def test_a_cancelled_export_stops_reading(live_server: LiveServer) -> None:
    dsn = live_server.settings.postgres.dsn
    insert_raw(dsn, 60_000)
    call: Any = live_server.analytics.ExportEvents(analytics_pb2.ExportEventsRequest(days=1))
    assert next(call).events
    assert open_transactions(dsn) == 1  # the cursor's transaction, waiting for the client
    call.cancel()
    wait_until_no_transaction(dsn)
    # The connection went back to the pool in a usable state: the next export reads everything.
    request = analytics_pb2.ExportEventsRequest(user_id=USERS[0])
    assert sum(len(m.events) for m in live_server.analytics.ExportEvents(request)) == 60_000


def test_a_client_that_stops_early_cancels(live_server: LiveServer) -> None:
    from generation_analytics.client import AnalyticsClient

    dsn = live_server.settings.postgres.dsn
    insert_raw(dsn, 60_000)
    with AnalyticsClient(live_server.address) as client:
        events: Any = client.export_events(days=1)
        assert next(events).event.event_type == events_pb2.EVENT_TYPE_REQUEST
        assert open_transactions(dsn) == 1
        events.close()
        wait_until_no_transaction(dsn)


def test_an_http_client_that_goes_away_stops_the_export(live_server: LiveServer) -> None:
    dsn = live_server.settings.postgres.dsn
    insert_raw(dsn, 60_000)
    url = f"{live_server.http}/api/v1/analytics/generation/events.csv"
    with requests.get(url, params={"days": 1}, stream=True, timeout=30) as reply:
        assert reply.headers.get("Transfer-Encoding") == "chunked"
        chunks = reply.iter_content(chunk_size=4096)
        received = next(chunks)
        assert received.startswith(b"id,event_id,")
        # The header line may be sent before the cursor opens; a data row only from inside its transaction,
        # which then stays open: ~30 MB of rows cannot all wait in socket buffers for a client that stopped.
        while received.count(b"\n") < 2:
            received += next(chunks)
        assert open_transactions(dsn) == 1
    wait_until_no_transaction(dsn)


BAD_FILTERS = [
    ({"user_id": "bob"}, "user_id"),
    ({"days": 0}, "days"),
    ({"days": 366}, "days"),
    ({"min_duration_ms": -1}, "min_duration_ms"),
    ({"event_type": 9}, "event_type"),
    ({"model_checkpoint": "x" * 5_000}, "model_checkpoint"),
    ({"error_type": "a\x00b"}, "error_type"),
]


@pytest.mark.parametrize(("fields", "field"), BAD_FILTERS, ids=[f for _, f in BAD_FILTERS])
def test_bad_filters_are_refused_naming_the_field(live_server: LiveServer, fields: dict[str, Any], field: str) -> None:
    with pytest.raises(grpc.RpcError) as error:
        list(live_server.analytics.ExportEvents(analytics_pb2.ExportEventsRequest(**fields)))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.value.details() or "").startswith(field)
    if field == "event_type":
        return  # no text spelling of an unknown number
    reply = requests.get(
        f"{live_server.http}/api/v1/analytics/generation/events.csv", params=http_params(fields), timeout=10
    )
    assert reply.status_code == 400
    assert reply.json()["error"]["field"] == field


@pytest.mark.parametrize(
    ("query", "field"), [("page_size=5", "page_size"), ("success=maybe", "success"), ("days=x", "days")]
)
def test_http_export_refuses_what_it_cannot_read(live_server: LiveServer, query: str, field: str) -> None:
    reply = requests.get(f"{live_server.http}/api/v1/analytics/generation/events.csv?{query}", timeout=10)
    assert reply.status_code == 400 and reply.json()["error"]["field"] == field


def test_cli_export_refuses_bad_filters_and_reports_progress(
    live_server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from generation_analytics.cli import main

    load(live_server, many_events(30))
    out = tmp_path / "e.csv"
    assert main(["export", "--target", live_server.address, "--output", str(out), "--user-id", "bob"]) == 1
    assert "field: user_id" in capsys.readouterr().err
    assert main(["export", "--target", live_server.address, "--output", "-", "--format", "jsonl"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 30
    assert "exported 30 rows" in captured.err and "rows/s" in captured.err
    assert main(["export", "--target", live_server.address, "--output", "-", "--format", "parquet"]) == 2


def test_parquet_without_pyarrow_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from generation_analytics.cli import main

    monkeypatch.setitem(sys.modules, "pyarrow", None)
    assert main(["export", "--format", "parquet", "--output", str(tmp_path / "e.parquet")]) == 2
    assert "pip install 'generation-analytics[parquet]'" in capsys.readouterr().err


def test_export_through_grpcurl(live_server: LiveServer) -> None:
    from tests.test_grpcurl import grpcurl

    load(live_server, many_events(3))
    out = grpcurl("-d", '{"days": 1}', live_server.address, "generation_analytics.v1.AnalyticsService/ExportEvents")
    assert len(json.loads(out)["events"]) == 3
