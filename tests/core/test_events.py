"""Violation and rule events (core/events.py) from hand-built windows: ids, scores, severity
labels and reasons worked out by hand."""

from __future__ import annotations

import doctest
import hashlib
from typing import Any

import pytest

from pipeline.core import events
from pipeline.core.detect import NEW_EDGE, NEW_PORT, OFF_HOURS, SCAN, VOLUME, Agg
from pipeline.core.events import (
    KnownTraffic,
    iso,
    rule_event,
    severity_label,
    stable_id,
    violation_event,
)
from pipeline.core.intents import CandidateRule, Evidence, Peer, Workload, intent_dict
from pipeline.core.workloads import WORLD, WorkloadInfo, Workloads

W0 = 1_767_571_200.0  # 2026-01-05T00:00:00Z
NAMES = [("shop", "web"), ("shop", "db"), ("ops", "bastion"), ("", "unknown:10.9.9.9")]


def registry(order: list[tuple[str, str]] = NAMES) -> tuple[Workloads, dict[str, int]]:
    reg = Workloads()
    wids = {}
    for ns, app in order:
        kind = "unknown" if app.startswith("unknown:") else "pod"
        wids[f"{ns}/{app}" if ns else app] = reg.intern(WorkloadInfo(ns, app, kind))
    return reg, wids


REG, WID = registry()


def window(type_: str, src: str, dst: str | None, port: int, **kw: Any) -> Agg:
    a = Agg(type_, WORLD if src == "world" else WID[src], -1 if dst is None else WID[dst], port,
            6, W0, count=kw.pop("count", 3), first=W0 + 5, last=W0 + 65.5,
            client_ips=["10.0.0.1"], server_ips=["10.0.0.2"])
    for k, v in kw.items():
        setattr(a, k, v)
    return a


def event(a: Agg, known: KnownTraffic | None = None, reg: Workloads = REG) -> dict[str, Any]:
    return violation_event(a, reg, known or KnownTraffic(), scan_threshold=20,
                           suppress_window=3600.0, detection_lateness=30.0)


def test_ids_hash_names_and_window_so_every_process_agrees() -> None:
    e = event(window(NEW_EDGE, "shop/web", "shop/db", 5432))
    text = f"new_edge|shop/web|shop/db|5432|6|{int(W0)}"
    assert e["id"] == "v-" + hashlib.blake2b(text.encode(), digest_size=10).hexdigest()
    other, wid = registry(list(reversed(NAMES)))  # other wids for the same names
    a = Agg(NEW_EDGE, wid["shop/web"], wid["shop/db"], 5432, 6, W0, count=3, first=W0 + 5,
            last=W0 + 65.5, client_ips=["10.0.0.1"], server_ips=["10.0.0.2"])
    assert event(a, reg=other) == e
    assert event(window(NEW_EDGE, "shop/web", "shop/db", 5433))["id"] != e["id"]
    assert stable_id("v", "a", 1) == stable_id("v", "a", "1")  # text of the parts


def test_event_fields() -> None:
    e = event(window(NEW_EDGE, "shop/web", "shop/db", 5432, count=1500, bytes=42, rejected=1))
    assert {k: e[k] for k in ("ts", "first_seen", "last_seen", "src_ip", "dst_ip", "count",
                              "proto_name", "src_namespace", "dst_app", "mode", "detector")} == {
        "ts": "2026-01-05T00:00:05.000Z", "first_seen": "2026-01-05T00:00:05.000Z",
        "last_seen": "2026-01-05T00:01:05.500Z", "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2",
        "count": 1500, "proto_name": "tcp", "src_namespace": "shop", "dst_app": "db",
        "mode": "enforce", "detector": "edge_baseline"}
    # ts is the first flow; detected when event time is the detection lateness past it
    assert e["detected_at"] == "2026-01-05T00:00:35.000Z"
    # every flow raises the version: the highest version of an id is its complete record
    assert e["version"] == 1500
    assert e["evidence"]["seen"] == {"flows": 1500, "bytes": 42, "rejected_flows": 1,
                                     "src_ips": ["10.0.0.1"], "dst_ips": ["10.0.0.2"]}
    bare = event(window(NEW_EDGE, "shop/web", "shop/db", 5432, client_ips=[], server_ips=[]))
    assert (bare["src_ip"], bare["dst_ip"]) == ("", "")


@pytest.mark.parametrize(("score", "label"), [
    (0, "low"), (39, "low"), (40, "medium"), (64, "medium"), (65, "high"), (84, "high"),
    (85, "critical"), (100, "critical")])
def test_severity_labels(score: int, label: str) -> None:
    assert severity_label(score) == label


@pytest.mark.parametrize(("src", "port", "rejected", "score"), [
    ("shop/web", 8080, 0, 60),  # base
    ("shop/web", 5432, 0, 75),  # + data port
    ("shop/web", 22, 0, 75),  # + admin port
    ("world", 5432, 0, 85),  # + from outside
    ("unknown:10.9.9.9", 8080, 0, 70),  # + from an unknown internal address
    ("shop/web", 5432, 3, 55),  # - every attempt rejected
    ("shop/web", 5432, 2, 75),  # one got through
])
def test_new_edge_score(src: str, port: int, rejected: int, score: int) -> None:
    e = event(window(NEW_EDGE, src, "shop/db", port, rejected=rejected),
              KnownTraffic(service_clients={(WID["shop/db"], port, 6): ["ops/bastion"]}))
    assert e["severity"] == {"label": severity_label(score), "score": score}
    assert e["evidence"]["expected"] == {"known_clients_of_service": ["ops/bastion"]}
    src_key = "world" if src == "world" else src
    reason = f"{src_key} connected to shop/db on tcp/{port}, an edge never seen during the audit."
    assert e["reason"] == reason + (" All attempts were rejected." if rejected == 3 else "")


@pytest.mark.parametrize(("port", "score"), [(6379, 50), (2222, 65), (22, 60), (3389, 60)])
def test_new_port_score_and_known_ports(port: int, score: int) -> None:
    pair = (WID["shop/web"] << 19) | WID["shop/db"]
    e = event(window(NEW_PORT, "shop/web", "shop/db", port),
              KnownTraffic(pair_ports={pair: [5432, 6379]}))
    assert e["severity"]["score"] == score
    assert e["evidence"]["expected"] == {"known_ports": [5432, 6379]}
    assert e["reason"] == (f"shop/web reached shop/db on tcp/{port}; during the audit it only "
                           "used 5432, 6379.")
    unknown = event(window(NEW_PORT, "shop/web", "shop/db", port))
    assert unknown["reason"].endswith("it only used other ports.")


def test_scan_event_names_its_targets() -> None:
    servers = [WID["shop/db"], WID["ops/bastion"]]
    e = event(window(SCAN, "shop/web", None, 0, extra={
        "targets": 45, "ports": [22, 80, 443], "servers": servers}))
    assert (e["dst_workload"], e["dst_app"], e["dst_namespace"]) == ("multiple", "multiple", "")
    assert e["severity"] == {"label": "high", "score": 72}  # 70 + 45 // 20
    assert e["evidence"]["expected"] == {"max_new_targets_per_window": 20}
    seen = e["evidence"]["seen"]
    assert (seen["distinct_targets"], seen["ports"], seen["dst_workloads"]) == (
        45, [22, 80, 443], ["ops/bastion", "shop/db"])
    assert e["reason"] == ("shop/web tried 45 new destination/port pairs within 60 min "
                           "(port scan or sweep).")
    one = event(window(SCAN, "shop/web", None, 0, rejected=3, extra={
        "targets": 2000, "ports": [1], "servers": servers[:1]}))
    assert (one["dst_workload"], one["dst_namespace"], one["dst_app"]) == ("shop/db", "shop",
                                                                           "db")
    assert one["severity"]["score"] == 95  # capped; rejected scans are not discounted


def test_volume_spike_reason_and_score() -> None:
    e = event(window(VOLUME, "shop/web", "shop/db", 5432, extra={
        "hour_bytes": 2e9, "threshold_bytes": 5e7, "median_hour_bytes": 2e6}))
    assert e["severity"] == {"label": "critical", "score": 90}  # 60 + 10 * log10(1000)
    assert e["evidence"]["expected"] == {"threshold_bytes_per_hour": 50_000_000,
                                         "median_bytes_per_hour": 2_000_000}
    assert e["evidence"]["seen"]["hour_bytes"] == 2_000_000_000
    assert e["reason"] == ("shop/web sent 2 GB to shop/db on tcp/5432 within an hour, "
                           "~1000x its usual hourly volume.")


def test_off_hours_reason_and_score() -> None:
    e = event(window(OFF_HOURS, "ops/bastion", "shop/db", 5432, extra={
        "hour": 3, "usual_hours": [0, 9, 10, 11, 12, 23]}))
    assert e["severity"] == {"label": "high", "score": 65}  # 55 + data port
    assert e["evidence"]["expected"] == {"usual_hours_utc": [0, 9, 10, 11, 12, 23]}
    assert e["evidence"]["seen"]["hour_utc"] == 3
    assert e["reason"] == ("ops/bastion used its edge to shop/db on tcp/5432 at 3:00 UTC; "
                           "during the audit it was only active at hours 00, 09-12, 23 UTC.")


def test_rule_event() -> None:
    rule = CandidateRule(
        id="r-1", app=Workload("shop", "db", "pod", (("app", "db"),)), direction="ingress",
        peer=Peer("world", cidr="0.0.0.0/0", except_cidrs=("10.0.0.0/8",)), proto=17,
        ports=(53, 5353), evidence=Evidence(10, 2000, W0, W0 + 86_400, 2), confidence=0.87654)
    e = rule_event(rule, 7)
    assert e.pop("intent") == intent_dict(rule)  # the whole intent, for rendering later
    assert e == {
        "schema_version": 1, "id": "r-1", "app": "shop/db", "namespace": "shop",
        "direction": "ingress",
        "peer": {"kind": "world", "namespace": None, "app": None, "selector": None,
                 "cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]},
        "proto": 17, "proto_name": "udp", "ports": [53, 5353],
        "evidence": {"flows": 10, "bytes": 2000, "first_seen": iso(W0),
                     "last_seen": "2026-01-06T00:00:00.000Z", "days_observed": 2},
        "confidence": 0.877, "status": "proposed", "provisional": False,
        "version": 7}


def test_docstring_examples() -> None:
    result = doctest.testmod(events)
    assert result.attempted >= 4 and result.failed == 0
