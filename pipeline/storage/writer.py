"""The one way aggregates and events reach a store: a writer thread behind a bounded queue.

Used by ``segflow replay`` and by the worker's stateful stage alike:

- **Batches.** :meth:`StoreWriter.add` buffers edge-minute tables, violations and rules; the
  open batch is sealed into the queue at ``max_rows`` rows or ``max_seconds`` after its first
  row (ClickHouse wants few large inserts), or by :meth:`~StoreWriter.flush`.
- **Overlap.** One thread writes sealed batches in order; chdb and the HTTP client release
  the GIL, so the caller parses and scores the next batch meanwhile.
- **Back-pressure.** At most ``max_pending_rows`` rows wait (plus the open batch): then
  ``add`` blocks (:meth:`~StoreWriter.add_async` awaits) until the store catches up, so a
  slow or lost store stops the producer instead of growing memory.
- **One retry rule.** A write that fails with a transient error (network, overload,
  timeout; :attr:`StorageError.transient`) is retried with the backoff of
  :class:`~pipeline.storage.store.RetryPolicy` — here only: the store itself does not retry
  writes. ``attempts=None`` retries until the store is back (the worker). A log line is
  written when the store is lost and when it is back, not per retry.
- **Sticky errors.** A write that fails for good (not transient, or retries exhausted) is
  re-raised by every later call and by :meth:`~StoreWriter.close`; nothing after it is
  written. Writes are idempotent (replacing keys), so retrying one whose answer was lost
  doubles nothing.
- **Flush/close.** :meth:`~StoreWriter.flush` returns once everything added is stored (the
  worker's snapshots wait for it); :meth:`~StoreWriter.close` flushes and stops the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from pipeline.core.records import INCIDENT
from pipeline.errors import StorageError
from pipeline.storage.store import RetryPolicy

log = logging.getLogger(__name__)

WRITER_RETRY = RetryPolicy(attempts=8, base_delay=0.5, max_delay=30.0)
"""Replay's policy: about two minutes of retries, then the replay fails in one line."""


class WriterObserver:
    """Hooks for metrics (no-ops here; the worker maps them onto Prometheus)."""

    def written(self, table: str, rows: int, seconds: float) -> None:
        """One successful insert of ``rows`` rows into ``table``."""

    def retry(self, table: str, attempt: int, exc: BaseException) -> None:
        """Attempt ``attempt`` (1-based) of a write failed transiently; it is retried."""

    def available(self, up: bool) -> None:
        """The store was lost (False) or is back (True)."""

    def backlog(self, rows: int) -> None:
        """Rows waiting for the store (sealed, not yet written) changed."""

    def waited(self, seconds: float) -> None:
        """The producer was blocked this long by a full queue (back-pressure)."""


@dataclass(slots=True)
class _Batch:
    tables: list[pa.Table] = field(default_factory=list)
    violations: list[dict[str, Any]] = field(default_factory=list)
    rules: list[dict[str, Any]] = field(default_factory=list)
    incidents: list[dict[str, Any]] = field(default_factory=list)
    readiness: list[pa.Table] = field(default_factory=list)
    rows: int = 0
    since: float = 0.0  # clock time of its first row


class StoreWriter:
    """Batched, bounded, retrying writer in front of a store (see the module docstring).

    ``store`` needs ``write_edge_minutes(table)``, ``write_violations(events)``,
    ``write_rules(events)`` and, for incidents, ``write_events(table, events)``. Call
    :meth:`add`/:meth:`flush` from one thread (or one event loop) at a time.
    """

    def __init__(self, store: Any, *, max_rows: int = 200_000, max_seconds: float = 5.0,
                 max_pending_rows: int | None = None, retry: RetryPolicy = WRITER_RETRY,
                 observer: WriterObserver | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.max_rows = max(1, max_rows)
        self.max_seconds = max_seconds
        self.max_pending_rows = max_pending_rows or 2 * self.max_rows
        self.retry_policy = retry
        self.observer = observer or WriterObserver()
        self._clock = clock
        self._open = _Batch()
        self._queue: deque[_Batch] = deque()
        self._pending = 0  # rows sealed and not yet written (queued or in flight)
        self._cond = threading.Condition()
        self._wake = threading.Event()  # interrupts a backoff sleep (stop)
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._error: BaseException | None = None
        self._stopping = False  # stop soon: give up on a lost store after one more try
        self._closed = False
        self._lost_since: float | None = None
        self._retries = 0
        self._thread = threading.Thread(target=self._run, name="segflow-store-writer",
                                        daemon=True)
        self._thread.start()

    # -- producer side -------------------------------------------------------------------
    def add(self, edge_minutes: pa.Table | None = None,
            violations: Sequence[dict[str, Any]] = (), rules: Sequence[dict[str, Any]] = (),
            *, wait: bool = True, incidents: Sequence[dict[str, Any]] = (),
            readiness: pa.Table | None = None) -> None:
        """Buffer outputs; seal the batch when full or old; with ``wait``, block while more
        than ``max_pending_rows`` rows wait for the store. Raises the sticky error."""
        self._raise()
        b = self._open
        n = (edge_minutes.num_rows if edge_minutes is not None else 0) + len(violations) \
            + len(rules) + len(incidents) + (readiness.num_rows if readiness is not None
                                             else 0)
        if n:
            if not b.rows:
                b.since = self._clock()
            if edge_minutes is not None and edge_minutes.num_rows:
                b.tables.append(edge_minutes)
            b.violations.extend(violations)
            b.rules.extend(rules)
            b.incidents.extend(incidents)
            if readiness is not None and readiness.num_rows:
                b.readiness.append(readiness)
            b.rows += n
        if b.rows >= self.max_rows or self.due:
            self._seal()
        if wait and not self.has_room:
            t0 = time.perf_counter()
            with self._cond:
                self._cond.wait_for(lambda: self._has_room() or self._error is not None)
            self.observer.waited(time.perf_counter() - t0)
            self._raise()

    async def add_async(self, edge_minutes: pa.Table | None = None,
                        violations: Sequence[dict[str, Any]] = (),
                        rules: Sequence[dict[str, Any]] = (),
                        incidents: Sequence[dict[str, Any]] = (),
                        readiness: pa.Table | None = None) -> None:
        """:meth:`add` for an event loop: awaits room instead of blocking the loop."""
        self.add(edge_minutes, violations, rules, wait=False, incidents=incidents,
                 readiness=readiness)
        if not self.has_room:
            t0 = time.perf_counter()
            await self._wait_async(self._has_room)
            self.observer.waited(time.perf_counter() - t0)
        self._raise()

    @property
    def due(self) -> bool:
        """The open batch is older than ``max_seconds``."""
        b = self._open
        return bool(b.rows) and self._clock() - b.since >= self.max_seconds

    def tick(self) -> None:
        """Seal the open batch if it is due (call now and then when no rows arrive)."""
        if self.due:
            self._seal()

    @property
    def has_room(self) -> bool:
        with self._cond:
            return self._has_room()

    @property
    def backlog_rows(self) -> int:
        """Rows added and not yet stored (open batch included)."""
        with self._cond:
            return self._pending + self._open.rows

    def flush(self) -> None:
        """Return once everything added so far is stored; raise the sticky error."""
        self._raise()
        self._seal()
        with self._cond:
            self._cond.wait_for(lambda: self._pending == 0 or self._error is not None)
        self._raise()

    async def flush_async(self) -> None:
        """:meth:`flush` for an event loop."""
        self._raise()
        self._seal()
        await self._wait_async(lambda: self._pending == 0)
        self._raise()

    def stopping(self) -> None:
        """The owner is shutting down: a write that fails from now on is given up after one
        more try (what is not stored then is re-read after a restart, not lost)."""
        self._stopping = True
        self._wake.set()

    def close(self) -> None:
        """Flush, stop the thread, raise the sticky error if there is one."""
        try:
            if not self._closed and self._error is None:
                self.flush()
        finally:
            self._closed = True
            with self._cond:
                self._cond.notify_all()
            self._wake.set()
            self._thread.join()
        self._raise()

    # -- internals -----------------------------------------------------------------------
    def _has_room(self) -> bool:
        return self._pending <= self.max_pending_rows

    def _raise(self) -> None:
        err = self._error  # sticky: after a failure every call fails, nothing more is written
        if err is not None:
            if isinstance(err, StorageError):
                raise err
            raise StorageError(f"store write failed: {err}") from err

    def _seal(self) -> None:
        b = self._open
        if not b.rows:
            return
        self._open = _Batch()
        with self._cond:
            self._queue.append(b)
            self._pending += b.rows
            self._cond.notify_all()
        self.observer.backlog(self._pending + self._open.rows)

    async def _wait_async(self, ready: Callable[[], bool]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if ready() or self._error is not None:
                    return
                fut: asyncio.Future[None] = loop.create_future()
                self._waiters.append((loop, fut))
            await fut

    def _changed(self) -> None:
        """Wake every waiter (call holding ``_cond``)."""
        self._cond.notify_all()
        waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(_resolve, fut)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue) or self._closed)
                if not self._queue:
                    return
                batch = self._queue[0]
            try:
                if self._error is None:
                    self._write(batch)
            except BaseException as exc:  # re-raised to the producer
                with self._cond:
                    self._error = exc
            with self._cond:
                self._queue.popleft()
                self._pending -= batch.rows
                self._changed()
            self.observer.backlog(self._pending)

    def _write(self, batch: _Batch) -> None:
        if batch.tables:
            table = pa.concat_tables(batch.tables) if len(batch.tables) > 1 else batch.tables[0]
            self._retrying("edge_minute", lambda: self.store.write_edge_minutes(table))
        if batch.violations:
            self._retrying("violations", lambda: self.store.write_violations(batch.violations))
        if batch.rules:
            self._retrying("candidate_rules", lambda: self.store.write_rules(batch.rules))
        if batch.incidents:
            self._retrying(INCIDENT.table, lambda: self.store.write_events(INCIDENT.table,
                                                                           batch.incidents))
        if batch.readiness:
            ready = pa.concat_tables(batch.readiness)
            self._retrying("app_readiness", lambda: self.store.write_app_readiness(ready))

    def _retrying(self, table: str, fn: Callable[[], Any]) -> None:
        attempt = 1
        while True:
            t0 = time.perf_counter()
            try:
                n = fn()
            except StorageError as exc:
                final = self._stopping and attempt >= 2
                if not exc.transient or self.retry_policy.exhausted(attempt) or final:
                    if self._lost_since is not None:
                        log.error("giving up on the store after %d retries: %s", self._retries,
                                  exc)
                    raise
                self._lost(exc)
                self.observer.retry(table, attempt, exc)
                log.debug("writing %s failed (attempt %d), retrying: %s", table, attempt, exc)
                self._wake.wait(self.retry_policy.delay(attempt))
                attempt += 1
                continue
            self._back()
            self.observer.written(table, int(n or 0), time.perf_counter() - t0)
            return

    def _lost(self, exc: BaseException) -> None:
        self._retries += 1
        if self._lost_since is None:
            self._lost_since = time.monotonic()
            log.warning("store lost: %s; retrying with backoff (%d rows waiting, at most %d "
                        "before the input is paused)", exc, self._pending,
                        self.max_pending_rows)
            self.observer.available(False)

    def _back(self) -> None:
        if self._lost_since is not None:
            log.info("store back after %.1f s (%d retries); %d rows waiting",
                        time.monotonic() - self._lost_since, self._retries, self._pending)
            self._lost_since = None
            self._retries = 0
            self.observer.available(True)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


__all__ = ["WRITER_RETRY", "StoreWriter", "WriterObserver"]
