"""Violation events as OCSF Detection Findings for SIEMs (Splunk, Elastic, Sentinel, Security Lake).

Why OCSF: a SIEM ingests an open schema without a custom parser; Amazon Security Lake requires
it. segflow's own event (``schemas/violation.schema.json``) stays the reference; this module is
a pure mapping from it, so every output path (JSONL, Kafka) can carry either.

Mapping (OCSF 1.5.0, class ``detection_finding`` 2004, category Findings 2):

- ``finding_info.uid`` = the violation id (deterministic), ``types`` = [violation type]
  (plus ``audit_finding`` for a finding made during the audit, ``mode`` audit; a
  ``provisional_edge`` is traffic on an edge the audit saw too little to trust),
  ``attacks`` = the MITRE ATT&CK tactic/technique of the per-host behaviour types,
  ``title``/``desc`` = one-line title and the reason, ``analytic`` = the detector.
- ``activity_id`` 1 (Create) for a finding's first emission (one flow so far), 2 (Update) for
  the re-emissions that grow ``count``/``last_seen``; SIEMs keep the latest per uid.
- ``time`` = the first flow (ms), ``start_time``/``end_time`` = first/last seen, ``count``;
  ``finding_info.created_time`` = ``detected_at`` (when segflow first emitted it).
- ``severity_id`` from the label, ``risk_score`` = the 0–100 score.
- ``evidences``: one Network Activity artefact (``src_endpoint``, ``dst_endpoint`` with
  workload names, ``connection_info`` with the protocol); ``resources``: the destination
  workload; ``unmapped.segflow``: the original evidence (expected vs seen).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

OCSF_VERSION = "1.5.0"
CLASS_UID = 2004  # Detection Finding
CATEGORY_UID = 2  # Findings
_SEVERITY_ID = {"informational": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}
_ANALYTIC_TYPE_ID = {"behaviour_model": 4}  # Learning (ML/DL); every other detector: Rule (1)
_PROTO_NAMES = {"tcp", "udp", "icmp", "icmpv6", "sctp", "gre", "esp"}
# MITRE ATT&CK (tactic, technique) of the per-host behaviour findings
_ATTACKS = {
    "fan_out": (("TA0008", "Lateral Movement"), ("T1210", "Exploitation of Remote Services")),
    "failed_connections": (("TA0007", "Discovery"), ("T1046", "Network Service Discovery")),
    "host_volume": (("TA0010", "Exfiltration"),
                    ("T1048", "Exfiltration Over Alternative Protocol")),
    "beacon": (("TA0011", "Command and Control"), ("T1071", "Application Layer Protocol")),
}


def _ms(text: str) -> int:
    return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def _endpoint(ip: str, workload: str, port: int | None = None) -> dict[str, Any]:
    ep: dict[str, Any] = {"uid": workload or ip or "unknown", "name": workload or ip or "unknown"}
    if ip:
        ep["ip"] = ip
    if port is not None:
        ep["port"] = port
    return ep


def to_ocsf(event: dict[str, Any], *, product_version: str = "") -> dict[str, Any]:
    """One segflow violation event → one OCSF Detection Finding (a new dict)."""
    first, last = _ms(event["first_seen"]), _ms(event["last_seen"])
    severity = event["severity"]
    label = str(severity["label"])
    count = int(event["count"])
    activity_id = 1 if count <= 1 or first == last else 2
    proto_name = str(event.get("proto_name") or event["proto"])
    src = _endpoint(event["src_ip"], event["src_workload"])
    dst = _endpoint(event["dst_ip"], event["dst_workload"], int(event["dst_port"]))
    connection: dict[str, Any] = {
        "direction_id": 3,  # Lateral: east-west traffic between internal workloads
        "protocol_num": int(event["proto"]),
    }
    if proto_name in _PROTO_NAMES:
        connection["protocol_name"] = proto_name
    detector = str(event.get("detector") or "segflow")
    title = (f"{event['type']}: {event['src_workload']} → {event['dst_workload']} "
             f"{proto_name}/{event['dst_port']}")
    attacks: dict[str, Any] = {}
    if (attack := _ATTACKS.get(str(event["type"]))) is not None:
        (ta_uid, ta_name), (te_uid, te_name) = attack
        attacks["attacks"] = [{"tactic": {"uid": ta_uid, "name": ta_name},
                               "technique": {"uid": te_uid, "name": te_name}}]
    finding = {
        "activity_id": activity_id,
        "activity_name": "Create" if activity_id == 1 else "Update",
        "category_uid": CATEGORY_UID,
        "category_name": "Findings",
        "class_uid": CLASS_UID,
        "class_name": "Detection Finding",
        "type_uid": CLASS_UID * 100 + activity_id,
        "type_name": f"Detection Finding: {'Create' if activity_id == 1 else 'Update'}",
        "time": _ms(event["ts"]),
        "start_time": first,
        "end_time": last,
        "count": count,
        "severity_id": _SEVERITY_ID.get(label, 99),
        "severity": label.capitalize(),
        "risk_score": int(severity["score"]),
        "status_id": 1,
        "status": "New",
        "message": event["reason"],
        "finding_info": {
            "uid": event["id"],
            "title": title,
            "desc": event["reason"],
            "types": [event["type"], *(["audit_finding"] if event["mode"] == "audit" else [])],
            "created_time": _ms(event.get("detected_at") or event["ts"]),
            "first_seen_time": first,
            "last_seen_time": last,
            "data_sources": ["network flow records"],
            **attacks,
            "analytic": {"name": detector, "uid": detector,
                         "type_id": _ANALYTIC_TYPE_ID.get(detector, 1)},
        },
        "metadata": {
            "version": OCSF_VERSION,
            "uid": f"{event['id']}:{event['version']}",
            "product": {"name": "segflow", "vendor_name": "segflow",
                        **({"version": product_version} if product_version else {})},
        },
        "evidences": [{
            "name": "network flows",
            "src_endpoint": src,
            "dst_endpoint": dst,
            "connection_info": connection,
        }],
        "resources": [{
            "uid": event["dst_workload"],
            "name": event["dst_app"] or event["dst_workload"],
            "namespace": event["dst_namespace"] or None,
            "type": "workload",
        }],
        "unmapped": {"segflow": {
            "evidence": event["evidence"], "mode": event["mode"],
            "src_workload": event["src_workload"], "dst_workload": event["dst_workload"],
            "version": event["version"],
        }},
    }
    resource = finding["resources"][0]
    if resource["namespace"] is None:
        del resource["namespace"]
    return finding


VIOLATION_FORMATS = ("segflow", "ocsf")


def violation_formatter(fmt: str, product_version: str = "") -> Any:
    """``segflow`` → events unchanged; ``ocsf`` → :func:`to_ocsf`. ValueError otherwise."""
    if fmt == "segflow":
        return lambda e: e
    if fmt == "ocsf":
        return lambda e: to_ocsf(e, product_version=product_version)
    raise ValueError(f"violation format must be one of {', '.join(VIOLATION_FORMATS)}, not {fmt!r}")


__all__ = ["OCSF_VERSION", "VIOLATION_FORMATS", "to_ocsf", "violation_formatter"]
