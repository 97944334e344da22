"""Prometheus metrics of one worker (own registry, so tests can run several in a process).

Served on ``metrics_port`` (``/metrics``); every name starts with ``segflow_``, the process's
CPU and memory included (``segflow_process_cpu_seconds_total``,
``segflow_process_resident_memory_bytes``, ...). Labelled series whose values are known in
advance (dead-letter reasons, stages) exist at 0 from the start, so rates and ratios over them
are defined before the first event.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)

from pipeline.core.columns import DEAD_LETTER_REASONS, SKIP_REASONS
from pipeline.storage.writer import WriterObserver

_BATCH_BUCKETS = (1, 10, 100, 1_000, 5_000, 20_000, 50_000, 100_000, 250_000, 1_000_000)
_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def _suppressed_lines() -> float:
    from pipeline.stream.brokerlog import installed_limiter

    limiter = installed_limiter()
    return float(limiter.suppressed) if limiter is not None else 0.0


class Metrics:
    """All of the worker's metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        # stage: ingest counts raw records, stateful the flows it applies from the internal
        # topic; in role=all both run, so "records read" is the ingest stage's only
        self.records_in = Counter("segflow_records_in", "Records read, per stage and topic",
                                  ["stage", "topic"], registry=r)
        self.records_out = Counter("segflow_records_out", "Records produced, per topic",
                                   ["topic"], registry=r)
        self.batch_records = Histogram("segflow_batch_records", "Records per batch, per stage",
                                       ["stage"], buckets=_BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("segflow_batch_seconds", "Processing time per batch",
                                       ["stage"], buckets=_SECONDS_BUCKETS, registry=r)
        self.lag = Gauge("segflow_consumer_lag", "Messages behind the partition's end",
                         ["group", "topic", "partition"], registry=r)
        self.dead_letters = Counter("segflow_dead_letter",
                                    "Raw records sent to the dead-letter topic, by reason",
                                    ["reason"], registry=r)
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason)
        self.records_skipped = Counter(
            "segflow_records_skipped",
            "Raw input lines that are not flows (headers, NODATA, other events), by reason",
            ["reason"], registry=r)
        for reason in SKIP_REASONS:
            self.records_skipped.labels(reason)
        self.inventory_rejects = Counter("segflow_inventory_rejects",
                                         "Inventory-topic records skipped as unreadable",
                                         registry=r)
        self.violations = Counter("segflow_violations", "Violation events emitted",
                                  ["type", "severity"], registry=r)
        self.rules = Counter("segflow_candidate_rules", "Candidate-rule events emitted",
                             registry=r)
        self.enrichment_misses = Counter(
            "segflow_enrichment_misses", "Flows whose client or server is world or unknown",
            ["side", "kind"], registry=r)
        self.duplicates = Counter("segflow_duplicate_rows_dropped",
                                  "Rows dropped because their raw offset was already applied",
                                  registry=r)
        ProcessCollector(namespace="segflow", registry=r)  # CPU seconds, RSS, open fds
        self.broker_up = Gauge("segflow_broker_up",
                               "1 while Kafka answers, 0 after a failed probe until it does",
                               registry=r)
        self.broker_up.set(1)
        self.log_suppressed = Gauge("segflow_library_log_lines_suppressed",
                                    "Library log lines held back by the rate limit (process)",
                                    registry=r)
        self.log_suppressed.set_function(_suppressed_lines)
        self.storage_errors = Counter("segflow_storage_errors",
                                      "Store writes that failed (then retried)", registry=r)
        self.storage_retries = Counter("segflow_storage_retries",
                                       "Retries of store operations", ["op"], registry=r)
        self.storage_up = Gauge("segflow_storage_up",
                                "1 while the store accepts writes, 0 while they are retried",
                                registry=r)
        self.storage_up.set(1)
        self.storage_backlog = Gauge("segflow_storage_backlog_rows",
                                     "Rows waiting for the store (back-pressure beyond "
                                     "writer.max_pending_rows)", registry=r)
        self.storage_wait = Counter("segflow_storage_wait_seconds",
                                    "Time the stateful stage was paused by a full store queue",
                                    registry=r)
        self.rows_stored = Counter("segflow_rows_stored", "Rows written to the store",
                                   ["table"], registry=r)
        self.snapshots_written = Counter("segflow_snapshots_written",
                                         "Partition snapshots written", registry=r)
        self.snapshots_restored = Counter("segflow_snapshots_restored",
                                          "Partition snapshots restored", registry=r)
        self.snapshot_bytes = Gauge("segflow_snapshot_bytes", "Size of the last snapshot",
                                    ["partition"], registry=r)
        self.partitions = Gauge("segflow_partitions_owned", "Internal partitions this worker owns",
                                registry=r)
        self.deferred_flows = Gauge(
            "segflow_deferred_flows",
            "Post-audit flows held until event time passes the audit end", ["partition"],
            registry=r)
        self.audit_ended_early = Counter(
            "segflow_audit_ended_early",
            "Audits ended before event time reached their end (too many held flows)",
            registry=r)
        self.held_events = Gauge(
            "segflow_held_events",
            "new_edge events held until every partition's service map is known",
            ["partition"], registry=r)
        self.events_incomplete = Counter(
            "segflow_events_incomplete",
            "new_edge events released with partial known clients (too many held)", registry=r)
        self.offset_gaps = Counter("segflow_flows_offset_gaps",
                                   "Internal messages that could not be read (retention)",
                                   registry=r)

    def writer_observer(self) -> WriterObserver:
        """The store writer's hooks, counted here."""
        return _WriterMetrics(self)

    def serve(self, port: int) -> None:
        """Start the /metrics HTTP server (a daemon thread); port 0 does nothing."""
        if port:
            start_http_server(port, registry=self.registry)


class _WriterMetrics(WriterObserver):
    def __init__(self, m: Metrics) -> None:
        self.m = m

    def written(self, table: str, rows: int, seconds: float) -> None:
        self.m.rows_stored.labels(table).inc(rows)
        self.m.batch_seconds.labels("sink").observe(seconds)
        self.m.batch_records.labels("sink").observe(rows)

    def retry(self, table: str, attempt: int, exc: BaseException) -> None:
        self.m.storage_errors.inc()
        self.m.storage_retries.labels(f"insert into {table}").inc()

    def available(self, up: bool) -> None:
        self.m.storage_up.set(1 if up else 0)

    def backlog(self, rows: int) -> None:
        self.m.storage_backlog.set(rows)

    def waited(self, seconds: float) -> None:
        self.m.storage_wait.inc(seconds)


__all__ = ["Metrics"]
