"""Violation and candidate-rule events as JSON-ready dicts, with deterministic ids.

Ids hash *names* (workload keys, ports, window start), never process-local numbers, so a
replay, a second worker or a restarted worker produce the same id for the same finding.
Timestamps are RFC 3339 UTC with milliseconds.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from pipeline.core.intents import CandidateRule, Peer

SCHEMA_VERSION = 1
PROTO_LABELS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp", 47: "gre", 50: "esp"}


def iso(t: float) -> str:
    """RFC 3339 UTC with milliseconds.

    >>> iso(0)
    '1970-01-01T00:00:00.000Z'
    """
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def stable_id(prefix: str, *parts: object) -> str:
    """``prefix-<20 hex>`` from the parts' text; same parts → same id in every process."""
    text = "|".join(str(p) for p in parts)
    return f"{prefix}-{hashlib.blake2b(text.encode(), digest_size=10).hexdigest()}"


def proto_name(proto: int) -> str:
    return PROTO_LABELS.get(proto, str(proto))


def severity_label(score: int) -> str:
    if score >= 85:
        return "critical"
    if score >= 65:
        return "high"
    if score >= 40:
        return "medium"
    return "low"


def peer_dict(peer: Peer) -> dict[str, Any]:
    w = peer.workload
    return {
        "kind": peer.kind,
        "namespace": w.namespace if w else None,
        "app": w.app if w else None,
        "selector": dict(w.selector) if w else None,
        "cidr": peer.cidr,
        "except": list(peer.except_cidrs),
    }


def peer_text(peer: Peer) -> str:
    if peer.kind == "workload" and peer.workload is not None:
        return peer.workload.key
    return peer.cidr or "world"


def rule_event(rule: CandidateRule, version: int) -> dict[str, Any]:
    """The candidate-rule event for one rule."""
    ev = rule.evidence
    return {
        "schema_version": SCHEMA_VERSION,
        "id": rule.id,
        "app": rule.app.key,
        "namespace": rule.app.namespace,
        "direction": rule.direction,
        "peer": peer_dict(rule.peer),
        "proto": rule.proto,
        "proto_name": proto_name(rule.proto),
        "ports": list(rule.ports),
        "evidence": {
            "flows": ev.flows,
            "bytes": ev.bytes,
            "first_seen": iso(ev.first_seen),
            "last_seen": iso(ev.last_seen),
            "days_observed": ev.days_observed,
        },
        "confidence": round(rule.confidence, 3),
        "status": rule.status,
        "version": version,
    }


__all__ = [
    "SCHEMA_VERSION",
    "iso",
    "peer_dict",
    "peer_text",
    "proto_name",
    "rule_event",
    "severity_label",
    "stable_id",
]
