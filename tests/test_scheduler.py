"""The in-process schedule: jobs keep running after failures, back off, and deliver events on their own."""

from __future__ import annotations

import re
import time
from dataclasses import replace
from datetime import UTC, datetime

import psycopg
import pytest

from generation_analytics.service.pipeline.scheduler import PipelineJob
from generation_analytics.service.pipeline.worker import Pipeline
from generation_analytics.service.settings import Settings
from generation_analytics.v1 import events_pb2
from tests.factories import make_event
from tests.fix_server import LiveServer


class Flaky:
    def __init__(self, failures: int) -> None:
        self.calls = 0
        self.failures = failures

    def __call__(self) -> object:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError(f"failure {self.calls}")
        return type("Report", (), {"processed": 7})()


INCIDENT = re.compile(r"RuntimeError \(error id ([0-9a-f]{8}); details in the service log\)")


def test_failing_job_backs_off_and_recovers(
    pipeline: Pipeline, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    body = Flaky(failures=1)
    job = PipelineJob("flaky", body, interval_s=0.05, pool=pipeline.pool, replica="test")  # type: ignore[arg-type]

    job()  # fails: backs off for 0.1 s
    assert (body.calls, job.failures) == (1, 1)
    job()  # still backing off: not run
    assert body.calls == 1
    time.sleep(0.15)
    job()  # runs again and succeeds
    assert (body.calls, job.failures) == (2, 0)

    with psycopg.connect(settings.postgres.dsn) as conn:
        row = conn.execute("SELECT processed, error, last_error FROM pipeline_job_runs WHERE job = 'flaky'").fetchone()
    assert row is not None and row[:2] == (7, None)
    reported = INCIDENT.fullmatch(row[2])  # the failure's kind and an id, never its text
    assert reported is not None and "failure 1" not in row[2]
    logged = [r for r in caplog.records if reported.group(1) in r.getMessage()]
    assert logged and logged[0].exc_info is not None and "failure 1" in str(logged[0].exc_info[1])


def test_run_once_can_surface_the_error(pipeline: Pipeline) -> None:
    job = PipelineJob("flaky", Flaky(failures=5), interval_s=1, pool=pipeline.pool, replica="test")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="failure 1"):
        job.run_once(raise_errors=True)
    assert job.last_run is not None and INCIDENT.fullmatch(job.last_run.error or "")


def test_scheduled_pipeline_makes_recorded_events_visible_on_its_own(settings: Settings) -> None:
    scheduled = replace(
        settings,
        schedule=replace(settings.schedule, enabled=True, transfer_interval_s=0.5, aggregation_interval_s=0.5),
    )
    server = LiveServer(scheduled)
    try:
        event = make_event("request", timestamp=datetime.now(UTC))
        server.events.RecordEvent(events_pb2.RecordEventRequest(event=event))
        deadline = time.monotonic() + 30
        found = None
        while time.monotonic() < deadline and not found:
            with psycopg.connect(settings.postgres.dsn) as conn:
                found = conn.execute("SELECT sum(total_requests) FROM generation_metrics_hourly").fetchone()
                found = found if found and found[0] else None
            time.sleep(0.1)
        assert found == (1,)
    finally:
        server.close()
