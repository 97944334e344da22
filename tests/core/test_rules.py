"""Candidate rules (core/rules.py) derived from tiny hand-built baselines, and against a slow
reference (one edge at a time into dicts) on random baselines."""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.baseline import EdgeBaseline, edge_keys
from pipeline.core.intents import CandidateRule
from pipeline.core.rules import derive_rules
from pipeline.core.workloads import OVERFLOW, WORLD, WorkloadInfo, Workloads

T0 = 1_767_571_200.0
DAY = 86_400.0
INTERNAL = ("10.0.0.0/8", "fd00::/8")


def registry() -> tuple[Workloads, dict[str, int]]:
    reg = Workloads()
    wids = {"world": WORLD, "overflow": OVERFLOW}
    for info in (WorkloadInfo("shop", "web", labels=(("app.kubernetes.io/name", "web-ui"),)),
                 WorkloadInfo("shop", "db"),
                 WorkloadInfo("ops", "backup", kind="vm"),
                 WorkloadInfo("", "unknown:10.9.9.9", kind="unknown"),
                 WorkloadInfo("", "unknown:fd00::1", kind="unknown")):
        wids[info.key] = reg.intern(info)
    return reg, wids


REG, W = registry()


def learn(edges: list[tuple[str, str, int, int, float, int]]) -> EdgeBaseline:
    """One flow per (client, server, port, proto, start, bytes)."""
    b = EdgeBaseline()
    c, s, port, proto, start, nbytes = zip(*edges, strict=True)
    keys = edge_keys(np.array([W[x] for x in c]), np.array([W[x] for x in s]),
                     np.array(port), np.array(proto))
    return b.partial_fit(keys, np.array(start, dtype=float), np.array(nbytes),
                         np.ones(len(edges), dtype=np.int64))


def rid(*parts: object) -> str:
    text = "|".join(str(p) for p in parts)
    return "r-" + hashlib.blake2b(text.encode(), digest_size=10).hexdigest()


def brief(r: CandidateRule) -> tuple[Any, ...]:
    peer = r.peer.workload.key if r.peer.kind == "workload" and r.peer.workload else r.peer.cidr
    return (r.app.key, r.direction, r.peer.kind, peer, r.proto, r.ports)


def test_each_edge_gives_an_ingress_and_an_egress_rule_merged_by_peer_and_protocol() -> None:
    b = learn([
        ("shop/web", "shop/db", 5432, 6, T0, 100),
        ("shop/web", "shop/db", 5432, 6, T0 + DAY, 50),
        ("shop/web", "shop/db", 6379, 6, T0 + 2 * DAY + 5, 10),
        ("shop/web", "shop/db", 0, 1, T0 + 7, 1),  # icmp: no ports
    ])
    rules = derive_rules(b, REG, audit_days=30, internal_cidrs=INTERNAL)
    assert [r.id for r in rules] == sorted(r.id for r in rules)
    assert {brief(r) for r in rules} == {
        ("shop/db", "ingress", "workload", "shop/web", 6, (5432, 6379)),
        ("shop/web", "egress", "workload", "shop/db", 6, (5432, 6379)),
        ("shop/db", "ingress", "workload", "shop/web", 1, ()),
        ("shop/web", "egress", "workload", "shop/db", 1, ()),
    }
    tcp = next(r for r in rules if r.direction == "ingress" and r.proto == 6)
    assert tcp.id == rid("shop/db", "ingress", "workload", "shop/web", 6, "5432,6379")
    ev = tcp.evidence
    assert (ev.flows, ev.bytes, ev.first_seen, ev.last_seen, ev.days_observed) == (
        3, 160, T0, T0 + 2 * DAY + 5, 2)  # days: the most any one edge was seen
    # persistence 2 of 7 days, volume log10(1 + 3) / 3
    assert tcp.confidence == round(0.6 * 2 / 7 + 0.4 * math.log10(4) / 3, 3)
    assert tcp.status == "proposed"
    # selectors: a well-known label when the inventory gives one, else app=<name>
    web = next(r for r in rules if r.direction == "egress" and r.proto == 6).app
    assert web.selector == (("app.kubernetes.io/name", "web-ui"),)
    assert tcp.app.selector == (("app", "db"),)


def test_peers_outside_pods() -> None:
    b = learn([
        ("world", "shop/web", 443, 6, T0, 1),
        ("shop/web", "unknown:10.9.9.9", 53, 17, T0, 1),
        ("unknown:fd00::1", "shop/db", 5432, 6, T0, 1),
        ("shop/db", "ops/backup", 22, 6, T0, 1),
        ("overflow", "shop/db", 5432, 6, T0, 1),
        ("shop/web", "overflow", 80, 6, T0, 1),
    ])
    rules = derive_rules(b, REG, audit_days=30, internal_cidrs=INTERNAL,
                         workload_cidrs={W["ops/backup"]: ["10.5.0.0/24", "10.6.0.0/24"]})
    got = {brief(r) for r in rules}
    assert got == {
        # the outside world is a peer (internal ranges carved out), never a protected app
        ("shop/web", "ingress", "world", "0.0.0.0/0", 6, (443,)),
        # internal addresses no inventory entry covers stay visible as single addresses
        ("shop/web", "egress", "cidr", "10.9.9.9/32", 17, (53,)),
        ("unknown:10.9.9.9", "ingress", "workload", "shop/web", 17, (53,)),
        ("shop/db", "ingress", "cidr", "fd00::1/128", 6, (5432,)),
        ("unknown:fd00::1", "egress", "workload", "shop/db", 6, (5432,)),
        # a VM is reached by the address blocks the inventory gives it
        ("shop/db", "egress", "cidr", "10.5.0.0/24", 6, (22,)),
        ("shop/db", "egress", "cidr", "10.6.0.0/24", 6, (22,)),
        ("ops/backup", "ingress", "workload", "shop/db", 6, (22,)),
        # edges of the overflow identity are not rules at all
    }
    world = next(r for r in rules if r.peer.kind == "world")
    assert world.peer.except_cidrs == INTERNAL
    assert world.id == rid("shop/web", "ingress", "world", "0.0.0.0/0", 6, "443")
    vm = [r for r in rules if r.peer.kind == "cidr" and r.peer.workload]
    assert {r.peer.workload.key for r in vm if r.peer.workload} == {"ops/backup"}


def test_no_edges_no_rules() -> None:
    assert derive_rules(EdgeBaseline(), REG, audit_days=30, internal_cidrs=INTERNAL) == []


def test_short_audits_expect_fewer_days() -> None:
    b = learn([("shop/web", "shop/db", 5432, 6, T0 + d * DAY, 1) for d in range(2)])
    [r, _] = derive_rules(b, REG, audit_days=2, internal_cidrs=INTERNAL)
    assert r.confidence == round(0.6 * 1.0 + 0.4 * math.log10(3) / 3, 3)


# -- against a slow reference ---------------------------------------------------------------

NAMES = ["world", "overflow", "shop/web", "shop/db", "unknown:10.9.9.9"]


def reference(edges: list[tuple[str, str, int, int, float, int]], audit_days: float
              ) -> set[tuple[Any, ...]]:
    per_edge: dict[tuple[str, str, int, int], dict[str, Any]] = {}
    for c, s, port, proto, start, nbytes in edges:
        e = per_edge.setdefault((c, s, port, proto), {"flows": 0, "bytes": 0, "days": set(),
                                                      "first": start, "last": start})
        e["flows"] += 1
        e["bytes"] += nbytes
        e["days"].add(int(start // DAY))
        e["first"], e["last"] = min(e["first"], start), max(e["last"], start)
    rules: dict[tuple[str, str, str, int], list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for (c, s, port, proto), e in per_edge.items():
        if "overflow" in (c, s):
            continue
        rules[(s, "ingress", c, proto)].append((port, e))
        rules[(c, "egress", s, proto)].append((port, e))
    out = set()
    for (app, direction, peer, proto), members in rules.items():
        if app == "world":
            continue
        flows = sum(e["flows"] for _, e in members)
        days = max(len(e["days"]) for _, e in members)
        confidence = round(0.6 * min(1.0, days / max(1.0, min(7.0, audit_days)))
                           + 0.4 * min(1.0, math.log10(1 + flows) / 3), 3)
        kind, key = (("world", "0.0.0.0/0") if peer == "world" else
                     ("cidr", "10.9.9.9/32") if peer.startswith("unknown:") else
                     ("workload", peer))
        ports = tuple(sorted({p for p, _ in members})) if proto in (6, 17, 132) else ()
        out.add((app, direction, kind, key, proto, ports, flows,
                 sum(e["bytes"] for _, e in members), days,
                 min(e["first"] for _, e in members), max(e["last"] for _, e in members),
                 confidence))
    return out


edge = st.tuples(st.sampled_from(NAMES), st.sampled_from(NAMES), st.sampled_from([22, 53, 443]),
                 st.sampled_from([1, 6, 17]), st.integers(0, 9 * 86_400).map(lambda s: T0 + s),
                 st.integers(0, 10**6))


@settings(max_examples=100, deadline=None)
@given(edges=st.lists(edge, min_size=1, max_size=40), audit_days=st.sampled_from([0.5, 3, 30]))
def test_rules_equal_the_reference(edges: list[tuple[str, str, int, int, float, int]],
                                   audit_days: float) -> None:
    rules = derive_rules(learn(edges), REG, audit_days=audit_days, internal_cidrs=INTERNAL)
    got = set()
    for r in rules:
        ev = r.evidence
        got.add((*brief(r), ev.flows, ev.bytes, ev.days_observed, ev.first_seen, ev.last_seen,
                 r.confidence))
    assert got == reference(edges, audit_days)
    assert len(got) == len(rules) and [r.id for r in rules] == sorted({r.id for r in rules})
