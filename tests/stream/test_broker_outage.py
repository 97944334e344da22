"""A broker outage in the worker's log: a few lines, one "lost" and one "back" (issue 10 item
13), and nothing lost or doubled across it. Uses its own broker, stopped and restarted."""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.stream.conftest import Reference
from tests.stream.harness import WorkerProcess, new_topics, produce_lines, wait_caught_up
from tests.stream.own_broker import OwnBroker
from tests.stream.test_worker import assert_matches_replay, publish_inventory, reference_config

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

OUTAGE_SECONDS = 20
LOST = "lost the connection to Kafka"
BACK = re.compile(r"Kafka at \S+ is back after \d+ s \((\d+) library log lines about it")
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _lines_between(text: str, t0: float, t1: float) -> list[str]:
    out = []
    for line in text.splitlines():
        m = _STAMP.match(line)
        if m:
            t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if t0 <= t <= t1:
                out.append(line)
    return out


def _wait_for(w: WorkerProcess, pattern: re.Pattern[str] | str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = w.text()
        if (pattern.search(text) if isinstance(pattern, re.Pattern) else pattern in text):
            return text
        assert w.running, w.text()[-3000:]
        time.sleep(0.5)
    raise AssertionError(f"no {pattern!r} in the worker log within {timeout} s:\n"
                         f"{w.text()[-3000:]}")


def test_broker_outage_is_two_lines_of_ours_and_few_of_the_libraries(
        own_broker: OwnBroker, reference: Reference, tmp_path: Path) -> None:
    bootstrap = own_broker.bootstrap
    topics = new_topics(bootstrap)
    publish_inventory(bootstrap, topics, reference.inventory)
    half = len(reference.lines) // 2
    produce_lines(bootstrap, topics.raw, reference.lines[:half])
    store = tmp_path / "store"
    cfg = reference_config(tmp_path / "w.json", bootstrap, topics, reference, store=store)
    w = WorkerProcess(cfg, tmp_path / "w.log").start()  # library logs at INFO: the worst case
    try:
        wait_caught_up(bootstrap, topics.prefix, topics, [w])
        t_stop = time.time()
        own_broker.stop()
        time.sleep(OUTAGE_SECONDS)
        own_broker.start()
        text = _wait_for(w, BACK, timeout=90)
        t_back = time.time()
        produce_lines(bootstrap, topics.raw, reference.lines[half:])
        wait_caught_up(bootstrap, topics.prefix, topics, [w], timeout=180)
    finally:
        assert w.stop() == 0, w.text()[-3000:]
    text = w.text()
    assert "Traceback" not in text
    during = _lines_between(text, t_stop, t_back)
    seconds = t_back - t_stop
    # before the limiter: ~190 lines/s (5,753 lines in a 30 s outage)
    assert len(during) < max(40, seconds), "\n".join(during)
    lost = [line for line in text.splitlines() if LOST in line]
    back = [line for line in text.splitlines() if BACK.search(line)]
    assert len(lost) == 1 and len(back) == 1, (lost, back)
    assert text.index(lost[0]) < text.index(back[0])
    assert "WARNING pipeline.stream.brokerlog" in lost[0]
    held = BACK.search(back[0])
    assert held is not None and int(held.group(1)) > 10 * len(during)  # what was held back
    assert_matches_replay(reference, bootstrap, topics, [store])
