"""``segflow worker``: one streaming worker process (ingest + stateful stage + sink).

``role`` picks the stages: ``all`` (both, one process), ``ingest`` or ``stateful``. Run as
two processes (``--role ingest`` and ``--role stateful``) the stages no longer share one
interpreter lock, and each can be scaled on its own (they are separate consumer groups).

Start order: topics (created if missing; an unreachable broker is one BrokerError line),
metrics server, producer, store, inventory (read to its end), snapshot reader, ingest
consumer, then the faust app. Stop order (SIGTERM/SIGINT) is the reverse of what matters:
ingest finishes its batch and commits, the stateful stage snapshots and commits every
partition it owns, then faust leaves the group, then the sink and clients close.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from pipeline.config import WorkerSettings, load_settings
from pipeline.core.columns import Reject
from pipeline.errors import BrokerError, ConfigError, InputError
from pipeline.sources import FORMATS, get_parser
from pipeline.storage import RetryPolicy, Store, open_store
from pipeline.storage.url import RedactingFilter
from pipeline.storage.writer import StoreWriter
from pipeline.stream.app import create_app, stop_app
from pipeline.stream.brokerlog import BrokerWatch, install_limiter, installed_limiter
from pipeline.stream.clients import (
    MAX_MESSAGE_BYTES,
    SNAPSHOT_CHUNK_BYTES,
    aiokafka_kwargs,
    ensure_topics,
    unreachable,
    worker_topics,
)
from pipeline.stream.control import AuditStartAgreement, whoami
from pipeline.stream.ingest import IngestStage
from pipeline.stream.inventory_topic import InventoryFeed
from pipeline.stream.metrics import Metrics
from pipeline.stream.outputs import EventPublisher
from pipeline.stream.reader import PartitionReader
from pipeline.stream.snapshots import SnapshotStore
from pipeline.stream.stateful import StatefulStage

log = logging.getLogger(__name__)

TICK_SECONDS = 0.5
STOP_TIMEOUT = 60.0
SLOW_STOP_STEP = 2.0  # a stop step taking longer is logged with its duration


def check_formats(settings: WorkerSettings) -> None:
    """ConfigError for a raw topic whose format has no parser."""
    if not settings.topics.raw:
        raise ConfigError("topics.raw is empty; map at least one raw topic to its flow format")
    for topic, fmt in settings.topics.raw.items():
        try:
            get_parser(fmt)
        except InputError:
            raise ConfigError(f"topics.raw: topic {topic!r} has unknown format {fmt!r}; "
                              f"choose one of: {', '.join(FORMATS)}") from None


class Worker:
    """The parts of one worker and their lifecycle (see the module docstring)."""

    def __init__(self, settings: WorkerSettings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.producer: AIOKafkaProducer | None = None
        self.store: Store | None = None
        self.feed: InventoryFeed | None = None
        self.reader: PartitionReader | None = None
        self.snapshots: SnapshotStore | None = None
        self.writer: StoreWriter | None = None
        self.stage: StatefulStage | None = None
        self.ingest: IngestStage | None = None
        self.app: Any = None
        self.datadir: Path | None = None
        self.tasks: list[asyncio.Task[Any]] = []
        self.failed: BaseException | None = None
        self.done = asyncio.Event()
        self.watch: BrokerWatch | None = None
        self._unwatch: Any = None

    async def start(self) -> None:
        s, k = self.settings, self.settings.kafka
        core = s.core_settings()
        check_formats(s)
        quiet = logging.getLogger("kafka")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)  # kafka-python logs every failed connect attempt
        try:
            counts = await asyncio.to_thread(ensure_topics, k, worker_topics(s.topics),
                                             list(s.topics.raw))
        finally:
            quiet.setLevel(level)
        try:
            self.metrics.serve(s.metrics_port)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on port {s.metrics_port} ({exc.strerror}); set "
                "metrics_port (SEGFLOW_METRICS_PORT) to a free port or 0") from exc
        client = aiokafka_kwargs(k)
        self.producer = AIOKafkaProducer(
            **client, acks="all", enable_idempotence=True, linger_ms=5,
            max_request_size=MAX_MESSAGE_BYTES, max_batch_size=1 << 20,
            request_timeout_ms=int(max(30.0, k.session_timeout * 3) * 1000))
        try:
            await asyncio.wait_for(self.producer.start(), k.connect_timeout)
        except (KafkaError, OSError, TimeoutError) as exc:
            raise unreachable(k) from exc
        limiter = installed_limiter()
        self.watch = BrokerWatch(k.bootstrap, self.producer.client.fetch_all_metadata,
                                 on_change=self.metrics.broker_up.set,
                                 suppressed=lambda: limiter.suppressed if limiter else 0)
        if limiter is not None:
            self._unwatch = limiter.subscribe(self.watch.suspect)
        stateful, ingest = s.role in ("all", "stateful"), s.role in ("all", "ingest")
        if stateful:
            self.store = await asyncio.to_thread(open_store, s.store, migrate=True,
                                                 on_retry=self._on_store_retry)
        self.feed = InventoryFeed(s.topics.inventory, client, self.metrics,
                                  internal_cidrs=core.internal_cidrs, seed=s.inventory_file)
        self.feed.dead_letter = self._inventory_dead_letter
        await self.feed.start(counts[s.topics.inventory], timeout=max(30.0, k.connect_timeout * 3))
        if ingest:
            routing = self.feed.new_inventory()
            agreement = None if core.audit_start is not None else AuditStartAgreement(
                s.topics.control, client, self.producer, who=whoami(s.app_id),
                timeout=max(30.0, k.connect_timeout * 3))
            self.ingest = IngestStage(s.topics, s.stream, kafka=k, group=f"{s.app_id}-ingest",
                                      audit_start=core.audit_start, client=client,
                                      producer=self.producer, inventory=routing,
                                      inventory_lock=self.feed.lock(routing),
                                      metrics=self.metrics, agreement=agreement)
            await self.ingest.start()
        if stateful:
            assert self.store is not None
            self.reader = PartitionReader(client, max_fetch_bytes=MAX_MESSAGE_BYTES)
            await self.reader.start()
            self.snapshots = SnapshotStore(self.producer, self.reader, s.topics.state,
                                           chunk_bytes=SNAPSHOT_CHUNK_BYTES)
            w = s.writer
            self.writer = StoreWriter(
                self.store, max_rows=w.max_rows, max_seconds=w.max_seconds,
                max_pending_rows=w.max_pending_rows,
                retry=RetryPolicy(attempts=None, base_delay=w.retry_base_delay,
                                  max_delay=w.retry_max_delay),
                observer=self.metrics.writer_observer())
            self.stage = StatefulStage(core, s.topics, s.stream, group=s.app_id, client=client,
                                       feed=self.feed, snapshots=self.snapshots,
                                       reader=self.reader, sink=self.writer,
                                       publisher=EventPublisher(self.producer, s.topics,
                                                                self.metrics),
                                       metrics=self.metrics)
            self.datadir = Path(tempfile.mkdtemp(prefix="segflow-faust-"))
            self.app = create_app(k, s.topics, self.stage, app_id=s.app_id,
                                  datadir=self.datadir)
            self.stage.ready.set()
            if self.ingest is not None and s.stream.in_process:
                self.ingest.local = self.stage  # role all: owned partitions in memory
            await self.app.start()
        tasks: list[tuple[str, Any]] = [("inventory", self.feed.run()), ("ticker", self._ticker()),
                                        ("broker watch", self._watch_broker())]
        if self.ingest is not None:
            tasks.append(("ingest", self.ingest.run()))
        self.tasks = [asyncio.create_task(coro, name=name) for name, coro in tasks]
        for t in self.tasks:
            t.add_done_callback(self._task_done)
        log.info("worker %s (%s) started: raw %s → %s (%d partitions), store %s", s.app_id,
                 s.role, ", ".join(s.topics.raw), s.topics.flows, s.topics.flows_partitions,
                 self.store.url if self.store else "-")

    async def _inventory_dead_letter(self, rejects: list[Reject]) -> None:
        """Unusable inventory-topic records go to the dead-letter topic, keyed by where they
        were read (``topic/partition@offset``: a restart that reads them again sends the
        same keys)."""
        assert self.producer is not None
        for r in rejects:
            headers = [("segflow.reason", r.reason.encode()), ("segflow.detail", r.detail.encode()),
                       ("segflow.topic", self.settings.topics.inventory.encode())]
            await self.producer.send(self.settings.topics.dead_letter, value=r.raw,
                                     key=r.source.encode(), headers=headers)
        self.metrics.records_out.labels(self.settings.topics.dead_letter).inc(len(rejects))

    def _on_store_retry(self, op: str, attempt: int, exc: BaseException) -> None:
        self.metrics.storage_retries.labels(op).inc()

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("worker task %s failed: %r", task.get_name(), exc, exc_info=exc)
            self.failed = exc
            self.done.set()

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            if self.app is not None and getattr(self.app, "crashed", False):
                self.failed = self.failed or RuntimeError("the faust app crashed")
                self.done.set()
                return
            if self.stage is not None:
                await self.stage.tick()
            self._ingest_lag()

    async def _watch_broker(self) -> None:
        assert self.watch is not None
        while True:
            await asyncio.sleep(TICK_SECONDS)
            await self.watch.tick()

    def _ingest_lag(self) -> None:
        consumer = self.ingest.consumer if self.ingest else None
        if consumer is None:
            return
        group = f"{self.settings.app_id}-ingest"
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            pos = self.ingest.next_offset.get(tp) if self.ingest else None
            if high is not None and pos is not None:
                self.metrics.lag.labels(group, tp.topic, str(tp.partition)).set(high - pos)

    async def stop(self) -> None:
        """Graceful stop; safe to call after a partial start. A lost store is given up
        after one more try: what it did not take is re-read after a restart (no snapshot
        covers it)."""
        if self.writer is not None:
            self.writer.stopping()
        if self.ingest is not None:
            async with self.ingest.lock:  # not in the middle of a batch
                for t in self.tasks:
                    t.cancel()
        else:
            for t in self.tasks:
                t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        steps: list[tuple[str, Any]] = [
            ("ingest", self.ingest.stop() if self.ingest else None),
            ("stateful stage", self.stage.stop() if self.stage and self.app else None),
            ("faust", stop_app(self.app) if self.app else None),
            ("store writer", asyncio.to_thread(self.writer.close) if self.writer else None),
            ("reader", self.reader.stop() if self.reader else None),
            ("inventory", self.feed.stop() if self.feed else None),
            ("producer", self.producer.stop() if self.producer else None),
        ]
        for name, coro in steps:
            if coro is None:
                continue
            t0 = time.monotonic()
            try:
                await coro
            except (Exception, asyncio.CancelledError) as exc:
                log.warning("stopping %s: %r", name, exc)
            if time.monotonic() - t0 > SLOW_STOP_STEP:
                log.info("stopping %s took %.1f s", name, time.monotonic() - t0)
        if self._unwatch is not None:
            self._unwatch()
        if self.store is not None:
            self.store.close()
        if self.datadir is not None:
            shutil.rmtree(self.datadir, ignore_errors=True)


def tune_gc() -> None:
    """Fewer, cheaper garbage collections for a long-running worker: everything allocated at
    start-up (libraries, clients, state) moves to the permanent generation, and the young
    generation is collected every 50k allocations instead of 700 — the Kafka clients
    allocate a few objects per record, and collections were ~9 % of a busy worker's time."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


async def serve(settings: WorkerSettings) -> int:
    """Run a worker until SIGTERM/SIGINT (0) or a fatal error (1). A second signal, or a
    graceful stop taking over ``STOP_TIMEOUT`` s, ends the process at once (what is not
    snapshotted is re-read by the next owner, so nothing is lost)."""
    worker = Worker(settings)
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if worker.done.is_set():
            log.error("second signal: exiting without a graceful stop")
            os._exit(1)
        worker.done.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    t0 = time.monotonic()
    try:
        await worker.start()
        tune_gc()
        log.info("ready in %.1f s", time.monotonic() - t0)
        await worker.done.wait()
    finally:
        worker.done.set()
        try:
            await asyncio.wait_for(worker.stop(), STOP_TIMEOUT)
        except TimeoutError:
            log.error("graceful stop took over %.0f s; exiting", STOP_TIMEOUT)
            os._exit(1)
    return 1 if worker.failed is not None else 0


def run_worker(config_path: Path | None, role: str | None = None) -> int:
    """Entry point of ``segflow worker [--config PATH] [--role R]``; returns the exit status."""
    settings = load_settings(config_path, **({"role": role} if role else {}))
    level = os.environ.get("SEGFLOW_LOG_LEVEL", "INFO").upper()
    libraries = os.environ.get("SEGFLOW_LIB_LOG_LEVEL", "WARNING").upper()  # faust, aiokafka
    logging.basicConfig(level=libraries,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pipeline").setLevel(level)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    install_limiter()  # aiokafka logs every failed attempt: ~200 lines/s in a broker outage
    try:
        return asyncio.run(serve(settings))
    except BrokerError:
        raise
    except KafkaError as exc:
        raise BrokerError(f"Kafka at {settings.kafka.bootstrap} failed: {exc}") from exc


__all__ = ["Worker", "check_formats", "run_worker", "serve", "tune_gc"]
