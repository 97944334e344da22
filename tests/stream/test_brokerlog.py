"""Library log rate limit and the broker state lines, without a broker (issue 10 item 13)."""

from __future__ import annotations

import asyncio
import itertools
import logging

import pytest

from pipeline.stream.brokerlog import BrokerWatch, LibraryLogLimiter


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _record(name: str, msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_each_library_message_once_per_window_with_the_count_held_back() -> None:
    clock = Clock()
    limiter = LibraryLogLimiter(every=30, clock=clock)
    heard: list[str] = []
    limiter.subscribe(heard.append)
    shown = []
    for i in range(300):  # 10 s of an outage at aiokafka's pace, two nodes
        clock.t += 1 / 30
        rec = _record("aiokafka", "Unable connect to node with id %s: %s", i % 2, "refused")
        if limiter.filter(rec):
            shown.append(rec.getMessage())
    assert shown == ["Unable connect to node with id 0: refused"]
    assert len(heard) == 300 and limiter.suppressed == 299
    clock.t += 25
    rec = _record("aiokafka", "Unable connect to node with id %s: %s", 1, "refused")
    assert limiter.filter(rec)
    assert rec.getMessage().endswith("[and 299 more like this in the last 35 s, not shown]")
    # another template, another logger, and segflow's own lines are not held back by it
    assert limiter.filter(_record("aiokafka.consumer.fetcher", "Failed fetch messages"))
    for _ in range(5):
        assert limiter.filter(_record("pipeline.stream.worker", "ours"))
    assert not [m for m in heard[300:] if "ours" in m]


def test_the_watch_says_lost_once_and_back_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    calls: list[float] = []

    async def probe() -> None:
        calls.append(clock.t)
        if len(calls) <= 6:  # the broker answers the 7th probe
            raise ConnectionError("Connect call failed")

    held = iter(range(0, 10_000, 500))
    changes: list[bool] = []
    watch = BrokerWatch("k:9092", probe, on_change=changes.append, suppressed=lambda: next(held),
                        probe_every=2, idle_every=15, clock=clock)

    async def run() -> None:
        for _ in range(60):  # 30 s of ticks, every 0.5 s
            clock.t += 0.5
            if 1003 < clock.t < 1020:  # the libraries complain until shortly after it is back
                watch.suspect("Unable connect to node with id 1")
            await watch.tick()

    with caplog.at_level(logging.INFO, logger="pipeline.stream.brokerlog"):
        asyncio.run(run())
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("lost the connection to Kafka at k:9092 (Unable connect")
    assert lines[1].startswith("Kafka at k:9092 is back after 12 s (500 library log lines")
    assert changes == [False, True]
    # while lost it probes every 2 s, not on every complaint; once back, every 15 s
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert gaps[:5] == [2.0] * 5 and gaps[-1] <= 15
