"""The store writer: order, batching, one retry rule, back-pressure, sticky errors, and a lost
store through the real store code path (the driver failing as an HTTP 503 does)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from clickhouse_connect.driver._backend.httpcommon import build_http_error

from pipeline.errors import StorageError
from pipeline.storage import RetryPolicy, open_store
from pipeline.storage.writer import StoreWriter, WriterObserver
from tests.test_storage import edge_table

FAST = RetryPolicy(attempts=None, base_delay=0.001, max_delay=0.01)


class Recorder:
    """A store that records writes; ``fail`` makes the next writes raise, ``gate`` blocks
    them until set."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.threads: set[str] = set()
        self.fail: list[StorageError] = []
        self.gate = threading.Event()
        self.gate.set()
        self.attempts = 0

    def _rec(self, name: str, arg: Any) -> int:
        self.attempts += 1
        self.threads.add(threading.current_thread().name)
        self.gate.wait()
        if self.fail:
            raise self.fail.pop(0)
        self.calls.append((name, arg))
        return arg.num_rows if isinstance(arg, pa.Table) else len(arg)

    def write_edge_minutes(self, t: pa.Table) -> int:
        return self._rec("edges", t)

    def write_violations(self, e: list[dict[str, Any]]) -> int:
        return self._rec("violations", e)

    def write_rules(self, e: list[dict[str, Any]]) -> int:
        return self._rec("rules", e)


class Counting(WriterObserver):
    def __init__(self) -> None:
        self.retries = 0
        self.states: list[bool] = []
        self.rows: dict[str, int] = {}
        self.wait_seconds = 0.0
        self.max_backlog = 0

    def written(self, table: str, rows: int, seconds: float) -> None:
        self.rows[table] = self.rows.get(table, 0) + rows

    def retry(self, table: str, attempt: int, exc: BaseException) -> None:
        self.retries += 1

    def available(self, up: bool) -> None:
        self.states.append(up)

    def backlog(self, rows: int) -> None:
        self.max_backlog = max(self.max_backlog, rows)

    def waited(self, seconds: float) -> None:
        self.wait_seconds += seconds


def ints(n: int, start: int = 0) -> pa.Table:
    return pa.table({"x": list(range(start, start + n))})


def transient() -> StorageError:
    return StorageError("cannot reach ClickHouse at http://ch:8123/segflow (connection refused)",
                        transient=True)


def test_batches_are_written_in_order_on_one_thread() -> None:
    store = Recorder()
    w = StoreWriter(store, max_rows=25, max_seconds=float("inf"))
    for i in range(10):
        w.add(ints(10, 10 * i), [{"id": i}])
    w.add(rules=[{"rule": 1}])
    w.close()
    edges = [c[1] for c in store.calls if c[0] == "edges"]
    assert pa.concat_tables(edges)["x"].to_pylist() == list(range(100))  # in order, all
    assert [len(t) for t in edges] == [30, 30, 30, 10]  # sealed at >= 25 rows (11 per add)
    assert [v["id"] for c in store.calls if c[0] == "violations" for v in c[1]] == list(range(10))
    assert store.calls[-1] == ("rules", [{"rule": 1}])
    assert store.threads == {"segflow-store-writer"}


def test_an_old_batch_is_sealed_on_tick() -> None:
    store, now = Recorder(), [0.0]
    w = StoreWriter(store, max_rows=1000, max_seconds=5.0, clock=lambda: now[0])
    w.add(ints(3))
    w.tick()
    assert w.backlog_rows == 3 and not store.calls
    now[0] = 6.0
    w.tick()
    w.flush()  # nothing open any more: flush only waits
    assert store.calls[0][1].num_rows == 3 and w.backlog_rows == 0
    w.close()


def test_transient_errors_are_retried_with_one_log_line_per_state_change(
        caplog: pytest.LogCaptureFixture) -> None:
    store, seen = Recorder(), Counting()
    store.fail = [transient() for _ in range(6)]
    w = StoreWriter(store, retry=FAST, observer=seen)
    with caplog.at_level(logging.DEBUG, logger="pipeline.storage.writer"):
        w.add(ints(5), [{"id": 1}])
        w.flush()
    w.close()
    assert store.calls == [("edges", store.calls[0][1]), ("violations", [{"id": 1}])]
    assert store.attempts == 8 and seen.retries == 6  # every failure retried, once written
    assert seen.states == [False, True]
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) == 2, lines
    assert lines[0].startswith("store lost: cannot reach ClickHouse")
    assert lines[1].startswith("store back after") and "(6 retries)" in lines[1]


def test_a_permanent_error_is_sticky_and_stops_writing() -> None:
    store = Recorder()
    store.fail = [StorageError("insert into edge_minute failed: Code: 16. No such column")]
    w = StoreWriter(store, max_rows=1, retry=FAST)
    raised = 0
    for i in range(20):
        try:
            w.add(ints(1, i))
        except StorageError:
            raised += 1
    with pytest.raises(StorageError, match="No such column"):
        w.close()
    with pytest.raises(StorageError, match="No such column"):
        w.add(ints(1))
    assert store.attempts == 1 and not store.calls  # not retried; nothing after it attempted
    assert raised >= 1  # it surfaced in add() already (the queue is tiny)


def test_retries_are_bounded_by_the_policy() -> None:
    store = Recorder()
    store.fail = [transient() for _ in range(10)]
    w = StoreWriter(store, retry=RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.001))
    w.add(ints(2))
    with pytest.raises(StorageError, match="connection refused"):
        w.flush()
    assert store.attempts == 3
    with pytest.raises(StorageError):
        w.close()


def test_a_lost_store_blocks_the_producer_at_the_bound_then_everything_is_written() -> None:
    store, seen = Recorder(), Counting()
    store.gate.clear()  # the store hangs: nothing is written
    w = StoreWriter(store, max_rows=10, max_pending_rows=30, max_seconds=float("inf"),
                    retry=FAST, observer=seen)
    added = []

    def produce() -> None:
        for i in range(20):
            w.add(ints(10, 10 * i))
            added.append(i)

    t = threading.Thread(target=produce)
    t.start()
    deadline = time.monotonic() + 5
    while len(added) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    stuck = len(added)
    assert t.is_alive() and stuck < 20  # the producer waits …
    assert w.backlog_rows <= 30 + 10  # … with at most the bound plus one batch waiting
    store.gate.set()  # the store is back
    t.join(10)
    w.close()
    got = pa.concat_tables([c[1] for c in store.calls])["x"].to_pylist()
    assert got == list(range(200))  # nothing lost, nothing doubled, in order
    assert seen.wait_seconds > 0 and seen.max_backlog <= 40


def test_add_async_waits_without_blocking_the_loop() -> None:
    store = Recorder()
    store.gate.clear()
    w = StoreWriter(store, max_rows=10, max_pending_rows=10, max_seconds=float("inf"))

    async def run() -> tuple[int, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        t = asyncio.create_task(ticker())
        asyncio.get_running_loop().call_later(0.3, store.gate.set)  # the store is back
        for i in range(3):
            await w.add_async(ints(10, 10 * i))  # the second waits for room
        assert ticks >= 10  # the loop ran while add_async waited
        await w.flush_async()
        t.cancel()
        return ticks, w.backlog_rows

    ticks, backlog = asyncio.run(run())
    assert ticks >= 10 and backlog == 0
    w.close()
    assert pa.concat_tables([c[1] for c in store.calls])["x"].to_pylist() == list(range(30))


def test_stopping_gives_up_on_a_lost_store() -> None:
    store = Recorder()
    store.fail = [transient() for _ in range(1000)]
    w = StoreWriter(store, retry=RetryPolicy(attempts=None, base_delay=5.0, max_delay=5.0))
    w.add(ints(1))
    w.tick()
    w.stopping()  # interrupts the 5 s backoff; one more try, then the error is kept
    with pytest.raises(StorageError, match="connection refused"):
        w.close()
    assert store.attempts <= 3


class FlakyClient:
    """A clickhouse-connect client whose inserts fail as an HTTP 503 while ``down``."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.down = 0

    def insert_arrow(self, *args: Any, **kwargs: Any) -> Any:
        if self.down:
            self.down -= 1
            raise build_http_error(503, None, "Service Unavailable", True,
                                   "http://ch:8123", False)
        return self.client.insert_arrow(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def test_a_503_from_the_driver_is_retried_by_the_writer_only(tmp_path: Path) -> None:
    """Through Store (its translation of driver errors, no retry of its own) into chdb:
    the rows arrive exactly once, read with FINAL."""
    store = open_store(f"chdb://{tmp_path / 'store'}", migrate=True)
    flaky = FlakyClient(store._client)
    store._client = flaky  # type: ignore[assignment]
    seen = Counting()
    try:
        w = StoreWriter(store, max_rows=1000, retry=FAST, observer=seen)
        flaky.down = 4
        for block in range(3):
            w.add(edge_table(500, block=block))
        w.flush()
        flaky.down = 2
        w.add(edge_table(500, block=3))
        w.close()
        assert seen.retries == 6 and seen.states == [False, True, False, True]
        n, flows = store.query_rows("SELECT count(), sum(flows) FROM edge_minute FINAL")[0]
        assert (n, flows) == (2000, 2000)
        assert store.query_rows("SELECT count() FROM edge_minute")[0][0] == 2000  # no doubles
    finally:
        store.close()
