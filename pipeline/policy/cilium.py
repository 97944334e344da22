"""Render candidate rules as ``cilium.io/v2`` CiliumNetworkPolicies.

One policy per protected pod workload (``<ns>/<app>.yaml``). Cilium denies by default, per
direction, once a policy with rules in that direction selects an endpoint, so there is no
separate default-deny file. ICMP rules become ``icmps`` (their ports are ICMP types; none
means echo-request).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pipeline.core.intents import CandidateRule
from pipeline.policy import _common as c
from pipeline.policy.labels import dns_label

API_VERSION = "cilium.io/v2"
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


def _policy(group: c.AppRules, *, allow_dns: bool) -> tuple[str, str]:
    ns = group.namespace
    notes: list[str] = []
    by_dir: dict[str, dict[c.PeerSpec, set[c.Port]]] = {"ingress": {}, "egress": {}}
    for (direction, peer), items in group.ports.items():
        by_dir[direction][peer] = set(items)
    if allow_dns and group.has_egress():
        by_dir["egress"].setdefault(DNS_PEER, set()).update({(17, c.DNS_PORT), (6, c.DNS_PORT)})
    elif note := c.missing_dns_note(group):
        notes.append(note)
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
    name = dns_label(group.app, prefix=POLICY_PREFIX)
    doc = {
        "apiVersion": API_VERSION,
        "kind": "CiliumNetworkPolicy",
        "metadata": c.metadata(name, ns, c.policy_annotations(group, notes)),
        "spec": spec,
    }
    return f"{ns}/{c.policy_file_stem(group.app)}.yaml", c.dump(doc)


def render_cilium(rules: Iterable[CandidateRule], *, allow_dns: bool = False) -> c.RenderResult:
    """Render rules as CiliumNetworkPolicy YAML files keyed by ``<namespace>/<app>.yaml``.

    ``allow_dns`` adds an egress to kube-system/kube-dns on UDP+TCP 53 for apps with egress
    rules; without it, apps with egress rules but no DNS egress get a note.
    """
    prepared = c.prepare(rules, icmp_ok=True)
    files = dict(
        _policy(group, allow_dns=allow_dns)
        for _, group in sorted(prepared.apps.items())
        if group.rules
    )
    return c.RenderResult(dict(sorted(files.items())), prepared.skipped)


__all__ = ["render_cilium"]
