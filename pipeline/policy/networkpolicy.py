"""Render candidate rules as Kubernetes ``networking.k8s.io/v1`` NetworkPolicies.

One policy per protected pod workload (``<ns>/<app>.yaml``) plus, optionally, one
``<ns>/00-default-deny.yaml`` per namespace that has a protected workload. Output is a pure,
order-independent function of the rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pipeline.core.intents import CandidateRule
from pipeline.policy import _common as c
from pipeline.policy import report
from pipeline.policy.labels import POD_KINDS, dns_label

PLANE = "networkpolicy"
API_VERSION = "networking.k8s.io/v1"
DEFAULT_DENY_NAME = "segflow-default-deny"
DEFAULT_DENY_FILE = "00-default-deny.yaml"
POLICY_PREFIX = "segflow-allow-"
DNS_PEER = c.PeerSpec("pods", namespace=c.DNS_NAMESPACE, selector=c.DNS_SELECTOR)
DNS_PORTS = {(17, c.DNS_PORT), (6, c.DNS_PORT)}


def _labels(selector: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    return {"matchLabels": dict(selector)}


def _ip_block(cidr: str, excepts: Iterable[str]) -> dict[str, Any]:
    block: dict[str, Any] = {"cidr": cidr}
    if excepts := list(excepts):
        block["except"] = excepts
    return {"ipBlock": block}


def peers(peer: c.PeerSpec, namespace: str) -> list[dict[str, Any]]:
    """NetworkPolicyPeer objects for ``peer`` as seen from a policy in ``namespace``."""
    if peer.kind == "pods":
        out: dict[str, Any] = {}
        if peer.namespace != namespace:
            out["namespaceSelector"] = _labels(((c.NAMESPACE_LABEL, peer.namespace),))
        out["podSelector"] = _labels(peer.selector)
        return [out]
    if peer.kind == "namespace":
        return [{"namespaceSelector": _labels(((c.NAMESPACE_LABEL, peer.namespace),))}]
    if peer.kind == "cidr":
        return [_ip_block(peer.cidr, peer.excepts)]
    return [
        _ip_block("0.0.0.0/0", (e for e in peer.excepts if ":" not in e)),
        _ip_block("::/0", (e for e in peer.excepts if ":" in e)),
    ]


def ports(items: set[c.Port]) -> list[dict[str, Any]]:
    """NetworkPolicyPort objects; a port of None means any port of the protocol."""
    out: list[dict[str, Any]] = []
    for proto, port in c.ordered_ports(items):
        entry: dict[str, Any] = {"protocol": c.PROTO_NAMES[proto]}
        if port is not None:
            entry["port"] = port
        out.append(entry)
    return out


def _policy(group: c.AppRules, *, allow_dns: bool, default_deny: bool) -> tuple[str, str]:
    ns = group.namespace
    notes: list[str] = []
    by_dir: dict[str, dict[c.PeerSpec, set[c.Port]]] = {"ingress": {}, "egress": {}}
    for (direction, peer), items in group.ports.items():
        by_dir[direction][peer] = set(items)
    if allow_dns and (group.has_egress() or default_deny):
        by_dir["egress"].setdefault(DNS_PEER, set()).update(DNS_PORTS)
    elif note := c.missing_dns_note(group):
        notes.append(note)
    spec: dict[str, Any] = {"podSelector": _labels(group.selector), "policyTypes": []}
    for direction, field, side in (("ingress", "Ingress", "from"), ("egress", "Egress", "to")):
        if not by_dir[direction]:
            continue
        spec["policyTypes"].append(field)
        spec[direction] = [
            {side: peers(peer, ns), "ports": ports(items)}
            for peer, items in sorted(by_dir[direction].items(), key=lambda kv: kv[0])
        ]
    name = dns_label(group.app, prefix=POLICY_PREFIX)
    doc = {
        "apiVersion": API_VERSION,
        "kind": "NetworkPolicy",
        "metadata": c.metadata(name, ns, c.policy_annotations(group, notes)),
        "spec": spec,
    }
    return f"{ns}/{c.policy_file_stem(group.app)}.yaml", c.dump(doc)


def _default_deny(namespace: str, skipped: int) -> str:
    ann = {c.GENERATED_BY_KEY: c.GENERATED_BY}
    if skipped:
        ann[c.NOTES_KEY] = (
            f"{skipped} candidate rule(s) for workloads in this namespace were not rendered;"
            " review the render report before enforcing"
        )
    doc = {
        "apiVersion": API_VERSION,
        "kind": "NetworkPolicy",
        "metadata": c.metadata(DEFAULT_DENY_NAME, namespace, ann),
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    }
    return c.dump(doc)


def render_networkpolicies(
    rules: Iterable[CandidateRule], *, default_deny: bool = True, allow_dns: bool = False
) -> c.RenderResult:
    """Render rules as NetworkPolicy YAML files keyed by ``<namespace>/<file>.yaml``.

    ``allow_dns`` adds an egress to kube-system/kube-dns on UDP+TCP 53 for every app whose
    egress is isolated; without it, apps with egress rules but no DNS egress get a note.
    ICMP, non-pod workloads and invalid names/labels are reported in ``skipped``.
    """
    prepared = c.prepare(rules, icmp_ok=False)
    files: dict[str, str] = {}
    namespaces: set[str] = set()
    isolated: set[tuple[str, str, str]] = set()  # (namespace, app, direction)
    for _, group in sorted(prepared.apps.items()):
        if not group.rules:
            continue
        path, text = _policy(group, allow_dns=allow_dns, default_deny=default_deny)
        files[path] = text
        namespaces.add(group.namespace)
        isolated.update((group.namespace, group.app, d) for d, _ in group.ports)
        if allow_dns and (group.has_egress() or default_deny):
            isolated.add((group.namespace, group.app, "egress"))

    def is_isolated(rule: CandidateRule) -> bool:
        app = rule.app
        if app.kind not in POD_KINDS:
            return False
        return (default_deny and app.namespace in namespaces) or (
            (app.namespace, app.app, rule.direction) in isolated)

    if default_deny:
        for ns in sorted(namespaces):
            files[f"{ns}/{DEFAULT_DENY_FILE}"] = _default_deny(ns, prepared.skipped_in_ns[ns])
    entries = report.entries(PLANE, prepared.rules, prepared.skipped, is_isolated)
    return c.RenderResult(dict(sorted(files.items())), prepared.skipped, entries, PLANE)


__all__ = ["PLANE", "peers", "ports", "render_networkpolicies"]
