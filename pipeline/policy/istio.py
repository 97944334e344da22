"""Render candidate rules as Istio ``security.istio.io/v1`` AuthorizationPolicies.

One ALLOW policy per protected pod workload (``<ns>/<app>.yaml``) selecting it by labels,
with one rule per peer: in-mesh pods by their SPIFFE principal
``<trust domain>/ns/<ns>/sa/<service account>``, whole namespaces by ``namespaces``,
addresses by ``ipBlocks`` (``notIpBlocks`` for carved-out ranges); ports, and HTTP methods
and path prefixes where L7 data exists. ``default_deny`` adds the documented namespace-wide
"allow nothing" policy (``spec: {}``), so every workload there is denied unless an ALLOW
policy matches.

Istio authorizes at the destination and only TCP: egress rules and UDP/SCTP/ICMP rules are
not expressible and go to the render report (that traffic is simply not enforced by Istio).
A peer without a known service account is allowed by its namespace (reported as wider).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pipeline.core.intents import CandidateRule
from pipeline.policy import _common as c
from pipeline.policy import report
from pipeline.policy.labels import POD_KINDS, dns_label

PLANE = "istio"
API_VERSION = "security.istio.io/v1"
POLICY_PREFIX = "segflow-allow-"
ALLOW_NOTHING = "segflow-allow-nothing"
ALLOW_NOTHING_FILE = "00-allow-nothing.yaml"
TRUST_DOMAIN = "cluster.local"


def _plane_check(rule: CandidateRule, peer: c.PeerSpec) -> str | None:
    if rule.direction == "egress":
        return ("unsupported: Istio authorizes at the destination; egress is enforced by the"
                " peer's own ALLOW policy or not at all")
    if rule.proto != 6:
        return "unsupported: Istio authorization applies to TCP only"
    return None


def principal(namespace: str, service_account: str, trust_domain: str = TRUST_DOMAIN) -> str:
    return f"{trust_domain}/ns/{namespace}/sa/{service_account}"


def _source(peer: c.PeerSpec, trust_domain: str) -> dict[str, Any]:
    if peer.kind == "pods" and peer.service_account:
        return {"principals": [principal(peer.namespace, peer.service_account, trust_domain)]}
    if peer.kind in ("pods", "namespace"):
        return {"namespaces": [peer.namespace]}
    if peer.kind == "cidr":
        src: dict[str, Any] = {"ipBlocks": [peer.cidr]}
    else:
        src = {"ipBlocks": ["0.0.0.0/0", "::/0"]}
    if peer.excepts:
        src["notIpBlocks"] = list(peer.excepts)
    return src


def _operation(ports: set[c.Port], rules: list[CandidateRule]) -> dict[str, Any]:
    op: dict[str, Any] = {}
    numbers = [p for _, p in c.ordered_ports(ports)]
    if None not in numbers:
        op["ports"] = [str(p) for p in numbers]
    methods = sorted({m for r in rules for m in r.methods})
    paths = sorted({p for r in rules for p in r.paths})
    if methods and all(r.methods for r in rules):
        op["methods"] = methods
    if paths and all(r.paths for r in rules):
        op["paths"] = [p if p.endswith("*") else p.rstrip("/") + "/*" for p in paths]
    return op


def _policy(group: c.AppRules, trust_domain: str) -> tuple[str, str]:
    ns = group.namespace
    rules = []
    for (direction, peer), items in sorted(group.ports.items(), key=lambda kv: kv[0][1]):
        peer_rules = group.peer_rules[(direction, peer)]
        entry: dict[str, Any] = {"from": [{"source": _source(peer, trust_domain)}]}
        if op := _operation(items, peer_rules):
            entry["to"] = [{"operation": op}]
        rules.append(entry)
    doc = {
        "apiVersion": API_VERSION,
        "kind": "AuthorizationPolicy",
        "metadata": c.metadata(dns_label(group.app, prefix=POLICY_PREFIX), ns,
                               c.policy_annotations(group)),
        "spec": {"selector": {"matchLabels": dict(group.selector)}, "action": "ALLOW",
                 "rules": rules},
    }
    return f"{ns}/{c.policy_file_stem(group.app)}.yaml", c.dump(doc)


def _allow_nothing(namespace: str) -> str:
    doc = {
        "apiVersion": API_VERSION,
        "kind": "AuthorizationPolicy",
        "metadata": c.metadata(ALLOW_NOTHING, namespace, {c.GENERATED_BY_KEY: c.GENERATED_BY}),
        "spec": {},
    }
    return c.dump(doc)


def render_istio(rules: Iterable[CandidateRule], *, default_deny: bool = True,
                 trust_domain: str = TRUST_DOMAIN) -> c.RenderResult:
    """Render rules as AuthorizationPolicy YAML keyed by ``<namespace>/<app>.yaml``."""
    prepared = c.prepare(rules, icmp_ok=True, plane_check=_plane_check)
    files: dict[str, str] = {}
    namespaces: set[str] = set()
    wider: list[tuple[str, str]] = []
    for _, group in sorted(prepared.apps.items()):
        path, text = _policy(group, trust_domain)
        files[path] = text
        namespaces.add(group.namespace)
        for (_, peer), peer_rules in group.peer_rules.items():
            if peer.kind == "pods" and not peer.service_account:
                wider.extend((str(r.id), "wider: peer has no known service account; its"
                              " whole namespace is allowed") for r in peer_rules)
    if default_deny:
        for ns in sorted(namespaces):
            files[f"{ns}/{ALLOW_NOTHING_FILE}"] = _allow_nothing(ns)
    protected = {(g.namespace, g.app) for g in prepared.apps.values()}

    def is_isolated(rule: CandidateRule) -> bool:
        app = rule.app
        if app.kind not in POD_KINDS or rule.direction != "ingress" or rule.proto != 6:
            return False
        return (default_deny and app.namespace in namespaces) or (
            (app.namespace, app.app) in protected)

    entries = report.entries(PLANE, prepared.rules, prepared.skipped, is_isolated, sorted(wider))
    return c.RenderResult(dict(sorted(files.items())), prepared.skipped, entries, PLANE)


__all__ = ["PLANE", "principal", "render_istio"]
