"""Comparisons: the previous window (compare_previous) and checkpoint against checkpoint
(CompareCheckpoints) — every figure and every `significant` flag against an independent computation
from the raw events, the tests against textbook and independent implementations, the minimums."""

from __future__ import annotations

import json
import math
import random
import subprocess
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
import requests
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from generation_analytics.service import sketches
from generation_analytics.service.queries import significance
from generation_analytics.v1 import analytics_pb2, events_pb2
from tests import reference as ref
from tests.factories import make_event
from tests.fix_server import LiveServer
from tests.test_grpcurl import GRPCURL
from tests.test_queries import approx, check_percentiles, load, reset, stable

USERS = [f"00000000-0000-4000-8000-0000000001{i:02d}" for i in range(5)]
MODELS = ["sdxl-1.0", "sdxl-1.1", "flux-dev", ""]
ERRORS = ["OutOfMemory", "Timeout", ""]
HOUR = timedelta(hours=1)
COMPARED_MODEL_FIGURES = (
    "total_generations", "successful_generations", "failed_generations", "success_rate_pct", "avg_duration_ms",
    "p50_duration_ms", "p95_duration_ms", "p99_duration_ms", "total_images_generated",
)  # fmt: skip


def now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------- the tests themselves


@given(
    x1=st.integers(0, 400), extra1=st.integers(0, 400), x2=st.integers(0, 400), extra2=st.integers(0, 400)
)  # fmt: skip
def test_two_proportion_test_agrees_with_an_independent_computation(x1: int, extra1: int, x2: int, extra2: int) -> None:
    n1, n2 = x1 + extra1, x2 + extra2
    assert significance.proportions_differ(x1, n1, x2, n2) == ref.proportions_significant(x1, n1, x2, n2)


@pytest.mark.parametrize(
    ("x1", "n1", "x2", "n2", "significant"),
    [
        (45, 100, 60, 100, True),  # z = -2.12 (the textbook example of a pooled two-proportion test)
        (50, 100, 60, 100, False),  # z = -1.42
        (0, 29, 29, 29, False),  # as different as can be, but 29 < 30 completions on each side
        (30, 30, 15, 30, True),  # 30 each, pooled rate 0.75: expected failures 7.5 >= 5
        (30, 30, 28, 30, False),  # pooled rate 58/60: 1 expected failure per side, < 5
    ],
)
def test_two_proportion_examples_and_minimums(x1: int, n1: int, x2: int, n2: int, significant: bool) -> None:
    assert significance.proportions_differ(x1, n1, x2, n2) is significant


def dense(values: Sequence[float]) -> sketches.Dense:
    counts: dict[int, int] = {}
    for v in values:
        counts[sketches.bucket_of(v)] = counts.get(sketches.bucket_of(v), 0) + 1
    return sketches.merge([sketches.encode(counts)])


@hypothesis_settings(max_examples=200)
@given(
    a=st.lists(st.integers(0, 100_000), max_size=700),
    shift=st.floats(0.5, 3.0),
    b_size=st.integers(0, 700),
    seed=st.integers(0, 1000),
    q=st.sampled_from([0.5, 0.95, 0.99]),
)
def test_quantile_intervals_agree_with_exact_order_statistics(
    a: list[int], shift: float, b_size: int, seed: int, q: float
) -> None:
    """The service reads the intervals' order statistics off histograms; the reference sorts the exact
    durations and buckets only those two values: the verdicts agree."""
    rng = random.Random(seed)
    pool = a or [rng.randrange(10_000)]
    b = [int(rng.choice(pool) * shift + rng.randrange(3)) for _ in range(b_size)]
    want = ref.quantiles_significant([float(v) for v in a], [float(v) for v in b], q)
    assert significance.quantiles_differ(dense(a), dense(b), q) == want


@pytest.mark.parametrize(("q", "smallest"), [(0.5, 30), (0.95, 110), (0.99, 563)])
def test_quantile_interval_needs_the_documented_sample(q: float, smallest: int) -> None:
    assert significance.rank_interval(smallest - 1, q) is None
    low, high = significance.rank_interval(smallest, q) or (0, 0)
    assert 1 <= low < high <= smallest
    fast = [100.0 + i % 7 for i in range(smallest - 1)]
    slow = [10_000.0 + i % 7 for i in range(smallest - 1)]
    assert not significance.quantiles_differ(dense(fast), dense(slow), q), "below the minimum: never significant"
    assert significance.quantiles_differ(dense([*fast, 100.0]), dense([*slow, 10_000.0]), q)


@given(c1=st.integers(0, 500), c2=st.integers(0, 500), hours1=st.floats(1, 800), hours2=st.floats(1, 800))
def test_poisson_test_agrees_with_an_independent_computation(c1: int, c2: int, hours1: float, hours2: float) -> None:
    z = ref.poisson_z(c1, hours1, c2, hours2)
    got = significance.counts_differ(c1, hours1, c2, hours2)
    if z is None:
        assert not got
    elif abs(abs(z) - 1.96) > 1e-6:
        assert got == (ref.two_sided_p(z) <= 0.05)


def test_changes_carry_both_values_and_the_relative_change() -> None:
    up = significance.change("total_requests", 150, 100)
    assert (up.absolute_change, up.relative_change_pct, up.significant, up.test) == (50, 50.0, False, "none")
    assert significance.change("total_requests", 5, 0).relative_change_pct is None


# ---------------------------------------------------------------- through the service


@st.composite
def two_windows_of_events(draw: st.DrawFn) -> events_pb2.GenerationEvent:
    """Events over the last ~4 days (two 1-day windows and their edges), many in busy hours so that
    some figures pass the minimums."""
    current = now().replace(minute=0, second=0, microsecond=0)
    hours_back = draw(st.sampled_from([0, 1, 24, 25, 26, 48, 49, 50]) | st.integers(0, 100))
    offset = draw(st.timedeltas(timedelta(0), timedelta(minutes=59, seconds=59)))
    when = min(current - hours_back * HOUR + offset, now() - timedelta(seconds=1))
    kind = draw(st.sampled_from(["request", "completion", "completion", "completion", "cancellation"]))
    fields: dict[str, Any] = {
        "user_id": draw(st.sampled_from(USERS)),
        "timestamp": when,
        "model_checkpoint": draw(st.sampled_from(MODELS)),
    }
    event = make_event(kind, **fields)
    if kind == "completion":
        event.success = draw(st.booleans())
        event.duration_ms = draw(st.integers(100, 200) | st.integers(1_000, 5_000))
        if not event.success:
            event.error_type = draw(st.sampled_from(ERRORS))
    return event


def check_changes(
    changes: Sequence[Any],
    pairs: dict[str, tuple[float, float]],
    flags: dict[str, bool | None],
) -> None:
    """Each change's values as the reference computes them, and its flag (None: too close to call)."""
    assert [c.metric for c in changes] == list(pairs), [c.metric for c in changes]
    for c in changes:
        value, baseline = pairs[c.metric]
        assert approx(c.value, value, rel=1e-6) and approx(c.baseline, baseline, rel=1e-6), (c.metric, c, value)
        assert approx(c.absolute_change, c.value - c.baseline)
        if c.baseline:
            assert approx(c.relative_change_pct, (c.value - c.baseline) / c.baseline * 100)
        else:
            assert not c.HasField("relative_change_pct")
        want = flags.get(c.metric, False)
        if want is not None:
            assert c.significant == want, (c.metric, c)


def flags_for(
    value: ref.Summary, baseline: ref.Summary, hours: tuple[float, float], *, rate: str = "success_rate_pct"
) -> dict[str, bool | None]:
    """The expected `significant` of every compared figure of two sets of events."""
    flags: dict[str, bool | None] = {}
    if rate == "success_rate_pct":
        flags[rate] = ref.proportions_significant(
            value.successful, value.completions, baseline.successful, baseline.completions
        )
    else:
        flags[rate] = ref.proportions_significant(
            value.failed, value.completions, baseline.failed, baseline.completions
        )
    for q in (50, 95, 99):
        flags[f"p{q}_duration_ms"] = ref.quantiles_significant(
            [float(d) for d in value.durations], [float(d) for d in baseline.durations], q / 100
        )
    counts = {
        "total_requests": (value.total_requests, baseline.total_requests),
        "successful_generations": (value.successful, baseline.successful),
        "failed_generations": (value.failed, baseline.failed),
        "cancelled_generations": (value.cancelled, baseline.cancelled),
        "total_generations": (value.completions, baseline.completions),
        "total_completions": (value.completions, baseline.completions),
        "total_failures": (value.failed, baseline.failed),
        "count": (value.failed, baseline.failed),
    }
    for name, (c1, c2) in counts.items():
        z = ref.poisson_z(c1, hours[0], c2, hours[1])
        flags[name] = False if z is None else (None if abs(abs(z) - 1.96) < 0.01 else ref.two_sided_p(z) <= 0.05)
    return flags


def previous_bounds(days: int, at: datetime) -> tuple[datetime, datetime]:
    start, end = ref.window_bounds(days, at)
    return start - (end - start), start


def in_range(events: Sequence[ref.Raw], bounds: tuple[datetime, datetime]) -> list[ref.Raw]:
    return [e for e in events if bounds[0] <= e.timestamp < bounds[1]]


def exposures(days: int, at: datetime) -> tuple[float, float]:
    start, end = ref.window_bounds(days, at)
    return (at - start) / HOUR, (end - start) / HOUR


def overview_pairs(now_s: ref.Summary, before: ref.Summary) -> dict[str, tuple[float, float]]:
    def figures(s: ref.Summary) -> dict[str, float]:
        return {
            "total_requests": s.total_requests, "successful_generations": s.successful,
            "failed_generations": s.failed, "cancelled_generations": s.cancelled,
            "success_rate_pct": s.success_rate_pct, "avg_duration_ms": s.avg_duration or 0.0,
            "p50_duration_ms": s.percentile(0.5) or 0.0, "p95_duration_ms": s.percentile(0.95) or 0.0,
            "p99_duration_ms": s.percentile(0.99) or 0.0, "unique_users": len(s.users),
            "total_images_generated": s.images, "avg_queue_length": s.avg_queue or 0.0,
            "max_queue_length": s.max_queue or 0,
        }  # fmt: skip

    a, b = figures(now_s), figures(before)
    return {name: (a[name], b[name]) for name in a}


def check_overview_comparison(server: LiveServer, raw: list[ref.Raw], days: int) -> None:
    reply, at = stable(
        lambda: server.analytics.GetOverview(analytics_pb2.GetOverviewRequest(days=days, compare_previous=True))
    )
    bounds = previous_bounds(days, at)
    now_s, before = ref.summarize(ref.in_window(raw, days, at)), ref.summarize(in_range(raw, bounds))
    previous = reply.previous
    assert (previous.window_start.ToDatetime(tzinfo=UTC), previous.window_end.ToDatetime(tzinfo=UTC)) == bounds
    got = (previous.total_requests, previous.successful_generations, previous.failed_generations,
           previous.cancelled_generations, previous.unique_users, previous.total_images_generated)  # fmt: skip
    assert got == (before.total_requests, before.successful, before.failed, before.cancelled, len(before.users),
                   before.images)  # fmt: skip
    check_percentiles([previous.p50_duration_ms, previous.p95_duration_ms, previous.p99_duration_ms], before,
                      (0.5, 0.95, 0.99))  # fmt: skip
    assert not previous.HasField("previous") and not previous.changes
    pairs = overview_pairs(now_s, before)
    for name in ("p50_duration_ms", "p95_duration_ms", "p99_duration_ms"):  # histogram values: compare as served
        pairs[name] = (getattr(reply, name), getattr(previous, name))
    check_changes(reply.changes, pairs, flags_for(now_s, before, exposures(days, at)))


def selecting(field: str, value: str) -> Callable[[ref.Raw], bool]:
    """Events whose `field` is `value` (an error type "" stands for none)."""
    return lambda e: (getattr(e, field) or "") == value


def check_models_comparison(server: LiveServer, raw: list[ref.Raw], days: int) -> None:
    reply, at = stable(
        lambda: server.analytics.GetModelPerformance(
            analytics_pb2.GetModelPerformanceRequest(days=days, compare_previous=True, limit=2)
        )
    )
    bounds = previous_bounds(days, at)
    assert (
        reply.previous_window_start.ToDatetime(tzinfo=UTC),
        reply.previous_window_end.ToDatetime(tzinfo=UTC),
    ) == bounds
    current, earlier = ref.in_window(raw, days, at), in_range(raw, bounds)
    listed = {m.model_checkpoint for m in reply.models}
    entries: list[tuple[Any, Callable[[ref.Raw], bool]]] = [
        (m, selecting("model_checkpoint", m.model_checkpoint)) for m in reply.models
    ]
    if reply.HasField("others"):
        entries.append((reply.others, lambda e: e.model_checkpoint is not None and e.model_checkpoint not in listed))
    for entry, selects in entries:
        now_s = ref.summarize(e for e in current if selects(e))
        before = ref.summarize(e for e in earlier if selects(e))
        prev = entry.previous
        assert (prev.model_checkpoint, prev.total_generations, prev.successful_generations, prev.failed_generations,
                prev.total_images_generated) == (entry.model_checkpoint, before.completions, before.successful,
                                                 before.failed, before.images), entry.model_checkpoint  # fmt: skip
        assert prev.HasField("last_used_at") == (before.last_at is not None)
        names = list(COMPARED_MODEL_FIGURES)
        if entry is reply.others:
            names = [n for n in names if not n.startswith("p")]
        pairs = {n: (getattr(entry, n), getattr(prev, n)) for n in names}
        reference = {"total_generations": (now_s.completions, before.completions),
                     "success_rate_pct": (now_s.success_rate_pct, before.success_rate_pct),
                     "avg_duration_ms": (now_s.avg_duration or 0.0, before.avg_duration or 0.0)}  # fmt: skip
        pairs.update(reference)
        check_changes(entry.changes, pairs, flags_for(now_s, before, exposures(days, at)))


def check_failures_comparison(server: LiveServer, raw: list[ref.Raw], days: int) -> None:
    reply, at = stable(
        lambda: server.analytics.GetFailureAnalysis(
            analytics_pb2.GetFailureAnalysisRequest(days=days, compare_previous=True, limit=1)
        )
    )
    bounds = previous_bounds(days, at)
    current, earlier = ref.in_window(raw, days, at), in_range(raw, bounds)
    now_s, before = ref.summarize(current), ref.summarize(earlier)
    rate = (before.failed / before.completions * 100) if before.completions else 0.0
    pairs = {
        "total_failures": (now_s.failed, before.failed),
        "total_completions": (now_s.completions, before.completions),
        "failure_rate_pct": (reply.failure_rate_pct, rate),
    }
    hours = exposures(days, at)
    check_changes(reply.changes, pairs, flags_for(now_s, before, hours, rate="failure_rate_pct"))
    listed = {s.error_type for s in reply.error_types}
    entries: list[tuple[Any, Callable[[ref.Raw], bool]]] = [
        (s, selecting("error_type", s.error_type)) for s in reply.error_types
    ]
    if reply.HasField("others"):
        entries.append((reply.others, lambda e: (e.error_type or "") not in listed))
    for summary, selects in entries:
        mine = [e for e in current if e.failed and selects(e)]
        theirs = [e for e in earlier if e.failed and selects(e)]
        durations = [e.duration_ms for e in theirs if e.duration_ms is not None]
        pairs = {
            "count": (len(mine), len(theirs)),
            "avg_duration_ms": (summary.avg_duration_ms, sum(durations) / len(durations) if durations else 0.0),
        }
        if summary is not reply.others:
            pairs["affected_users"] = (len({e.user_id for e in mine}), len({e.user_id for e in theirs}))
        flags = flags_for(ref.summarize(mine), ref.summarize(theirs), hours)
        check_changes(summary.changes, pairs, {"count": flags["count"]})


@hypothesis_settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    events=st.lists(two_windows_of_events(), max_size=60),
    bulk=st.lists(
        st.tuples(st.integers(0, 49), st.integers(0, 60), st.sampled_from([0.02, 0.3]), st.integers(0, 1)), max_size=3
    ),
    days=st.sampled_from([1, 2]),
)
def test_previous_window_figures_and_changes_match_the_raw_events(
    live_server: LiveServer,
    redis_url: str,
    events: list[events_pb2.GenerationEvent],
    bulk: list[tuple[int, int, float, int]],
    days: int,
) -> None:
    for hours_back, count, failure_rate, slow in bulk:  # busy hours, so the minimums are met now and then
        events += busy_hour(hours_back, count, failure_rate=failure_rate, slow=bool(slow))
    reset(live_server, redis_url)
    if events:
        load(live_server, events)
    raw = [ref.from_message(e) for e in events]
    check_overview_comparison(live_server, raw, days)
    check_models_comparison(live_server, raw, days)
    check_failures_comparison(live_server, raw, days)


def busy_hour(
    hours_back: int, count: int, *, failure_rate: float, slow: bool, model: str = "sdxl-1.0", seed: int = 0
) -> list[events_pb2.GenerationEvent]:
    """`count` requests and completions in one hour `hours_back` before the current one."""
    rng = random.Random(seed * 1000 + hours_back)
    start = now().replace(minute=0, second=0, microsecond=0) - hours_back * HOUR
    latest = now() - timedelta(seconds=1)
    events = []
    for i in range(count):
        when = min(start + timedelta(seconds=rng.randrange(3600)), latest)
        failed = rng.random() < failure_rate
        duration = int(rng.lognormvariate(math.log(2_000 if slow else 1_000), 0.2))
        events.append(make_event("request", timestamp=when, user_id=USERS[i % 5], model_checkpoint=model))
        events.append(
            make_event("completion", timestamp=when, user_id=USERS[i % 5], model_checkpoint=model,
                       success=not failed, duration_ms=duration, error_type="OutOfMemory" if failed else "")
        )  # fmt: skip
    return events


def test_a_clear_change_is_significant_and_a_small_sample_is_not(live_server: LiveServer, redis_url: str) -> None:
    """A day of 300 fast, reliable generations, then a day of 900 slow, failing ones: rates,
    percentiles and counts all flagged; the same with 20 generations a day: nothing is."""
    before = busy_hour(30, 300, failure_rate=0.02, slow=False)
    after = busy_hour(3, 900, failure_rate=0.3, slow=True, seed=1)
    load(live_server, before + after)
    reply = live_server.analytics.GetOverview(analytics_pb2.GetOverviewRequest(days=1, compare_previous=True))
    flags = {c.metric: c.significant for c in reply.changes}
    assert flags["success_rate_pct"] and flags["p50_duration_ms"] and flags["p95_duration_ms"]
    assert flags["total_requests"] and flags["failed_generations"]
    assert not flags["p99_duration_ms"], "300 durations are too few for p99 (563)"
    assert not flags["avg_duration_ms"] and not flags["unique_users"], "no test for averages and users"
    p50 = next(c for c in reply.changes if c.metric == "p50_duration_ms")
    assert 80 < p50.relative_change_pct < 120 and p50.test == "quantile_intervals"
    assert (p50.value_samples, p50.baseline_samples) == (900, 300)

    reset(live_server, redis_url)
    load(live_server, busy_hour(30, 20, failure_rate=0.0, slow=False) + busy_hour(3, 20, failure_rate=0.9, slow=True))
    reply = live_server.analytics.GetOverview(analytics_pb2.GetOverviewRequest(days=1, compare_previous=True))
    assert not any(c.significant for c in reply.changes), [c for c in reply.changes if c.significant]


def test_compare_checkpoints_matches_the_raw_events(live_server: LiveServer) -> None:
    """ "Is sdxl-1.1 slower than sdxl-1.0?" — both sides and every change against the raw events."""
    events = busy_hour(5, 200, failure_rate=0.05, slow=False, model="sdxl-1.0")
    events += busy_hour(4, 150, failure_rate=0.05, slow=True, model="sdxl-1.1", seed=2)
    events += busy_hour(30, 50, failure_rate=0.0, slow=True, model="sdxl-1.0", seed=3)  # outside a 1-day window
    load(live_server, events)
    raw = [ref.from_message(e) for e in events]
    for days in (1, 2):
        request = analytics_pb2.CompareCheckpointsRequest(
            days=days, model_checkpoint_a="sdxl-1.0", model_checkpoint_b="sdxl-1.1"
        )
        reply, at = stable(lambda request=request: live_server.analytics.CompareCheckpoints(request))  # type: ignore[misc]
        window = ref.in_window(raw, days, at)
        sides = {}
        for name, side in (("sdxl-1.0", reply.checkpoint_a), ("sdxl-1.1", reply.checkpoint_b)):
            s = ref.summarize(e for e in window if e.model_checkpoint == name)
            assert (side.model_checkpoint, side.total_generations, side.successful_generations,
                    side.failed_generations, side.total_images_generated) == (
                name, s.completions, s.successful, s.failed, s.images)  # fmt: skip
            assert side.last_used_at.ToDatetime(tzinfo=UTC) == s.last_at
            check_percentiles([side.p50_duration_ms, side.p95_duration_ms, side.p99_duration_ms], s, (0.5, 0.95, 0.99))
            assert not side.changes and not side.HasField("previous")
            sides[name] = s
        a, b = sides["sdxl-1.0"], sides["sdxl-1.1"]
        pairs = {n: (getattr(reply.checkpoint_b, n), getattr(reply.checkpoint_a, n)) for n in COMPARED_MODEL_FIGURES}
        pairs["success_rate_pct"] = (b.success_rate_pct, a.success_rate_pct)
        elapsed = exposures(days, at)[0]
        check_changes(reply.changes, pairs, flags_for(b, a, (elapsed, elapsed)))
        p50 = next(c for c in reply.changes if c.metric == "p50_duration_ms")
        assert p50.significant and p50.value > p50.baseline, "sdxl-1.1 is about twice as slow"
    unknown = live_server.analytics.CompareCheckpoints(
        analytics_pb2.CompareCheckpointsRequest(model_checkpoint_a="sdxl-1.0", model_checkpoint_b="nope")
    )
    assert unknown.checkpoint_b.total_generations == 0 and not unknown.checkpoint_b.HasField("last_used_at")
    assert not any(c.significant for c in unknown.changes if c.test != "poisson")


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"model_checkpoint_b": "b"}, "model_checkpoint_a"),
        ({"model_checkpoint_a": "a"}, "model_checkpoint_b"),
        ({"model_checkpoint_a": "a\x00", "model_checkpoint_b": "b"}, "model_checkpoint_a"),
        ({"model_checkpoint_a": "a", "model_checkpoint_b": "b" * 2000}, "model_checkpoint_b"),
        ({"model_checkpoint_a": "a", "model_checkpoint_b": "b", "days": 0}, "days"),
    ],
)
def test_compare_checkpoints_refuses_bad_requests_naming_the_field(
    live_server: LiveServer, request_fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(grpc.RpcError) as error:
        live_server.analytics.CompareCheckpoints(analytics_pb2.CompareCheckpointsRequest(**request_fields))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.value.details() or "").startswith(field)


# ---------------------------------------------------------------- every front end


def test_comparisons_through_the_python_client(live_server: LiveServer) -> None:
    from generation_analytics.client import AnalyticsClient

    load(live_server, busy_hour(2, 40, failure_rate=0.1, slow=False) + busy_hour(1, 40, failure_rate=0.1, slow=True,
                                                                                  model="sdxl-1.1"))  # fmt: skip
    with AnalyticsClient(live_server.address) as client:
        overview = client.overview(1, compare_previous=True)
        assert overview.previous.window_end == overview.window_start and overview.changes
        models = client.models(1, compare_previous=True)
        assert all(m.changes for m in models.models)
        assert client.failures(1, compare_previous=True, time_zone="Asia/Kolkata").time_zone == "Asia/Kolkata"
        assert client.trends(2, "daily", time_zone="Asia/Kathmandu").time_zone == "Asia/Kathmandu"
        assert client.peak_hours(2, time_zone="America/New_York").time_zone == "America/New_York"
        compared = client.compare_checkpoints("sdxl-1.0", "sdxl-1.1", days=1)
        assert (compared.checkpoint_a.total_generations, compared.checkpoint_b.total_generations) == (40, 40)


def test_comparisons_through_http(live_server: LiveServer) -> None:
    load(live_server, busy_hour(1, 40, failure_rate=0.1, slow=False))
    base = f"{live_server.http}/api/v1/analytics/generation"
    overview = requests.get(f"{base}/overview", params={"compare_previous": "true", "days": "1"}, timeout=10).json()
    assert overview["previous"]["window_end"] == overview["window_start"]
    assert [c["metric"] for c in overview["changes"]][:2] == ["total_requests", "successful_generations"]
    assert overview["changes"][0]["relative_change_pct"] is None  # nothing before: no relative change
    plain = requests.get(f"{base}/overview", timeout=10).json()
    assert plain["previous"] is None and plain["changes"] == []
    compared = requests.get(
        f"{base}/models/compare",
        params={"model_checkpoint_a": "sdxl-1.0", "model_checkpoint_b": "flux-dev"},
        timeout=10,
    )
    assert compared.status_code == 200, compared.text
    body = compared.json()
    assert body["checkpoint_a"]["total_generations"] == 40 and body["checkpoint_b"]["total_generations"] == 0
    bad = requests.get(f"{base}/models", params={"compare_previous": "perhaps"}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "compare_previous"
    missing = requests.get(f"{base}/models/compare", params={"model_checkpoint_a": "x"}, timeout=10)
    assert missing.status_code == 400 and missing.json()["error"]["field"] == "model_checkpoint_b"


def test_comparisons_through_the_cli(live_server: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    from generation_analytics.cli import main

    load(live_server, busy_hour(1, 40, failure_rate=0.1, slow=False))
    assert main(["overview", "--target", live_server.address, "--compare-previous", "true", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["previous"]["total_requests"] == 0 and len(body["changes"]) == 13
    assert main(["overview", "--target", live_server.address, "--compare-previous", "true"]) == 0
    assert "against the previous window" in capsys.readouterr().out
    assert main(["compare-checkpoints", "sdxl-1.0", "flux-dev", "--target", live_server.address, "--days", "1"]) == 0
    out = capsys.readouterr().out
    assert "b against a" in out and "p95_duration_ms" in out
    assert main(["models", "--target", live_server.address, "--compare-previous", "true"]) == 0
    assert "against the previous window" in capsys.readouterr().out


def test_compare_checkpoints_through_grpcurl(live_server: LiveServer) -> None:
    load(live_server, busy_hour(1, 10, failure_rate=0.0, slow=False))
    request = {"days": 1, "model_checkpoint_a": "sdxl-1.0", "model_checkpoint_b": "sdxl-1.1"}
    result = subprocess.run(
        [GRPCURL, "-plaintext", "-d", json.dumps(request), live_server.address,
         "generation_analytics.v1.AnalyticsService/CompareCheckpoints"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["checkpoint_a"]["total_generations"] == "10" and reply["changes"]
    overview = subprocess.run(
        [GRPCURL, "-plaintext", "-d", json.dumps({"days": 1, "compare_previous": True}), live_server.address,
         "generation_analytics.v1.AnalyticsService/GetOverview"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert overview.returncode == 0, overview.stderr
    assert json.loads(overview.stdout)["changes"]
    zone = subprocess.run(
        [GRPCURL, "-plaintext", "-d", json.dumps({"days": 1, "time_zone": "Asia/Kathmandu"}), live_server.address,
         "generation_analytics.v1.AnalyticsService/GetPeakHours"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert zone.returncode == 0, zone.stderr
    assert json.loads(zone.stdout)["time_zone"] == "Asia/Kathmandu"


def test_unique_users_are_compared_without_a_test(live_server: LiveServer) -> None:
    load(live_server, [make_event("request", user_id=str(uuid.uuid4()), timestamp=now() - timedelta(minutes=1))])
    reply = live_server.analytics.GetOverview(analytics_pb2.GetOverviewRequest(days=1, compare_previous=True))
    users = next(c for c in reply.changes if c.metric == "unique_users")
    assert (users.value, users.baseline, users.test, users.significant) == (1, 0, "none", False)
