"""The audit ends on the partition's watermark, not on its first post-audit flow.

Two raw partitions feed one internal partition; raw partition A is read 1.5 days ahead of
B, so A's post-audit flows arrive while B still has audit flows to deliver. The partition
holds A's post-audit flows until the watermark (min over A and B) passes the audit end, so
B's audit flows are learned and the results equal one ``Pipeline`` over the time-sorted
union (the replay reference) — also across a snapshot/restore while flows are held.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest

from pipeline.core.baseline import DAY, EDGE_ARRAYS
from pipeline.core.pipeline import Pipeline
from pipeline.core.settings import CoreSettings
from pipeline.stream import partition as partition_mod
from pipeline.stream.flowbatch import Identity, decode, encode
from pipeline.stream.outputs import latest_by_id
from pipeline.stream.partition import PartitionState
from pipeline.stream.routing import Router
from tests.conftest import T0, flow, flows_table, make_inventory

A, B = "raw/0", "raw/1"
DB, API = "10.0.0.10", "10.0.0.11"
A1, A2, B1, B2 = "10.0.1.1", "10.0.1.2", "10.0.2.1", "10.0.2.2"
SETTINGS = CoreSettings(audit_days=2, audit_start=T0)
END = T0 + 2 * DAY
LAG = 1.5 * DAY  # how far raw partition A is read ahead of B
CHUNK = 3 * 3600.0  # flows per raw chunk (one internal message, or two merged)
B1_MORE, B2_MORE = ("10.0.2.7", "10.0.2.8"), ("10.0.2.3", "10.0.2.4", "10.0.2.5")
INVENTORY = [{"ip": ip, "app": app, "namespace": "n"} for ip, app in (
    (DB, "db"), (API, "api"), (A1, "a1"), (A2, "a2"), (B1, "b1"), (B2, "b2"),
    *((ip, "b1") for ip in B1_MORE), *((ip, "b2") for ip in B2_MORE))]


def traffic() -> dict[str, list[dict[str, Any]]]:
    """Four days; clients a* report through A, b* through B. b1 → api:9200 is only used in
    the audit's last half day and afterwards; attacks follow the audit on both sides."""
    a: list[dict[str, Any]] = []
    b: list[dict[str, Any]] = []
    for i in range(int(4 * DAY // 1200)):
        t, port = T0 + i * 1200, 40_000 + i % 20_000
        a.append(flow(t + 1, A1, DB, port, 5432, nbytes=5000))
        a.append(flow(t + 2, A2, API, port, 443, nbytes=3000))
        b.append(flow(t + 3, B1, DB, port, 5432, nbytes=4000))
        b.append(flow(t + 4, B2, API, port, 443, nbytes=2000))
        if t >= END - DAY / 2:
            b.append(flow(t + 5, B1, API, port, 9200, nbytes=7000))
    a += [flow(END + 3 * 3600 + k * 60, A1, API, 50_000 + k, 22) for k in range(3)]
    a += [flow(END + 10 * 3600 + k, A2, DB, 51_000 + k, 5432) for k in range(2)]
    b += [flow(END + 5 * 3600 + k * 30, B1, DB, 52_000 + k, 6379) for k in range(4)]
    b += [flow(END + DAY + 2 * 3600 + k * 10, B2, DB, 53_000, 100 + k) for k in range(30)]
    return {s: sorted(r, key=lambda r: r["start"]) for s, r in (("A", a), ("B", b))}


def straddling() -> dict[str, list[dict[str, Any]]]:
    """:func:`traffic` plus post-audit attacks of B whose windows straddle two of B's 50 min
    chunks (so two messages, with A's flows 1.5 days ahead in between): a scan by b2 from four
    addresses, and a new port of b1 from three."""
    out = traffic()
    cut = T0 + 63 * 3000.0  # a chunk boundary half way into an hour window (END + 4.5 h)
    b2 = (B2, *B2_MORE)
    out["B"] += [flow(cut - 300 + 20 * k, b2[k % 4], DB, 54_000 + k, 100 + k) for k in range(30)]
    cut = T0 + 69 * 3000.0  # END + 9.5 h
    b1 = (B1, *B1_MORE)
    out["B"] += [flow(cut - 600 + 100 * k, b1[k % 3], API, 55_000 + k, 8080) for k in range(12)]
    out["B"].sort(key=lambda r: r["start"])
    return out


def messages(traffic_of: Callable[[], dict[str, list[dict[str, Any]]]] = traffic,
             chunk: float = CHUNK, *, identity: bool = False) -> list[bytes]:
    """The internal messages: raw chunks in arrival order (A ``LAG`` ahead of B), every third
    message two chunks merged, each carrying the ingest's newest start per raw partition
    (and with ``identity`` the router's enrichment, as the ingest stage sends it); then a
    progress message far ahead (closes every window, like replay's flush)."""
    router = Router(make_inventory(INVENTORY), 1)
    chunks = []  # (arrival, source, records)
    for i, (name, recs) in enumerate(traffic_of().items()):
        starts = np.array([r["start"] for r in recs])
        for lo in np.arange(T0, starts.max() + 1, chunk):
            part = [r for r, s in zip(recs, starts, strict=True) if lo <= s < lo + chunk]
            if part:
                chunks.append((lo - (LAG if name == "A" else 0), i, part))
    chunks.sort(key=lambda c: (c[0], c[1]))
    next_offset = {A: 0, B: 0}
    newest: dict[str, float] = {}
    out: list[bytes] = []
    k = 0
    while k < len(chunks):
        group = chunks[k:k + 2] if len(out) % 3 == 2 else chunks[k:k + 1]
        k += len(group)
        recs, index, offsets = [], [], []
        for _, src, part in group:
            name = (A, B)[src]
            recs += part
            index += [src] * len(part)
            offsets += list(range(next_offset[name], next_offset[name] + len(part)))
            next_offset[name] += len(part)
            newest[name] = max(newest.get(name, -np.inf), max(r["start"] for r in part))
        table = flows_table(recs)
        r = router.route(table)
        given = Identity.of(r.client_wid, r.server_wid, r.swapped, router.inventory.workloads)
        out.append(encode(table, [A, B], np.array(index, np.int32),
                          np.array(offsets), watermarks=dict(newest), partitions={"raw": 2},
                          audit_start=T0, identity=given if identity else None))
    out.append(encode(flows_table([]), [], np.zeros(0, np.int32), np.zeros(0),
                      watermarks={A: T0 + 10 * DAY, B: T0 + 10 * DAY}, partitions={"raw": 2},
                      audit_start=T0))
    return out


@dataclass
class Results:
    """Outputs collected as a store and a topic consumer would keep them."""

    tables: dict[tuple[str, int], pa.Table] = field(default_factory=dict)  # (source, block)
    violations: list[dict[str, Any]] = field(default_factory=list)
    rules: list[dict[str, Any]] = field(default_factory=list)

    def add(self, out: Any) -> None:
        self.violations += out.violations
        self.rules += out.rules
        t = out.edge_minutes
        if t.num_rows:  # a re-applied message's rows replace the earlier ones
            self.tables[(t.column("source_id")[0].as_py(), t.column("block")[0].as_py())] = t


def minutes(tables: Iterable[pa.Table]) -> Counter[tuple[Any, ...]]:
    """(edge, minute, phase, measure) → sum: what edge_minute FINAL sums to."""
    out: Counter[tuple[Any, ...]] = Counter()
    keys = ("src_app", "dst_app", "service_port", "proto", "minute", "phase")
    for t in tables:
        for r in t.to_pylist():
            for m in ("flows", "bytes", "violating_flows", "rejected_flows"):
                out[(*(r[k] for k in keys), m)] += r[m]
    return out


def baseline_of(p: Pipeline) -> dict[int, tuple[Any, ...]]:
    state = p.baseline.state()
    cols = [state[name] for name in EDGE_ARRAYS]
    return {int(k): tuple(np.asarray(c[i]).tolist() for c in cols[1:])
            for i, k in enumerate(cols[0].tolist())}


@pytest.fixture(scope="module")
def replay_ref() -> tuple[Pipeline, Results]:
    return replay(traffic)


def replay(traffic_of: Callable[[], dict[str, list[dict[str, Any]]]]
           ) -> tuple[Pipeline, Results]:
    """One core over the time-sorted union, in a few batches, then flushed: replay."""
    recs = sorted([r for v in traffic_of().values() for r in v], key=lambda r: r["start"])
    p = Pipeline(SETTINGS, make_inventory(INVENTORY))
    res = Results()
    for i, lo in enumerate(range(0, len(recs), 700)):
        res.add(p.process(flows_table(recs[lo:lo + 700]), source_id="replay", block=i))
    res.add(p.flush())
    assert p.counts["late_audit_flows"] == 0
    return p, res


def new_state() -> PartitionState:
    return PartitionState(0, Pipeline(SETTINGS, make_inventory(INVENTORY)), "flows/0")


def assert_equal(state: PartitionState, got: Results, replay_ref: tuple[Pipeline, Results]
                 ) -> None:
    ref, want = replay_ref
    assert state.pipeline.counts["late_audit_flows"] == 0
    assert baseline_of(state.pipeline) == baseline_of(ref)
    assert latest_by_id(got.violations) == latest_by_id(want.violations)
    assert latest_by_id(got.rules) == latest_by_id(want.rules)
    assert minutes(got.tables.values()) == minutes(want.tables.values())


def test_flows_of_a_partition_read_ahead_wait_for_the_watermark(
        replay_ref: tuple[Pipeline, Results]) -> None:
    msgs = messages()
    state, got = new_state(), Results()
    held, ended = [], []
    for offset, data in enumerate(msgs):
        step = state.apply(offset, decode(data))
        got.add(step.output)
        held.append(state.deferred_rows)
        if step.audit_ended:
            ended.append(offset)
            assert state.event_time >= END > state.event_time - CHUNK  # on the watermark
            assert not step.ended_early
    assert len(ended) == 1 and max(held) > 200  # A's post-audit flows waited
    assert held[ended[0] - 1] == max(held) and held[ended[0]] == 0
    want = replay_ref[1]
    # b1 → api:9200 (learned from B's last audit half day) raised nothing
    assert not [v for v in latest_by_id(got.violations).values() if v["dst_port"] == 9200]
    assert {v["type"] for v in latest_by_id(want.violations).values()} == {
        "new_edge", "new_port", "scan", "behaviour_anomaly"}  # the model corroborates a host
    assert_equal(state, got, replay_ref)


@pytest.mark.parametrize("identity", [False, True], ids=["core-enrich", "router-identity"])
def test_held_flows_survive_a_snapshot_and_replay_identically(
        replay_ref: tuple[Pipeline, Results], identity: bool) -> None:
    """Snapshot while flows are held, run past the audit end, crash, restore, re-apply:
    the re-applied messages give the same rows (same blocks) and the results equal replay
    (held flows keep the router's identity, in the snapshot's wids, when they carry it)."""
    msgs = messages(identity=identity)
    state, first, got = new_state(), Results(), Results()
    snap, snap_at, crash_at = b"", -1, -1
    for offset, data in enumerate(msgs):
        step = state.apply(offset, decode(data))
        got.add(step.output)
        first.add(step.output)
        if not snap and state.deferred_rows > 100:
            snap, snap_at = state.to_bytes(), offset
        if step.audit_ended:
            crash_at = offset + 3
        if offset == crash_at:
            break
    assert snap and crash_at > snap_at
    held = state.deferred  # emptied by the audit end
    state = PartitionState.from_bytes(snap, SETTINGS, make_inventory(INVENTORY))
    assert ("client_wid" in state.deferred[0].schema.names) == identity
    assert state.offset == snap_at and state.deferred_rows > 100 and not held
    again = Results()
    for offset in range(snap_at + 1, len(msgs)):
        out = state.apply(offset, decode(msgs[offset])).output
        got.add(out)
        again.add(out)
    for key, table in first.tables.items():
        if key[1] > snap_at:  # re-applied: identical rows under the same (source, block)
            assert again.tables[key].equals(table), key
    assert_equal(state, got, replay_ref)


def test_windows_wait_for_the_lagging_raw_partition() -> None:
    """After the audit, A runs 1.5 days ahead of B: windows follow the watermark (the slower
    B), not A's newest flows, so B's attacks whose windows straddle two messages are one
    event each — the scan is folded once, samples and versions as in replay — also when the
    partition is snapshotted while those windows are open and restored."""
    ref, want = replay(straddling)
    msgs = messages(straddling, chunk=3000.0)
    state, got = new_state(), Results()
    snaps: list[tuple[int, bytes]] = []  # while the straddling windows are open
    by_offset: list[list[dict[str, Any]]] = []
    straddling_windows = {(T0 + 63 * 3000.0) // 3600 * 3600, (T0 + 69 * 3000.0) // 3600 * 3600}
    for offset, data in enumerate(msgs):
        step = state.apply(offset, decode(data))
        got.add(step.output)
        by_offset.append(step.output.violations)
        if {a["window"] for a in state.pipeline.windows.state()["open"]} & straddling_windows:
            snaps.append((offset, state.to_bytes()))
    events = latest_by_id(want.violations)
    scans = [v for v in events.values() if v["type"] == "scan"]
    # one target every 20 s (10 s): those more than 15 s before the 20th are new edges alone
    assert len(scans) == 2 and sorted(s["count"] for s in scans) == [11, 12]
    # the rule-based event on the straddling edge (the behaviour model may corroborate it too)
    straddled = next(v for v in events.values()
                     if v["dst_port"] == 8080 and v["type"] == "new_port")
    assert straddled["count"] == 12 and len(straddled["evidence"]["seen"]["src_ips"]) == 3
    versions: dict[str, list[int]] = {}
    for v in (v for out in by_offset for v in out):
        versions.setdefault(v["id"], []).append(v["version"])
    assert all(vs == sorted(set(vs)) for vs in versions.values())  # each version once, rising
    assert_equal(state, got, (ref, want))
    assert len(snaps) >= 2
    for at, blob in snaps:  # restore with windows open, re-apply the rest: the same events
        again = PartitionState.from_bytes(blob, SETTINGS, make_inventory(INVENTORY))
        later = [v for offset in range(at + 1, len(msgs))
                 for v in again.apply(offset, decode(msgs[offset])).output.violations]
        assert later == [v for out in by_offset[at + 1:] for v in out]


def test_snapshot_keeps_the_held_rows() -> None:
    msgs = messages()
    state = new_state()
    offset = 0
    while state.deferred_rows < 100:
        state.apply(offset, decode(msgs[offset]))
        offset += 1
    restored = PartitionState.from_bytes(state.to_bytes(), SETTINGS, make_inventory(INVENTORY))
    assert pa.concat_tables(restored.deferred).equals(pa.concat_tables(state.deferred))
    assert (restored.event_time, restored.watermarks) == (state.event_time, state.watermarks)
    empty = new_state().to_bytes()  # nothing held, nothing kept: no IPC
    assert b"\"deferred_bytes\":0," in empty and b"\"local_bytes\":0}PK" in empty


def test_too_many_held_flows_end_the_audit_early(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        replay_ref: tuple[Pipeline, Results]) -> None:
    """Beyond the cap the audit ends at once (as the core would on its own): memory stays
    bounded, B's later audit flows are late and b1 → api:9200 becomes a new edge."""
    monkeypatch.setattr(partition_mod, "MAX_DEFERRED_ROWS", 150)
    state, got = new_state(), Results()
    early = []
    with caplog.at_level("WARNING", logger="pipeline.stream.partition"):
        for offset, data in enumerate(messages()):
            step = state.apply(offset, decode(data))
            got.add(step.output)
            assert state.deferred_rows <= 150
            if step.ended_early:
                assert step.audit_ended and step.output.rules
                early.append(offset)
    assert len(early) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "more than 150 post-audit flows held" in warnings[0]
    assert state.pipeline.counts["late_audit_flows"] > 0
    new = {(v["src_app"], v["dst_app"], v["dst_port"]) for v in latest_by_id(
        got.violations).values() if v["type"] == "new_edge"}
    assert ("b1", "api", 9200) in new
    assert minutes(got.tables.values()) != minutes(replay_ref[1].tables.values())


def test_ingest_reports_a_lagging_raw_partition_catching_up() -> None:
    """Partitions that get no flows learn event time from progress messages; those must
    follow the slowest busy raw partition (what the watermark is), not the fastest — or a
    lagging partition passing the audit end would go unreported while the fast one waits."""
    import threading

    from pipeline.config import WorkerSettings
    from pipeline.stream.ingest import IngestStage
    from pipeline.stream.metrics import Metrics

    s = WorkerSettings()
    stage = IngestStage(s.topics, s.stream, kafka=s.kafka, group="g", audit_start=None,
                        client={}, producer=None,  # type: ignore[arg-type]
                        inventory=make_inventory(INVENTORY), inventory_lock=threading.Lock(),
                        metrics=Metrics())
    try:
        stage._parts = {"raw": 2}
        stage.watermarks = {A: T0 + 4 * DAY, B: T0}
        assert len(stage.progress_only().messages) == stage.router.partitions
        assert stage.progress_only().messages == []  # nothing moved
        stage.watermarks[B] = END + 1  # B passes the audit end; A stands still
        sent = [decode(v) for _, v in stage.progress_only().messages]
        assert len(sent) == stage.router.partitions
        assert all(m.watermarks == {A: T0 + 4 * DAY, B: END + 1} for m in sent)
    finally:
        stage._cpu.shutdown()


def test_a_partition_s_earlier_messages_of_a_batch_report_the_progress_before_it() -> None:
    """One ingest batch can give a partition several messages; each carries the batch's
    progress except for sources with rows still to come in the later ones (those report their
    progress before the batch), so the partition's watermark never passes unsent rows."""
    import threading
    from types import SimpleNamespace

    from aiokafka import TopicPartition

    from pipeline.config import WorkerSettings
    from pipeline.stream.ingest import IngestStage
    from pipeline.stream.metrics import Metrics

    settings = WorkerSettings.model_validate(
        {"topics": {"flows_partitions": 1}, "stream": {"message_rows": 4}})
    stage = IngestStage(settings.topics, settings.stream, kafka=settings.kafka, group="g",
                        audit_start=None, client={}, producer=None,  # type: ignore[arg-type]
                        inventory=make_inventory(INVENTORY), inventory_lock=threading.Lock(),
                        metrics=Metrics())
    try:
        stage._parts = {"segflow-flows-raw": 2}
        stage.watermarks = {"segflow-flows-raw/0": T0 + 100}
        batch = {TopicPartition("segflow-flows-raw", i): [
            SimpleNamespace(value=orjson.dumps(flow(T0 + 200 + 100 * i + k, A1, DB, 1000 + k,
                                                    5432)), offset=k) for k in range(6)]
            for i in (0, 1)}
        sent = [decode(v) for _, v in stage.prepare(batch).messages]
        a, b = "segflow-flows-raw/0", "segflow-flows-raw/1"
        assert [m.num_rows for m in sent] == [4, 4, 4]
        assert [m.watermarks for m in sent] == [
            {a: T0 + 100, b: T0 + 300},  # b: its oldest start (no progress before)
            {a: T0 + 205, b: T0 + 300},
            {a: T0 + 205, b: T0 + 305}]
    finally:
        stage._cpu.shutdown()
