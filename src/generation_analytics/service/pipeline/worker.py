"""The pipeline of one process (transfer, aggregation, retention, alert evaluation and delivery on their
schedule), and `run_worker`, which runs it alone."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from datetime import datetime
from typing import Any

from generation_analytics.service.alerts.evaluator import AlertEvaluator
from generation_analytics.service.alerts.webhooks import WebhookSender
from generation_analytics.service.db import sync_pool
from generation_analytics.service.migrate import migrate
from generation_analytics.service.pipeline.aggregate import PARTS, AggregationReport, Aggregator
from generation_analytics.service.pipeline.retention import RetentionReport, prune
from generation_analytics.service.pipeline.scheduler import JobObserver, PipelineJob, PipelineScheduler, Report
from generation_analytics.service.pipeline.transfer import FailPoint, Transfer, TransferReport
from generation_analytics.service.settings import (
    AggregationSettings,
    AlertSettings,
    PostgresSettings,
    RedisSettings,
    RetentionSettings,
    ScheduleSettings,
    Settings,
    TransferSettings,
)
from generation_analytics.service.stream import StreamKeys, connect_redis_sync

log = logging.getLogger(__name__)

# Transfer reads and acknowledges large batches: allow more than the recording path's 1 s.
PIPELINE_REDIS_TIMEOUT_S = 10.0


class Pipeline:
    """The pipeline of one process; `start_schedule` runs it in the background."""

    def __init__(
        self,
        *,
        postgres: PostgresSettings,
        redis_settings: RedisSettings,
        schedule: ScheduleSettings,
        transfer: TransferSettings,
        aggregation: AggregationSettings,
        retention: RetentionSettings,
        alerts: AlertSettings | None = None,
        fail_point: FailPoint | None = None,
        observe: JobObserver | None = None,
    ) -> None:
        self.retention = retention
        self.redis = connect_redis_sync(
            redis_settings.url,
            timeout_s=PIPELINE_REDIS_TIMEOUT_S,
            connect_timeout_s=redis_settings.socket_timeout_s,
            cluster=redis_settings.cluster,
        )
        # Transfer storers, aggregation parts (aggregate.PARTS) plus its bookkeeping, retention, run records.
        self.pool = sync_pool(postgres, name="pipeline", max_size=transfer.store_workers + len(PARTS) + 3)
        keys = StreamKeys.of(redis_settings)
        self.transfer = Transfer(
            redis_client=self.redis, pool=self.pool, keys=keys, settings=transfer, fail_point=fail_point
        )
        self.aggregator = Aggregator(pool=self.pool, settings=aggregation, retention=retention)
        replica = self.transfer.consumer

        def job(name: str, body: Callable[[], Report], interval_s: float) -> PipelineJob:
            return PipelineJob(name, body, interval_s=interval_s, pool=self.pool, replica=replica, observe=observe)

        self.transfer_job = job("transfer", self.transfer.run, schedule.transfer_interval_s)
        self.aggregation_job = job("aggregation", self.aggregator.run, schedule.aggregation_interval_s)
        self.retention_job = job("retention", self.prune, schedule.retention_interval_s)
        jobs = [self.transfer_job, self.aggregation_job, self.retention_job]
        # Alerts: evaluation once per tick cluster-wide, and the webhook outbox apart from it, so a slow
        # receiver never delays an evaluation (service/alerts/).
        alerts = alerts or AlertSettings()
        self.alerts = AlertEvaluator(postgres=postgres, redis_settings=redis_settings, settings=alerts)
        self.webhooks = WebhookSender(postgres=postgres, settings=alerts)
        if alerts.enabled:
            jobs.append(job("alerts", self.alerts.run, alerts.interval_s))
            jobs.append(job("alert-delivery", self.webhooks.run, alerts.delivery_interval_s))
        self.scheduler = PipelineScheduler(jobs)

    @classmethod
    def of(cls, settings: Settings, **kwargs: Any) -> Pipeline:
        """The pipeline configured by the sections of `settings` it needs."""
        return cls(
            postgres=settings.postgres,
            redis_settings=settings.redis,
            schedule=settings.schedule,
            transfer=settings.transfer,
            aggregation=settings.aggregation,
            retention=settings.retention,
            alerts=settings.alerts,
            **kwargs,
        )

    def run_transfer(self) -> TransferReport:
        report = self.transfer_job.run_once(raise_errors=True)
        assert isinstance(report, TransferReport)
        return report

    def run_aggregation(self, start: datetime | None = None, end: datetime | None = None) -> AggregationReport:
        if start is not None and end is not None:
            return self.aggregator.run_range(start, end)
        report = self.aggregation_job.run_once(raise_errors=True)
        assert isinstance(report, AggregationReport)
        return report

    def prune(self) -> RetentionReport:
        return prune(self.pool, self.retention)

    def start_schedule(self) -> None:
        self.transfer.ensure_group_quietly()
        self.scheduler.start()

    def close(self) -> None:
        self.transfer.stop()
        self.aggregator.stop()
        self.scheduler.shutdown(wait=True)
        self.pool.close()
        self.redis.close()


def run_worker(settings: Settings) -> None:
    """Run only the pipeline (transfer, aggregation, retention, alerts) until SIGTERM/SIGINT.

    For deployments that scale the pipeline apart from the gRPC front end; replicas of either kind
    share the work safely. Needs an explicit Postgres DSN and Redis URL.
    """
    if settings.embedded:
        raise SystemExit("worker needs GA_POSTGRES_DSN and GA_REDIS_URL (the embedded servers belong to `serve`)")
    # SIGTERM and SIGINT are held from here on, in every thread started below (they inherit the mask), and
    # taken by this thread in sigwait. With a Python handler and Event.wait() instead, a fault-suite worker
    # went on transferring and aggregating 30 s after SIGTERM: the handler runs only when this thread wakes,
    # and a signal the kernel hands to another thread does not wake it (nor is a handler that sets an Event
    # safe while this thread holds that Event's lock). A stop asked while starting is honoured once started.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    migrate(settings.postgres.dsn)
    pipeline = Pipeline.of(settings)
    pipeline.start_schedule()
    log.info("pipeline worker running; SIGTERM or Ctrl-C stops")
    received = signal.sigwait(stop_signals)
    log.info("pipeline worker stopping (%s)", signal.Signals(received).name)
    pipeline.close()
