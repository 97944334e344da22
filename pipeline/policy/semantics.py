"""What a set of policies does to a connection: Kubernetes NetworkPolicy and Istio
AuthorizationPolicy semantics, as the two projects document them.

Used by ``segflow simulate`` to answer "what would this rule set have blocked" before it is
enforced. A :class:`Connection` is one client endpoint talking to one server endpoint on a
protocol and port; :meth:`PolicySet.evaluate` returns the :class:`Verdict`.

NetworkPolicy (``networking.k8s.io/v1``):

- a policy selects pods of its own namespace (``podSelector``; ``{}`` = all of them);
  ``policyTypes`` defaults to ``Ingress`` plus ``Egress`` when the policy has egress rules;
- a pod selected by some policy with a direction in its ``policyTypes`` is *isolated* in that
  direction; a pod no policy selects accepts everything (only selected pods are isolated);
- allows are additive: a connection is allowed in a direction if *any* rule of *any* policy
  selecting the pod for that direction allows it; a connection needs both the client's
  egress and the server's ingress to allow it;
- a rule without ``from``/``to`` matches every peer, without ``ports`` every port;
- one peer holding both ``namespaceSelector`` and ``podSelector`` selects those pods *in*
  those namespaces; two peers are alternatives; ``podSelector`` alone means the policy's
  namespace; ``ipBlock`` matches addresses in ``cidr`` and not in any ``except``;
- a port is a number or the name of a container port of the destination pod, with
  ``protocol`` (default TCP) and an optional ``endPort`` range.

AuthorizationPolicy (``security.istio.io``), evaluated at the server's sidecar for TCP:

- policies of the server's namespace whose ``selector`` matches it (none = all workloads),
  plus policies of the root namespace (``istio-system``) for every workload;
- any matching DENY denies; else, no ALLOW policy applying to the workload → allow;
  else allow iff some ALLOW policy matches; CUSTOM and AUDIT do not decide here;
- a policy without rules never matches (``spec: {}`` therefore allows nothing); a rule
  ``{}`` matches everything; a rule matches when any ``from`` source, any ``to`` operation
  and all ``when`` conditions match; fields of one source/operation must all match;
- flows carry no HTTP attributes: a rule using HTTP-only fields (methods, paths, hosts,
  request principals, most ``when`` keys) is ignored in an ALLOW policy and in a DENY
  policy those fields are ignored (the documented TCP behaviour);
- principals exist only for mTLS sidecar traffic (``<trust domain>/ns/<ns>/sa/<sa>``);
  values match exactly, by ``prefix*``, ``*suffix`` or ``*``.

Endpoints outside the cluster (VMs, external systems, the internet) are never isolated by
either plane. Addresses decide ``ipBlock``/``ipBlocks``: an endpoint known only by a range
matches a block only when the whole range is inside it and outside its exceptions; the
internet (``world``) is "every address outside the internal ranges".
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import InputError

Net = ipaddress.IPv4Network | ipaddress.IPv6Network
PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132}
ROOT_NAMESPACE = "istio-system"
TRUST_DOMAIN = "cluster.local"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
CLUSTER_KINDS = frozenset({"pod", "service"})


def _net(text: str) -> Net:
    return ipaddress.ip_network(text.strip(), strict=False)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One end of a connection as the policy planes see it."""

    namespace: str
    app: str
    kind: str = "pod"  # pod, service, vm, external, unknown, world
    labels: tuple[tuple[str, str], ...] = ()
    namespace_labels: tuple[tuple[str, str], ...] = ()
    service_account: str = ""
    addresses: tuple[str, ...] = ()  # CIDRs or addresses this endpoint may use
    named_ports: tuple[tuple[str, int, int], ...] = ()  # (name, proto, port)
    in_mesh: bool = True  # has an Istio sidecar (pods only)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.app}" if self.namespace else self.app

    @property
    def in_cluster(self) -> bool:
        return self.kind in CLUSTER_KINDS

    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    def ns_label_map(self) -> dict[str, str]:
        out = dict(self.namespace_labels)
        out.setdefault(NAMESPACE_NAME_LABEL, self.namespace)
        return out


@dataclass(frozen=True, slots=True)
class Connection:
    """A client endpoint connecting to a server endpoint on (proto, port)."""

    src: Endpoint
    dst: Endpoint
    proto: int
    port: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """Allowed or not, by which plane, and why (one line)."""

    allowed: bool
    plane: str = ""  # networkpolicy | istio | "" (allowed by every plane)
    reason: str = ""


# -- label selectors -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selector:
    """A Kubernetes label selector (matchLabels + matchExpressions)."""

    labels: tuple[tuple[str, str], ...] = ()
    expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.labels):
            return False
        for key, op, values in self.expressions:
            present = key in labels
            if op == "In" and not (present and labels[key] in values):
                return False
            if op == "NotIn" and present and labels[key] in values:
                return False
            if op == "Exists" and not present:
                return False
            if op == "DoesNotExist" and present:
                return False
        return True


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InputError(f"{where} is not an object")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InputError(f"{where} is not a list")
    return value


def parse_selector(value: Any, where: str) -> Selector:
    doc = _mapping(value, where)
    labels = _mapping(doc.get("matchLabels"), f"{where}.matchLabels")
    exprs = []
    for i, e in enumerate(_list(doc.get("matchExpressions"), f"{where}.matchExpressions")):
        e = _mapping(e, f"{where}.matchExpressions[{i}]")
        op = e.get("operator")
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise InputError(f"{where}.matchExpressions[{i}].operator {op!r} is not a selector "
                             "operator")
        values = tuple(str(v) for v in _list(e.get("values"), f"{where}.values"))
        exprs.append((str(e.get("key", "")), str(op), values))
    return Selector(tuple((str(k), str(v)) for k, v in labels.items()), tuple(exprs))


# -- addresses -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Block:
    """A CIDR with exceptions (``ipBlock``)."""

    cidr: Net
    excepts: tuple[Net, ...] = ()


def _covered(net: Net, block: Block) -> bool:
    """``net`` lies wholly inside the block and outside all its exceptions."""
    if net.version != block.cidr.version or not net.subnet_of(block.cidr):  # type: ignore[arg-type]
        return False
    return not any(e.version == net.version and net.overlaps(e) for e in block.excepts)


def endpoint_in_blocks(ep: Endpoint, blocks: Sequence[Block], internal: Sequence[Net]) -> bool:
    """The endpoint's addresses all fall in one of ``blocks`` (see the module docstring)."""
    if ep.kind == "world":
        # "everything outside the internal ranges": a /0 block whose exceptions are internal
        for b in blocks:
            if b.cidr.prefixlen == 0 and all(
                any(e.version == i.version and e.subnet_of(i) for i in internal)  # type: ignore[arg-type]
                for e in b.excepts
            ):
                return True
        return False
    if not ep.addresses:
        return False
    nets = []
    for a in ep.addresses:
        try:
            nets.append(_net(a))
        except ValueError:
            return False
    return all(any(_covered(n, b) for b in blocks) for n in nets)


# -- NetworkPolicy -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NpPeer:
    pod: Selector | None = None
    namespace: Selector | None = None
    block: Block | None = None


@dataclass(frozen=True, slots=True)
class NpPort:
    proto: int = 6
    port: int | str | None = None  # None = every port of proto
    end_port: int | None = None


@dataclass(frozen=True, slots=True)
class NpRule:
    peers: tuple[NpPeer, ...] | None  # None = every peer
    ports: tuple[NpPort, ...] | None  # None = every port


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    name: str
    namespace: str
    pod_selector: Selector
    ingress_isolated: bool
    egress_isolated: bool
    ingress: tuple[NpRule, ...] = ()
    egress: tuple[NpRule, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def selects(self, ep: Endpoint) -> bool:
        return ep.in_cluster and ep.namespace == self.namespace and self.pod_selector.matches(
            ep.label_map())


def _np_port(value: Any, where: str) -> NpPort:
    doc = _mapping(value, where)
    proto_name = doc.get("protocol", "TCP")
    if proto_name not in PROTOCOLS:
        raise InputError(f"{where}.protocol {proto_name!r} is not TCP, UDP or SCTP")
    port = doc.get("port")
    if port is not None and not isinstance(port, int | str):
        raise InputError(f"{where}.port is neither a number nor a name")
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    end = doc.get("endPort")
    if end is not None and (not isinstance(end, int) or not isinstance(port, int) or end < port):
        raise InputError(f"{where}.endPort needs a numeric port not above it")
    return NpPort(PROTOCOLS[proto_name], port, end)


def _np_peer(value: Any, where: str, internal_ok: bool = True) -> NpPeer:
    doc = _mapping(value, where)
    block = None
    if "ipBlock" in doc:
        b = _mapping(doc["ipBlock"], f"{where}.ipBlock")
        try:
            block = Block(_net(str(b.get("cidr"))),
                          tuple(_net(str(e)) for e in _list(b.get("except"), f"{where}.except")))
        except ValueError as exc:
            raise InputError(f"{where}.ipBlock: {exc}") from None
        if "podSelector" in doc or "namespaceSelector" in doc:
            raise InputError(f"{where}: ipBlock cannot be combined with a selector")
        return NpPeer(block=block)
    pod = parse_selector(doc["podSelector"], f"{where}.podSelector") if "podSelector" in doc \
        else None
    ns = parse_selector(doc["namespaceSelector"], f"{where}.namespaceSelector") \
        if "namespaceSelector" in doc else None
    if pod is None and ns is None:
        raise InputError(f"{where}: a peer needs podSelector, namespaceSelector or ipBlock")
    return NpPeer(pod, ns)


def _np_rules(values: Any, side: str, where: str) -> tuple[NpRule, ...]:
    rules = []
    for i, r in enumerate(_list(values, where)):
        r = _mapping(r, f"{where}[{i}]")
        peers = None
        if r.get(side) is not None:
            peers = tuple(_np_peer(p, f"{where}[{i}].{side}[{j}]")
                          for j, p in enumerate(_list(r[side], f"{where}[{i}].{side}")))
            if not peers:
                peers = None  # an empty list also means "every peer"
        ports = None
        if r.get("ports") is not None:
            ports = tuple(_np_port(p, f"{where}[{i}].ports[{j}]")
                          for j, p in enumerate(_list(r["ports"], f"{where}[{i}].ports")))
            if not ports:
                ports = None
        rules.append(NpRule(peers, ports))
    return tuple(rules)


def parse_networkpolicy(doc: Mapping[str, Any], where: str) -> NetworkPolicy:
    """A ``networking.k8s.io/v1`` NetworkPolicy document (InputError when malformed)."""
    meta = _mapping(doc.get("metadata"), f"{where}.metadata")
    spec = _mapping(doc.get("spec"), f"{where}.spec")
    types = spec.get("policyTypes")
    if types is None:
        types = ["Ingress"] + (["Egress"] if spec.get("egress") is not None else [])
    types = _list(types, f"{where}.spec.policyTypes")
    if not set(types) <= {"Ingress", "Egress"}:
        raise InputError(f"{where}.spec.policyTypes must be Ingress and/or Egress")
    return NetworkPolicy(
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace") or "default"),
        pod_selector=parse_selector(spec.get("podSelector"), f"{where}.spec.podSelector"),
        ingress_isolated="Ingress" in types,
        egress_isolated="Egress" in types,
        ingress=_np_rules(spec.get("ingress"), "from", f"{where}.spec.ingress"),
        egress=_np_rules(spec.get("egress"), "to", f"{where}.spec.egress"),
    )


def _np_peer_matches(peer: NpPeer, policy_ns: str, ep: Endpoint, internal: Sequence[Net]) -> bool:
    if peer.block is not None:
        return endpoint_in_blocks(ep, (peer.block,), internal)
    if not ep.in_cluster:
        return False
    if peer.namespace is not None:
        if not peer.namespace.matches(ep.ns_label_map()):
            return False
    elif ep.namespace != policy_ns:
        return False
    return peer.pod is None or peer.pod.matches(ep.label_map())


def _np_port_matches(port: NpPort, proto: int, number: int, dst: Endpoint) -> bool:
    if port.proto != proto:
        return False
    if port.port is None:
        return True
    if isinstance(port.port, str):
        return any(name == port.port and p == proto and n == number
                   for name, p, n in dst.named_ports)
    if port.end_port is not None:
        return port.port <= number <= port.end_port
    return port.port == number


def _np_rule_matches(rule: NpRule, policy_ns: str, peer: Endpoint, conn: Connection,
                     internal: Sequence[Net]) -> bool:
    if rule.peers is not None and not any(
            _np_peer_matches(p, policy_ns, peer, internal) for p in rule.peers):
        return False
    return rule.ports is None or any(
        _np_port_matches(p, conn.proto, conn.port, conn.dst) for p in rule.ports)


# -- Istio AuthorizationPolicy ----------------------------------------------------------------

HTTP_SOURCE_FIELDS = ("requestPrincipals", "notRequestPrincipals")
HTTP_OPERATION_FIELDS = ("methods", "notMethods", "paths", "notPaths", "hosts", "notHosts")
TCP_WHEN_KEYS = ("source.ip", "source.namespace", "source.principal", "destination.ip",
                 "destination.port", "connection.sni", "remote.ip")


@dataclass(frozen=True, slots=True)
class AuthzPolicy:
    name: str
    namespace: str
    action: str  # ALLOW, DENY, AUDIT, CUSTOM
    selector: Selector | None  # None: every workload of the namespace
    rules: tuple[Mapping[str, Any], ...]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def applies_to(self, ep: Endpoint, root_namespace: str) -> bool:
        if not (ep.in_cluster and ep.in_mesh):
            return False
        if self.namespace != ep.namespace and self.namespace != root_namespace:
            return False
        return self.selector is None or self.selector.matches(ep.label_map())


def parse_authorizationpolicy(doc: Mapping[str, Any], where: str) -> AuthzPolicy:
    meta = _mapping(doc.get("metadata"), f"{where}.metadata")
    spec = _mapping(doc.get("spec"), f"{where}.spec")
    action = spec.get("action", "ALLOW")
    if action not in ("ALLOW", "DENY", "AUDIT", "CUSTOM"):
        raise InputError(f"{where}.spec.action {action!r} is not ALLOW, DENY, AUDIT or CUSTOM")
    if spec.get("targetRef") or spec.get("targetRefs"):
        raise InputError(f"{where}: targetRef policies (gateways, waypoints) are not simulated")
    selector = None
    if spec.get("selector") is not None:
        selector = parse_selector(spec["selector"], f"{where}.spec.selector")
    rules = tuple(_mapping(r, f"{where}.spec.rules[{i}]")
                  for i, r in enumerate(_list(spec.get("rules"), f"{where}.spec.rules")))
    return AuthzPolicy(str(meta.get("name", "")), str(meta.get("namespace") or "default"),
                       str(action), selector, rules)


def _value_matches(pattern: str, value: str | None) -> bool:
    if value is None:
        return False
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


def _ip_in(patterns: Iterable[str], ep: Endpoint, internal: Sequence[Net]) -> bool:
    blocks = []
    for p in patterns:
        try:
            blocks.append(Block(_net(p)))
        except ValueError:
            continue
    return endpoint_in_blocks(ep, blocks, internal)


def _field_check(values: Any, matcher: Any) -> bool | None:
    """None when the field is absent, else whether any value matches."""
    if values is None:
        return None
    return any(matcher(str(v)) for v in values)


def principal_of(ep: Endpoint, trust_domain: str = TRUST_DOMAIN) -> str | None:
    if not (ep.in_cluster and ep.in_mesh and ep.service_account):
        return None
    return f"{trust_domain}/ns/{ep.namespace}/sa/{ep.service_account}"


def _source_matches(src: Mapping[str, Any], conn: Connection, internal: Sequence[Net],
                    http_ok: bool) -> bool:
    ep = conn.src
    principal = principal_of(ep)
    namespace = ep.namespace if principal else None
    sa = f"{ep.namespace}/{ep.service_account}" if principal else None
    checks = [
        (_field_check(src.get("principals"), lambda p: _value_matches(p, principal)), True),
        (_field_check(src.get("notPrincipals"), lambda p: _value_matches(p, principal)), False),
        (_field_check(src.get("namespaces"), lambda p: _value_matches(p, namespace)), True),
        (_field_check(src.get("notNamespaces"), lambda p: _value_matches(p, namespace)), False),
        (_field_check(src.get("serviceAccounts"), lambda p: p == sa), True),
        (_field_check(src.get("notServiceAccounts"), lambda p: p == sa), False),
    ]
    for key, positive in (("ipBlocks", True), ("notIpBlocks", False),
                          ("remoteIpBlocks", True), ("notRemoteIpBlocks", False)):
        if src.get(key) is not None:
            checks.append((_ip_in(map(str, src[key]), ep, internal), positive))
    for result, positive in checks:
        if result is not None and result != positive:
            return False
    return http_ok or not any(src.get(k) for k in HTTP_SOURCE_FIELDS)


def _operation_matches(op: Mapping[str, Any], conn: Connection) -> bool:
    port = str(conn.port)
    for key, positive in (("ports", True), ("notPorts", False)):
        if op.get(key) is not None and (port in map(str, op[key])) != positive:
            return False
    return True


def _uses_http(rule: Mapping[str, Any]) -> bool:
    sources = [_mapping(f, "from").get("source") or {} for f in rule.get("from") or []]
    ops = [_mapping(t, "to").get("operation") or {} for t in rule.get("to") or []]
    whens = [str(_mapping(w, "when").get("key", "")) for w in rule.get("when") or []]
    return (any(s.get(k) for s in sources for k in HTTP_SOURCE_FIELDS)
            or any(o.get(k) for o in ops for k in HTTP_OPERATION_FIELDS)
            or any(k not in TCP_WHEN_KEYS for k in whens))


def _when_matches(cond: Mapping[str, Any], conn: Connection,
                  internal: Sequence[Net]) -> bool | None:
    """None for keys a TCP connection does not carry (ignored)."""
    key = str(cond.get("key", ""))
    values, nots = cond.get("values"), cond.get("notValues")
    if key in ("source.ip", "remote.ip"):
        def test(vs: Any) -> bool:
            return _ip_in(map(str, vs), conn.src, internal)
    elif key == "destination.port":
        def test(vs: Any) -> bool:
            return str(conn.port) in map(str, vs)
    elif key == "source.namespace":
        ns = conn.src.namespace if principal_of(conn.src) else None

        def test(vs: Any) -> bool:
            return any(_value_matches(str(v), ns) for v in vs)
    elif key == "source.principal":
        principal = principal_of(conn.src)

        def test(vs: Any) -> bool:
            return any(_value_matches(str(v), principal) for v in vs)
    else:
        return None
    if values is not None and not test(values):
        return False
    return not (nots is not None and test(nots))


def _rule_matches(rule: Mapping[str, Any], conn: Connection, internal: Sequence[Net],
                  action: str) -> bool:
    http = _uses_http(rule)
    if http and action == "ALLOW":
        return False  # documented: the rule is invalid for TCP and ignored
    froms = rule.get("from")
    if froms is not None and not any(
            _source_matches(_mapping(f, "from").get("source") or {}, conn, internal, http_ok=True)
            for f in froms):
        return False
    tos = rule.get("to")
    if tos is not None and not any(
            _operation_matches(_mapping(t, "to").get("operation") or {}, conn) for t in tos):
        return False
    for cond in rule.get("when") or []:
        if _when_matches(_mapping(cond, "when"), conn, internal) is False:
            return False
    return True


def _policy_matches(p: AuthzPolicy, conn: Connection, internal: Sequence[Net]) -> bool:
    return any(_rule_matches(r, conn, internal, p.action) for r in p.rules)


# -- the policy set ------------------------------------------------------------------------


@dataclass
class PolicySet:
    """NetworkPolicies and AuthorizationPolicies evaluated together (both must allow)."""

    networkpolicies: list[NetworkPolicy] = field(default_factory=list)
    authz: list[AuthzPolicy] = field(default_factory=list)
    internal: tuple[Net, ...] = ()
    root_namespace: str = ROOT_NAMESPACE
    ignored: list[str] = field(default_factory=list)  # documents not simulated, and why
    _np_by_ns: dict[str, list[NetworkPolicy]] | None = field(default=None, repr=False)

    @classmethod
    def from_documents(cls, docs: Iterable[tuple[str, Any]],
                       internal_cidrs: Iterable[str] = (),
                       root_namespace: str = ROOT_NAMESPACE) -> PolicySet:
        """Parse ``(where, document)`` pairs; other kinds are listed in ``ignored``."""
        out = cls(internal=tuple(_net(c) for c in internal_cidrs), root_namespace=root_namespace)
        for where, doc in docs:
            if not isinstance(doc, Mapping):
                continue
            kind, api = doc.get("kind"), str(doc.get("apiVersion", ""))
            if kind == "NetworkPolicy" and api == "networking.k8s.io/v1":
                out.networkpolicies.append(parse_networkpolicy(doc, where))
            elif kind == "AuthorizationPolicy" and api.startswith("security.istio.io/"):
                out.authz.append(parse_authorizationpolicy(doc, where))
            elif kind:
                out.ignored.append(f"{where}: {kind} ({api}) is not simulated")
        return out

    def evaluate(self, conn: Connection) -> Verdict:
        """The verdict of every plane in the set; the first plane that blocks names itself."""
        v = self.networkpolicy_verdict(conn)
        if not v.allowed:
            return v
        return self.istio_verdict(conn)

    def networkpolicy_verdict(self, conn: Connection) -> Verdict:
        if self._np_by_ns is None:  # a policy only ever selects pods of its own namespace
            self._np_by_ns = {}
            for p in self.networkpolicies:
                self._np_by_ns.setdefault(p.namespace, []).append(p)
        for ep, direction, peer in ((conn.src, "egress", conn.dst),
                                    (conn.dst, "ingress", conn.src)):
            candidates = self._np_by_ns.get(ep.namespace, [])
            selecting = [p for p in candidates if p.selects(ep) and (
                p.egress_isolated if direction == "egress" else p.ingress_isolated)]
            if not selecting:
                continue  # not isolated in this direction
            rules = ((p, r) for p in selecting
                     for r in (p.egress if direction == "egress" else p.ingress))
            if not any(_np_rule_matches(r, p.namespace, peer, conn, self.internal)
                       for p, r in rules):
                names = ", ".join(sorted(p.key for p in selecting)[:3])
                return Verdict(False, "networkpolicy",
                               f"{direction} of {ep.key} is isolated by {names} and no rule "
                               f"allows {peer.key} on {conn.proto}/{conn.port}")
        return Verdict(True)

    def istio_verdict(self, conn: Connection) -> Verdict:
        if conn.proto != 6:
            return Verdict(True)  # the sidecar only intercepts TCP
        applying = [p for p in self.authz if p.applies_to(conn.dst, self.root_namespace)]
        for p in applying:
            if p.action == "DENY" and _policy_matches(p, conn, self.internal):
                return Verdict(False, "istio", f"DENY policy {p.key} matches")
        allows = [p for p in applying if p.action == "ALLOW"]
        if not allows:
            return Verdict(True)
        if any(_policy_matches(p, conn, self.internal) for p in allows):
            return Verdict(True)
        names = ", ".join(sorted(p.key for p in allows)[:3])
        return Verdict(False, "istio", f"no rule of the ALLOW policies {names} matches")


__all__ = [
    "Block",
    "Connection",
    "Endpoint",
    "NetworkPolicy",
    "PolicySet",
    "Selector",
    "Verdict",
    "endpoint_in_blocks",
    "parse_authorizationpolicy",
    "parse_networkpolicy",
    "principal_of",
]
