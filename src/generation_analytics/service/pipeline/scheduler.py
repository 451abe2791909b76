"""In-process schedule for the pipeline jobs (APScheduler), safe with several replicas.

Every job runs at most once at a time per process (`max_instances=1`, missed runs coalesced); the
jobs themselves are safe across replicas (consumer group, advisory locks). A failing run is logged
with its context and the job backs off exponentially (up to `MAX_BACKOFF_S`) but stays scheduled,
so one failure never cancels the next run. Each run is recorded in pipeline_job_runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from apscheduler.schedulers.background import BackgroundScheduler
from psycopg_pool import ConnectionPool

from generation_analytics.service.errors import incident

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 60.0


class Report(Protocol):
    @property
    def processed(self) -> int: ...


class JobObserver(Protocol):
    def __call__(self, job: str, *, duration_s: float, processed: int, failed: bool) -> None: ...


RECORD_RUN = """
INSERT INTO pipeline_job_runs AS r (job, replica, started_at, duration_s, processed, error, last_error, last_error_at)
VALUES (%(job)s, %(replica)s, %(started_at)s, %(duration_s)s, %(processed)s, %(error)s, %(error)s,
        CASE WHEN %(error)s::text IS NULL THEN NULL ELSE %(started_at)s END)
ON CONFLICT (job) DO UPDATE SET
    replica = EXCLUDED.replica, started_at = EXCLUDED.started_at, duration_s = EXCLUDED.duration_s,
    processed = EXCLUDED.processed, error = EXCLUDED.error,
    last_error = coalesce(EXCLUDED.last_error, r.last_error),
    last_error_at = coalesce(EXCLUDED.last_error_at, r.last_error_at)
"""


@dataclass
class JobRun:
    started_at: datetime
    duration_s: float
    processed: int
    error: str | None


class PipelineJob:
    """One periodic job: runs `body`, records the run, backs off after failures."""

    def __init__(
        self,
        name: str,
        body: Callable[[], Report],
        *,
        interval_s: float,
        pool: ConnectionPool,
        replica: str,
        observe: JobObserver | None = None,
    ) -> None:
        self.name = name
        self._observe = observe
        self.interval_s = interval_s
        self._body = body
        self._pool = pool
        self._replica = replica
        self.failures = 0
        self._resume_at = 0.0
        self.last_run: JobRun | None = None

    def __call__(self) -> None:
        if time.monotonic() < self._resume_at:
            return  # backing off after a failure
        self.run_once()

    def run_once(self, *, raise_errors: bool = False) -> Report | None:
        """Run the body now and record the run; with `raise_errors`, a failure is re-raised after that."""
        started_at = datetime.now(UTC)
        started = time.monotonic()
        report: Report | None = None
        error: str | None = None
        try:
            report = self._body()
            self.failures = 0
        except Exception as exc:  # a periodic job must survive any single failure
            self.failures += 1
            backoff = min(self.interval_s * 2**self.failures, MAX_BACKOFF_S)
            self._resume_at = time.monotonic() + backoff
            error = incident(exc)
            log.exception("%s failed (%d in a row; %s); next attempt in %.0f s", self.name, self.failures, error,
                          backoff)  # fmt: skip
            self.last_run = JobRun(started_at, time.monotonic() - started, 0, error)
            self._record(self.last_run)
            if self._observe:
                self._observe(self.name, duration_s=self.last_run.duration_s, processed=0, failed=True)
            if raise_errors:
                raise
            return None
        self.last_run = JobRun(started_at, time.monotonic() - started, report.processed, None)
        self._record(self.last_run)
        if self._observe:
            self._observe(self.name, duration_s=self.last_run.duration_s, processed=report.processed, failed=False)
        return report

    def _record(self, run: JobRun) -> None:
        try:
            with self._pool.connection(timeout=2) as conn:
                conn.execute(
                    RECORD_RUN,
                    {
                        "job": self.name, "replica": self._replica, "started_at": run.started_at,
                        "duration_s": run.duration_s, "processed": run.processed, "error": run.error,
                    },
                )  # fmt: skip
        except Exception as exc:  # Postgres may be the very thing that is down
            log.debug("could not record the %s run: %s", self.name, exc)


class PipelineScheduler:
    """Runs the pipeline jobs on their intervals in background threads."""

    def __init__(self, jobs: list[PipelineJob]) -> None:
        self.jobs = {job.name: job for job in jobs}
        self._scheduler = BackgroundScheduler(
            timezone=UTC, job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
        )
        self._started = threading.Event()

    def start(self) -> None:
        for job in self.jobs.values():
            self._scheduler.add_job(
                job, "interval", seconds=job.interval_s, id=job.name, name=job.name, next_run_time=datetime.now(UTC)
            )
        self._scheduler.start()
        self._started.set()
        log.info("scheduler started: %s", ", ".join(f"{j.name} every {j.interval_s:g} s" for j in self.jobs.values()))

    def shutdown(self, *, wait: bool = True) -> None:
        if self._started.is_set():
            self._scheduler.shutdown(wait=wait)
            self._started.clear()

    def describe(self) -> list[dict[str, Any]]:
        return [{"job": j.name, "interval_s": j.interval_s, "failures": j.failures} for j in self.jobs.values()]
