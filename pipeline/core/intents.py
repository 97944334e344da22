"""Candidate allow rules as data (intents), independent of any enforcement plane.

The core derives :class:`CandidateRule` objects from the learned baseline; renderers in
``pipeline.policy`` turn them into NetworkPolicy, Cilium, Istio or cloud security-group text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

PeerKind = Literal["workload", "cidr", "world"]
Direction = Literal["ingress", "egress"]
RuleStatus = Literal["proposed", "accepted", "rejected"]


@dataclass(frozen=True, slots=True)
class Workload:
    """A workload identity as policies select it."""

    namespace: str
    app: str
    kind: str = "pod"  # pod, vm, service, external, unknown
    # labels that select this workload's pods, e.g. {"app": "checkout-api"}; never empty for pods
    selector: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.app}" if self.namespace else self.app


@dataclass(frozen=True, slots=True)
class Peer:
    """The other side of a rule: a workload, a CIDR block, or the outside world."""

    kind: PeerKind
    workload: Workload | None = None
    cidr: str | None = None  # for kind == "cidr" (or "world": 0.0.0.0/0 and ::/0)
    except_cidrs: tuple[str, ...] = ()  # for "world": internal ranges carved out


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
    """One least-privilege allow rule for ``app`` in ``direction`` to/from ``peer``."""

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


__all__ = ["CandidateRule", "Direction", "Evidence", "Peer", "PeerKind", "RuleStatus", "Workload"]
