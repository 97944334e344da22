"""Violation and candidate-rule events as JSON-ready dicts, with deterministic ids.

Ids hash *names* (workload keys, ports, window start), never process-local numbers, so a
replay, a second worker or a restarted worker produce the same id for the same finding.
Timestamps are RFC 3339 UTC with milliseconds.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.core.detect import (
    BEACON,
    BEHAVIOUR,
    FAILED,
    FAN_OUT,
    HOST_VOLUME,
    NEW_EDGE,
    NEW_PORT,
    PROVISIONAL_EDGE,
    SCAN,
    VOLUME,
    Agg,
)
from pipeline.core.enrich import SERVICE_PORTS
from pipeline.core.intents import CandidateRule, Peer, intent_dict
from pipeline.core.workloads import WORLD, Workloads

SCHEMA_VERSION = 1
PROTO_LABELS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp", 47: "gre", 50: "esp"}
DATA_PORTS = frozenset({1433, 1521, 3306, 5432, 5984, 6379, 7000, 9042, 9200, 11211, 27017})
ADMIN_PORTS = frozenset({22, 23, 135, 445, 3389, 5900, 5985, 5986})


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


def latest_by_id(events: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Deduplicate events: per id, the one with the highest version (later wins ties), in
    the order ids were first seen — what a consumer of the violation topic keeps.

    >>> latest_by_id([{"id": "v-1", "version": 2}, {"id": "v-1", "version": 1}])
    {'v-1': {'id': 'v-1', 'version': 2}}
    """
    out: dict[str, dict[str, Any]] = {}
    for e in events:
        old = out.get(e["id"])
        if old is None or e["version"] >= old["version"]:
            out[e["id"]] = e
    return out


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
        "provisional": rule.provisional,
        "intent": intent_dict(rule),  # the complete intent, so a stored rule can be rendered
        "version": version,
    }


@dataclass(frozen=True, slots=True)
class KnownTraffic:
    """What the frozen baseline says about a violation's edge, for its ``expected`` evidence:
    the ports each (client wid << 19 | server wid) pair used during the audit, and each
    service's (server wid, port, proto) first known clients by workload key."""

    pair_ports: dict[int, list[int]] = field(default_factory=dict)
    service_clients: dict[tuple[int, int, int], list[str]] = field(default_factory=dict)


def violation_event(a: Agg, workloads: Workloads, known: KnownTraffic, *,
                    scan_threshold: int, suppress_window: float,
                    detection_lateness: float = 0.0) -> dict[str, Any]:
    """The violation event for one emission of window ``a`` (wids resolved through
    ``workloads``); ``scan_threshold`` and ``suppress_window`` are quoted in the evidence.

    ``ts`` is the window's first flow and ``detected_at`` that plus ``detection_lateness``:
    the event-time watermark at which a time-ordered stream first emits it (the same in
    replay and in the workers, whatever the batches). ``version`` is the count: it grows
    with every flow, so the highest version of an id is its complete record. The id names
    the window (type, workloads, port, proto, window start), never the flow times, so it
    stays when a late flow moves ``ts``; a scan's id names only its client and window."""
    infos = workloads.infos
    ci = infos[a.client]
    si = infos[a.server] if a.server >= 0 else None
    if a.type == SCAN:
        servers = sorted(infos[s].key for s in a.extra.get("servers", []))
        dst_key = servers[0] if len(servers) == 1 else "multiple"
        dst_ns = si.namespace if si else (infos[a.extra["servers"][0]].namespace
                                          if len(servers) == 1 else "")
        dst_app = infos[a.extra["servers"][0]].app if len(servers) == 1 else "multiple"
    elif si is None:  # host-level findings (fan_out, failed_connections): many destinations
        dst_key, dst_ns, dst_app = "multiple", "", "multiple"
    else:
        assert si is not None
        dst_key, dst_ns, dst_app = si.key, si.namespace, si.app
    evidence, reason, score = _explain(a, ci.key, dst_key, workloads, known,
                                       scan_threshold=scan_threshold,
                                       suppress_window=suppress_window)
    vid = (stable_id("v", a.type, ci.key, "*", 0, 0, int(a.window)) if a.type == SCAN
           else stable_id("v", a.type, ci.key, dst_key, a.port, a.proto, int(a.window)))
    return {
        "schema_version": 1,
        "id": vid,
        "ts": iso(a.first),
        "type": a.type,
        "severity": {"label": severity_label(score), "score": score},
        "src_ip": a.client_ips[0] if a.client_ips else "",
        "dst_ip": a.server_ips[0] if a.server_ips else "",
        "dst_port": a.port,
        "proto": a.proto,
        "proto_name": proto_name(a.proto),
        "src_workload": ci.key,
        "src_namespace": ci.namespace,
        "src_app": ci.app,
        "dst_workload": dst_key,
        "dst_namespace": dst_ns,
        "dst_app": dst_app,
        "mode": "enforce",
        "reason": reason,
        "evidence": evidence,
        "count": a.count,
        "first_seen": iso(a.first),
        "last_seen": iso(a.last),
        "detector": "behaviour_model" if a.type == BEHAVIOUR else "edge_baseline",
        "version": a.count,
        "detected_at": iso(_detected_at(a, detection_lateness)),
    }


def audit_finding_event(a: Agg, workloads: Workloads, known: KnownTraffic, *,
                        scan_threshold: int, suppress_window: float,
                        lateness: float) -> dict[str, Any]:
    """An audit finding (``a`` from :class:`pipeline.core.audit.AuditWatch`) as a violation
    event with ``mode`` audit and detector audit: seen during the audit, its edges not
    trusted (no allow rule). ``detected_at``: the watermark at which its window closed."""
    ev = violation_event(a, workloads, known, scan_threshold=scan_threshold,
                         suppress_window=suppress_window)
    ev["detected_at"] = iso(max(a.last, a.window + suppress_window + lateness))
    ev["id"] = stable_id("v", "audit", a.type, workloads.infos[a.client].key, ev["dst_workload"],
                         a.port, a.proto, int(a.window))
    ev["mode"] = "audit"
    ev["detector"] = "audit"
    ev["reason"] = (f"During the audit: {ev['reason']} These edges were not trusted: no allow "
                    "rule, alerted if they recur.")
    return ev


def _explain(a: Agg, src: str, dst: str, workloads: Workloads, known: KnownTraffic, *,
             scan_threshold: int, suppress_window: float) -> tuple[dict[str, Any], str, int]:
    """(evidence, reason, score 0–100) of one violation window."""
    seen: dict[str, Any] = {
        "flows": a.count,
        "bytes": a.bytes,
        "rejected_flows": a.rejected,
        "src_ips": a.client_ips,
        "dst_ips": a.server_ips,
    }
    port = f"{proto_name(a.proto)}/{a.port}"
    outside = a.client == WORLD or workloads.infos[a.client].kind == "unknown"
    blocked = a.rejected == a.count
    if a.type == NEW_EDGE:
        expected: dict[str, Any] = {"known_clients_of_service": list(
            known.service_clients.get((a.server, a.port, a.proto), []))}
        score = 60 + (15 if a.port in DATA_PORTS or a.port in ADMIN_PORTS else 0)
        score += 10 if outside else 0
        reason = f"{src} connected to {dst} on {port}, an edge never seen during the audit."
    elif a.type == NEW_PORT:
        ports = known.pair_ports.get((a.client << 19) | a.server, [])
        expected = {"known_ports": ports}
        score = 50 + (15 if a.port not in SERVICE_PORTS else 0)
        score += 10 if a.port in ADMIN_PORTS else 0
        reason = (f"{src} reached {dst} on {port}; during the audit it only used "
                  f"{', '.join(map(str, ports[:6])) or 'other ports'}.")
    elif a.type == SCAN:
        targets = int(a.extra.get("targets", 0))
        ports_seen = a.extra.get("ports", [])
        seen["distinct_targets"] = targets
        seen["ports"] = ports_seen[:32]
        seen["dst_workloads"] = sorted(workloads.infos[s].key
                                       for s in a.extra.get("servers", []))[:16]
        expected = {"max_new_targets_per_window": scan_threshold}
        score = min(95, 70 + targets // 20)
        reason = (f"{src} tried {targets} new destination/port pairs within "
                  f"{int(suppress_window // 60)} min (port scan or sweep).")
    elif a.type == VOLUME:
        hb = float(a.extra.get("hour_bytes", a.bytes))
        thr = float(a.extra.get("threshold_bytes", 0.0))
        med = float(a.extra.get("median_hour_bytes", 0.0))
        ratio = hb / med if med > 0 else math.inf
        seen["hour_bytes"] = int(hb)
        expected = {"threshold_bytes_per_hour": int(thr), "median_bytes_per_hour": int(med)}
        score = int(min(95, 60 + 10 * math.log10(max(ratio, 1.0))))
        reason = (f"{src} sent {human_bytes(hb)} to {dst} on {port} within an hour, "
                  f"~{ratio:.0f}x its usual hourly volume.")
    elif a.type == BEHAVIOUR:
        expected, score, reason = _explain_behaviour(a, src, seen)
    elif a.type in _HOST_TYPES:
        expected, score, reason = _explain_host(a, src, dst, port, seen)
    elif a.type == PROVISIONAL_EDGE:
        ex = a.extra
        days, flows = int(ex.get("audit_days", 0)), int(ex.get("audit_flows", 0))
        expected = {"min_days": int(ex.get("min_days", 0)),
                    "min_flows": int(ex.get("min_flows", 0))}
        seen["audit_days"], seen["audit_flows"] = days, flows
        finding = bool(ex.get("audit_finding", False))
        seen["audit_finding"] = finding
        score = 45 + (15 if a.port in DATA_PORTS or a.port in ADMIN_PORTS else 0)
        score += 10 if finding else 0
        reason = (f"{src} used its edge to {dst} on {port} again; the audit saw it on only "
                  f"{days} day(s) with {flows} flow(s)"
                  + (" during an audit finding" if finding else "")
                  + ", too little to trust: it has no allow rule (review it).")
    else:  # OFF_HOURS
        hours = a.extra.get("usual_hours", [])
        seen["hour_utc"] = a.extra.get("hour")
        expected = {"usual_hours_utc": hours}
        score = 55 + (10 if a.port in DATA_PORTS or a.port in ADMIN_PORTS else 0)
        reason = (f"{src} used its edge to {dst} on {port} at {a.extra.get('hour')}:00 UTC; "
                  f"during the audit it was only active at hours {hour_ranges(hours)} UTC.")
    if blocked and a.type not in (SCAN, FAN_OUT, FAILED):
        score -= 20
        reason += " All attempts were rejected."
    return {"expected": expected, "seen": seen}, reason, max(0, min(100, score))


_HOST_TYPES = (FAN_OUT, FAILED, HOST_VOLUME, BEACON)


def _detected_at(a: Agg, detection_lateness: float) -> float:
    """The event time at which the event is first emitted: its first flow plus the detection
    lateness; for a behaviour-model event, when its host window closed and was scored (the
    model judges whole windows: ``ts`` is the window's start)."""
    t = a.first + detection_lateness
    if a.type == BEHAVIOUR and "judged_at" in a.extra:
        t = max(t, float(a.extra["judged_at"]))
    return t


def _explain_behaviour(a: Agg, src: str, seen: dict[str, Any]
                       ) -> tuple[dict[str, Any], int, str]:
    """(expected, score, reason) of a behaviour-model corroboration (core.behaviour): the
    features that drove the host window's score, with their value and the app's median."""
    from pipeline.core.detect import TYPES

    ex = a.extra
    drivers = ex.get("drivers", [])
    host = ex.get("host") or (a.client_ips[0] if a.client_ips else src)
    signal = TYPES[int(ex["signal"])] if 0 <= int(ex.get("signal", -1)) < len(TYPES) else "rule"
    seen["host"] = host
    seen["window_start"] = iso(float(ex.get("window_start", a.window)))
    seen["features"] = {d["name"]: d["value"] for d in drivers}
    seen["deviations"] = {d["name"]: d["z"] for d in drivers}
    seen["model_score"] = ex.get("model_score")
    expected: dict[str, Any] = {"app_median": {d["name"]: d["usual"] for d in drivers},
                                "model_threshold": 0.0}
    top = max((abs(float(d["z"])) for d in drivers), default=0.0)
    score = min(80, 55 + int(top))  # corroborating evidence: high at most
    parts = ", ".join(f"{_feature_text(d)}" for d in drivers) or "its features"
    reason = (f"host {host} ({src}) behaved unlike its app's audit windows in the hour of a "
              f"{signal}: {parts}.")
    return expected, score, reason


def _feature_text(d: dict[str, Any]) -> str:
    name, value, usual, z = d["name"], d["value"], d["usual"], float(d["z"])
    if name in ("hour_sin", "hour_cos"):
        return f"hour of week {value} ({z:+.0f}σ)"
    if name == "bytes_out":
        return f"{human_bytes(float(value))} out (usual {human_bytes(float(usual))}, {z:+.0f}σ)"
    return f"{name.replace('_', ' ')} {value} (usual {usual}, {z:+.0f}σ)"


def _explain_host(a: Agg, src: str, dst: str, port: str, seen: dict[str, Any]
                  ) -> tuple[dict[str, Any], int, str]:
    """(expected, score, reason) of a per-source-host finding (pipeline.core.hostdetect)."""
    ex = a.extra
    hosts = ", ".join(a.client_ips[:2]) or src
    if a.type == FAN_OUT:
        peers, thr = int(ex.get("peers", 0)), int(ex.get("threshold", 0))
        seen["distinct_peers"] = peers
        expected: dict[str, Any] = {"max_peers_per_window": thr}
        score = min(90, 70 + 2 * max(peers - thr, 0))
        score += 5 if a.port in ADMIN_PORTS else 0
        reason = (f"host {hosts} ({src}) reached {peers} distinct addresses on {port} within "
                  f"an hour; during the audit its hosts reached at most ~{thr} (worm or "
                  "horizontal scan).")
    elif a.type == FAILED:
        fails, flows, thr = (int(ex.get("failures", 0)), int(ex.get("flows", 0)),
                             int(ex.get("threshold", 0)))
        seen["failed_flows"], seen["host_flows"] = fails, flows
        expected = {"max_failed_per_window": thr}
        score = min(80, 60 + fails // 10)
        reason = (f"host {hosts} ({src}) had {fails} rejected or unanswered connections "
                  f"out of {flows} within an hour; during the audit at most ~{thr} (scan or "
                  "blocked spread).")
    elif a.type == HOST_VOLUME:
        hb = float(ex.get("host_bytes", a.bytes))
        thr = float(ex.get("threshold_bytes", 0.0))
        med = float(ex.get("median_host_bytes", 0.0))
        ratio = hb / med if med > 0 else math.inf
        seen["host_bytes"] = int(hb)
        expected = {"threshold_bytes_per_host_hour": int(thr),
                    "median_bytes_per_host_hour": int(med)}
        score = int(min(95, 65 + 10 * math.log10(max(ratio, 1.0))))
        reason = (f"host {hosts} ({src}) sent {human_bytes(hb)} to {dst} on {port} within an "
                  f"hour, ~{ratio:.0f}x what one host of its fleet usually sends there.")
    else:  # BEACON
        period, jitter = float(ex.get("period_s", 0.0)), float(ex.get("jitter", 0.0))
        seen["period_s"], seen["jitter"], seen["beats"] = period, jitter, ex.get("beats")
        expected = {"periodic_during_audit": False}
        score = 70
        reason = (f"host {hosts} ({src}) connects to {dst} on {port} every {period:.0f} s "
                  f"(±{jitter:.0%}), a regular beat this traffic never had during the audit "
                  "(command-and-control beacon?).")
    return expected, score, reason


def hours_of(mask: int) -> list[int]:
    """UTC hours set in a 24-bit hour-of-day mask.

    >>> hours_of(0b1011)
    [0, 1, 3]
    """
    return [h for h in range(24) if mask >> h & 1]


def hour_ranges(hours: list[int]) -> str:
    """Sorted hours as ranges.

    >>> hour_ranges([0, 1, 2, 9, 14, 15])
    '00-02, 09, 14-15'
    """
    if not hours:
        return "none"
    out, start, prev = [], hours[0], hours[0]
    for h in [*hours[1:], None]:
        if h is not None and h == prev + 1:
            prev = h
            continue
        out.append(f"{start:02d}" if start == prev else f"{start:02d}-{prev:02d}")
        if h is not None:
            start = prev = h
    return ", ".join(out)


def human_bytes(n: float) -> str:
    """Decimal units, no decimals.

    >>> human_bytes(1_500_000)
    '2 MB'
    """
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:.0f} {unit}"
        n /= 1000
    return f"{n:.0f} PB"


__all__ = [
    "ADMIN_PORTS",
    "DATA_PORTS",
    "SCHEMA_VERSION",
    "KnownTraffic",
    "audit_finding_event",
    "hour_ranges",
    "hours_of",
    "human_bytes",
    "iso",
    "latest_by_id",
    "peer_dict",
    "peer_text",
    "proto_name",
    "rule_event",
    "severity_label",
    "stable_id",
    "violation_event",
]
