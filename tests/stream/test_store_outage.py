"""A slow store, then a lost one, under a running worker (issue 10 item 16).

The worker's store driver is made slow and then fails every insert as an HTTP 503 (the
exception clickhouse-connect raises when the server behind it is stopped;
:mod:`tests.stream.faulty_store`), while the estate streams in. The worker must back off,
stop taking internal messages once its bounded store queue is full (the raw topic is still
ingested: the internal topic is the buffer), resume when the store is back, log the loss and
the return once each, and end with exactly what ``segflow replay`` stores — read with FINAL
— and every event, none lost and none doubled.
"""

from __future__ import annotations

import re
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from tests.stream.conftest import Reference
from tests.stream.harness import (
    WorkerProcess,
    group_lag,
    new_topics,
    produce_lines,
    read_events,
    store_totals,
    wait_caught_up,
)
from tests.stream.test_worker import assert_matches_replay, publish_inventory, reference_config

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

MAX_ROWS, MAX_PENDING = 2_000, 6_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    """The worker's metrics, ``name{labels}`` → value (labels as exported); {} until the
    worker serves them."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                      timeout=5).read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def stateful_in(metrics: dict[str, float]) -> float:
    return sum(v for k, v in metrics.items()
               if k.startswith("segflow_records_in_total{") and 'stage="stateful"' in k)


def wait_for(what: str, ok: object, w: WorkerProcess, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():  # type: ignore[operator]
        assert w.running, w.text()[-3000:]
        assert time.monotonic() < deadline, f"{what}:\n{w.text()[-3000:]}"
        time.sleep(0.3)


@pytest.mark.parametrize("in_process", [False, True], ids=["flows-topic", "in-process"])
def test_slow_then_lost_store_means_back_pressure_then_nothing_lost(
        kafka_bootstrap: str, reference: Reference, tmp_path: Path, in_process: bool) -> None:
    """Through the flows topic the internal topic is the buffer: the ingest keeps reading
    the raw topic during the outage. With in-process routing (``role = "all"``, the default)
    the raw topic is: the ingest's hand-over waits for the full store queue, and the raw
    offsets stay uncommitted until snapshots cover the batches."""
    topics = new_topics(kafka_bootstrap)
    publish_inventory(kafka_bootstrap, topics, reference.inventory)
    store, control, port = tmp_path / "store", tmp_path / "store-mode", free_port()
    control.write_text("slow 0.5")  # an overloaded store from the start
    cfg = reference_config(
        tmp_path / "w.json", kafka_bootstrap, topics, reference, store=store,
        metrics_port=port, snapshot_every=10_000,
        stream={"max_messages": 1000, "snapshot_idle_seconds": 5.0,
                "in_process": in_process},
        writer={"max_rows": MAX_ROWS, "max_pending_rows": MAX_PENDING, "max_seconds": 0.5,
                "retry_base_delay": 0.05, "retry_max_delay": 0.5})
    w = WorkerProcess(cfg, tmp_path / "w.log",
                      entry=("-m", "tests.stream.faulty_store", str(control)))
    half = len(reference.lines) // 2
    try:
        w.start()
        produce_lines(kafka_bootstrap, topics.raw, reference.lines[:half], sizes=(1, 50))
        # slow store: the stage is paused by the full queue, the store is never "lost"
        wait_for("back-pressure from the slow store",
                 lambda: scrape(port).get("segflow_storage_wait_seconds_total", 0) > 0, w)
        wait_caught_up(kafka_bootstrap, topics.prefix, topics, [w], timeout=180)
        assert "store lost" not in w.text()

        control.write_text("down")
        produce_lines(kafka_bootstrap, topics.raw, reference.lines[half:], sizes=(50, 1))
        wait_for("the store lost", lambda: scrape(port).get("segflow_storage_up") == 0, w)
        if not in_process:
            wait_for("ingest caught up during the outage", lambda: group_lag(
                kafka_bootstrap, f"{topics.prefix}-ingest", topics.raw) == 0, w)
        time.sleep(3)  # whatever the stage could still take, it has taken
        before = scrape(port)
        time.sleep(3)
        after = scrape(port)
        assert stateful_in(after) == stateful_in(before) < len(reference.lines)  # paused
        if in_process:  # the raw topic is the buffer: not committed past what is stored
            assert group_lag(kafka_bootstrap, f"{topics.prefix}-ingest", topics.raw)
            assert "handed over in memory" in w.text()
        else:
            assert group_lag(kafka_bootstrap, topics.prefix, topics.name("flows"))
        assert after["segflow_storage_backlog_rows"] <= MAX_PENDING + MAX_ROWS + 8_000
        retries = sum(v for k, v in after.items()
                      if k.startswith("segflow_storage_retries_total{"))
        assert retries >= 5  # backed off and tried again, many times …
        assert w.text().count("store lost") == 1  # … logged once

        control.write_text("up")
        wait_caught_up(kafka_bootstrap, topics.prefix, topics, [w], timeout=180)
        final = scrape(port)
    finally:
        code = w.stop()
    log = w.text()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log
    assert log.count("store lost") == 1 and log.count("store back after") == 1, log[-3000:]
    assert final["segflow_storage_up"] == 1 and final["segflow_storage_backlog_rows"] == 0
    assert stateful_in(final) == len(reference.lines)

    assert_matches_replay(reference, kafka_bootstrap, topics, [store])  # events and FINAL totals
    assert store_totals(store) == reference.totals
    from pipeline.storage import open_store

    with open_store(f"chdb://{store}") as s:
        raw, final_rows, flows = s.query_rows(
            "SELECT (SELECT count() FROM edge_minute), count(), sum(flows) "
            "FROM edge_minute FINAL")[0]
        stored_ids = {r[0] for r in s.query_rows("SELECT id FROM violations FINAL")}
    events = read_events(kafka_bootstrap, topics.name("violations"))
    assert stored_ids == set(events) == set(reference.violations)
    print(f"\nstore outage: {len(reference.lines):,} flows in, {int(flows):,} flows stored "
          f"(FINAL), {len(stored_ids)} violations, {int(raw) - int(final_rows)} duplicate rows "
          f"collapsed by FINAL, {retries:.0f} retries, "
          f"{final['segflow_storage_wait_seconds_total']:.1f} s paused by a full queue")
