"""Candidate allow rules as data (intents), independent of any enforcement plane.

The core derives :class:`CandidateRule` objects from the learned baseline; renderers in
``pipeline.policy`` turn them into NetworkPolicy, Cilium, Calico, Istio or cloud
security-group documents. An intent says *who* (the protected workload, by its selector,
namespace, service account, tier and environment), *which way* (ingress or egress), *with
whom* (a workload, every pod of a namespace, a CIDR, the internet, optionally by DNS name)
and *on what* (protocol, ports, optionally HTTP methods and paths). Replicas of a workload
share one selector, so they fold into one intent.

:func:`intent_dict` / :func:`rule_from_dict` round-trip a rule through plain JSON so the
store can keep the complete intent and any later command can render it again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

PeerKind = Literal["workload", "namespace", "cidr", "world"]
Direction = Literal["ingress", "egress"]
RuleStatus = Literal["proposed", "accepted", "rejected"]
PEER_KINDS = ("workload", "namespace", "cidr", "world")
STATUSES = ("proposed", "accepted", "rejected")


@dataclass(frozen=True, slots=True)
class Workload:
    """A workload identity as policies select it."""

    namespace: str
    app: str
    kind: str = "pod"  # pod, vm, service, external, unknown
    # labels that select this workload's pods, e.g. {"app": "checkout-api"}; never empty for pods
    selector: tuple[tuple[str, str], ...] = ()
    env: str = ""  # dev, staging, prod, ... (from the inventory)
    service_account: str = ""  # Kubernetes service account (Istio principal, GCP target)
    tier: str = ""  # web, api, db, ... (cloud groups are per tier where the inventory says)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.app}" if self.namespace else self.app


@dataclass(frozen=True, slots=True)
class Peer:
    """The other side of a rule.

    - ``workload``: one workload (pods by selector; VMs and external systems by ``cidr``);
    - ``namespace``: every pod of ``workload.namespace`` (a namespace selector);
    - ``cidr``: an address block (unknown internal address, VM, external system);
    - ``world``: the internet, i.e. ``0.0.0.0/0`` and ``::/0`` minus ``except_cidrs``.

    ``fqdns`` are DNS names the peer is known by (where DNS data exists): planes that can
    allow by name (Cilium ``toFQDNs``, egress allow-lists) use them instead of the CIDR.
    """

    kind: PeerKind
    workload: Workload | None = None
    cidr: str | None = None  # for kind == "cidr" (or "world": 0.0.0.0/0 and ::/0)
    except_cidrs: tuple[str, ...] = ()  # for "world": internal ranges carved out
    fqdns: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the audit saw for this rule."""

    flows: int
    bytes: int
    first_seen: float  # epoch seconds
    last_seen: float
    days_observed: int


@dataclass(frozen=True, slots=True)
class CandidateRule:
    """One least-privilege allow rule for ``app`` in ``direction`` to/from ``peer``.

    ``provisional`` marks weak evidence (seen on one day only, a handful of flows): such a
    rule is listed for review and only rendered once accepted, never silently allowed.
    """

    id: str  # deterministic (hash of app, direction, peer, proto, ports)
    app: Workload  # the protected workload
    direction: Direction
    peer: Peer
    proto: int  # IANA number (6 tcp, 17 udp, 132 sctp, 1/58 icmp)
    ports: tuple[int, ...]  # service ports; empty = any port of proto (icmp)
    evidence: Evidence
    confidence: float  # 0..1
    status: RuleStatus = "proposed"
    notes: tuple[str, ...] = field(default=())
    provisional: bool = False
    methods: tuple[str, ...] = ()  # HTTP methods seen (where L7 data exists)
    paths: tuple[str, ...] = ()  # HTTP path prefixes seen (where L7 data exists)


def workload_dict(w: Workload) -> dict[str, Any]:
    return {
        "namespace": w.namespace,
        "app": w.app,
        "kind": w.kind,
        "selector": dict(w.selector),
        "env": w.env,
        "service_account": w.service_account,
        "tier": w.tier,
    }


def _text(d: Mapping[str, Any], key: str, default: str = "") -> str:
    value = d.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ValueError(f"{key} is not a string")
    return value


def _selector(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise ValueError("selector is not an object")
    return tuple((str(k), str(v)) for k, v in value.items())


def workload_from_dict(d: Any) -> Workload:
    if not isinstance(d, Mapping):
        raise ValueError("workload is not an object")
    return Workload(
        namespace=_text(d, "namespace"),
        app=_text(d, "app"),
        kind=_text(d, "kind", "pod"),
        selector=_selector(d.get("selector")),
        env=_text(d, "env"),
        service_account=_text(d, "service_account"),
        tier=_text(d, "tier"),
    )


def intent_dict(rule: CandidateRule) -> dict[str, Any]:
    """The complete intent as JSON-ready data (no evidence, no status)."""
    peer = rule.peer
    return {
        "app": workload_dict(rule.app),
        "direction": rule.direction,
        "peer": {
            "kind": peer.kind,
            "workload": workload_dict(peer.workload) if peer.workload else None,
            "cidr": peer.cidr,
            "except": list(peer.except_cidrs),
            "fqdns": list(peer.fqdns),
        },
        "proto": rule.proto,
        "ports": list(rule.ports),
        "provisional": rule.provisional,
        "methods": list(rule.methods),
        "paths": list(rule.paths),
        "notes": list(rule.notes),
    }


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what} is not a list of strings")
    return tuple(value)


def rule_from_dict(
    rule_id: str, intent: Mapping[str, Any], evidence: Evidence, confidence: float,
    status: str = "proposed",
) -> CandidateRule:
    """Rebuild a rule from :func:`intent_dict` output; ValueError when it is malformed."""
    p = intent.get("peer")
    if not isinstance(p, Mapping):
        raise ValueError("peer is not an object")
    kind = p.get("kind")
    if kind not in PEER_KINDS:
        raise ValueError(f"unknown peer kind {kind!r}")
    direction = intent.get("direction")
    if direction not in ("ingress", "egress"):
        raise ValueError(f"unknown direction {direction!r}")
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    proto = intent.get("proto")
    ports = intent.get("ports") or []
    if type(proto) is not int or not all(type(x) is int for x in ports):
        raise ValueError("proto and ports must be integers")
    cidr = p.get("cidr")
    peer = Peer(
        kind=kind,
        workload=workload_from_dict(p["workload"]) if p.get("workload") else None,
        cidr=cidr if isinstance(cidr, str) else None,
        except_cidrs=_strings(p.get("except"), "except"),
        fqdns=_strings(p.get("fqdns"), "fqdns"),
    )
    return CandidateRule(
        id=rule_id,
        app=workload_from_dict(intent.get("app")),
        direction=direction,
        peer=peer,
        proto=proto,
        ports=tuple(ports),
        evidence=evidence,
        confidence=confidence,
        status=status,  # type: ignore[arg-type]
        notes=_strings(intent.get("notes"), "notes"),
        provisional=bool(intent.get("provisional", False)),
        methods=_strings(intent.get("methods"), "methods"),
        paths=_strings(intent.get("paths"), "paths"),
    )


__all__ = [
    "PEER_KINDS",
    "STATUSES",
    "CandidateRule",
    "Direction",
    "Evidence",
    "Peer",
    "PeerKind",
    "RuleStatus",
    "Workload",
    "intent_dict",
    "rule_from_dict",
    "workload_dict",
    "workload_from_dict",
]
