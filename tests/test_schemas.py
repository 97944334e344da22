"""JSON Schemas in schemas/: valid draft 2020-12, accept good examples, reject broken ones."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
DROP = object()  # mutation value meaning "remove the key"


def validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def mutate(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    node: Any = out
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[key]
    if value is DROP:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return out


FLOW = {
    "start": 1770260400.25,
    "end": "2026-02-05T03:00:01.500Z",
    "src_ip": "10.0.1.5",
    "dst_ip": "fd00::2",
    "src_port": 51234,
    "dst_port": 443,
    "proto": "tcp",
    "bytes": 1200,
    "packets": 4,
    "action": "accept",
    "tcp_flags": 27,
    "exporter": "node-1",
    "src_workload": {"app": "web", "namespace": "shop", "labels": {"app": "web"}},
    "dst_workload": {"app": "api"},
    "meta": {"sampling_rate": 1},
}
INVENTORY = {
    "ip": "10.0.1.5",
    "app": "web",
    "namespace": "shop",
    "env": "prod",
    "labels": "app=web;tier=front",
    "service_account": "web-sa",
    "kind": "pod",
    "valid_from": 1770000000,
    "valid_to": "2026-03-01T00:00:00Z",
    "owner": "team-a",
}
VIOLATION = {
    "schema_version": 1,
    "id": "v-3f2a",
    "ts": "2026-02-05T03:00:00.000Z",
    "type": "new_edge",
    "severity": {"label": "high", "score": 80},
    "src_ip": "10.0.1.5",
    "dst_ip": "10.0.2.9",
    "dst_port": 5432,
    "proto": 6,
    "proto_name": "tcp",
    "src_workload": "shop/web",
    "src_namespace": "shop",
    "src_app": "web",
    "dst_workload": "data/postgres",
    "dst_namespace": "data",
    "dst_app": "postgres",
    "mode": "audit",
    "reason": "shop/web never talked to data/postgres during the baseline.",
    "evidence": {"expected": ["shop/api"], "seen": "shop/web"},
    "count": 3,
    "first_seen": "2026-02-05T03:00:00.000Z",
    "last_seen": "2026-02-05T03:04:10.250Z",
    "detector": "baseline",
    "version": 2,
}
RULE = {
    "schema_version": 1,
    "id": "r-91c0",
    "app": "data/postgres",
    "namespace": "data",
    "direction": "ingress",
    "peer": {
        "kind": "workload",
        "namespace": "shop",
        "app": "api",
        "selector": {"app": "api"},
        "cidr": None,
        "except": [],
    },
    "proto": 6,
    "proto_name": "tcp",
    "ports": [5432],
    "evidence": {
        "flows": 1200,
        "bytes": 3400000,
        "first_seen": "2026-01-20T00:00:00.000Z",
        "last_seen": "2026-02-04T23:59:00.000Z",
        "days_observed": 16,
    },
    "confidence": 0.97,
    "status": "proposed",
    "version": 1,
}
INCIDENT = {
    "schema_version": 1,
    "id": "inc-0123456789abcdef0123",
    "ts": "2026-02-05T03:00:00.000Z",
    "severity": {"label": "critical", "score": 90},
    "source": "shop/web",
    "src_namespace": "shop",
    "src_app": "web",
    "src_ip": "10.1.0.4",
    "first_seen": "2026-02-05T03:12:00.000Z",
    "last_seen": "2026-02-05T03:40:00.000Z",
    "detected_at": "2026-02-05T03:13:00.000Z",
    "violations": 2,
    "flows": 41,
    "types": ["new_edge", "volume_spike"],
    "dst_workloads": ["payments/ledger"],
    "violation_ids": ["v-1", "v-2"],
    "base_score": 75,
    "criticality": 15,
    "critical_assets": ["payments/ledger (tier=db)"],
    "reason": "shop/web raised 2 violations (new_edge, volume_spike).",
    "version": 3,
}
GOOD: dict[str, list[dict[str, Any]]] = {
    "incident": [INCIDENT, mutate(mutate(INCIDENT, "critical_assets", []), "criticality", 0)],
    "flow": [
        FLOW,
        mutate(mutate(FLOW, "proto", 1), "src_port", 0),
        {k: FLOW[k] for k in ("start", "end", "src_ip", "dst_ip", "src_port", "dst_port")}
        | {"proto": 17, "bytes": 0, "packets": 0},
    ],
    "inventory": [
        INVENTORY,
        {"cidr": "10.0.0.0/16", "app": "vpc-a", "labels": {"team": "a"}},
        {"cidr": "fd00::/64", "app": "v6-net"},
    ],
    "violation": [VIOLATION, mutate(VIOLATION, "dst_ip", "2001:db8::1")],
    "candidate_rule": [
        RULE,
        mutate(RULE, "peer", {"kind": "cidr", "cidr": "10.8.0.0/16"}),
        mutate(
            mutate(RULE, "peer", {"kind": "world", "cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}),
            "ports",
            [],
        ),
    ],
}
BAD: list[tuple[str, str, Any]] = [
    ("flow", "start", DROP),
    ("flow", "start", -1),
    ("flow", "end", "yesterday"),
    ("flow", "src_ip", "10.0.1.300"),
    ("flow", "dst_ip", "not-an-ip"),
    ("flow", "dst_port", 65536),
    ("flow", "proto", 256),
    ("flow", "proto", "gre"),
    ("flow", "bytes", -5),
    ("flow", "action", "drop"),
    ("flow", "tcp_flags", 512),
    ("flow", "src_workload", {"namespace": "shop"}),
    ("flow", "surprise", 1),
    ("inventory", "ip", DROP),
    ("inventory", "cidr", "10.0.0.0/8"),  # both ip and cidr
    ("inventory", "app", DROP),
    ("inventory", "labels", "app"),
    ("inventory", "valid_to", "tomorrow"),
    ("inventory", "valid_from", 1767571200000),  # milliseconds
    ("inventory", "ip", "999.1.1.1"),
    ("violation", "id", DROP),
    ("violation", "ts", "2026-02-05T03:00:00Z"),  # no milliseconds
    ("violation", "type", "weird"),
    ("violation", "severity.label", "urgent"),
    ("violation", "severity.score", 101),
    ("violation", "mode", "block"),
    ("violation", "count", 0),
    ("violation", "evidence", {"seen": "x"}),
    ("violation", "schema_version", 2),
    ("violation", "extra", True),
    ("incident", "id", DROP),
    ("incident", "severity.label", "urgent"),
    ("incident", "violations", 0),
    ("incident", "types", "scan"),
    ("incident", "detected_at", "2026-02-05T03:13:00Z"),
    ("candidate_rule", "direction", "both"),
    ("candidate_rule", "peer.kind", "pod"),
    ("candidate_rule", "peer.app", DROP),  # workload peer without app
    ("candidate_rule", "peer", {"kind": "cidr"}),
    ("candidate_rule", "ports", [0]),
    ("candidate_rule", "ports", [443, 443]),
    ("candidate_rule", "confidence", 1.5),
    ("candidate_rule", "status", "maybe"),
    ("candidate_rule", "evidence.days_observed", DROP),
    ("candidate_rule", "evidence.first_seen", 1770000000),
]


@pytest.mark.parametrize("name", sorted(GOOD))
def test_schema_is_valid_draft_2020_12(name: str) -> None:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize(("name", "index"), [(n, i) for n in GOOD for i in range(len(GOOD[n]))])
def test_good_examples_validate(name: str, index: int) -> None:
    errors = [e.message for e in validator(name).iter_errors(GOOD[name][index])]
    assert errors == []


@pytest.mark.parametrize(("name", "path", "value"), BAD, ids=[f"{n}:{p}" for n, p, _ in BAD])
def test_bad_examples_fail(name: str, path: str, value: Any) -> None:
    doc = mutate(GOOD[name][0], path, value)
    assert not validator(name).is_valid(doc)
