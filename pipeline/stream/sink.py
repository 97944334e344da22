"""The ClickHouse sink: buffers aggregates and events, writes them in batches, never drops.

A flush writes everything buffered (edge minutes, then violations and rules) on one
background thread (chdb and clickhouse-connect are blocking). A failed write is retried
with capped exponential backoff until it succeeds or the worker stops — meanwhile the
stateful stage waits (its offsets and snapshots only move after a flush), so a store
outage becomes back-pressure, not loss. Rows are idempotent (replacing keys), so a write
that is retried after a timeout cannot double anything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from pipeline.config import SinkSettings
from pipeline.errors import StorageError
from pipeline.storage import Store
from pipeline.stream.metrics import Metrics

log = logging.getLogger(__name__)


class StoreSink:
    """Batched, retrying writer in front of a :class:`~pipeline.storage.Store`."""

    def __init__(self, store: Store, settings: SinkSettings, metrics: Metrics, *,
                 backoff: tuple[float, float] = (0.5, 30.0)) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.backoff = backoff
        self._tables: list[pa.Table] = []
        self._rows = 0
        self._violations: list[dict[str, Any]] = []
        self._rules: list[dict[str, Any]] = []
        self._since: float | None = None  # monotonic time of the oldest buffered item
        self._lock = asyncio.Lock()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="segflow-sink")
        self.closed = False

    def add(self, edge_minutes: pa.Table, violations: list[dict[str, Any]],
            rules: list[dict[str, Any]]) -> None:
        if edge_minutes.num_rows:
            self._tables.append(edge_minutes)
            self._rows += edge_minutes.num_rows
        self._violations.extend(violations)
        self._rules.extend(rules)
        if self._since is None and (edge_minutes.num_rows or violations or rules):
            self._since = time.monotonic()

    @property
    def pending(self) -> bool:
        return self._since is not None

    @property
    def due(self) -> bool:
        """True when the buffer is over ``max_rows`` or older than ``max_seconds``."""
        if self._since is None:
            return False
        return (self._rows + len(self._violations) >= self.settings.max_rows
                or time.monotonic() - self._since >= self.settings.max_seconds)

    async def flush(self) -> None:
        """Write everything buffered; returns only once it is stored."""
        async with self._lock:
            if self._since is None:
                return
            tables, violations, rules = self._tables, self._violations, self._rules
            self._tables, self._rows, self._violations, self._rules = [], 0, [], []
            self._since = None
            table = pa.concat_tables(tables) if tables else None
            t0 = time.perf_counter()
            await self._write("edge_minute", lambda: self.store.write_edge_minutes(table)
                              if table is not None else 0)
            await self._write("violations", lambda: self.store.write_violations(violations))
            await self._write("candidate_rules", lambda: self.store.write_rules(rules))
            self.metrics.batch_seconds.labels("sink").observe(time.perf_counter() - t0)
            self.metrics.batch_records.labels("sink").observe(
                (table.num_rows if table is not None else 0) + len(violations) + len(rules))

    async def _write(self, name: str, fn: Any) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            try:
                n = await loop.run_in_executor(self._thread, fn)
            except StorageError as exc:
                attempt += 1
                self.metrics.storage_errors.inc()
                self.metrics.storage_retries.labels(f"write {name}").inc()
                if self.closed and attempt >= 3:
                    raise  # stopping: unflushed data is re-read after restart, not lost
                delay = min(self.backoff[1], self.backoff[0] * 2 ** (attempt - 1))
                log.warning("writing %s failed (attempt %d), retrying in %.1f s: %s",
                            name, attempt, delay, exc)
                await asyncio.sleep(delay)
                continue
            self.metrics.rows_stored.labels(name).inc(n or 0)
            return

    def on_retry(self, op: str, attempt: int, exc: BaseException) -> None:
        """Hook for :func:`~pipeline.storage.open_store`: count the store's own retries."""
        self.metrics.storage_retries.labels(op).inc()

    async def close(self) -> None:
        """Flush what is left (a few tries only), then release the thread; the store is
        closed by its owner. Data not flushed here is re-read after restart (no snapshot
        covers it), so giving up on a dead store at shutdown loses nothing."""
        self.closed = True
        try:
            await self.flush()
        finally:
            self._thread.shutdown(wait=True)


__all__ = ["StoreSink"]
