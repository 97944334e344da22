"""Helpers for the streaming tests: worker subprocesses, topics, read-back and the replay
reference. Everything talks to the real broker; nothing about Kafka is mocked."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from pipeline.core.records import EDGE_MINUTE
from pipeline.stream.outputs import latest_by_id

REPO_ROOT = Path(__file__).resolve().parents[2]
# edge_minute is a ReplacingMergeTree: rows with equal ORDER BY keys replace each other; the
# edge is that key without the minute and the input block (pipeline/core/records.py)
REPLACING_KEY = EDGE_MINUTE.order_by
EDGE = tuple(c for c in REPLACING_KEY if c not in ("minute", "source_id", "block"))

Totals = dict[tuple[Any, ...], tuple[int, int]]  # edge → (flows, bytes)


@dataclass
class Topics:
    """One test's topic names (the raw one created up front, the rest by the worker)."""

    raw: str
    prefix: str
    flows_partitions: int = 4

    def name(self, what: str) -> str:
        return f"{self.prefix}-{what}"

    def settings(self, fmt: str = "canonical") -> dict[str, Any]:
        return {"raw": {self.raw: fmt}, "flows": self.name("flows"),
                "state": self.name("state"), "inventory": self.name("inventory"),
                "dead_letter": self.name("dead-letter"), "violations": self.name("violations"),
                "candidate_rules": self.name("rules"), "control": self.name("control"),
                "incidents": self.name("incidents"),
                "flows_partitions": self.flows_partitions}


def new_topics(bootstrap: str, *, raw_partitions: int = 1, flows_partitions: int = 4,
               raw_configs: dict[str, str] | None = None) -> Topics:
    from tests.kafka_broker import new_topic

    raw = new_topic(bootstrap, raw_partitions, prefix="raw", configs=raw_configs)
    return Topics(raw, f"sf-{uuid.uuid4().hex[:10]}", flows_partitions)


def write_config(path: Path, bootstrap: str, topics: Topics, *, store: Path, app_id: str,
                 audit_start: float | None, audit_days: float,
                 inventory_file: Path | None = None,
                 metrics_port: int = 0, stream: dict[str, Any] | None = None,
                 writer: dict[str, Any] | None = None,
                 snapshot_every: int = 20, role: str = "all") -> Path:
    cfg: dict[str, Any] = {
        "kafka": {"bootstrap": bootstrap, "session_timeout": 6.0, "connect_timeout": 10.0},
        "topics": topics.settings(),
        "core": {"audit_days": audit_days,
                 **({} if audit_start is None else {"audit_start": audit_start})},
        "writer": {"max_rows": 50_000, "max_seconds": 1.0, **(writer or {})},
        "stream": {"snapshot_idle_seconds": 0.5, "poll_timeout_ms": 100,
                   "snapshot_every_messages": snapshot_every, **(stream or {})},
        "store": f"chdb://{store}",
        "app_id": app_id,
        "metrics_port": metrics_port,
        "role": role,
    }
    if inventory_file is not None:
        cfg["inventory_file"] = str(inventory_file)
    path.write_text(json.dumps(cfg))
    return path


@dataclass
class WorkerProcess:
    """``segflow worker --config`` as a subprocess (stdout+stderr to a log file)."""

    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    exit_codes: list[int] = field(default_factory=list)
    entry: tuple[str, ...] = ("-m", "pipeline.commands.cli")  # what runs `worker --config`

    def start(self) -> WorkerProcess:
        env = {"SEGFLOW_LIB_LOG_LEVEL": "INFO", **os.environ, "SEGFLOW_LOG_LEVEL": "INFO",
               "PYTHONUNBUFFERED": "1"}
        env.pop("SEGFLOW_DEBUG", None)
        fh = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, *self.entry, "worker", "--config", str(self.config)],
            cwd=REPO_ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env)
        fh.close()
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()  # never leave a worker behind
            raise AssertionError(f"worker ignored SIGTERM for {timeout} s:\n"
                                 f"{self.text()[-3000:]}") from None
        self.exit_codes.append(code)
        return code

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: no snapshot, no commit, nothing flushed
        self.exit_codes.append(self.proc.wait(10))

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def produce_lines(bootstrap: str, topic: str, lines: Sequence[bytes], *,
                  sizes: Sequence[int] = (1, 50), block: int = 1000,
                  partition: int | None = None) -> int:
    """Produce ``lines`` in order (to ``partition`` if given); blocks of ``block`` lines
    alternate between message sizes (1 = one record per message, 50 = NDJSON of 50).
    Returns the number of messages."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                             batch_size=1 << 20, max_request_size=8 << 20)
    messages = 0
    for b, lo in enumerate(range(0, len(lines), block)):
        size = sizes[b % len(sizes)]
        chunk = lines[lo:lo + block]
        for i in range(0, len(chunk), size):
            part = chunk[i:i + size]
            producer.send(topic, value=part[0] if len(part) == 1 else b"\n".join(part),
                          partition=partition)
            messages += 1
    producer.flush()
    producer.close()
    return messages


def produce_values(bootstrap: str, topic: str, values: Iterable[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                             max_request_size=8 << 20)
    for v in values:
        producer.send(topic, value=v)
    producer.flush()
    producer.close()


def _retrying(fn: Any, *args: Any, timeout: float = 30.0) -> Any:
    """Call ``fn`` again while the broker answers with a retriable error (a fresh broker has
    no group coordinator until ``__consumer_offsets`` exists)."""
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn(*args)
        except KafkaError as exc:
            if not getattr(exc, "retriable", False) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def group_lag(bootstrap: str, group: str, topic: str) -> int | None:
    """Messages of ``topic`` not yet committed by ``group`` (None: nothing committed yet)."""
    return _retrying(_group_lag, bootstrap, group, topic)


def _group_lag(bootstrap: str, group: str, topic: str) -> int | None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        committed = admin.list_group_offsets(group).get(group, {})
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        if not tps:
            return None
        ends = consumer.end_offsets(tps)
        if not any(tp in committed for tp in tps):
            return None if any(ends.values()) else 0
        return sum(ends[tp] - (committed[tp].offset if tp in committed else 0) for tp in tps)
    finally:
        consumer.close()
        admin.close()


def committed(bootstrap: str, group: str, topic: str) -> int:
    """Sum of ``group``'s committed offsets on ``topic`` (0 when nothing is committed)."""
    return int(_retrying(_committed, bootstrap, group, topic))


def _committed(bootstrap: str, group: str, topic: str) -> int:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
        return sum(o.offset for tp, o in offsets.items() if tp.topic == topic and o.offset > 0)
    finally:
        admin.close()


def commit_ahead(bootstrap: str, group: str, topic: str, timeout: float = 30.0) -> None:
    """Once ``group`` has no live member, move its committed offsets on ``topic`` to the end
    — as a misbehaving member could — so a restarted worker must ignore them."""
    from kafka.structs import OffsetAndMetadata

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        deadline = time.monotonic() + timeout
        while admin.describe_groups([group])[group]["group_state"] != "Empty":
            assert time.monotonic() < deadline, f"group {group} still has members"
            time.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = consumer.end_offsets(tps)
        admin.alter_group_offsets(group, {tp: OffsetAndMetadata(ends[tp], "", -1) for tp in tps})
    finally:
        consumer.close()
        admin.close()


def wait_assigned(bootstrap: str, group: str, topic: str, members: int,
                  workers: Sequence[WorkerProcess], timeout: float = 60.0) -> list[list[int]]:
    """Until ``group`` is stable with ``members`` members, each holding partitions of
    ``topic``; returns each member's partitions (sorted)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        deadline = time.monotonic() + timeout
        while True:
            for w in workers:
                assert w.running, f"worker exited:\n{w.text()[-4000:]}"
            g = _retrying(admin.describe_groups, [group])[group]
            got = sorted(sorted(p for a in m["member_assignment"]["assigned_partitions"]
                                if a["topic"] == topic for p in a["partitions"])
                         for m in g["members"] if m.get("member_assignment"))
            if g["group_state"] == "Stable" and len(got) == members and all(got):
                return got
            assert time.monotonic() < deadline, f"group {group}: {g['group_state']}, {got}"
            time.sleep(0.2)
    finally:
        admin.close()


def wait_caught_up(bootstrap: str, app_id: str, topics: Topics,
                   workers: Sequence[WorkerProcess], *, timeout: float = 120.0) -> None:
    """Until the ingest and stateful groups have committed everything (twice in a row)."""
    deadline = time.monotonic() + timeout
    streak = 0
    while time.monotonic() < deadline:
        for w in workers:
            if w.proc is not None and w.proc.poll() is not None:
                raise AssertionError(f"worker exited with {w.proc.returncode}:\n{w.text()[-4000:]}")
        lags = (group_lag(bootstrap, f"{app_id}-ingest", topics.raw),
                group_lag(bootstrap, app_id, topics.name("flows")))
        streak = streak + 1 if lags == (0, 0) else 0
        if streak >= 2:
            return
        time.sleep(0.7)
    logs = "\n".join(w.text()[-3000:] for w in workers)
    raise AssertionError(f"workers did not catch up within {timeout} s (lags {lags}):\n{logs}")


def read_topic(bootstrap: str, topic: str, timeout: float = 30.0) -> list[Any]:
    """Every record of ``topic``, partition by partition, from the beginning."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             max_partition_fetch_bytes=16 << 20, fetch_max_bytes=64 << 20)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise AssertionError(f"reading {topic} timed out")
            for recs in consumer.poll(timeout_ms=500).values():
                out.extend(recs)
        return out
    finally:
        consumer.close()


def read_events(bootstrap: str, topic: str) -> dict[str, dict[str, Any]]:
    """A topic's events deduplicated the way consumers must: per id, highest version."""
    return latest_by_id(orjson.loads(r.value) for r in read_topic(bootstrap, topic))


def store_rows(path: Path) -> list[dict[str, Any]]:
    """edge_minute rows of one chdb store, read with FINAL."""
    from pipeline.storage import open_store

    cols = ", ".join((*REPLACING_KEY, "flows", "bytes", "version"))
    with open_store(f"chdb://{path}") as s:
        return s.query_arrow(f"SELECT {cols} FROM edge_minute FINAL").to_pylist()


def store_totals(path: Path) -> Totals:
    """Per-edge (flows, bytes) as ClickHouse computes them: sum over edge_minute FINAL."""
    from pipeline.storage import open_store

    edge = ", ".join(EDGE)
    with open_store(f"chdb://{path}") as s:
        rows = s.query_rows(f"SELECT {edge}, sum(flows), sum(bytes) FROM edge_minute FINAL "
                            f"GROUP BY {edge}")
    return {tuple(r[:len(EDGE)]): (int(r[len(EDGE)]), int(r[len(EDGE) + 1])) for r in rows}


def merged_totals(paths: Iterable[Path]) -> Totals:
    """Per-edge (flows, bytes) over several stores, merged exactly as one ReplacingMergeTree
    table would merge them: per (edge, minute, source_id, block) the highest version wins."""
    best: dict[tuple[Any, ...], dict[str, Any]] = {}
    for path in paths:
        for row in store_rows(path):
            key = tuple(row[c] for c in REPLACING_KEY)
            old = best.get(key)
            if old is None or row["version"] >= old["version"]:
                best[key] = row
    return _totals(best.values())


def totals_of(tables: Iterable[pa.Table]) -> Totals:
    return _totals(r for t in tables for r in t.select([*EDGE, "flows", "bytes"]).to_pylist())


def _totals(rows: Iterable[dict[str, Any]]) -> Totals:
    flows: collections.Counter[tuple[Any, ...]] = collections.Counter()
    nbytes: collections.Counter[tuple[Any, ...]] = collections.Counter()
    for r in rows:
        e = tuple(r[c] for c in EDGE)
        flows[e] += int(r["flows"])
        nbytes[e] += int(r["bytes"])
    return {e: (flows[e], nbytes[e]) for e in flows}


# Fields that may legitimately differ between replay and partitioned workers (none today:
# the core is independent of batch boundaries, tests/core/test_pipeline.py checks that).
_BATCH_DEPENDENT: dict[str, tuple[set[str], set[str]]] = {}


def comparable(event: dict[str, Any]) -> dict[str, Any]:
    """An event without the fields that legitimately differ between one replay process and
    partitioned workers (none today, docs/streaming.md "What equals replay"): ids, types,
    counts, first/last seen, address and port samples, volume hour bytes and thresholds,
    versions and the known clients of a service (over every partition) must match exactly.
    """
    e = dict(event)
    top, seen = _BATCH_DEPENDENT.get(str(e.get("type")), (set(), set()))
    for k in top:
        e.pop(k, None)
    if isinstance(e.get("evidence"), dict) and seen:
        ev = dict(e["evidence"])
        ev["seen"] = {k: v for k, v in ev.get("seen", {}).items() if k not in seen}
        e["evidence"] = ev
    return e


__all__ = [
    "REPO_ROOT",
    "Topics",
    "WorkerProcess",
    "commit_ahead",
    "committed",
    "comparable",
    "group_lag",
    "merged_totals",
    "new_topics",
    "produce_lines",
    "produce_values",
    "read_events",
    "read_topic",
    "store_rows",
    "store_totals",
    "totals_of",
    "wait_assigned",
    "wait_caught_up",
    "write_config",
]
