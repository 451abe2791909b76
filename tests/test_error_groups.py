"""Error groups (ListErrorGroups): every group and figure against a plain-Python recomputation from the
events the test sent; filters, paging, tokens, late events, rows stored without a fingerprint, and every
front end (gRPC, client, HTTP, CLI)."""

from __future__ import annotations

import base64
import json
import random
import subprocess
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
import requests
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from generation_analytics.questions import ErrorGroupsQuestion
from generation_analytics.service.db import sync_pool
from generation_analytics.service.fingerprints import RULES_VERSION, fingerprint
from generation_analytics.service.migrate import _error_group_hour_totals, load_migrations, migrate
from generation_analytics.service.pipeline.aggregate import PARTS, Aggregator
from generation_analytics.service.queries.page_tokens import PageTokens
from generation_analytics.service.queries.window import window
from generation_analytics.service.settings import AggregationSettings, PostgresSettings, RetentionSettings
from generation_analytics.v1 import analytics_pb2, events_pb2, pipeline_pb2
from tests import reference as ref
from tests.factories import make_event
from tests.fix_server import LiveServer
from tests.rollup_check import assert_error_groups_match_raw
from tests.test_fingerprints import TEMPLATES, _fill
from tests.test_grpcurl import GRPCURL
from tests.test_queries import load, reset, stable

USERS = [str(uuid.UUID(int=i + 1, version=4)) for i in range(6)]
MODELS = ["sdxl-1.0", "sdxl-1.1", "flux-dev", ""]
HOUR = timedelta(hours=1)
PREFIX = "/api/v1/analytics/generation"


def now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------- the reference


@dataclass
class Failure:
    """A failed completion the test sent, and the template its message was made from."""

    template: int
    event: ref.Raw


def expected_groups(
    failures: list[Failure], days: int, at: datetime, *, model: str = "", error_type: str = ""
) -> list[dict[str, Any]]:
    """Every group of the window as ListErrorGroups should answer it, ranked, from the raw failures."""
    start, end = ref.window_bounds(days, at)
    chosen = [
        f.event
        for f in failures
        if start <= f.event.timestamp < end
        and (not model or f.event.model_checkpoint == model)
        and (not error_type or (f.event.error_type or "") == error_type)
    ]
    groups: dict[str, list[ref.Raw]] = defaultdict(list)
    for e in chosen:
        groups[fingerprint(e.error_type or "", e.error_message or "")].append(e)
    first_day, last_day = start.date(), (end - HOUR).date()
    dates = [first_day + timedelta(days=i) for i in range((last_day - first_day).days + 1)]
    out = []
    for key, events in groups.items():
        per_model = Counter(e.model_checkpoint or "" for e in events)
        ranked = sorted(per_model.items(), key=lambda kv: (-kv[1], kv[0]))
        per_day = Counter(e.timestamp.astimezone(UTC).date() for e in events)
        latest = max((e.timestamp, e.error_message or "") for e in events)
        out.append(
            {
                "fingerprint": key,
                "error_type": events[0].error_type or "",
                "sample_message": latest[1],
                "count": len(events),
                "affected_users": len({e.user_id for e in events}),
                "checkpoints": [name for name, _ in ranked[:10]],
                "total_checkpoints": len(ranked),
                "first_seen": min(e.timestamp for e in events),
                "last_seen": max(e.timestamp for e in events),
                "daily_trend": [(d.isoformat(), per_day.get(d, 0)) for d in dates],
            }
        )
    return sorted(out, key=lambda g: (-g["count"], g["fingerprint"]))


def as_dict(group: analytics_pb2.ErrorGroup) -> dict[str, Any]:
    return {
        "fingerprint": group.fingerprint,
        "error_type": group.error_type,
        "sample_message": group.sample_message,
        "count": group.count,
        "affected_users": group.affected_users,
        "checkpoints": list(group.checkpoints),
        "total_checkpoints": group.total_checkpoints,
        "first_seen": group.first_seen.ToDatetime(tzinfo=UTC),
        "last_seen": group.last_seen.ToDatetime(tzinfo=UTC),
        "daily_trend": [(p.date, p.count) for p in group.daily_trend],
    }


def ask(server: LiveServer, **fields: Any) -> analytics_pb2.ListErrorGroupsResponse:
    return server.analytics.ListErrorGroups(analytics_pb2.ListErrorGroupsRequest(**fields), timeout=30)


def every_page(server: LiveServer, **fields: Any) -> tuple[list[analytics_pb2.ErrorGroup], int]:
    """Every group, page after page; and how many pages it took."""
    groups: list[analytics_pb2.ErrorGroup] = []
    token, pages = "", 0
    while True:
        reply = ask(server, page_token=token, **fields)
        groups += reply.groups
        pages += 1
        token = reply.next_page_token
        if not token:
            return groups, pages


# ---------------------------------------------------------------- random failures through the service


@st.composite
def failures_near_now(draw: st.DrawFn) -> tuple[int, events_pb2.GenerationEvent]:
    """A failed completion in the last ~3 days whose message is one of a few templates with random
    particulars (numbers, UUIDs, URLs, paths, quoted values, durations, hex ids)."""
    current = now().replace(minute=0, second=0, microsecond=0)
    hours_back = draw(st.sampled_from([0, 1, 23, 24, 25, 47, 48, 49]) | st.integers(0, 74))
    offset = draw(st.timedeltas(timedelta(0), timedelta(minutes=59, seconds=59)))
    when = min(current - hours_back * HOUR + offset, now() - timedelta(seconds=1))
    template = draw(st.integers(0, len(TEMPLATES) - 1))
    error_type, text = TEMPLATES[template]
    event = make_event(
        "completion",
        timestamp=when,
        user_id=draw(st.sampled_from(USERS)),
        model_checkpoint=draw(st.sampled_from(MODELS)),
        success=False,
        duration_ms=draw(st.integers(0, 60_000)),
        error_type=error_type,
        error_message=_fill(text, draw),
    )
    return template, event


def noise(seed: int, count: int) -> list[events_pb2.GenerationEvent]:
    """Events that belong to no group: requests, successes (even with an error text), cancellations."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        when = now() - timedelta(minutes=rng.randrange(1, 70 * 60))
        kind = rng.choice(["request", "completion", "cancellation"])
        extra = (
            {"success": True, "error_type": "Timeout", "error_message": "ignored 12"} if kind == "completion" else {}
        )
        out.append(make_event(kind, timestamp=when, user_id=rng.choice(USERS), **extra))
    return out


@hypothesis_settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    drawn=st.lists(failures_near_now(), min_size=1, max_size=60),
    seed=st.integers(0, 1000),
    asked=st.tuples(
        st.sampled_from([1, 2, 3]),  # days
        st.integers(1, 4),  # page size
        st.sampled_from(MODELS[:3]),  # checkpoint filter
        st.sampled_from([t for t, _ in TEMPLATES]),  # error type filter
    ),
)
def test_groups_match_a_recomputation_from_the_raw_failures(
    live_server: LiveServer,
    redis_url: str,
    drawn: list[tuple[int, events_pb2.GenerationEvent]],
    seed: int,
    asked: tuple[int, int, str, str],
) -> None:
    days, page_size, model, error_type = asked
    reset(live_server, redis_url)
    load(live_server, [e for _, e in drawn] + noise(seed, 20))
    failures = [Failure(template, ref.from_message(e)) for template, e in drawn]

    reply, at = stable(lambda: ask(live_server, days=days, page_size=1000))
    want = expected_groups(failures, days, at)
    assert [as_dict(g) for g in reply.groups] == want
    assert (reply.total_groups, reply.rules_version, reply.lookback_days) == (len(want), RULES_VERSION, days)
    assert reply.next_page_token == ""
    start, end = ref.window_bounds(days, at)
    assert (reply.window_start.ToDatetime(tzinfo=UTC), reply.window_end.ToDatetime(tzinfo=UTC)) == (start, end)

    # The groups are the templates: messages differing only in their particulars share one, others don't.
    in_window = [f for f in failures if start <= f.event.timestamp < end]
    by_template: dict[int, set[str]] = defaultdict(set)
    for f in in_window:
        by_template[f.template].add(fingerprint(f.event.error_type or "", f.event.error_message or ""))
    assert all(len(keys) == 1 for keys in by_template.values()), by_template
    assert len(want) == len(by_template)

    # Filters: the same recomputation over the failures they select.
    for filters in (
        {"model_checkpoint": model},
        {"error_type": error_type},
        {"model_checkpoint": model, "error_type": error_type},
    ):
        filtered, at = stable(lambda filters=filters: ask(live_server, days=days, page_size=1000, **filters))  # type: ignore[misc]
        expected = expected_groups(
            failures, days, at, model=filters.get("model_checkpoint", ""), error_type=filters.get("error_type", "")
        )
        assert [as_dict(g) for g in filtered.groups] == expected, filters
        assert filtered.total_groups == len(expected)

    # Paging: every group exactly once, in the same order, each page as long as asked.
    paged, pages = every_page(live_server, days=days, page_size=page_size)
    assert [g.fingerprint for g in paged] == [g["fingerprint"] for g in want]
    assert pages == max(1, -(-len(want) // page_size))


def test_late_failures_are_regrouped_with_their_hour(live_server: LiveServer) -> None:
    """Failures of hours aggregated long ago arrive: the hours are recomputed, the groups follow."""
    base = now() - timedelta(hours=30)
    first = [
        make_event("completion", timestamp=base + timedelta(minutes=i), success=False, error_type="Timeout",
                   error_message=f"Timeout after {i + 1}s waiting for worker {i}", user_id=USERS[i % 2])
        for i in range(5)
    ]  # fmt: skip
    load(live_server, first)
    before = ask(live_server, days=2)
    assert [(g.count, g.affected_users) for g in before.groups] == [(5, 2)]
    late = [
        make_event("completion", timestamp=base + timedelta(minutes=30), success=False, error_type="Timeout",
                   error_message="Timeout after 9 min waiting for worker 77", user_id=USERS[3], model_checkpoint="sd"),
        make_event("completion", timestamp=base - timedelta(hours=3), success=False, error_type="Other",
                   error_message="something else", user_id=USERS[4]),
    ]  # fmt: skip
    load(live_server, late)
    reply, at = stable(lambda: ask(live_server, days=2))
    failures = [Failure(0, ref.from_message(e)) for e in first + late]
    assert [as_dict(g) for g in reply.groups] == expected_groups(failures, 2, at)
    assert [(g.count, g.affected_users, list(g.checkpoints)) for g in reply.groups] == [
        (6, 3, ["", "sd"]),
        (1, 1, [""]),
    ]


def test_failures_stored_without_a_fingerprint_get_one_from_aggregation(live_server: LiveServer) -> None:
    """Rows stored before migration 0010 (or by hand) have none: aggregation computes it, in Python with the
    same rules, stores it, and groups them with the others."""
    when = now() - timedelta(hours=2)
    sent = [
        make_event("completion", timestamp=when, success=False, error_type="FileNotFound",
                   error_message=f"weights not found: /models/v{i}/unet.bin", user_id=USERS[i])
        for i in range(3)
    ]  # fmt: skip
    load(live_server, sent)
    dsn = live_server.settings.postgres.dsn
    with psycopg.connect(dsn) as conn:
        stored = conn.execute("SELECT DISTINCT error_fingerprint FROM generation_events").fetchall()
        assert stored == [(fingerprint("FileNotFound", "weights not found: /a/b"),)]
        # As an older version left them: no fingerprint, no group rows; the hour dirty.
        conn.execute("UPDATE generation_events SET error_fingerprint = NULL")
        conn.execute("DELETE FROM generation_error_group_metrics_hourly")
        conn.execute("DELETE FROM generation_error_group_metrics_daily")
        conn.execute("DELETE FROM generation_error_group_totals_daily")
        conn.execute("DELETE FROM generation_error_group_totals_hourly")
        conn.execute(
            "INSERT INTO generation_dirty_hours (hour, version) SELECT date_trunc('hour', %s::timestamptz), 0",
            (when,),
        )
    assert ask(live_server, days=1).groups == []
    live_server.pipeline.RunAggregation(pipeline_pb2.RunAggregationRequest())
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT DISTINCT error_fingerprint FROM generation_events").fetchall() == stored
    reply = ask(live_server, days=1)
    assert [(g.fingerprint, g.count, g.affected_users) for g in reply.groups] == [(stored[0][0], 3, 3)]


# ---------------------------------------------------------------- tokens and bad requests


@pytest.fixture
def grouped(live_server: LiveServer) -> LiveServer:
    """Five groups of 5, 4, 3, 2 and 1 failures in the last hours."""
    events = [
        make_event("completion", timestamp=now() - timedelta(minutes=10 + i), success=False,
                   error_type=f"Error{n}", error_message=f"failed on node {i}", user_id=USERS[i % 3])
        for n in range(5) for i in range(5 - n)
    ]  # fmt: skip
    load(live_server, events)
    return live_server


def forged(token: str, **changes: Any) -> str:
    """The token with its payload changed and its signature kept (what an attacker can do)."""
    body, _, mac = token.partition(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload.update(changes)
    encoded = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    return f"{encoded}.{mac}"


def refused(server: LiveServer, **fields: Any) -> str:
    with pytest.raises(grpc.RpcError) as error:
        ask(server, **fields)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return error.value.details() or ""


def test_paging_and_tokens(grouped: LiveServer) -> None:
    groups, pages = every_page(grouped, page_size=2)
    assert [g.count for g in groups] == [5, 4, 3, 2, 1] and pages == 3
    assert len({g.fingerprint for g in groups}) == 5
    token = ask(grouped, page_size=2).next_page_token
    assert [g.count for g in ask(grouped, page_size=2, page_token=token).groups] == [3, 2]
    # Another page size is fine (it is not a filter); other filters or days are not.
    assert [g.count for g in ask(grouped, page_size=3, page_token=token).groups] == [3, 2, 1]
    for other in ({"days": 3}, {"model_checkpoint": "sdxl-1.0"}, {"error_type": "Error1"}):
        assert refused(grouped, page_size=2, page_token=token, **other) == (
            "page_token: issued for different filters, order or days"
        )
    for bad in (
        forged(token, k=2**63),
        forged(token, k=True),
        forged(token, k=0),
        forged(token, g="'; DROP TABLE x; --"),
        forged(token, g=None),
        forged(token, s="1970-01-01T00:00:00+00:00"),
        token.partition(".")[0],
        token + "A" * 600,
        "garbage",
    ):
        assert refused(grouped, page_size=2, page_token=bad).startswith("page_token: not valid"), bad
    # Signed with the service's own secret, but holding a position no page ends at: refused all the same.
    with psycopg.connect(grouped.settings.postgres.dsn) as conn:
        row = conn.execute("SELECT value FROM service_secrets WHERE name = 'page_tokens'").fetchone()
    assert row is not None
    tokens = PageTokens(bytes(row[0]))
    question = ErrorGroupsQuestion(page_size=2)
    w = window(None, default=7)
    for position in ({"k": 0, "g": "0123456789abcdef"}, {"k": 3, "g": "XYZ"}, {"k": 3.5, "g": "0123456789abcdef"},
                     {"k": 3}, {"g": "0123456789abcdef"}, {"k": [3], "g": "0123456789abcdef"}):  # fmt: skip
        signed = tokens.issue(w, question, position)
        assert refused(grouped, page_size=2, page_token=signed) == "page_token: not valid", position
    good = tokens.issue(w, question, {"k": 4, "g": "f" * 16})  # after the group of 4 (no fingerprint is greater)
    assert [g.count for g in ask(grouped, page_size=2, page_token=good).groups] == [3, 2]
    # A ListEvents token is no error-groups token, and the other way round.
    events_token = grouped.analytics.ListEvents(analytics_pb2.ListEventsRequest(page_size=1)).next_page_token
    assert refused(grouped, page_token=events_token) == "page_token: issued by another RPC"
    with pytest.raises(grpc.RpcError) as error:
        grouped.analytics.ListEvents(analytics_pb2.ListEventsRequest(page_size=1, page_token=token))
    assert (error.value.details() or "").startswith("page_token")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"days": 0}, "days"),
        ({"days": 366}, "days"),
        ({"page_size": 1001}, "page_size"),
        ({"page_size": -1}, "page_size"),
        ({"model_checkpoint": "a\x00"}, "model_checkpoint"),
        ({"error_type": "e" * 2000}, "error_type"),
    ],
)
def test_bad_requests_are_refused_naming_the_field(live_server: LiveServer, fields: dict[str, Any], field: str) -> None:
    assert refused(live_server, **fields).startswith(field)


# ---------------------------------------------------------------- every front end


def test_error_groups_through_the_python_client(grouped: LiveServer) -> None:
    from generation_analytics.client import AnalyticsClient

    with AnalyticsClient(grouped.address) as client:
        page = client.error_groups(days=1, page_size=2)
        assert [g.count for g in page.groups] == [5, 4] and page.total_groups == 5 and page.next_page_token
        assert [g.count for g in client.iter_error_groups(page_size=2)] == [5, 4, 3, 2, 1]
        assert [g.error_type for g in client.error_groups(error_type="Error3").groups] == ["Error3"]


def test_error_groups_through_http(grouped: LiveServer) -> None:
    url = f"{grouped.http}{PREFIX}/errors/groups"
    body = requests.get(url, params={"days": "1", "page_size": "2"}, timeout=10).json()
    assert [g["count"] for g in body["groups"]] == [5, 4] and body["total_groups"] == 5
    assert body["rules_version"] == RULES_VERSION and sum(p["count"] for p in body["groups"][0]["daily_trend"]) == 5
    following = requests.get(
        url, params={"days": "1", "page_size": "2", "page_token": body["next_page_token"]}, timeout=10
    )
    assert [g["count"] for g in following.json()["groups"]] == [3, 2]
    bad = requests.get(url, params={"page_token": forged(body["next_page_token"], k=-1)}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "page_token"
    unknown = requests.get(url, params={"order": "newest"}, timeout=10)
    assert unknown.status_code == 400 and unknown.json()["error"]["field"] == "order"


def test_error_groups_through_the_cli(grouped: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    from generation_analytics.cli import main

    assert main(["error-groups", "--target", grouped.address, "--page-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "5 groups (rules version 1)" in out and "Error0" in out and "failed on node" in out
    assert "next page: --page-token" in out
    assert main(["error-groups", "--target", grouped.address, "--error-type", "Error2", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert [(g["error_type"], g["count"]) for g in body["groups"]] == [("Error2", 3)]
    assert main(["error-groups", "--target", grouped.address, "--days", "0"]) == 1
    assert "days" in capsys.readouterr().err


def test_error_groups_through_grpcurl(grouped: LiveServer) -> None:
    result = subprocess.run(
        [GRPCURL, "-plaintext", "-d", json.dumps({"days": 1, "page_size": 1}), grouped.address,
         "generation_analytics.v1.AnalyticsService/ListErrorGroups"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["groups"][0]["count"] == "5" and reply["total_groups"] == 5 and reply["next_page_token"]


def test_the_daily_trend_covers_every_day_of_the_window(grouped: LiveServer) -> None:
    reply, at = stable(lambda: ask(grouped, days=3, page_size=1))
    start, end = ref.window_bounds(3, at)
    days = [p.date for p in reply.groups[0].daily_trend]
    assert days[0] == start.date().isoformat() and days[-1] == (end - HOUR).date().isoformat()
    assert len(days) == len(set(days)) == ((end - HOUR).date() - start.date()).days + 1
    assert sum(p.count for p in reply.groups[0].daily_trend) == 5
    assert date.fromisoformat(days[1]) - date.fromisoformat(days[0]) == timedelta(days=1)


def test_migration_0010_regroups_the_failures_already_stored(empty_db_dsn: str, tmp_path: Path) -> None:
    """A database with failures from before error groups: 0010 marks their hours dirty, and the next
    aggregation gives each its fingerprint (the same as transfer would) and fills both rollups."""
    for migration in load_migrations():
        if migration.version < 10:
            (tmp_path / f"{migration.version:04d}_{migration.name}.sql").write_text(migration.sql)
    migrate(empty_db_dsn, folder=tmp_path)
    when = now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=5) + timedelta(minutes=7)
    rows = [("Timeout", f"Timeout after {i}s on worker {i}", USERS[i % 2]) for i in range(1, 4)]
    rows.append(("Timeout", "something else entirely", USERS[2]))
    with psycopg.connect(empty_db_dsn) as conn:
        for error_type, message, user in rows:
            conn.execute(
                "INSERT INTO generation_events (event_id, event_type, generation_id, user_id, timestamp, duration_ms,"
                " success, error_type, error_message) VALUES (gen_random_uuid(), 'completion', 'g', %s, %s, 10,"
                " false, %s, %s)",
                (user, when, error_type, message),
            )
        conn.execute(
            "INSERT INTO generation_events (event_id, event_type, generation_id, user_id, timestamp, success)"
            " VALUES (gen_random_uuid(), 'completion', 'g', %s, %s, true)",
            (USERS[0], when),
        )
    (tmp_path / "0010_error_groups.sql").write_text(next(m.sql for m in load_migrations() if m.version == 10))
    assert migrate(empty_db_dsn, folder=tmp_path) == [10]
    with psycopg.connect(empty_db_dsn) as conn:
        dirty = conn.execute("SELECT hour FROM generation_dirty_hours").fetchall()
    assert dirty == [(when.replace(minute=0),)]
    assert migrate(empty_db_dsn)[:1] == [11]  # the later ones, which the aggregation below expects
    pool = sync_pool(PostgresSettings(dsn=empty_db_dsn), name="migration-test", max_size=len(PARTS) + 2)
    try:
        Aggregator(pool=pool, settings=AggregationSettings(), retention=RetentionSettings()).run()
    finally:
        pool.close()
    raw = ref.load(empty_db_dsn)
    with psycopg.connect(empty_db_dsn) as conn:
        uids: dict[int, str] = dict(conn.execute("SELECT uid, user_id::text FROM generation_users").fetchall())
        groups = conn.execute(
            "SELECT fingerprint, sum(failures) FROM generation_error_group_metrics_daily GROUP BY 1 ORDER BY 2 DESC"
        ).fetchall()
    assert_error_groups_match_raw(empty_db_dsn, raw, uids)
    assert groups == [(fingerprint("Timeout", "Timeout after 1s on worker 1"), 3),
                      (fingerprint("Timeout", "something else entirely"), 1)]  # fmt: skip


def test_migration_0017_merges_the_hours_aggregated_before_it(live_server: LiveServer) -> None:
    """0017's data step builds the rows per error group and hour of hours aggregated before it: the same rows
    aggregation writes (failures of one group over three checkpoints and two hours, another group, ties)."""
    base = now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    sent = [
        make_event("completion", timestamp=base + timedelta(hours=i % 2, minutes=i % 3), success=False,
                   error_type="Timeout", error_message=f"Timeout after {i}s on worker {i}",
                   model_checkpoint=MODELS[i % 3], user_id=USERS[i % 4])
        for i in range(12)
    ] + [
        make_event("completion", timestamp=base + timedelta(minutes=5), success=False, error_type="OOM",
                   error_message="out of memory", user_id=USERS[5])
    ]  # fmt: skip
    load(live_server, sent)
    dsn = live_server.settings.postgres.dsn
    query = (
        "SELECT hour, fingerprint, error_type, failures, first_seen, last_seen, sample_message, user_bitmap,"
        " checkpoint_failures FROM generation_error_group_totals_hourly ORDER BY hour, fingerprint"
    )
    days = "SELECT day, fingerprint, checkpoint_failures FROM generation_error_group_totals_daily ORDER BY 1, 2"
    with psycopg.connect(dsn) as conn:
        aggregated, aggregated_days = conn.execute(query).fetchall(), conn.execute(days).fetchall()
        # As the database was before 0017: no rows per hour, no failures per checkpoint in the daily totals.
        conn.execute("DELETE FROM generation_error_group_totals_hourly")
        conn.execute("UPDATE generation_error_group_totals_daily SET checkpoint_failures = '{}'")
        _error_group_hour_totals(conn)
        rebuilt, rebuilt_days = conn.execute(query).fetchall(), conn.execute(days).fetchall()
        uids: dict[int, str] = dict(conn.execute("SELECT uid, user_id::text FROM generation_users").fetchall())
    assert [row[:4] for row in aggregated] == sorted(
        [(base, fingerprint("Timeout", "Timeout after 1s on worker 1"), "Timeout", 6),
         (base, fingerprint("OOM", "out of memory"), "OOM", 1),
         (base + HOUR, fingerprint("Timeout", "Timeout after 1s on worker 1"), "Timeout", 6)]
    )  # fmt: skip
    assert rebuilt == aggregated
    assert rebuilt_days == aggregated_days
    assert {k: v for _, _, counts in aggregated_days for k, v in counts.items()}.keys() == {*MODELS[:3], ""}
    assert_error_groups_match_raw(dsn, ref.load(dsn), uids)
