"""Incidents (pipeline/core/incidents.py): grouping by source and window whatever the batches
and the arrival order, idempotent member updates, versions, criticality, bounds; and through
the core on real flows."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from typing import Any

import pytest

from pipeline.core.events import iso, severity_label
from pipeline.core.incidents import (
    MEMBERS_MAX,
    Incidents,
    incident_id,
    parse_criticality,
    source_of,
)
from pipeline.core.pipeline import Pipeline
from pipeline.core.settings import CoreSettings
from pipeline.stream.outputs import latest_by_id
from tests.conftest import T0, flow, flows_table, make_inventory
from tests.core.test_pipeline import AFTER, INV, audit_traffic

HOUR = 3600.0
LABELS = {("shop", "db"): (("tier", "db"),), ("ops", "vault"): (("criticality", "critical"),)}
CRIT = parse_criticality(["tier=db:15", "criticality=critical:25"])


def labels_of(ns: str, app: str) -> tuple[tuple[str, str], ...]:
    return LABELS.get((ns, app), ())


def violation_versions(rng: random.Random, n: int) -> list[dict[str, Any]]:
    """``n`` violations from a few sources over six hours, each emitted first and then
    updated 0–3 times (same id, higher version, count and last_seen grown)."""
    sources = [("shop", "web", "10.0.0.1"), ("ops", "batch", "10.0.0.3"),
               ("", "world", "203.0.113.9"), ("", "world", "198.51.100.7")]
    dsts = [("shop", "db"), ("ops", "vault"), ("shop", "cache")]
    out = []
    for i in range(n):
        ns, app, ip = rng.choice(sources)
        dns, dapp = rng.choice(dsts)
        ts = T0 + rng.uniform(0, 6 * HOUR)
        score = rng.randint(20, 90)
        last = ts
        for u in range(rng.randint(1, 4)):
            last += rng.uniform(0, 600)
            out.append({
                "id": f"v-{i}", "ts": iso(ts),
                "type": rng.choice(["new_edge", "scan", "off_hours"]),
                "severity": {"label": severity_label(score), "score": score},
                "src_ip": ip, "src_workload": f"{ns}/{app}" if ns else app,
                "src_namespace": ns, "src_app": app,
                "dst_workload": f"{dns}/{dapp}", "dst_namespace": dns, "dst_app": dapp,
                "count": u + 1, "last_seen": iso(last), "version": int(last * 1000) * 1000 + u + 1,
            })
    return out


def reference(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Slow and obvious: the latest version of each violation, grouped by (source, hour)."""
    latest = latest_by_id(events)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for v in latest.values():
        t = json_time(v["ts"])
        groups[incident_id(source_of(v), t // HOUR * HOUR)].append(v)
    out = {}
    for iid, vs in groups.items():
        boost = 0
        for v in vs:
            for end in ((v["src_namespace"], v["src_app"]), (v["dst_namespace"], v["dst_app"])):
                boost = max([boost, *(CRIT.get(lab, 0) for lab in labels_of(*end))])
        score = min(100, max(v["severity"]["score"] for v in vs) + boost)
        out[iid] = {"violation_ids": sorted(v["id"] for v in vs), "score": score,
                    "version": sum(v["version"] for v in vs),
                    "flows": sum(v["count"] for v in vs)}
    return out


def json_time(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def run(events: list[dict[str, Any]], chunk: int) -> list[dict[str, Any]]:
    inc = Incidents(window=HOUR, hold=HOUR, criticality=CRIT)
    emitted: list[dict[str, Any]] = []
    for i in range(0, len(events), chunk):
        emitted += inc.absorb(events[i:i + chunk], labels_of)
    return emitted


def summary(incidents: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {k: {"violation_ids": sorted(v["violation_ids"]), "score": v["severity"]["score"],
                "version": v["version"], "flows": v["flows"]} for k, v in incidents.items()}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_same_incidents_and_ids_whatever_the_batches_and_the_order(seed: int) -> None:
    rng = random.Random(seed)
    events = violation_versions(rng, 60)
    expected = reference(events)
    results = []
    for chunk in (1, 7, len(events)):
        for order in ("emitted", "shuffled", "reversed"):
            evs = list(events)
            if order == "shuffled":
                rng.shuffle(evs)
            elif order == "reversed":
                evs.reverse()
            emitted = run(evs, chunk)
            final = latest_by_id(emitted)
            assert summary(final) == expected, (chunk, order)
            results.append(final)
            # versions only grow per incident, whatever arrives when
            seen: dict[str, int] = {}
            for e in emitted:
                assert e["version"] > seen.get(e["id"], -1)
                seen[e["id"]] = e["version"]
    assert all(r == results[0] for r in results)  # every field, not only the summary
    # grouping: each source's violations of one hour are one incident
    assert len(results[0]) == len(expected) < len({v["id"] for v in events})


def test_repeated_and_older_versions_change_nothing() -> None:
    events = violation_versions(random.Random(5), 10)
    inc = Incidents(window=HOUR, hold=HOUR)
    first = inc.absorb(events, labels_of)
    assert first
    assert inc.absorb(events, labels_of) == []  # the same again: idempotent
    assert inc.absorb(list(reversed(events)), labels_of) == []


def test_criticality_raises_severity() -> None:
    base = {"ts": iso(T0), "type": "new_edge", "severity": {"label": "high", "score": 75},
            "src_ip": "10.0.0.4", "src_workload": "x/intruder", "src_namespace": "x",
            "src_app": "intruder", "count": 1, "version": 1}
    inc = Incidents(window=HOUR, hold=HOUR, criticality=CRIT)
    plain, = inc.absorb([{**base, "id": "v-1", "dst_workload": "shop/cache",
                          "dst_namespace": "shop", "dst_app": "cache"}], labels_of)
    assert plain["severity"] == {"label": "high", "score": 75} and plain["criticality"] == 0
    raised, = inc.absorb([{**base, "id": "v-2", "dst_workload": "shop/db",
                           "dst_namespace": "shop", "dst_app": "db"}], labels_of)
    assert raised["id"] == plain["id"]  # same source and hour: the same incident
    assert raised["severity"] == {"label": "critical", "score": 90}
    assert raised["criticality"] == 15 and raised["base_score"] == 75
    assert raised["critical_assets"] == ["shop/db (tier=db)"]
    assert raised["violation_ids"] == ["v-1", "v-2"] and raised["version"] > plain["version"]
    assert "shop/db (tier=db)" in raised["reason"]
    # without a criticality mapping the same members stay high
    none = Incidents(window=HOUR, hold=HOUR).absorb([{**base, "id": "v-2", "dst_workload":
                                                      "shop/db", "dst_namespace": "shop",
                                                      "dst_app": "db"}], labels_of)
    assert none[0]["severity"]["label"] == "high"


def test_sources_without_identity_are_grouped_by_address() -> None:
    evs = [{"id": f"v-{i}", "ts": iso(T0 + i), "type": "scan",
            "severity": {"label": "high", "score": 70}, "src_ip": ip, "src_workload": "world",
            "src_namespace": "", "src_app": "world", "dst_workload": "multiple",
            "dst_namespace": "", "dst_app": "multiple",
            "evidence": {"seen": {"dst_workloads": ["shop/db", "shop/web"]}}, "version": 1}
           for i, ip in enumerate(["203.0.113.1", "203.0.113.2", "203.0.113.1"])]
    out = latest_by_id(Incidents(window=HOUR, hold=HOUR, criticality=CRIT).absorb(
        evs, labels_of))
    assert sorted(e["source"] for e in out.values()) == ["world:203.0.113.1",
                                                         "world:203.0.113.2"]
    one = next(e for e in out.values() if e["source"] == "world:203.0.113.1")
    assert one["violations"] == 2 and one["dst_workloads"] == ["shop/db", "shop/web"]
    assert one["criticality"] == 15  # a scan's destinations count as touched assets


def test_internet_sources_are_grouped_by_the_internal_workload_they_reach() -> None:
    evs = [{"id": f"v-{i}", "ts": iso(T0 + 60 * i), "type": "new_edge",
            "severity": {"label": "medium", "score": 40 + i % 3}, "src_ip": f"198.51.100.{i}",
            "src_workload": "world", "src_namespace": "", "src_app": "world",
            "dst_workload": dst, "dst_namespace": "shop", "dst_app": dst.split("/")[1],
            "version": 1}
           for i, dst in enumerate(["shop/web"] * 30 + ["shop/db"] * 5)]
    out = latest_by_id(Incidents(window=HOUR, hold=HOUR).absorb(evs, labels_of))
    by_source = {e["source"]: e for e in out.values()}
    assert set(by_source) == {"world->shop/web", "world->shop/db"}
    assert by_source["world->shop/web"]["violations"] == 30
    again = latest_by_id(Incidents(window=HOUR, hold=HOUR).absorb(evs[::-1], labels_of))
    assert set(again) == set(out)  # ids do not depend on arrival order


def test_open_incidents_and_members_are_bounded() -> None:
    inc = Incidents(window=HOUR, hold=HOUR, max_open=50)
    flood = [{"id": f"v-{i}", "ts": iso(T0 + i), "type": "new_edge",
              "severity": {"label": "low", "score": 30}, "src_ip": f"198.51.{i // 250}.{i % 250}",
              "src_workload": "world", "src_namespace": "", "src_app": "world",
              "dst_workload": f"shop/web-{i}", "dst_namespace": "shop", "dst_app": f"web-{i}",
              "version": 1} for i in range(2000)]  # one incident per internal target
    for i in range(0, len(flood), 100):
        inc.absorb(flood[i:i + 100], labels_of)
        assert len(inc.open_) <= 100 and len(inc.recent_) <= 50
    assert inc.forced_closes_ > 0
    one = Incidents(window=HOUR, hold=HOUR)
    same = [{**v, "src_ip": "198.51.100.1", "dst_workload": "shop/web", "dst_app": "web"}
            for v in flood[:MEMBERS_MAX + 40]]
    out = one.absorb(same, labels_of)
    assert len(out) == 1 and out[0]["violations"] == MEMBERS_MAX
    assert one.dropped_members_ == 40


def test_closed_incidents_leave_the_open_set_and_state_round_trips() -> None:
    events = sorted(violation_versions(random.Random(9), 40), key=lambda v: v["last_seen"])
    whole = Incidents(window=HOUR, hold=HOUR, criticality=CRIT)
    a = whole.absorb(events, labels_of)
    half = len(events) // 2
    first = Incidents(window=HOUR, hold=HOUR, criticality=CRIT)
    b = first.absorb(events[:half], labels_of)
    restored = Incidents.from_state(json.loads(json.dumps(first.state())), window=HOUR,
                                    hold=HOUR, criticality=CRIT)
    b += restored.absorb(events[half:], labels_of)
    assert latest_by_id(a) == latest_by_id(b)
    restored.advance(T0 + 100 * HOUR)
    assert len(restored) == 0 and len(restored.recent_) > 0


# -- through the core --------------------------------------------------------------------

def core_run(records: list[dict[str, Any]], batches: int, inventory: list[dict[str, Any]]
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    records = sorted(records, key=lambda r: r["start"])
    core = Pipeline(CoreSettings(audit_days=4), make_inventory(inventory))
    vs, incs = [], []
    size = -(-len(records) // batches)
    for i in range(0, len(records), size):
        o = core.process(flows_table(records[i:i + size]), source_id="t", block=i)
        vs += o.violations
        incs += o.incidents
    f = core.flush()
    return vs + f.violations, incs + f.incidents


def test_core_groups_a_sources_violations_into_one_critical_incident() -> None:
    inv = [dict(r) for r in INV]
    inv[1]["labels"] = {"tier": "db"}  # shop/db
    recs = [*audit_traffic(),
            # the intruder reaches the db, then scans web and batch (one scan event)
            flow(AFTER, "10.0.0.4", "10.0.0.2", 50000, 5432),
            *[flow(AFTER + 60 + i, "10.0.0.4", ip, 50001, 2000 + i, action="reject")
              for i in range(30) for ip in ("10.0.0.1", "10.0.0.3")],
            # two hours later web opens ssh to batch and exfiltrates from the db: one incident
            flow(AFTER + 7200, "10.0.0.1", "10.0.0.3", 52000, 22),
            *[flow(AFTER + 7200 + i * 60, "10.0.0.1", "10.0.0.2", 45000 + i, 5432,
                   nbytes=1_000_000) for i in range(40)]]
    runs = [core_run(recs, b, inv) for b in (1, 5, 23)]
    finals = [latest_by_id(incs) for _, incs in runs]
    assert finals[0] == finals[1] == finals[2]
    final = finals[0]
    by_source = {e["source"]: e for e in final.values()}
    assert set(by_source) == {"x/intruder", "shop/web"}
    vids = {v["id"]: v for v in runs[0][0]}
    web = by_source["shop/web"]
    # the exactly periodic 1 MB flows are also one host's volume and a beacon (core/hostdetect),
    # and the behaviour model corroborates the host's hour (core/behaviour)
    assert web["types"] == ["beacon", "behaviour_anomaly", "host_volume", "new_edge",
                            "volume_spike"]
    assert web["violations"] == 5
    assert web["critical_assets"] == ["shop/db (tier=db)"] and web["criticality"] == 15
    assert web["severity"]["score"] == min(
        100, max(vids[i]["severity"]["score"] for i in web["violation_ids"]) + 15)
    assert web["id"] == incident_id("shop/web", (AFTER + 7200) // HOUR * HOUR)
    intruder = by_source["x/intruder"]
    # its db edge came a minute before the scan (more than half the detection lateness):
    # reported alone on its first flow, the scan's targets folded
    assert intruder["types"] == ["new_edge", "scan"] and intruder["critical_assets"] == [
        "shop/db (tier=db)"]
    # every violation is in exactly one incident
    members = [i for e in final.values() for i in e["violation_ids"]]
    assert sorted(members) == sorted(latest_by_id(runs[0][0]))
