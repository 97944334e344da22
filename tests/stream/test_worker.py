"""Streaming workers against the real broker: results equal ``segflow replay`` exactly.

Each test streams the same small estate (66k flows; a 6-day audit then 3 days of enforcement
with attacks) into a raw topic, runs ``segflow worker`` subprocesses on it, and compares
the deduplicated violation and candidate-rule events (read back from their topics) and the
per-edge aggregates (read from the workers' chdb stores) with a replay of the same input.

Two workers cannot share a chdb directory (one process per path), so in the multi-worker
test each worker writes its own store and the test merges the stores' rows with the same
replacing key (edge, minute, source_id, block → highest version) the ClickHouse table
uses: exactly what one shared server would hold. A partition processed by both workers
(before and after a rebalance) therefore counts once, and a lost message would show.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from tests.stream.conftest import Reference
from tests.stream.harness import (
    Topics,
    WorkerProcess,
    commit_ahead,
    committed,
    comparable,
    group_lag,
    merged_totals,
    new_topics,
    produce_lines,
    produce_values,
    read_events,
    read_topic,
    store_rows,
    store_totals,
    wait_caught_up,
    write_config,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def publish_inventory(bootstrap: str, topics: Topics, inventory: Path) -> None:
    from pipeline.config import KafkaSettings
    from pipeline.stream.inventory_topic import publish_inventory as publish

    assert publish(inventory, KafkaSettings(bootstrap=bootstrap), topics.name("inventory")) > 0


def assert_matches_replay(ref: Reference, bootstrap: str, topics: Topics,
                          stores: list[Path]) -> None:
    violations = read_events(bootstrap, topics.name("violations"))
    rules = read_events(bootstrap, topics.name("rules"))
    assert set(violations) == set(ref.violations)
    diffs = {k: _diff(comparable(v), comparable(ref.violations[k]))
             for k, v in violations.items() if comparable(v) != comparable(ref.violations[k])}
    assert not diffs, diffs
    assert rules == ref.rules
    totals = merged_totals(stores)
    assert sum(f for f, _ in totals.values()) == len(ref.lines)
    assert totals == ref.totals


def test_one_worker_equals_replay(kafka_bootstrap: str, reference: Reference,
                                  tmp_path: Path) -> None:
    topics = new_topics(kafka_bootstrap)
    publish_inventory(kafka_bootstrap, topics, reference.inventory)
    messages = produce_lines(kafka_bootstrap, topics.raw, reference.lines, sizes=(1, 50))
    assert messages > 10_000  # mostly single-record messages, some NDJSON of 50
    store = tmp_path / "store"
    cfg = write_config(tmp_path / "w.json", kafka_bootstrap, topics, store=store,
                       app_id=topics.prefix, audit_start=reference.audit_start,
                       audit_days=reference.audit_days, stream={"max_messages": 2000})
    w = WorkerProcess(cfg, tmp_path / "w.log").start()
    try:
        wait_caught_up(kafka_bootstrap, topics.prefix, topics, [w])
    finally:
        assert w.stop() == 0, w.text()[-3000:]
    assert "Traceback" not in w.text()
    assert_matches_replay(reference, kafka_bootstrap, topics, [store])
    assert store_totals(store) == reference.totals  # the same, summed by ClickHouse itself
    # events are keyed by app, deterministic ids; the state topic holds every partition
    recs = read_topic(kafka_bootstrap, topics.name("violations"))
    assert all(orjson.loads(r.value)["src_workload"].encode() == r.key for r in recs)
    states = {r.partition for r in read_topic(kafka_bootstrap, topics.name("state"))}
    assert states == set(range(topics.flows_partitions))


def test_second_worker_joins_mid_stream(kafka_bootstrap: str, reference: Reference,
                                        tmp_path: Path) -> None:
    topics = new_topics(kafka_bootstrap)
    publish_inventory(kafka_bootstrap, topics, reference.inventory)
    half = len(reference.lines) // 2
    produce_lines(kafka_bootstrap, topics.raw, reference.lines[:half], sizes=(1, 50))
    stores = [tmp_path / "store-a", tmp_path / "store-b"]
    workers = []
    for name, store in zip("ab", stores, strict=True):
        cfg = write_config(tmp_path / f"{name}.json", kafka_bootstrap, topics, store=store,
                           app_id=topics.prefix, audit_start=reference.audit_start,
                           audit_days=reference.audit_days, snapshot_every=5,
                           stream={"max_messages": 500})
        workers.append(WorkerProcess(cfg, tmp_path / f"{name}.log"))
    a, b = workers
    try:
        a.start()
        deadline = time.monotonic() + 60
        while (not committed(kafka_bootstrap, topics.prefix, topics.name("flows"))
               and time.monotonic() < deadline):
            time.sleep(0.2)  # until a has snapshotted (and so committed) something
        b.start()  # joins while a is mid-stream: the internal partitions are rebalanced
        three_q = half + half // 2
        produce_lines(kafka_bootstrap, topics.raw, reference.lines[half:three_q], sizes=(50, 1))
        while "restored its snapshot" not in b.text():  # b owns partitions now
            assert time.monotonic() < deadline + 60 and b.running, b.text()[-3000:]
            time.sleep(0.2)
        produce_lines(kafka_bootstrap, topics.raw, reference.lines[three_q:], sizes=(1, 50))
        wait_caught_up(kafka_bootstrap, topics.prefix, topics, workers)
    finally:
        codes = [w.stop() for w in workers]
    assert codes == [0, 0], a.text()[-2000:] + b.text()[-2000:]
    assert all(store_rows(s) for s in stores)  # both workers wrote aggregates
    assert_matches_replay(reference, kafka_bootstrap, topics, stores)


def test_kill_9_then_restart(kafka_bootstrap: str, reference: Reference,
                             tmp_path: Path) -> None:
    topics = new_topics(kafka_bootstrap)
    publish_inventory(kafka_bootstrap, topics, reference.inventory)
    produce_lines(kafka_bootstrap, topics.raw, reference.lines, sizes=(1, 50))
    store = tmp_path / "store"
    cfg = write_config(tmp_path / "w.json", kafka_bootstrap, topics, store=store,
                       app_id=topics.prefix, audit_start=reference.audit_start,
                       audit_days=reference.audit_days, snapshot_every=5,
                       stream={"max_messages": 200})
    w = WorkerProcess(cfg, tmp_path / "w.log").start()
    try:
        deadline = time.monotonic() + 90
        while not committed(kafka_bootstrap, topics.prefix, topics.name("flows")):
            assert time.monotonic() < deadline and w.running, w.text()[-3000:]
            time.sleep(0.05)
        w.kill()  # right after the first snapshots: no flush, no snapshot, no commit
        behind = (group_lag(kafka_bootstrap, f"{topics.prefix}-ingest", topics.raw),
                  group_lag(kafka_bootstrap, topics.prefix, topics.name("flows")))
        assert any(behind), behind  # it really was mid-stream
        # committed offsets are only a hint; the snapshots decide where a partition resumes
        commit_ahead(kafka_bootstrap, topics.prefix, topics.name("flows"))
        w.start()
        wait_caught_up(kafka_bootstrap, topics.prefix, topics, [w])
    finally:
        w.stop()
    assert w.exit_codes[0] == -9 and w.exit_codes[-1] == 0, w.text()[-3000:]
    assert "restored its snapshot" in w.text()
    assert "catching up from its snapshot" in w.text()  # did not trust the bogus commit
    assert_matches_replay(reference, kafka_bootstrap, topics, [store])


def test_malformed_messages_go_to_dead_letter(kafka_bootstrap: str, reference: Reference,
                                              tmp_path: Path) -> None:
    topics = new_topics(kafka_bootstrap, raw_configs={"max.message.bytes": str(4 << 20)})
    good = reference.lines[:400]
    truncated = b"\n".join(good[100:150])[:-30]  # 50-record NDJSON cut inside the last record
    wrong_type = orjson.loads(good[0])
    wrong_type["bytes"] = "lots"
    huge = b'{"pad": "' + b"x" * (2 << 20) + b'"}'
    values = [*good[:100], b"not json at all", truncated, orjson.dumps(wrong_type), huge,
              *good[150:400]]
    port = _free_port()
    store = tmp_path / "store"
    cfg = write_config(tmp_path / "w.json", kafka_bootstrap, topics, store=store,
                       app_id=topics.prefix, audit_start=reference.audit_start,
                       audit_days=reference.audit_days, inventory_file=reference.inventory,
                       metrics_port=port)
    produce_values(kafka_bootstrap, topics.raw, values)
    w = WorkerProcess(cfg, tmp_path / "w.log").start()
    try:
        wait_caught_up(kafka_bootstrap, topics.prefix, topics, [w])
        produce_values(kafka_bootstrap, topics.raw, reference.lines[400:500])  # keeps going
        wait_caught_up(kafka_bootstrap, topics.prefix, topics, [w])
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    finally:
        assert w.stop() == 0, w.text()[-3000:]
    dead = read_topic(kafka_bootstrap, topics.name("dead-letter"))
    reasons = sorted(dict(r.headers)["segflow.reason"].decode() for r in dead)
    assert reasons == ["bad_json", "bad_json", "bad_type", "too_large"]
    by_reason = {dict(r.headers)["segflow.reason"].decode(): r for r in dead}
    assert by_reason["bad_type"].value == orjson.dumps(wrong_type)
    assert dict(by_reason["too_large"].headers)["segflow.offset"] == b"103"
    assert {dict(r.headers)["segflow.topic"] for r in dead} == {topics.raw.encode()}
    # the 49 complete records of the truncated message and everything around it arrived
    flows = sum(r["flows"] for r in store_rows(store))
    assert flows == 100 + 49 + 250 + 100
    assert 'segflow_dead_letter_total{reason="too_large"} 1.0' in metrics
    assert "segflow_consumer_lag" in metrics


def _diff(got: dict[str, object], want: dict[str, object]) -> dict[str, object]:
    return {k: (got.get(k), want.get(k)) for k in set(got) | set(want)
            if got.get(k) != want.get(k)}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
