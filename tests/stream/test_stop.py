"""SIGTERM while a consumer group rebalances: the worker stops promptly, and a restart ends
equal to ``segflow replay`` (nothing lost, nothing doubled).

The rebalance is held open the way a slow or stuck member holds one: a *straggler* joins the
worker's ingest group, then stops polling (its heartbeat thread keeps it a member, but it
never rejoins), and another member joins. The broker then keeps the group in
PreparingRebalance — and the worker's JoinGroup request waiting — until the straggler's
rebalance timeout. Before :mod:`pipeline.stream.leave` the worker's stop waited for that join
to time out (~39 s on the shared broker: aiokafka's 40 s request timeout).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

from tests.stream.conftest import Reference
from tests.stream.harness import (
    WorkerProcess,
    new_topics,
    produce_lines,
    store_totals,
    wait_assigned,
    wait_caught_up,
)
from tests.stream.test_worker import assert_matches_replay, publish_inventory, reference_config

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

STOP_BOUND = 20.0  # generous for a loaded CI machine; the stop took ~39 s before the fix
STRAGGLER_POLL_INTERVAL_MS = 150_000  # how long the straggler can hold the rebalance


def _member(bootstrap: str, topic: str, group: str, **kw: Any) -> KafkaConsumer:
    # aiokafka's default assignor, so the group has a protocol in common
    return KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                         enable_auto_commit=False,
                         partition_assignment_strategy=[RoundRobinPartitionAssignor], **kw)


def test_sigterm_during_a_held_rebalance_stops_promptly_then_equals_replay(
        kafka_bootstrap: str, reference: Reference, tmp_path: Path) -> None:
    topics = new_topics(kafka_bootstrap, raw_partitions=2)
    publish_inventory(kafka_bootstrap, topics, reference.inventory)
    group = f"{topics.prefix}-ingest"
    half = len(reference.lines) // 2
    # every flow in partition 0 (one arrival order, as replay's); partition 1 stays empty, so
    # the straggler and the worker each get one
    produce_lines(kafka_bootstrap, topics.raw, reference.lines[:half], sizes=(1, 50),
                  partition=0)
    store = tmp_path / "store"
    cfg = reference_config(tmp_path / "w.json", kafka_bootstrap, topics, reference, store=store,
                           snapshot_every=5, stream={"max_messages": 300})
    w = WorkerProcess(cfg, tmp_path / "w.log").start()
    straggler = joiner = None
    stop_joiner = threading.Event()
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        wait_assigned(kafka_bootstrap, group, topics.raw, 1, [w], timeout=120)
        straggler = _member(kafka_bootstrap, topics.raw, group, session_timeout_ms=10_000,
                            heartbeat_interval_ms=1_000,
                            max_poll_interval_ms=STRAGGLER_POLL_INTERVAL_MS)
        deadline = time.monotonic() + 60
        while not straggler.assignment():  # joined; from now on it never polls again
            assert time.monotonic() < deadline, "the straggler did not join"
            straggler.poll(timeout_ms=200, max_records=1)
        produce_lines(kafka_bootstrap, topics.raw, reference.lines[half:], sizes=(50, 1),
                      partition=0)
        revoked = w.text().count("Revoking previously assigned partitions")

        def join() -> None:
            c = _member(kafka_bootstrap, topics.raw, group)
            while not stop_joiner.is_set():
                c.poll(timeout_ms=200, max_records=1)
            c.close()

        joiner = threading.Thread(target=join, daemon=True)
        joiner.start()
        # the worker has revoked its raw partitions and waits in its JoinGroup
        deadline = time.monotonic() + 60
        while (admin.describe_groups([group])[group]["group_state"] != "PreparingRebalance"
               or w.text().count("Revoking previously assigned partitions") <= revoked):
            assert time.monotonic() < deadline and w.running, w.text()[-3000:]
            time.sleep(0.1)
        time.sleep(1.0)
        assert admin.describe_groups([group])[group]["group_state"] == "PreparingRebalance"

        t0 = time.monotonic()
        code = w.stop(timeout=STOP_BOUND)
        took = time.monotonic() - t0
        assert code == 0, w.text()[-3000:]
        assert f"stopping in a rebalance of group {group}" in w.text()
        print(f"\nstopped in {took:.1f} s during a held rebalance")
    finally:
        stop_joiner.set()
        if straggler is not None:
            straggler.close()  # leaves: the group can settle without it
        if joiner is not None:
            joiner.join(30)
        admin.close()
        if w.running:
            w.stop()
    w.start()  # resumes from what the stop committed and snapshotted
    try:
        wait_caught_up(kafka_bootstrap, topics.prefix, topics, [w], timeout=180)
    finally:
        assert w.stop() == 0, w.text()[-3000:]
    assert "Traceback" not in w.text()
    assert_matches_replay(reference, kafka_bootstrap, topics, [store])
    assert store_totals(store) == reference.totals  # summed by ClickHouse: nothing doubled
