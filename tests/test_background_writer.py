from __future__ import annotations

import threading

import pytest

from pipeline.errors import StorageError
from pipeline.storage.background import BackgroundWriter


class Recorder:
    def __init__(self, fail_on: int | None = None) -> None:
        self.calls: list[tuple[str, object]] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on

    def _rec(self, name: str, arg: object) -> None:
        self.threads.add(threading.current_thread().name)
        if self.fail_on is not None and len(self.calls) == self.fail_on:
            raise StorageError("ClickHouse went away")
        self.calls.append((name, arg))

    def write_edge_minutes(self, t: object) -> None:
        self._rec("edges", t)

    def write_violations(self, e: object) -> None:
        self._rec("violations", e)

    def write_rules(self, e: object) -> None:
        self._rec("rules", e)


def test_writes_happen_in_order_on_another_thread():
    store = Recorder()
    w = BackgroundWriter(store, max_pending=1)
    for i in range(20):
        w.write_edge_minutes(i)
        w.write_violations([i])
    w.write_rules(["r"])
    w.close()
    assert store.calls[:4] == [("edges", 0), ("violations", [0]), ("edges", 1), ("violations", [1])]
    assert store.calls[-1] == ("rules", ["r"]) and len(store.calls) == 41
    assert store.threads == {"segflow-store-writer"}


def test_the_first_error_reaches_the_producer_and_later_writes_are_not_attempted():
    store = Recorder(fail_on=2)
    w = BackgroundWriter(store)
    raised_early = 0
    for i in range(50):
        try:
            w.write_edge_minutes(i)
        except StorageError:
            raised_early += 1  # the error may surface here or at close()
    with pytest.raises(StorageError, match="went away"):
        w.close()
    with pytest.raises(StorageError, match="went away"):
        w.write_rules([])
    assert [c[1] for c in store.calls] == [0, 1]
