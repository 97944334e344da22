"""Shared preparation for the cloud renderers (AWS security groups, GCP firewall rules,
Azure NSGs with application security groups).

Clouds protect instances, not pods, and select them by *group* (security group, network tag
or service account, application security group) rather than by address. Every protected
workload (pod, service or VM) gets one group named after its namespace and app (the app is
already "service + tier", e.g. ``orders-db``), so "the database's group admits only the app
tier's group" holds wherever the inventory names both ends. Peers that are not workloads
(external systems, unknown addresses, the internet) stay CIDRs. Ports merge into ranges.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Literal

from pipeline.core.intents import CandidateRule, Workload
from pipeline.policy import _common as c
from pipeline.policy import labels

GROUP_PREFIX = "segflow-"
GROUP_KINDS = frozenset({"pod", "service", "vm"})
DEFAULT_INTERNAL = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                    "fd00::/8")

PortRange = tuple[int, int]  # inclusive; (-1, -1) = any port / any ICMP type


@dataclass(frozen=True, slots=True, order=True)
class Group:
    """The cloud group of one protected workload."""

    name: str  # DNS-1123 label, unique per (namespace, app)
    namespace: str
    app: str
    tier: str = ""
    env: str = ""
    kind: str = "pod"
    service_account: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.app}" if self.namespace else self.app


@dataclass(frozen=True, slots=True, order=True)
class Remote:
    """The other side as a cloud rule sees it: a group, CIDRs, or the internet."""

    kind: Literal["group", "cidr", "world"]
    group: Group | None = None
    cidrs: tuple[str, ...] = ()
    excepts: tuple[str, ...] = ()  # ranges the intent carves out (clouds cannot)
    fqdns: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CloudRule:
    """One renderable rule: protected group, direction, remote, protocol, port ranges."""

    rule: CandidateRule
    group: Group
    direction: str
    remote: Remote
    proto: int
    ranges: tuple[PortRange, ...]


@dataclass(slots=True)
class CloudPrepared:
    rules: list[CloudRule] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    wider: list[tuple[str, str]] = field(default_factory=list)
    by_id: dict[str, CandidateRule] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)  # by workload key


def group_of(w: Workload) -> Group:
    raw = f"{w.namespace}-{w.app}" if w.namespace else w.app
    return Group(labels.dns_label(raw, prefix=GROUP_PREFIX), w.namespace, w.app, w.tier, w.env,
                 w.kind, w.service_account)


def ranges(ports: Iterable[int], proto: int) -> tuple[PortRange, ...]:
    """Consecutive ports merged into inclusive ranges; no ports = any."""
    values = sorted(set(ports))
    if not values:
        return ((-1, -1),)
    if proto in c.ICMP_PROTOS:  # ICMP types do not merge into ranges on any cloud
        return tuple((v, v) for v in values)
    out: list[list[int]] = []
    for p in values:
        if out and p == out[-1][1] + 1:
            out[-1][1] = p
        else:
            out.append([p, p])
    return tuple((lo, hi) for lo, hi in out)


def _remote(rule: CandidateRule) -> Remote | str:
    peer = rule.peer
    if err := labels.peer_error(peer):
        return f"invalid peer: {err}"
    fqdns = tuple(sorted({f.lower().rstrip(".") for f in peer.fqdns}))
    if peer.kind == "world":
        excepts = tuple(e for e in peer.except_cidrs if labels.parse_cidr(e) is not None)
        return Remote("world", excepts=tuple(sorted(set(excepts))), fqdns=fqdns)
    if peer.kind == "namespace":
        return "unsupported: a whole-namespace peer has no cloud group"
    if peer.kind == "workload" and peer.workload is not None and (
            peer.workload.kind in GROUP_KINDS):
        return Remote("group", group=group_of(peer.workload), fqdns=fqdns)
    net = labels.parse_cidr(peer.cidr)
    if net is None:
        return "non-addressable peer: neither a workload group nor a CIDR"
    excepts = tuple(str(e) for e in map(labels.parse_cidr, peer.except_cidrs) if e is not None)
    return Remote("cidr", cidrs=(str(net),), excepts=excepts, fqdns=fqdns)


def prepare_cloud(rules: Iterable[CandidateRule], *, plane: str,
                  protos: frozenset[int]) -> CloudPrepared:
    """Validate rules for a cloud plane; ``protos`` are the IP protocols it can express."""
    out = CloudPrepared()
    for rule in c.unique_rules(rules):
        out.by_id.setdefault(str(rule.id), rule)
        err = c.rule_error(rule)
        if err is None and (bad := labels.workload_error(rule.app, need_namespace=False)):
            err = f"invalid workload: {bad}"
        if err is None and rule.app.kind not in GROUP_KINDS:
            err = f"non-protectable: {labels.show(rule.app.kind)} workloads have no {plane} group"
        remote = None
        if err is None:
            got = _remote(rule)
            if isinstance(got, str):
                err = got
            else:
                remote = got
        if err is None:
            err = c.ports_error(rule, icmp_ok=True)
        if err is None and rule.proto not in protos:
            err = f"unsupported: {plane} rules cannot match IP protocol {rule.proto}"
        if err is not None or remote is None:
            reason = err or "invalid"
            out.skipped.append((str(rule.id), reason if ":" in reason else f"invalid: {reason}"))
            continue
        group = group_of(rule.app)
        out.groups.setdefault(group.key, group)
        if remote.group is not None:
            out.groups.setdefault(remote.group.key, remote.group)
        out.rules.append(CloudRule(rule, group, rule.direction, remote, rule.proto,
                                   ranges(rule.ports, rule.proto)))
    out.skipped.sort()
    _dedupe_names(out)
    return out


def _dedupe_names(out: CloudPrepared) -> None:
    """Two workloads whose names collide (``a-b``/``c`` vs ``a``/``b-c``) get hashed names."""
    seen: dict[str, set[str]] = {}
    for g in out.groups.values():
        seen.setdefault(g.name, set()).add(g.key)
    clash = {k for keys in seen.values() if len(keys) > 1 for k in keys}
    if not clash:
        return
    renamed = {k: replace(g, name=labels.dns_label(f"{g.namespace}/{g.app}", prefix=GROUP_PREFIX))
               for k, g in out.groups.items() if k in clash}
    out.groups.update(renamed)

    def fix(g: Group | None) -> Group | None:
        return renamed.get(g.key, g) if g is not None else None

    out.rules = [replace(r, group=renamed.get(r.group.key, r.group),
                         remote=replace(r.remote, group=fix(r.remote.group)))
                 for r in out.rules]


def description(rule: CandidateRule) -> str:
    """A rule description every cloud accepts (rule ids are validated ``[A-Za-z0-9_.:-]``)."""
    return f"segflow {rule.id}"


__all__ = [
    "DEFAULT_INTERNAL",
    "CloudPrepared",
    "CloudRule",
    "Group",
    "PortRange",
    "Remote",
    "description",
    "group_of",
    "prepare_cloud",
    "ranges",
]
