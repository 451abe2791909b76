"""Wires the pipeline stages of one process (transfer, aggregation, retention) and their schedule."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from generation_analytics.service.aggregate import AggregationReport, Aggregator
from generation_analytics.service.db import sync_pool
from generation_analytics.service.keys import StreamKeys
from generation_analytics.service.retention import RetentionReport, prune
from generation_analytics.service.scheduler import JobObserver, PipelineJob, PipelineScheduler, Report
from generation_analytics.service.settings import Settings
from generation_analytics.service.transfer import FailPoint, Transfer, TransferReport

log = logging.getLogger(__name__)

# Transfer reads and acknowledges large batches: allow more than the recording path's 1 s.
PIPELINE_REDIS_TIMEOUT_S = 10.0


class Pipeline:
    """The pipeline of one process; `start_schedule` runs it in the background."""

    def __init__(
        self, settings: Settings, *, fail_point: FailPoint | None = None, observe: JobObserver | None = None
    ) -> None:
        self.settings = settings
        self.redis = redis.Redis.from_url(
            settings.redis.url,
            socket_timeout=PIPELINE_REDIS_TIMEOUT_S,
            socket_connect_timeout=settings.redis.socket_timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        # Transfer storers, aggregation parts (aggregate.PARTS) plus its bookkeeping, retention, run records.
        self.pool = sync_pool(settings.postgres, name="pipeline", max_size=settings.pipeline.transfer_store_workers + 6)
        keys = StreamKeys(settings.redis.namespace)
        self.transfer = Transfer(
            redis_client=self.redis,
            pool=self.pool,
            keys=keys,
            pipeline=settings.pipeline,
            limits=settings.limits,
            fail_point=fail_point,
        )
        self.aggregator = Aggregator(pool=self.pool, pipeline=settings.pipeline)
        replica = self.transfer.consumer
        pipe = settings.pipeline

        def job(name: str, body: Callable[[], Report], interval_s: float) -> PipelineJob:
            return PipelineJob(name, body, interval_s=interval_s, pool=self.pool, replica=replica, observe=observe)

        self.transfer_job = job("transfer", self.transfer.run, pipe.transfer_interval_s)
        self.aggregation_job = job("aggregation", self.aggregator.run, pipe.aggregation_interval_s)
        self.retention_job = job("retention", self.prune, pipe.retention_interval_s)
        self.scheduler = PipelineScheduler([self.transfer_job, self.aggregation_job, self.retention_job])

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
        return prune(self.pool, self.settings.pipeline)

    def start_schedule(self) -> None:
        self.transfer.ensure_group_quietly()
        self.scheduler.start()

    def close(self) -> None:
        self.transfer.stop()
        self.aggregator.stop()
        self.scheduler.shutdown(wait=True)
        self.pool.close()
        self.redis.close()
