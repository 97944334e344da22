"""Soak (issue 10 item 17): a steady stream into two workers while one of them is killed with
``kill -9`` every ``SEGFLOW_SOAK_SECONDS / 4`` seconds and the broker (our own) is restarted
once; at the end the totals equal replay: per-edge flows and bytes with FINAL, every event,
no flow doubled or lost. Runs in ``make test`` (about 2 minutes with the default 60 s of
stream); ``SEGFLOW_SOAK_SECONDS=600`` makes a longer one."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from tests.stream.conftest import Reference
from tests.stream.harness import (
    WorkerProcess,
    merged_totals,
    new_topics,
    produce_lines,
    read_events,
    read_topic,
    wait_caught_up,
)
from tests.stream.own_broker import OwnBroker
from tests.stream.test_worker import assert_matches_replay, publish_inventory, reference_config

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.soak]

SECONDS = float(os.environ.get("SEGFLOW_SOAK_SECONDS", "60"))


class SteadyProducer(threading.Thread):
    """Produces the lines in equal chunks over ``seconds``; holds (as a collector buffers)
    while ``hold`` is set, so no record is sent twice or lost across the broker restart."""

    def __init__(self, bootstrap: str, topic: str, lines: list[bytes], seconds: float) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.lines = bootstrap, topic, lines
        self.ticks = max(1, int(seconds / 0.5))
        self.hold = threading.Event()
        self.idle = threading.Event()
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            per = -(-len(self.lines) // self.ticks)
            for lo in range(0, len(self.lines), per):
                while self.hold.is_set():
                    self.idle.set()
                    time.sleep(0.1)
                self.idle.clear()
                chunk = self.lines[lo:lo + per]
                produce_lines(self.bootstrap, self.topic, chunk, sizes=(1, 50), block=200)
                self.sent += len(chunk)
                time.sleep(0.5)
            self.idle.set()
        except BaseException as exc:  # reported by the test
            self.error = exc


def test_soak_kill_9_and_broker_restart_end_equal_to_replay(
        own_broker: OwnBroker, reference: Reference, tmp_path: Path) -> None:
    bootstrap = own_broker.bootstrap
    topics = new_topics(bootstrap)
    publish_inventory(bootstrap, topics, reference.inventory)
    workers, stores = [], []
    for name in ("a", "b"):
        store = tmp_path / f"store-{name}"
        cfg = reference_config(tmp_path / f"{name}.json", bootstrap, topics, reference,
                               store=store, snapshot_every=10, stream={"max_messages": 500})
        workers.append(WorkerProcess(cfg, tmp_path / f"{name}.log").start())
        stores.append(store)
    producer = SteadyProducer(bootstrap, topics.raw, reference.lines, SECONDS)
    kills = restarts = 0  # kill -9 at 1/4, the broker restart then a kill at 2/4, kill at 3/4
    try:
        producer.start()
        t0 = time.monotonic()
        for step in range(1, 4):
            while time.monotonic() - t0 < step * SECONDS / 4:
                assert all(w.running for w in workers), [w.text()[-2000:] for w in workers]
                time.sleep(0.5)
            if step == 2:  # running workers ride it out; a worker starting needs a broker
                producer.hold.set()
                assert producer.idle.wait(60)
                own_broker.stop()
                time.sleep(5)
                own_broker.start()
                restarts += 1
                producer.hold.clear()
            victim = workers[step % 2]
            victim.kill()
            kills += 1
            time.sleep(2)
            victim.start()
        producer.join(timeout=SECONDS * 3 + 120)
        assert not producer.is_alive() and producer.error is None, producer.error
        wait_caught_up(bootstrap, topics.prefix, topics, workers, timeout=300)
    finally:
        # a SIGTERM that lands in a consumer-group rebalance (after kill -9s and a broker
        # restart) waits for the rebalance to finish: allow for it on a loaded machine
        codes = [w.stop(timeout=90.0) for w in workers]
    assert codes == [0, 0], [w.text()[-3000:] for w in workers]
    assert all("Traceback" not in w.text() for w in workers)
    assert kills == 3 and restarts == 1 and producer.sent == len(reference.lines)
    assert_matches_replay(reference, bootstrap, topics, stores)
    totals = merged_totals(stores)
    stored = sum(f for f, _ in totals.values())
    raw_events = read_topic(bootstrap, topics.name("violations"))
    unique = read_events(bootstrap, topics.name("violations"))
    counts = {"flows_in": len(reference.lines), "flows_stored_final": stored,
              "duplicate_flows": stored - len(reference.lines), "violations": len(unique),
              "violation_messages": len(raw_events), "kills": kills,
              "broker_restarts": restarts, "stream_seconds": SECONDS}
    print("soak:", json.dumps(counts))
    assert counts["duplicate_flows"] == 0
