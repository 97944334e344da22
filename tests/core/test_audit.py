"""A trustworthy audit: minimum support (poisoning), audit-time scan findings, per-app
readiness, local scopes, and all of it independent of batch boundaries and snapshots."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline.core.audit import (
    AuditWatch,
    min_days,
    readiness,
    readiness_rows,
    ready_days,
    scan_warmup,
    trusted_rows,
)
from pipeline.core.baseline import EdgeBaseline, edge_keys
from pipeline.core.pipeline import Pipeline
from pipeline.core.records import APP_READINESS, VIOLATION_TYPES
from pipeline.core.settings import CoreSettings
from pipeline.core.snapshot import dump_state, load_state
from pipeline.core.workloads import WorkloadInfo, Workloads
from tests.conftest import DAY, T0, flow, flows_table, make_inventory

INV = [
    {"ip": "10.0.0.1", "app": "web", "namespace": "shop"},
    {"ip": "10.0.0.2", "app": "db", "namespace": "shop"},
    {"ip": "10.0.0.3", "app": "batch", "namespace": "ops"},
    {"ip": "10.0.0.4", "app": "intruder", "namespace": "x"},
]
WEB, DB, BATCH, INTRUDER = "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"


def steady(days: int) -> list[dict[str, Any]]:
    """web → db every hour, batch → db in office hours, intruder → web once a day."""
    recs = []
    for d in range(days):
        for h in range(24):
            t = T0 + d * DAY + h * 3600
            recs.append(flow(t + 10, WEB, DB, 40000 + h, 5432))
            if 9 <= h < 17:
                recs.append(flow(t + 30, BATCH, DB, 41000 + h, 5432))
        recs.append(flow(T0 + d * DAY + 7200, INTRUDER, WEB, 42000, 443))
        recs.append(flow(T0 + d * DAY + 7300, INTRUDER, WEB, 42001, 443))
        recs.append(flow(T0 + d * DAY + 7400, INTRUDER, WEB, 42002, 443))
    return recs


def run(records: list[dict[str, Any]], settings: CoreSettings, batches: int = 1
        ) -> tuple[Pipeline, list[dict[str, Any]], list[dict[str, Any]], pa.Table]:
    records = sorted(records, key=lambda r: r["start"])
    core = Pipeline(settings, make_inventory(INV))
    vio, rules, ready = [], [], []
    size = -(-len(records) // batches)
    for i in range(0, len(records), size):
        o = core.process(flows_table(records[i:i + size]), source_id="t", block=i)
        vio += o.violations
        rules += o.rules
        ready.append(o.readiness)
    f = core.flush()
    ready.append(f.readiness)
    return core, vio + f.violations, rules + f.rules, pa.concat_tables(ready)


def allowed(rules: list[dict[str, Any]]) -> set[tuple[str, str, str, tuple[int, ...]]]:
    return {(r["app"], r["direction"], r["peer"]["app"], tuple(r["ports"]))
            for r in rules if not r["provisional"]}


# -- minimum support -------------------------------------------------------------------------

@pytest.mark.parametrize("audit_days", [1, 4, 30])
def test_an_edge_seen_on_one_day_with_two_flows_gets_no_allow_rule_and_alerts_on_recurrence(
        audit_days: int) -> None:
    """Poisoning: two flows on one audit day must not become an allow rule, whatever the
    audit's length (a 1-day audit relies on the flow count)."""
    s = CoreSettings(audit_days=audit_days)
    days = min(audit_days, 4)
    poison = [flow(T0 + (days - 1) * DAY + 5000 + i, INTRUDER, DB, 43000 + i, 5432)
              for i in range(2)]
    after = T0 + audit_days * DAY + 10 * 3600
    recur = [flow(after + i * 60, INTRUDER, DB, 44000 + i, 5432) for i in range(3)]
    core, violations, rules, _ = run(steady(days) + poison + recur, s)
    assert not any(r["app"] == "shop/db" and r["peer"]["app"] == "intruder" and
                   not r["provisional"] for r in rules)
    [prov] = [r for r in rules if r["app"] == "shop/db" and r["peer"]["app"] == "intruder"]
    assert prov["provisional"] and prov["intent"]["provisional"]
    assert ("shop/db", "ingress", "web", (5432,)) in allowed(rules)
    [v] = violations
    assert v["type"] == "provisional_edge" and v["count"] == 3 and v["mode"] == "enforce"
    assert v["src_workload"] == "x/intruder" and v["src_ip"] == INTRUDER
    assert v["evidence"]["seen"]["audit_days"] == 1 and v["evidence"]["seen"]["audit_flows"] == 2
    assert v["evidence"]["expected"] == {"min_days": min_days(s), "min_flows": 3}
    # and the policy renderer refuses it until accepted
    assert not any(r.provisional for r in core.candidate_rules()
                   if r.app.key == "shop/db" and r.peer.workload
                   and r.peer.workload.app == "web")


def test_support_thresholds_scale_with_the_audit() -> None:
    assert [min_days(CoreSettings(audit_days=d)) for d in (0.5, 1, 7, 14, 21, 30, 90)] == [
        1, 1, 1, 2, 3, 3, 3]
    assert min_days(CoreSettings(audit_days=60, trust_min_days=7)) == 7
    assert min_days(CoreSettings(audit_days=30, trust_min_days=7)) == 4  # whole weeks
    assert [ready_days(CoreSettings(audit_days=d)) for d in (1, 6, 30)] == [1, 3, 7]
    assert scan_warmup(CoreSettings(audit_days=1)) == DAY / 4
    assert scan_warmup(CoreSettings(audit_days=30)) == DAY


def test_trusted_rows_need_days_and_flows_and_a_day_more_for_findings() -> None:
    b = EdgeBaseline()
    k = edge_keys(*(np.array(x) for x in ([2, 2, 2, 2], [3, 4, 5, 6], [80] * 4, [6] * 4)))
    rows, starts = [], []
    for key, days, per_day in ((k[0], 3, 2), (k[1], 1, 50), (k[2], 2, 1), (k[3], 4, 1)):
        for d in range(days):
            rows += [key] * per_day
            starts += [T0 + d * DAY + i for i in range(per_day)]
    n = len(rows)
    b.partial_fit(np.array(rows), np.array(starts, dtype=float), np.ones(n), np.ones(n))
    s = CoreSettings(audit_days=30)
    got = trusted_rows(b, s)
    assert got.tolist() == [True, False, False, True]  # 3 d/6 flows; 1 d; 2 d/2 flows; 4 d/4
    finding = np.array([True, False, False, True])
    assert trusted_rows(b, s, finding).tolist() == [False, False, False, True]
    assert trusted_rows(b, CoreSettings(audit_days=7)).tolist() == [True, True, False, True]


# -- audit findings ----------------------------------------------------------------------------

def scan(t: float, n: int = 30) -> list[dict[str, Any]]:
    return [flow(t + i, INTRUDER, DB, 50000, 1000 + i) for i in range(n)]


def test_a_scan_during_the_audit_is_a_finding_and_is_not_learned() -> None:
    """Day 2: 30 new ports, 3 probes each, within minutes (a finding). 1 day with 3 flows
    is enough support in a 4-day audit, but a finding's day does not count: the scanned
    edges stay provisional."""
    s = CoreSettings(audit_days=4)
    day2 = T0 + 2 * DAY + 5 * 3600 + 120
    after = T0 + 4 * DAY + 10 * 3600
    reuse = [flow(after + i, INTRUDER, DB, 51000 + i, 1007) for i in range(2)]
    probes = [r for k in range(3) for r in scan(day2 + 100 * k)]
    core, violations, rules, _ = run(steady(4) + probes + reuse, s)
    findings = [v for v in violations if v["mode"] == "audit"]
    assert [(v["type"], v["detector"], v["ts"]) for v in findings] == [
        ("scan", "audit", "2026-01-07T05:02:00.000Z")]
    f = findings[0]
    assert f["src_ip"] == INTRUDER and f["dst_ip"] == DB and f["src_workload"] == "x/intruder"
    assert f["evidence"]["seen"]["distinct_targets"] == 30 and f["count"] == 30
    assert f["last_seen"] == "2026-01-07T05:02:29.000Z"  # the last target's first probe
    assert f["first_seen"] == "2026-01-07T05:02:00.000Z"
    assert f["detected_at"] == "2026-01-07T06:05:00.000Z"  # window end + lateness
    assert f["evidence"]["seen"]["ports"] == list(range(1000, 1030))
    assert "During the audit" in f["reason"]
    assert not any(r["app"] == "shop/db" and r["peer"]["app"] == "intruder"
                   for r in rules if not r["provisional"])
    assert core.counts["audit_findings"] == 1 and core.counts["provisional_edges"] == 30
    # a scanned port used after the audit: provisional_edge, naming the finding
    [v] = [v for v in violations if v["mode"] == "enforce"]
    assert v["type"] == "provisional_edge" and v["dst_port"] == 1007
    assert v["evidence"]["seen"]["audit_finding"] is True


def test_no_scan_finding_in_the_warmup_or_below_the_threshold() -> None:
    s = CoreSettings(audit_days=4)
    first_hours = scan(T0 + 3 * 3600)  # every edge is new at the audit's start
    few = scan(T0 + 2 * DAY + 3600, n=19)
    _, violations, _, _ = run(steady(4) + first_hours + few, s)
    assert [v for v in violations if v["mode"] == "audit"] == []


def test_local_scopes_are_no_finding_no_rule_and_no_readiness_row() -> None:
    s = CoreSettings(audit_days=4)
    groups = [flow(T0 + 2 * DAY + 3600 + i, WEB, f"239.1.1.{i + 1}", 5000, 5000, proto=17)
              for i in range(40)]
    groups += [flow(T0 + 2 * DAY + 3700 + i, WEB, "255.255.255.255", 68 + i, 67, proto=17)
               for i in range(30)]
    groups += [flow(T0 + 2 * DAY + 3800 + i, WEB, "169.254.169.254", 42000 + i, 80 + i)
               for i in range(30)]
    core, violations, rules, ready = run(steady(4) + groups, s)
    assert violations == []
    assert len(core.baseline) == 3
    assert {r["peer"]["app"] for r in rules} <= {"web", "db", "batch", "intruder"}
    assert set(ready.column("app").to_pylist()) == {"web", "db", "batch", "intruder"}


def test_other_detectors_mark_audit_findings_through_the_api() -> None:
    s = CoreSettings(audit_days=4)
    core = Pipeline(s, make_inventory(INV))
    recs = sorted(steady(4), key=lambda r: r["start"])
    half = [r for r in recs if r["start"] < T0 + DAY]
    core.process(flows_table(half))
    intruder, web = core.workloads.lookup("x", "intruder"), core.workloads.lookup("shop", "web")
    assert intruder is not None and web is not None
    key = int(edge_keys(*[np.array([x]) for x in (intruder, web, 443, 6)])[0])
    core.audit.mark("scan", intruder, T0 + DAY, keys=[key], first=T0 + DAY, last=T0 + DAY + 60,
                    count=5, client_ips=[INTRUDER], server_ips=[WEB],
                    extra={"targets": 1, "ports": [443], "servers": [web]})
    # intruder → web: 1 day, 3 flows (trusted in a 4-day audit, were it not a finding)
    out = core.advance(T0 + 5 * DAY)  # the audit ends
    [f] = [v for v in out.violations if v["mode"] == "audit"]
    assert f["src_ip"] == INTRUDER and f["detector"] == "audit" and f["type"] == "scan"
    assert not any(r["peer"]["app"] == "intruder" and not r["provisional"] for r in out.rules)
    assert any(r["peer"]["app"] == "web" and not r["provisional"] for r in out.rules)


# -- readiness ---------------------------------------------------------------------------------

def test_readiness_falls_under_the_threshold_on_day_k_then_the_app_is_ready() -> None:
    """shop/api gains 4, 3, 2 new edges on audit days 0–2, then at most 1 a day: quiet from
    day 3 on, ready after 3 quiet days (audit of 8 days: 3 needed of readiness_days 3)."""
    s = CoreSettings(audit_days=8, readiness_days=3, readiness_max_new_edges=1, audit_start=T0)
    inv = [{"ip": "10.0.1.1", "app": "api", "namespace": "shop"}] + [
        {"ip": f"10.0.2.{i}", "app": f"svc{i}", "namespace": "shop"} for i in range(1, 20)]
    plan = {0: [1, 2, 3, 4], 1: [5, 6, 7], 2: [8, 9], 4: [10], 6: [11]}
    recs = []
    for d in range(8):
        for first_day, svcs in plan.items():
            if d >= first_day:
                recs += [flow(T0 + d * DAY + 3600 + i, "10.0.1.1", f"10.0.2.{i}", 40000 + i, 8080)
                         for i in svcs]
    core = Pipeline(s, make_inventory(inv))
    out = core.process(flows_table(sorted(recs, key=lambda r: r["start"])))
    end = core.advance(T0 + 8 * DAY)
    rows = pa.concat_tables([out.readiness, end.readiness, core.flush().readiness])
    by_app = {r.key: r for r in readiness(rows)}
    api = by_app["shop/api"]
    assert api.new_edges_per_day == (4, 3, 2, 0, 1, 0, 1, 0)
    assert api.quiet_days == 5 and api.ready
    assert api.ready_since == T0 + 6 * DAY  # quiet from day 3, three quiet days later
    assert api.edges == 11
    svc10 = by_app["shop/svc10"]  # one edge on day 4: quiet from its first day
    assert svc10.new_edges_per_day == (1, 0, 0, 0) and svc10.ready
    # before day 6 closed, api was not ready yet
    early = readiness(rows.filter(pc.less(rows.column("day"),
                                                  pa.scalar(int(T0 + 5 * DAY),
                                                            pa.timestamp("s", tz="UTC")))))
    assert not {r.key: r for r in early}["shop/api"].ready


def test_readiness_rows_are_emitted_as_audit_days_close() -> None:
    s = CoreSettings(audit_days=4, audit_start=T0)
    core = Pipeline(s, make_inventory(INV))
    recs = sorted(steady(4), key=lambda r: r["start"])
    seen_days = []
    for d in range(4):
        part = [r for r in recs if T0 + d * DAY <= r["start"] < T0 + (d + 1) * DAY]
        out = core.process(flows_table(part))
        seen_days.append(sorted({t.timestamp() for t in out.readiness.column("day").to_pylist()}))
    assert seen_days == [[], [T0], [T0 + DAY], [T0 + 2 * DAY]]
    final = core.advance(T0 + 4 * DAY).readiness  # the audit's end: every day again
    assert sorted({t.timestamp() for t in final.column("day").to_pylist()}) == [
        T0 + d * DAY for d in range(4)]


def test_readiness_rows_of_sources_sum_to_the_whole() -> None:
    """Two partitions (clients split) report rows that add up to one pipeline's."""
    reg = Workloads()
    ids = {n: reg.intern(WorkloadInfo("ns", n, "pod")) for n in ("a", "b", "c")}
    reg.intern(WorkloadInfo("", "239.1.1.1", "multicast"))
    edges = [("a", "c", 0), ("a", "b", 1), ("b", "c", 1), ("b", "a", 2), ("a", "a", 2)]

    def base(sel: list[tuple[str, str, int]]) -> EdgeBaseline:
        b = EdgeBaseline()
        keys = np.array([edge_keys(np.array([ids[c]]), np.array([ids[s]]), np.array([80]),
                                   np.array([6]))[0] for c, s, _ in sel])
        starts = np.array([T0 + d * DAY + 5 for _, _, d in sel])
        b.partial_fit(keys, starts, np.ones(len(sel)), np.ones(len(sel)))
        return b

    def rows(b: EdgeBaseline, src: str) -> pa.Table:
        return readiness_rows(b, reg, audit_start=T0, audit_end=T0 + 4 * DAY, days=4,
                              source=src, max_new=0, need=2, version=1)

    whole = readiness(rows(base(edges), ""))
    parts = readiness(pa.concat_tables([rows(base([e for e in edges if e[0] == "a"]), "p0"),
                                        rows(base([e for e in edges if e[0] != "a"]), "p1")]))
    assert whole == parts
    got = {r.key: r.new_edges_per_day for r in whole}
    assert got == {"ns/a": (1, 1, 2, 0), "ns/b": (2, 1, 0), "ns/c": (1, 1, 0, 0)}
    assert APP_READINESS.schema == rows(base(edges), "").schema


# -- determinism -------------------------------------------------------------------------------

def test_findings_and_readiness_do_not_depend_on_batches_or_snapshots() -> None:
    s = CoreSettings(audit_days=4)
    recs = steady(5) + scan(T0 + 2 * DAY + 5 * 3600) + [
        flow(T0 + 4 * DAY + 3600 + i, INTRUDER, DB, 45000 + i, 5432) for i in range(3)]
    _, v1, r1, ready1 = run(recs, s, batches=1)
    _, v7, r7, ready7 = run(recs, s, batches=7)
    assert sorted(v1, key=lambda v: v["id"]) == sorted(v7, key=lambda v: v["id"]) and r1 == r7
    assert {v["mode"] for v in v1} == {"audit", "enforce"}
    assert readiness(ready1) == readiness(ready7)
    # shuffled within the lateness, in small batches
    rng = random.Random(3)
    jittered = sorted(recs, key=lambda r: r["start"] + rng.uniform(0, 200))
    core = Pipeline(s, make_inventory(INV))
    vj, ready_j = [], []
    for i in range(0, len(jittered), 50):
        o = core.process(flows_table(jittered[i:i + 50]))
        vj += o.violations
        ready_j.append(o.readiness)
        if i == 500:
            core = load_state(dump_state(core), s, make_inventory(INV))
    f = core.flush()
    vj += f.violations
    ready_j.append(f.readiness)

    def final(vs: list[dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
        last: dict[str, tuple[Any, ...]] = {}
        for v in vs:
            last[v["id"]] = (v["type"], v["mode"], v["count"], v["first_seen"], v["src_ip"])
        return last

    assert final(vj) == final(v1)
    assert readiness(pa.concat_tables(ready_j)) == readiness(ready1)


def test_the_new_type_is_declared_once() -> None:
    from pipeline.core.detect import TYPES

    assert "provisional_edge" in TYPES and "provisional_edge" in VIOLATION_TYPES
    w = AuditWatch()
    assert AuditWatch.from_state(w.state()).state() == w.state()

