"""The streaming building blocks without a broker: wire format, raw blocks, routing and the
per-partition state — including the exactly-once argument (re-sends and restores)."""

from __future__ import annotations

import random

import numpy as np
import orjson
import pyarrow as pa
import pytest

from pipeline.core.baseline import DAY
from pipeline.core.enrich import Orienter
from pipeline.core.inventory import Inventory, load_inventory
from pipeline.core.pipeline import Pipeline
from pipeline.core.settings import CoreSettings
from pipeline.sources import get_parser
from pipeline.sources.canonical import CanonicalParser
from pipeline.stream.flowbatch import FlowBatch, Identity, decode, encode
from pipeline.stream.ingest import _cuts
from pipeline.stream.outputs import latest_by_id
from pipeline.stream.partition import LOCAL_BLOCK, PartitionState
from pipeline.stream.rawblock import EMPTY, TOO_LARGE, parse_messages
from pipeline.stream.routing import Router
from pipeline.stream.services import ServiceDirectory
from tests.conftest import T0, flow, flows_table, make_inventory
from tests.stream.conftest import Reference
from tests.stream.harness import comparable, totals_of


def rec(i: int, **kw: object) -> bytes:
    r = flow(T0 + i, "10.0.0.1", "10.0.0.2", 40_000, 443)
    r.update(kw)
    return orjson.dumps(r)


def test_flow_batch_round_trip_drops_and_restores_null_columns() -> None:
    flows = flows_table([flow(T0 + i, "10.0.0.1", "10.0.0.2", 40_000 + i, 443)
                         for i in range(5)])
    data = encode(flows, ["raw/0", "raw/1"], np.array([0, 0, 1, 1, 1], np.int32),
                  np.array([7, 7, 3, 4, 9]), watermarks={"raw/0": T0 + 4}, partitions={"raw": 2},
                  idle=["raw/1"], audit_start=T0 - 3600.5)
    b = decode(data)
    assert b.flows.equals(flows)
    assert b.sources == ["raw/0", "raw/1"]
    assert b.source_index.tolist() == [0, 0, 1, 1, 1]
    assert b.offsets.tolist() == [7, 7, 3, 4, 9]
    assert (b.watermarks, b.partitions, b.idle, b.audit_start) == (
        {"raw/0": T0 + 4}, {"raw": 2}, ["raw/1"], T0 - 3600.5)
    assert b"src_app" not in data  # all-null columns are not sent
    progress = decode(encode(flows.slice(0, 0), [], np.zeros(0, np.int32), np.zeros(0),
                             watermarks={"raw/0": T0}, partitions={"raw": 1}))
    assert progress.num_rows == 0 and progress.watermarks == {"raw/0": T0}
    assert progress.audit_start is None  # not agreed yet
    with pytest.raises(ValueError, match="not a segflow flow batch"):
        decode(b"garbage")


def test_flow_batch_carries_the_router_identity_into_another_registry() -> None:
    """The router's wids are its own: the message names the workloads, and the stateful
    side interns them into its registry (other wids, same identities, labels kept)."""
    def entry(ip: str, ns: str, app: str) -> dict[str, object]:
        return {"ip": ip, "namespace": ns, "app": app, "labels": {"app": app}}

    inv = make_inventory([entry("10.0.0.1", "shop", "web"), entry("10.0.0.2", "shop", "db")])
    flows = flows_table([flow(T0 + i, "10.0.0.1", "10.0.0.2", 40_000 + i, 5432)
                         for i in range(3)] + [flow(T0 + 9, "10.0.0.2", "10.0.0.1", 5432, 41_000)])
    r = Router(inv, 2).route(flows)
    reg = inv.workloads
    data = encode(flows, ["raw/0"], np.zeros(4, np.int32), np.arange(4),
                  watermarks={}, partitions={}, identity=Identity.of(
                      r.client_wid, r.server_wid, r.swapped, reg))
    b = decode(data)
    assert b.flows.equals(flows) and b.identity is not None
    other = make_inventory([entry("10.0.0.9", "ops", "x"), entry("10.0.0.2", "shop", "db"),
                            entry("10.0.0.1", "shop", "web")]).workloads
    table = b.enriched_flows(other)
    names = {c: [other.infos[w].key for w in table.column(c).to_pylist()]
             for c in ("client_wid", "server_wid")}
    assert names == {"client_wid": ["shop/web"] * 4, "server_wid": ["shop/db"] * 4}
    assert table.column("swapped").to_pylist() == [False] * 3 + [True]
    assert [other.infos[w] for w in table.column("client_wid").to_pylist()] == [
        reg.infos[w] for w in r.client_wid.tolist()]
    assert decode(encode(flows, ["raw/0"], np.zeros(4, np.int32), np.arange(4),
                         watermarks={}, partitions={})).identity is None  # older workers
    for bad in ([["shop", "web"]], []):  # a short descriptor; indices out of range
        with pytest.raises(ValueError, match="not a segflow flow batch"):
            decode(_with_meta(data, wl=bad))


def _with_meta(data: bytes, **changes: object) -> bytes:
    """``data`` re-encoded with its segflow metadata changed (None deletes a key)."""
    table = pa.ipc.open_stream(data).read_all()
    meta = orjson.loads(table.schema.metadata[b"segflow"])
    meta.update(changes)
    meta = {k: v for k, v in meta.items() if v is not None}
    table = table.replace_schema_metadata({b"segflow": orjson.dumps(meta)})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def test_flow_batch_reads_the_audit_start_of_older_workers() -> None:
    """Format-1 messages of earlier workers named the start ``first``: still understood."""
    data = encode(flows_table([]).slice(0, 0), [], np.zeros(0, np.int32), np.zeros(0),
                  watermarks={"raw/0": T0}, partitions={"raw": 1}, audit_start=T0 + 9)
    legacy = _with_meta(data, audit_start=None, first=T0 + 5)
    assert b"audit_start" not in legacy
    assert decode(legacy).audit_start == T0 + 5
    assert decode(_with_meta(data, first=T0 + 5)).audit_start == T0 + 9  # the new key wins
    with pytest.raises(ValueError, match="unsupported flow batch format 2"):
        decode(_with_meta(data, v=2))


def _inventory() -> Inventory:
    return make_inventory([{"ip": "10.0.0.1", "app": "a", "namespace": "n"},
                           {"ip": "10.0.0.2", "app": "b", "namespace": "n"}])


def _partition(audit_start: float | None) -> PartitionState:
    settings = CoreSettings(audit_days=1, audit_start=audit_start)
    return PartitionState(3, Pipeline(settings, _inventory()), "f/3")


def _message(starts: list[float], audit_start: float | None, first_offset: int = 0) -> bytes:
    flows = flows_table([flow(t, "10.0.0.1", "10.0.0.2", 40_000, 443) for t in starts])
    n = len(starts)
    return encode(flows, ["raw/0"], np.zeros(n, np.int32),
                  np.arange(first_offset, first_offset + n),
                  watermarks={"raw/0": max(starts, default=T0)}, partitions={"raw": 1},
                  audit_start=audit_start)


def test_partition_adopts_the_agreed_audit_start_and_learns_earlier_flows() -> None:
    """The agreed start can be later than a partition's first flows (another worker's first
    batch won): those flows are before the audit end, so they are learned, not scored."""
    st = _partition(None)
    st.apply(0, decode(_message([], None)))  # progress before the agreement: no start yet
    assert st.pipeline.audit_start is None
    agreed = T0 + 600
    out = st.apply(1, decode(_message([T0, T0 + 1], agreed))).output
    assert st.pipeline.audit_start == agreed
    assert st.pipeline.audit_end == agreed + DAY
    assert (out.audit_flows, out.enforce_flows, out.violations) == (2, 0, [])
    assert len(st.pipeline.baseline) == 1  # the edge a → b:443 is learned
    # after the audit (agreed start + 1 day) the learned edge is allowed: no new_edge
    out = st.apply(2, decode(_message([agreed + DAY + 10], agreed, first_offset=2))).output
    assert out.enforce_flows == 1 and st.pipeline.baseline.frozen_
    assert not [v for v in out.violations if v["type"] == "new_edge"]
    assert out.rules  # the audit ended at agreed + 1 day


def test_restored_partition_keeps_its_audit_start_and_warns_once(
        caplog: pytest.LogCaptureFixture) -> None:
    st = _partition(None)
    st.apply(0, decode(_message([T0], T0)))
    restored = PartitionState.from_bytes(st.to_bytes(), CoreSettings(audit_days=1),
                                         _inventory())
    assert restored.pipeline.audit_start == T0
    with caplog.at_level("WARNING", logger="pipeline.stream.partition"):
        for offset in (1, 2):
            restored.apply(offset, decode(_message([T0 + offset], T0 + 60, offset)))
        restored.apply(3, decode(_message([T0 + 3], T0, 3)))  # the same start: silent
    assert restored.pipeline.audit_start == T0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert "partition 3: a message carries audit start 2026-" in warnings[0]
    # a configured start is the pipeline's own: messages do not move it either
    configured = _partition(T0 - 100)
    configured.apply(0, decode(_message([T0], T0)))
    assert configured.pipeline.audit_start == T0 - 100


def test_raw_messages_map_rows_and_rejects_to_offsets() -> None:
    values = [rec(0), b"not json", rec(2, bytes="many"), b"\n".join([rec(3), rec(4), rec(5)[:40]]),
              b"", b"x" * 3000, rec(7), b"\n".join([rec(8), rec(9)]) + b"\n", b" "]
    r = parse_messages(CanonicalParser(), values, list(range(100, 109)), max_record_bytes=2048)
    assert r.offsets.tolist() == [100, 103, 103, 106, 107, 107]
    assert r.flows.column("start").to_pylist() == [T0, T0 + 3, T0 + 4, T0 + 7, T0 + 8, T0 + 9]
    reasons = sorted((x.offset, x.reject.reason) for x in r.rejects)
    assert reasons == [(101, "bad_json"), (102, "bad_type"), (103, "bad_json"), (104, EMPTY),
                       (105, TOO_LARGE), (108, EMPTY)]
    too_large = next(x for x in r.rejects if x.reject.reason == TOO_LARGE)
    assert too_large.raw == b"x" * 3000  # the whole record for the dead-letter topic
    # one record per message, the fast path, with a reject in the middle
    r = parse_messages(CanonicalParser(), [rec(0), rec(1, proto=999), rec(2)], [5, 6, 7],
                       max_record_bytes=2048)
    assert r.offsets.tolist() == [5, 7]
    assert [(x.offset, x.reject.reason, x.raw) for x in r.rejects] == [
        (6, "bad_proto", rec(1, proto=999))]


def test_formats_with_header_lines_fall_back_to_one_parse_per_message() -> None:
    header = (b"#separator \\x09\n#path\tconn\n#fields\tts\tuid\tid.orig_h\tid.orig_p\t"
              b"id.resp_h\tid.resp_p\tproto\tservice\tduration\torig_bytes\tresp_bytes\t"
              b"conn_state\tlocal_orig\tlocal_resp\tmissed_bytes\thistory\torig_pkts\t"
              b"orig_ip_bytes\tresp_pkts\tresp_ip_bytes\ttunnel_parents\n"
              b"#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tstring\tinterval\tcount\t"
              b"count\tstring\tbool\tbool\tcount\tstring\tcount\tcount\tcount\tcount\tset[string]")
    row = (f"{T0}\tC1\t10.0.0.1\t40000\t10.0.0.2\t443\ttcp\t-\t1.0\t100\t200\tSF\tT\tT\t0\t"
           "ShADadFf\t5\t300\t4\t400\t-").encode()
    r = parse_messages(get_parser("zeek"), [header, row, row], [0, 1, 2], max_record_bytes=4096)
    assert r.offsets.tolist() == [1, 2] and not r.rejects


def test_internal_messages_are_never_cut_inside_a_raw_message() -> None:
    src = np.array([0, 0, 0, 0, 1, 1, 1], np.int32)
    off = np.array([5, 5, 5, 6, 5, 5, 7])
    assert _cuts(src, off, 0, 7, 2) == [(0, 3), (3, 6), (6, 7)]
    assert _cuts(src, off, 0, 7, 1) == [(0, 3), (3, 4), (4, 6), (6, 7)]
    assert _cuts(src, off, 0, 7, 100) == [(0, 7)]


def test_watermark_waits_for_every_raw_partition_and_skips_idle_ones() -> None:
    inv = make_inventory([{"ip": "10.0.0.1", "app": "a", "namespace": "n"}])
    st = PartitionState(0, Pipeline(CoreSettings(audit_days=1, audit_start=T0), inv), "f/0")
    empty = flows_table([]).slice(0, 0)

    def progress(offset: int, wm: dict[str, float], idle: list[str]) -> None:
        st.apply(offset, decode(encode(empty, [], np.zeros(0, np.int32), np.zeros(0),
                                       watermarks=wm, partitions={"raw": 2}, idle=idle)))

    progress(0, {"raw/0": T0 + 100}, [])
    assert st.watermark() is None  # raw/1 never reported
    progress(1, {"raw/1": T0 + 50}, [])
    assert st.watermark() == T0 + 50
    progress(2, {}, ["raw/1"])
    assert st.watermark() == T0 + 100  # an idle partition does not hold event time back
    progress(3, {"raw/1": T0 + 60}, [])
    assert st.watermark() == T0 + 60


def _never(*args: object, **kwargs: object) -> np.ndarray:
    raise AssertionError("enriched twice")


@pytest.mark.parametrize("identity", [True, False], ids=["router-identity", "core-enrich"])
def test_partitions_equal_replay_despite_resends_and_restores(
        reference: Reference, identity: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The exactly-once argument without a broker: the ingest re-sends overlapping ranges
    with other batch boundaries, partitions crash and restore older snapshots and replay
    — the union of their outputs still equals one replay, known clients of a service
    included: partitions hold new_edge events until every partition's map is known.
    With the router's identity on the wire (what the ingest sends) the partitions do not
    enrich again; without it (older workers) the core enriches."""
    rnd = random.Random(3)
    settings = CoreSettings(audit_days=reference.audit_days, audit_start=reference.audit_start)
    parts = 4
    router = Router(load_inventory(reference.inventory), parts)
    log: dict[int, list[bytes]] = {p: [] for p in range(parts)}
    lines, pos, newest = reference.lines, 0, float("-inf")
    while pos < len(lines):
        n = rnd.choice([1, 300, 2000, 7000])
        batch = parse_messages(CanonicalParser(), lines[pos:pos + n],
                               list(range(pos, pos + len(lines[pos:pos + n]))),
                               max_record_bytes=1 << 20)
        routed = router.route(batch.flows)
        newest = max(newest, float(np.max(batch.flows.column("start").to_numpy())))
        for p in range(parts):
            mine = routed.partition == p
            given = Identity.of(routed.client_wid[mine], routed.server_wid[mine],
                                routed.swapped[mine], router.inventory.workloads)
            log[p].append(encode(batch.flows.filter(pa.array(mine)), ["raw/0"],
                                 np.zeros(int(mine.sum()), np.int32), batch.offsets[mine],
                                 watermarks={"raw/0": newest}, partitions={"raw": 1},
                                 identity=given if identity else None))
        # a crashed ingest re-sends from its last commit: overlap, other boundaries
        pos = max(0, pos - rnd.randint(1, 3000)) if rnd.random() < 0.25 else pos + n
    if identity:  # the partitions never orient (nor look up) a flow again
        monkeypatch.setattr(Orienter, "orient", _never)
    violations, rules, tables = [], [], []
    directory, states = ServiceDirectory(parts), []
    for p in range(parts):
        state = PartitionState(p, Pipeline(settings, load_inventory(reference.inventory)),
                               f"flows/{p}", services=directory)
        snapshot, crashed, offset = None, set(), 0
        while offset < len(log[p]):
            step = state.apply(offset, decode(log[p][offset]))
            out = step.output
            if step.audit_ended:  # the stage publishes the map; the directory follows it
                directory.add_local(p, state.pipeline.service_clients())
            violations += out.violations
            rules += out.rules
            tables.append(out.edge_minutes)
            if offset % 5 == 2:
                snapshot = state.to_bytes()
            if offset % 7 == 4 and snapshot is not None and offset not in crashed:
                crashed.add(offset)  # crash: restore the last snapshot, replay after it
                state = PartitionState.from_bytes(snapshot, settings,
                                                  load_inventory(reference.inventory))
                state.services = directory
                if state.pipeline.baseline.frozen_:  # published again: the same map
                    assert not directory.add_local(p, state.pipeline.service_clients())
                offset = state.offset + 1
                continue
            offset += 1
        states.append(state)
    assert directory.complete and sum(len(s.held_events) for s in states) > 0
    violations += [e for s in states for e in s.release()]  # what the stage does then
    got = latest_by_id(violations)
    assert {k: comparable(v) for k, v in got.items()} == {
        k: comparable(v) for k, v in reference.violations.items()}
    assert latest_by_id(rules) == reference.rules
    # rows of a replayed message replace each other: keep one per (partition, offset)
    kept = {}
    for t in tables:
        if t.num_rows:
            kept[(t.column("source_id")[0].as_py(), t.column("block")[0].as_py())] = t
    assert totals_of(kept.values()) == reference.totals


def _in_process_log(reference: Reference, parts: int, seed: int
                    ) -> dict[int, list[tuple[int, FlowBatch]]]:
    """Per partition, (last raw offset, batch) as the ingest hands them over in memory."""
    rnd = random.Random(seed)
    router = Router(load_inventory(reference.inventory), parts)
    out: dict[int, list[tuple[int, FlowBatch]]] = {p: [] for p in range(parts)}
    lines, pos, newest = reference.lines, 0, float("-inf")
    while pos < len(lines):
        chunk = lines[pos:pos + rnd.choice([1, 300, 2000, 7000])]
        batch = parse_messages(CanonicalParser(), chunk, list(range(pos, pos + len(chunk))),
                               max_record_bytes=1 << 20)
        routed = router.route(batch.flows)
        newest = max(newest, float(np.max(batch.flows.column("start").to_numpy())))
        for p in range(parts):
            mine = routed.partition == p
            out[p].append((pos + len(chunk) - 1, FlowBatch(
                batch.flows.filter(pa.array(mine)), ["raw/0"],
                np.zeros(int(mine.sum()), np.int32), batch.offsets[mine],
                watermarks={"raw/0": newest}, partitions={"raw": 1},
                identity=Identity.of(routed.client_wid[mine], routed.server_wid[mine],
                                     routed.swapped[mine], router.inventory.workloads))))
        pos += len(chunk)
    return out


def test_in_process_batches_equal_replay_despite_crashes(reference: Reference) -> None:
    """In-process batches (role all): aggregates are written only once a snapshot holds
    them (and again when it is restored); a crash loses what followed the snapshot, and the
    raw records are re-read with *other* batch boundaries — the store (rows replacing by
    (source_id, block)) still sums to replay's totals, and the events equal replay's."""
    settings = CoreSettings(audit_days=reference.audit_days, audit_start=reference.audit_start)
    parts = 4
    first, again = _in_process_log(reference, parts, 3), _in_process_log(reference, parts, 8)
    store: dict[tuple[str, int], pa.Table] = {}
    violations: list[dict[str, object]] = []
    rules: list[dict[str, object]] = []
    directory, states = ServiceDirectory(parts), []

    def write(tables: list[pa.Table]) -> None:  # rows replace by (source_id, block)
        for t in tables:
            blocks = t.column("block").to_numpy()
            assert (blocks >= LOCAL_BLOCK).all()
            for b in np.unique(blocks).tolist():
                store[(t.column("source_id")[0].as_py(), b)] = t.filter(
                    pa.array(blocks == b))

    for p in range(parts):
        state = PartitionState(p, Pipeline(settings, load_inventory(reference.inventory)),
                               f"flows/{p}", services=directory)
        batches, i, snapshot, crashed = first[p], 0, b"", False
        while i < len(batches):
            step = state.apply_local(batches[i][1])
            assert not step.output.edge_minutes.num_rows  # kept until a snapshot
            if step.audit_ended:
                directory.add_local(p, state.pipeline.service_clients())
            violations += step.output.violations
            rules += step.output.rules
            if i % 5 == 2:
                snapshot = state.to_bytes()
                write(state.take_local())  # the stage writes them once the snapshot is stored
            if i % 7 == 4 and snapshot and not crashed:
                crashed = True  # kill -9: restore, re-read the raw records in other batches
                state = PartitionState.from_bytes(snapshot, settings,
                                                  load_inventory(reference.inventory))
                state.services = directory
                write(state.take_local())  # written again on restore: same blocks, replaced
                done = state.applied.get("raw/0", -1)
                batches = again[p]
                i = next(k for k, (last, _) in enumerate(batches) if last > done)
                continue
            i += 1
        assert crashed
        state.to_bytes()
        write(state.take_local())  # the last snapshot (at shutdown)
        states.append(state)
    violations += [e for s in states for e in s.release()]
    assert {k: comparable(v) for k, v in latest_by_id(violations).items()} == {
        k: comparable(v) for k, v in reference.violations.items()}
    assert latest_by_id(rules) == reference.rules
    assert totals_of(store.values()) == reference.totals
