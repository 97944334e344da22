"""Render candidate rules as ``cilium.io/v2`` CiliumNetworkPolicies.

One policy per protected pod workload (``<ns>/<app>.yaml``). Cilium denies by default, per
direction, once a policy with rules in that direction selects an endpoint; ``default_deny``
adds a namespace-wide policy (``ingress: [{}]``, ``egress: [{}]``) so workloads without
rules are isolated too. ICMP rules become ``icmps`` (their ports are ICMP types; none means
echo-request). Egress to peers known by DNS name becomes ``toFQDNs``; then the DNS egress
rule carries an L7 ``dns`` rule so Cilium's DNS proxy learns the names' addresses.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pipeline.core.intents import CandidateRule
from pipeline.policy import _common as c
from pipeline.policy import report
from pipeline.policy.labels import POD_KINDS, dns_label

PLANE = "cilium"
API_VERSION = "cilium.io/v2"
DEFAULT_DENY_NAME = "segflow-default-deny"
DEFAULT_DENY_FILE = "00-default-deny.yaml"
POLICY_PREFIX = "segflow-allow-"
NAMESPACE_KEY = "k8s:io.kubernetes.pod.namespace"
MAX_ITEMS = 40  # Cilium caps toPorts[].ports and icmps[].fields at 40 entries
ECHO_REQUEST = {1: 8, 58: 128}
DNS_PEER = c.PeerSpec("pods", namespace=c.DNS_NAMESPACE, selector=c.DNS_SELECTOR)


def _chunks(items: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    return [{key: items[i : i + MAX_ITEMS]} for i in range(0, len(items), MAX_ITEMS)]


def l3(peer: c.PeerSpec, namespace: str, side: str) -> dict[str, Any]:
    """The L3 selector part of a rule; ``side`` is ``from`` (ingress) or ``to`` (egress)."""
    if peer.kind == "pods":
        match = dict(peer.selector)
        if peer.namespace != namespace:
            match[NAMESPACE_KEY] = peer.namespace
        return {f"{side}Endpoints": [{"matchLabels": dict(sorted(match.items()))}]}
    if peer.kind == "namespace":
        return {f"{side}Endpoints": [{"matchLabels": {NAMESPACE_KEY: peer.namespace}}]}
    if side == "to" and peer.fqdns:
        return {"toFQDNs": [{"matchName": name} for name in peer.fqdns]}
    if peer.kind == "cidr" and not peer.excepts:
        return {f"{side}CIDR": [peer.cidr]}
    if peer.kind == "cidr":
        return {f"{side}CIDRSet": [{"cidr": peer.cidr, "except": list(peer.excepts)}]}
    if not peer.excepts:
        return {f"{side}Entities": ["world"]}
    # the "world" entity would include internal non-cluster ranges: carve them out by CIDR
    sets: list[dict[str, Any]] = []
    for cidr, v6 in (("0.0.0.0/0", False), ("::/0", True)):
        excepts = [e for e in peer.excepts if (":" in e) == v6]
        sets.append({"cidr": cidr, "except": excepts} if excepts else {"cidr": cidr})
    return {f"{side}CIDRSet": sets}


def l4(items: set[c.Port]) -> dict[str, Any]:
    """``toPorts`` and/or ``icmps`` for a set of (proto, port) pairs."""
    port_list = [
        {"port": "0" if port is None else str(port), "protocol": c.PROTO_NAMES[proto]}
        for proto, port in c.ordered_ports({p for p in items if p[0] in c.PROTO_NAMES})
    ]
    icmp_types = {  # no subsumption here: "no type" only stands for echo-request
        (proto, ECHO_REQUEST[proto] if port is None else port)
        for proto, port in items
        if proto in c.ICMP_PROTOS
    }
    icmp_list = [{"family": c.ICMP_PROTOS[p], "type": t} for p, t in sorted(icmp_types)]
    out: dict[str, Any] = {}
    if port_list:
        out["toPorts"] = _chunks(port_list, "ports")
    if icmp_list:
        out["icmps"] = _chunks(icmp_list, "fields")
    return out


def _rules(peer: c.PeerSpec, items: set[c.Port], ns: str, side: str) -> list[dict[str, Any]]:
    """Rules for one peer: ``toPorts`` and ``icmps`` go in separate rules, one L4 kind each."""
    selector = l3(peer, ns, side)
    return [{**selector, key: value} for key, value in l4(items).items()]


def _policy(group: c.AppRules, *, allow_dns: bool, default_deny: bool) -> tuple[str, str]:
    ns = group.namespace
    notes: list[str] = []
    by_dir: dict[str, dict[c.PeerSpec, set[c.Port]]] = {"ingress": {}, "egress": {}}
    for (direction, peer), items in group.ports.items():
        by_dir[direction][peer] = set(items)
    dns_rule = allow_dns and (group.has_egress() or default_deny)
    if dns_rule:
        by_dir["egress"].setdefault(DNS_PEER, set()).update({(17, c.DNS_PORT), (6, c.DNS_PORT)})
    elif note := c.missing_dns_note(group):
        notes.append(note)
    uses_fqdns = any(p.fqdns for p in by_dir["egress"])
    if uses_fqdns and not dns_rule:
        notes.append("toFQDNs needs DNS egress through Cilium's DNS proxy (render with"
                     " allow_dns=True)")
    if any(p in c.ICMP_PROTOS and t is None for ps in group.ports.values() for p, t in ps):
        notes.append("ICMP rules without types are rendered as echo-request only")
    spec: dict[str, Any] = {"endpointSelector": {"matchLabels": dict(group.selector)}}
    for direction, side in (("ingress", "from"), ("egress", "to")):
        if by_dir[direction]:
            spec[direction] = [
                rule
                for peer, items in sorted(by_dir[direction].items(), key=lambda kv: kv[0])
                for rule in _rules(peer, items, ns, side)
            ]
    if uses_fqdns and dns_rule:  # let the DNS proxy see (and allow) every lookup
        for rule in spec["egress"]:
            if rule.get("toEndpoints") == l3(DNS_PEER, ns, "to")["toEndpoints"]:
                for port_rule in rule.get("toPorts", []):
                    port_rule["rules"] = {"dns": [{"matchPattern": "*"}]}
    name = dns_label(group.app, prefix=POLICY_PREFIX)
    doc = {
        "apiVersion": API_VERSION,
        "kind": "CiliumNetworkPolicy",
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
        "kind": "CiliumNetworkPolicy",
        "metadata": c.metadata(DEFAULT_DENY_NAME, namespace, ann),
        "spec": {"endpointSelector": {}, "ingress": [{}], "egress": [{}]},
    }
    return c.dump(doc)


def render_cilium(rules: Iterable[CandidateRule], *, allow_dns: bool = False,
                  default_deny: bool = False) -> c.RenderResult:
    """Render rules as CiliumNetworkPolicy YAML files keyed by ``<namespace>/<app>.yaml``.

    ``allow_dns`` adds an egress to kube-system/kube-dns on UDP+TCP 53 for apps with egress
    rules; without it, apps with egress rules but no DNS egress get a note. ``default_deny``
    adds ``<ns>/00-default-deny.yaml`` isolating every endpoint of each protected namespace.
    """
    prepared = c.prepare(rules, icmp_ok=True)
    files: dict[str, str] = {}
    isolated: set[tuple[str, str, str]] = set()
    namespaces: set[str] = set()
    for _, group in sorted(prepared.apps.items()):
        if not group.rules:
            continue
        path, text = _policy(group, allow_dns=allow_dns, default_deny=default_deny)
        files[path] = text
        namespaces.add(group.namespace)
        isolated.update((group.namespace, group.app, d) for d, _ in group.ports)
    if default_deny:
        for ns in sorted(namespaces):
            files[f"{ns}/{DEFAULT_DENY_FILE}"] = _default_deny(ns, prepared.skipped_in_ns[ns])

    def is_isolated(rule: CandidateRule) -> bool:
        app = rule.app
        return app.kind in POD_KINDS and (
            (default_deny and app.namespace in namespaces)
            or (app.namespace, app.app, rule.direction) in isolated)

    entries = report.entries(PLANE, prepared.rules, prepared.skipped, is_isolated)
    return c.RenderResult(dict(sorted(files.items())), prepared.skipped, entries, PLANE)


__all__ = ["PLANE", "render_cilium"]
