"""Render candidate rules as Calico ``projectcalico.org/v3`` policies.

One namespaced ``NetworkPolicy`` per protected pod workload (``<ns>/<app>.yaml``), plus, in
``_global/``, a ``GlobalNetworkPolicy`` default deny for every protected namespace and one
allowing their DNS lookups to kube-dns. Calico drops at the end of a tier any traffic of an
endpoint that some policy selects and no rule allowed, so these two are enough to isolate
every pod of those namespaces. ``staged=True`` renders the same rules as
``StagedNetworkPolicy`` / ``StagedGlobalNetworkPolicy``: Calico evaluates them and reports
what they would deny without enforcing anything (audit-mode rollout).

Selectors are Calico selector expressions built only from validated label keys and values
(``[A-Za-z0-9._/-]``), always single-quoted. ICMP and ICMPv6 rules are expressible here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pipeline.core.intents import CandidateRule
from pipeline.policy import _common as c
from pipeline.policy import report
from pipeline.policy.labels import POD_KINDS, dns_label

PLANE = "calico"
API_VERSION = "projectcalico.org/v3"
POLICY_PREFIX = "segflow-allow-"
NAMESPACE_KEY = "projectcalico.org/name"
GLOBAL_DIR = "_global"
MAX_PORTS = 50  # Calico caps source/destination ports at 50 entries
APP_ORDER = 100.0
DNS_ORDER = 900.0
DENY_ORDER = 2000.0
CALICO_PROTOS = {6: "TCP", 17: "UDP", 132: "SCTP", 1: "ICMP", 58: "ICMPv6"}


def selector(labels: Iterable[tuple[str, str]]) -> str:
    """``k == 'v' && ...`` (validated keys and values only)."""
    return " && ".join(f"{k} == '{v}'" for k, v in sorted(labels)) or "all()"


def _namespaces(names: Iterable[str]) -> str:
    items = ", ".join(f"'{n}'" for n in sorted(set(names)))
    return f"{NAMESPACE_KEY} in {{{items}}}"


def _entity(peer: c.PeerSpec, namespace: str) -> list[dict[str, Any]]:
    """EntityRule(s) for the peer; the world needs one per IP version."""
    if peer.kind == "pods":
        out: dict[str, Any] = {"selector": selector(peer.selector)}
        if peer.namespace != namespace:
            out["namespaceSelector"] = selector(((NAMESPACE_KEY, peer.namespace),))
        return [out]
    if peer.kind == "namespace":
        return [{"namespaceSelector": selector(((NAMESPACE_KEY, peer.namespace),))}]
    if peer.kind == "cidr":
        out = {"nets": [peer.cidr]}
        if peer.excepts:
            out["notNets"] = list(peer.excepts)
        return [out]
    sides = []
    for cidr, v6 in (("0.0.0.0/0", False), ("::/0", True)):
        out = {"nets": [cidr]}
        if excepts := [e for e in peer.excepts if (":" in e) == v6]:
            out["notNets"] = excepts
        sides.append(out)
    return sides


def _version(entity: dict[str, Any]) -> int | None:
    nets = entity.get("nets") or []
    if not nets:
        return None
    return 6 if ":" in nets[0] else 4


def _rules(peer: c.PeerSpec, items: set[c.Port], ns: str, direction: str) -> list[dict[str, Any]]:
    """Allow rules for one peer: one per (protocol, ≤50 ports, IP version of the peer)."""
    out: list[dict[str, Any]] = []
    by_proto: dict[int, list[int | None]] = {}
    for proto, port in c.ordered_ports({p for p in items if p[0] in c.PROTO_NAMES}):
        by_proto.setdefault(proto, []).append(port)
    icmp = sorted({(p, t) for p, t in items if p in c.ICMP_PROTOS},
                  key=lambda x: (x[0], -1 if x[1] is None else x[1]))
    for entity in _entity(peer, ns):
        side = "source" if direction == "ingress" else "destination"
        version = _version(entity)
        for proto, ports in sorted(by_proto.items()):
            numbers = [p for p in ports if p is not None]
            chunks = [numbers[i: i + MAX_PORTS] for i in range(0, len(numbers), MAX_PORTS)]
            for chunk in chunks or [[]]:
                rule: dict[str, Any] = {"action": "Allow", "protocol": CALICO_PROTOS[proto]}
                if version:
                    rule["ipVersion"] = version
                dest: dict[str, Any] = dict(entity) if side == "destination" else {}
                if chunk:
                    dest["ports"] = chunk
                if side == "source":
                    rule["source"] = dict(entity)
                if dest:
                    rule["destination"] = dest
                out.append(rule)
        for proto, icmp_type in icmp:
            family = 6 if proto == 58 else 4
            if version and version != family:
                continue  # ICMPv6 to an IPv4 block cannot match
            rule = {"action": "Allow", "protocol": CALICO_PROTOS[proto], "ipVersion": family}
            if icmp_type is not None:
                rule["icmp"] = {"type": icmp_type}
            rule[side] = dict(entity)
            out.append(rule)
    return out


def _kind(staged: bool, global_: bool) -> str:
    return ("Staged" if staged else "") + ("GlobalNetworkPolicy" if global_ else "NetworkPolicy")


def _policy(group: c.AppRules, *, staged: bool) -> tuple[str, str]:
    ns = group.namespace
    by_dir: dict[str, dict[c.PeerSpec, set[c.Port]]] = {"ingress": {}, "egress": {}}
    for (direction, peer), items in group.ports.items():
        by_dir[direction][peer] = set(items)
    spec: dict[str, Any] = {"order": APP_ORDER, "selector": selector(group.selector),
                            "types": []}
    if staged:
        spec["stagedAction"] = "Set"
    for direction, field in (("ingress", "Ingress"), ("egress", "Egress")):
        if by_dir[direction]:
            spec["types"].append(field)
            spec[direction] = [
                rule
                for peer, items in sorted(by_dir[direction].items(), key=lambda kv: kv[0])
                for rule in _rules(peer, items, ns, direction)
            ]
    doc = {
        "apiVersion": API_VERSION,
        "kind": _kind(staged, False),
        "metadata": c.metadata(dns_label(group.app, prefix=POLICY_PREFIX), ns,
                               c.policy_annotations(group)),
        "spec": spec,
    }
    return f"{ns}/{c.policy_file_stem(group.app)}.yaml", c.dump(doc)


def _global(name: str, spec: dict[str, Any], *, staged: bool, notes: str = "") -> str:
    ann = {c.GENERATED_BY_KEY: c.GENERATED_BY}
    if notes:
        ann[c.NOTES_KEY] = notes
    if staged:
        spec = {**spec, "stagedAction": "Set"}
    meta = c.metadata(name, "", ann)
    del meta["namespace"]
    return c.dump({"apiVersion": API_VERSION, "kind": _kind(staged, True), "metadata": meta,
                   "spec": spec})


def render_calico(rules: Iterable[CandidateRule], *, allow_dns: bool = True,
                  default_deny: bool = True, staged: bool = False) -> c.RenderResult:
    """Render rules as Calico policies: ``<ns>/<app>.yaml`` plus ``_global/`` policies.

    ``default_deny`` isolates every pod of each protected namespace (GlobalNetworkPolicy
    without rules); ``allow_dns`` lets those pods resolve names through kube-dns.
    """
    prepared = c.prepare(rules, icmp_ok=True)
    files: dict[str, str] = {}
    namespaces: set[str] = set()
    isolated: set[tuple[str, str, str]] = set()
    for _, group in sorted(prepared.apps.items()):
        if not group.rules:
            continue
        path, text = _policy(group, staged=staged)
        files[path] = text
        namespaces.add(group.namespace)
        isolated.update((group.namespace, group.app, d) for d, _ in group.ports)
    if namespaces and default_deny:
        skipped = sum(prepared.skipped_in_ns[ns] for ns in namespaces)
        note = (f"{skipped} candidate rule(s) for workloads in these namespaces were not"
                " rendered; review the render report before enforcing") if skipped else ""
        files[f"{GLOBAL_DIR}/segflow-default-deny.yaml"] = _global(
            "segflow-default-deny",
            {"order": DENY_ORDER, "namespaceSelector": _namespaces(namespaces),
             "selector": "all()", "types": ["Ingress", "Egress"]},
            staged=staged, notes=note)
    if namespaces and allow_dns:
        dns_dest = {"selector": selector(c.DNS_SELECTOR),
                    "namespaceSelector": selector(((NAMESPACE_KEY, c.DNS_NAMESPACE),)),
                    "ports": [c.DNS_PORT]}
        files[f"{GLOBAL_DIR}/segflow-allow-dns.yaml"] = _global(
            "segflow-allow-dns",
            {"order": DNS_ORDER, "namespaceSelector": _namespaces(namespaces),
             "selector": "all()", "types": ["Egress"],
             "egress": [{"action": "Allow", "protocol": proto, "destination": dict(dns_dest)}
                        for proto in ("UDP", "TCP")]},
            staged=staged)

    def is_isolated(rule: CandidateRule) -> bool:
        app = rule.app
        return app.kind in POD_KINDS and (
            (default_deny and app.namespace in namespaces)
            or (app.namespace, app.app, rule.direction) in isolated)

    entries = report.entries(PLANE, prepared.rules, prepared.skipped, is_isolated)
    return c.RenderResult(dict(sorted(files.items())), prepared.skipped, entries, PLANE)


__all__ = ["PLANE", "render_calico", "selector"]
