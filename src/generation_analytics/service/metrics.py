"""Prometheus metrics of the service itself, served at /metrics by the HTTP gateway.

Each Runtime has its own registry (tests run several servers in one process). Stream figures are
read from Redis when /metrics is scraped, so they are never stale: when Redis cannot be read,
`ga_stream_up` is 0 and the stream gauges (`ga_stream_backlog`, `ga_stream_length`,
`ga_transfer_lag_seconds`, `ga_dead_letters`) are NaN, never the last figures read as if current.
Alert on `ga_stream_up == 0`; NaN compares false with any threshold, so backlog alerts neither fire
nor clear on a figure nobody measured.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from generation_analytics.service.queries.status import StreamStatus
from generation_analytics.service.replica import ReadPools

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_received = Counter("ga_events_received_total", "Events accepted into the stream", registry=r)
        self.events_rejected = Counter(
            "ga_events_rejected_total", "Events refused by validation", ["field"], registry=r
        )
        self.rpc_duration = Histogram(
            "ga_rpc_duration_seconds",
            "gRPC call latency by method and status code",
            ["method", "code"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.stream_backlog = Gauge("ga_stream_backlog", "Events accepted but not yet in Postgres", registry=r)
        self.shard_backlog = Gauge(
            "ga_stream_shard_backlog", "Events not yet in Postgres, per stream shard", ["shard"], registry=r
        )
        self.stream_length = Gauge("ga_stream_length", "Entries in the Redis stream", registry=r)
        self.transfer_lag = Gauge(
            "ga_transfer_lag_seconds", "Age of the oldest event not yet in Postgres (0 when none)", registry=r
        )
        self.dead_letters = Gauge("ga_dead_letters", "Entries in the dead-letter stream", registry=r)
        self.stream_up = Gauge(
            "ga_stream_up",
            "1 if the stream figures were read from Redis by this scrape, 0 if not (then NaN)",
            registry=r,
        )
        self.job_runs = Counter("ga_job_runs_total", "Pipeline job runs by outcome", ["job", "outcome"], registry=r)
        self.job_duration = Histogram(
            "ga_job_duration_seconds",
            "Pipeline job run time",
            ["job"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.job_processed = Counter(
            "ga_job_processed_total", "Events transferred / hours aggregated / rows pruned", ["job"], registry=r
        )

    def watch_reads(self, reads: ReadPools) -> None:
        """Export where queries are answered: `ga_queries_served_total{source}` and, with a read replica,
        `ga_read_replica_up` (0 while queries fall back to the primary)."""
        self.registry.register(_ReadsCollector(reads))

    def observe_job(self, job: str, *, duration_s: float, processed: int, failed: bool) -> None:
        self.job_runs.labels(job, "failure" if failed else "success").inc()
        self.job_duration.labels(job).observe(duration_s)
        self.job_processed.labels(job).inc(processed)

    def render(self, stream: StreamStatus | None, now_s: float) -> bytes:
        """The exposition text; `stream` None means Redis could not be read for this scrape."""
        self.stream_up.set(0 if stream is None else 1)
        if stream is None:
            for gauge in (self.stream_backlog, self.stream_length, self.dead_letters, self.transfer_lag):
                gauge.set(math.nan)
        else:
            self.stream_backlog.set(stream.backlog)
            for shard in stream.shards:
                self.shard_backlog.labels(str(shard.index)).set(shard.backlog)
            self.stream_length.set(stream.length)
            self.dead_letters.set(stream.dead_letters)
            oldest = stream.oldest_untransferred_at
            self.transfer_lag.set(max(0.0, now_s - oldest.timestamp()) if oldest else 0.0)
        return generate_latest(self.registry)


class _ReadsCollector(Collector):
    """Read from the `ReadPools` when scraped."""

    def __init__(self, reads: ReadPools) -> None:
        self._reads = reads

    def collect(self) -> Iterator[Metric]:
        served = CounterMetricFamily(
            "ga_queries_served", "Query answers by the database that served them", labels=["source"]
        )
        for source in ("primary", "replica"):
            served.add_metric([source], self._reads.served[source])
        yield served
        up = self._reads.replica_up
        if up is not None:
            yield GaugeMetricFamily(
                "ga_read_replica_up", "1 while queries go to the read replica, 0 while they fall back", value=int(up)
            )
