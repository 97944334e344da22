"""Policy semantics, one test per rule, with the verdicts the Kubernetes and Istio
documentation give for their own examples.

Kubernetes: "Network Policies" concept page (kubernetes.io/docs/concepts/services-networking/
network-policies/): the ``test-network-policy`` example, the default policies, the
namespaceSelector/podSelector "and vs or" example, ``endPort``. Istio: the
AuthorizationPolicy reference and concept pages (allow-nothing, deny-all, allow-all,
DENY-before-ALLOW) and the "TCP Traffic" task (tcp-echo on ports 9000-9002, the ALLOW and
DENY policies with HTTP-only fields).
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from pipeline.errors import InputError
from pipeline.policy.semantics import Connection, Endpoint, PolicySet

INTERNAL = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")


def pod(ns: str, app: str, *, sa: str = "", mesh: bool = True,
        ns_labels: dict[str, str] | None = None, ports: tuple[tuple[str, int, int], ...] = (),
        **labels: str) -> Endpoint:
    return Endpoint(ns, app, "pod", (("app", app), *labels.items()),
                    tuple((ns_labels or {}).items()), sa, (), ports, mesh)


def host(ip: str, kind: str = "external") -> Endpoint:
    return Endpoint("", f"unknown:{ip}", kind, addresses=(f"{ip}/32",))


WORLD = Endpoint("", "world", "world")


def policies(text: str) -> PolicySet:
    return PolicySet.from_documents(
        ((f"doc{i}", d) for i, d in enumerate(yaml.safe_load_all(text)) if d), INTERNAL)


def allowed(ps: PolicySet, src: Endpoint, dst: Endpoint, port: int, proto: int = 6) -> bool:
    return ps.evaluate(Connection(src, dst, proto, port)).allowed


# -- Kubernetes NetworkPolicy ------------------------------------------------------------

DOCS_EXAMPLE = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: test-network-policy
  namespace: default
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
  - Ingress
  - Egress
  ingress:
  - from:
    - ipBlock:
        cidr: 172.17.0.0/16
        except:
        - 172.17.1.0/24
    - namespaceSelector:
        matchLabels:
          project: myproject
    - podSelector:
        matchLabels:
          role: frontend
    ports:
    - protocol: TCP
      port: 6379
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/24
    ports:
    - protocol: TCP
      port: 5978
"""
DB = pod("default", "redis", role="db")
FRONTEND = pod("default", "web", role="frontend")


def test_docs_example_ingress_sources() -> None:
    ps = policies(DOCS_EXAMPLE)
    # "any pod in the default namespace with the label role=frontend"
    assert allowed(ps, FRONTEND, DB, 6379)
    # "any pod in a namespace with the label project=myproject"
    assert allowed(ps, pod("proj", "x", ns_labels={"project": "myproject"}), DB, 6379)
    assert not allowed(ps, pod("other", "x", role="frontend"), DB, 6379)
    # "IP addresses in 172.17.0.0–172.17.0.255 and 172.17.2.0–172.17.255.255"
    assert allowed(ps, host("172.17.0.9"), DB, 6379)
    assert allowed(ps, host("172.17.2.1"), DB, 6379)
    assert not allowed(ps, host("172.17.1.7"), DB, 6379)
    # only TCP 6379
    assert not allowed(ps, FRONTEND, DB, 6380)
    assert not allowed(ps, FRONTEND, DB, 6379, proto=17)


def test_docs_example_egress() -> None:
    ps = policies(DOCS_EXAMPLE)
    # "connections from any pod in the default namespace with the label role=db to CIDR
    # 10.0.0.0/24 on TCP port 5978"
    assert allowed(ps, DB, host("10.0.0.7"), 5978)
    assert not allowed(ps, DB, host("10.0.0.7"), 5979)
    assert not allowed(ps, DB, host("10.0.1.7"), 5978)


def test_only_selected_pods_are_isolated() -> None:
    ps = policies(DOCS_EXAMPLE)
    other = pod("default", "cache", role="cache")
    assert allowed(ps, pod("elsewhere", "x"), other, 1234)
    assert allowed(ps, other, host("8.8.8.8"), 53, proto=17)
    assert allowed(PolicySet(), FRONTEND, DB, 6379)  # no policy at all: everything flows


def test_isolation_is_per_direction() -> None:
    deny_ingress = policies("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-ingress, namespace: default}
spec:
  podSelector: {}
  policyTypes: [Ingress]
""")
    a, b = pod("default", "a"), pod("default", "b")
    assert not allowed(deny_ingress, a, b, 80)  # b's ingress isolated
    assert allowed(deny_ingress, a, host("1.1.1.1"), 443)  # a's egress is not
    deny_egress = policies("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-egress, namespace: default}
spec:
  podSelector: {}
  policyTypes: [Egress]
""")
    assert not allowed(deny_egress, a, host("1.1.1.1"), 443)
    assert allowed(deny_egress, host("1.1.1.1"), a, 443)


def test_policy_types_default_from_the_sections_present() -> None:
    # no policyTypes: Ingress always, Egress because an egress section exists
    ps = policies("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: default}
spec:
  podSelector: {matchLabels: {app: a}}
  egress:
  - to: [{podSelector: {matchLabels: {app: b}}}]
""")
    a, b, c = pod("default", "a"), pod("default", "b"), pod("default", "c")
    assert allowed(ps, a, b, 80)
    assert not allowed(ps, a, c, 80)
    assert not allowed(ps, c, a, 80)  # ingress isolated with no ingress rule


def test_allows_are_additive() -> None:
    ps = policies("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-web, namespace: default}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-batch, namespace: default}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: [{from: [{podSelector: {matchLabels: {app: batch}}}], ports: [{port: 9000}]}]
""")
    api = pod("default", "api")
    assert allowed(ps, pod("default", "web"), api, 8080)
    assert allowed(ps, pod("default", "batch"), api, 9000)
    assert not allowed(ps, pod("default", "batch"), api, 8080)
    assert not allowed(ps, pod("default", "other"), api, 9000)


AND_PEER = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: default}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          user: alice
      podSelector:
        matchLabels:
          role: client
"""
OR_PEERS = AND_PEER.replace("      podSelector:", "    - podSelector:")


def test_namespace_and_pod_selector_in_one_peer_is_and() -> None:
    ps, api = policies(AND_PEER), pod("default", "api")
    alice = {"user": "alice"}
    assert allowed(ps, pod("alice-ns", "c", ns_labels=alice, role="client"), api, 80)
    assert not allowed(ps, pod("alice-ns", "s", ns_labels=alice, role="server"), api, 80)
    assert not allowed(ps, pod("default", "c", role="client"), api, 80)


def test_namespace_and_pod_selector_as_two_peers_is_or() -> None:
    ps, api = policies(OR_PEERS), pod("default", "api")
    alice = {"user": "alice"}
    assert allowed(ps, pod("alice-ns", "s", ns_labels=alice, role="server"), api, 80)
    assert allowed(ps, pod("default", "c", role="client"), api, 80)
    assert not allowed(ps, pod("bob-ns", "c", ns_labels={"user": "bob"}, role="client"), api, 80)


def test_pod_selector_alone_means_the_policy_namespace() -> None:
    ps = policies(AND_PEER.replace("""    - namespaceSelector:
        matchLabels:
          user: alice
      podSelector:""", "    - podSelector:"))
    api = pod("default", "api")
    assert allowed(ps, pod("default", "c", role="client"), api, 80)
    assert not allowed(ps, pod("other", "c", role="client"), api, 80)


def test_ipblock_except_and_ranges() -> None:
    ps = policies("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: default}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16]}}]
""")
    a = pod("default", "a")
    assert allowed(ps, a, host("8.8.8.8"), 53, 17)
    assert allowed(ps, a, WORLD, 443)  # the internet: everything outside internal ranges
    assert not allowed(ps, a, host("10.1.2.3"), 443)
    vm = Endpoint("", "vm", "vm", addresses=("10.20.0.0/28",))
    assert not allowed(ps, a, vm, 1521)
    half = Endpoint("", "edge", "external", addresses=("10.0.0.0/7",))  # half inside 10/8
    assert not allowed(ps, a, half, 80)


def test_named_ports_resolve_on_the_destination_pod() -> None:
    ps = policies("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: default}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: [{ports: [{port: http, protocol: TCP}]}]
""")
    api = pod("default", "api", ports=(("http", 6, 8080), ("metrics", 6, 9090)))
    client = pod("default", "web")
    assert allowed(ps, client, api, 8080)
    assert not allowed(ps, client, api, 9090)
    assert not allowed(ps, client, pod("default", "api"), 8080)  # no such named port


def test_end_port_range() -> None:
    ps = policies("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: multi-port-egress, namespace: default}
spec:
  podSelector: {matchLabels: {role: db}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.0.0.0/24}}]
    ports:
    - protocol: TCP
      port: 32000
      endPort: 32768
""")
    assert allowed(ps, DB, host("10.0.0.5"), 32000)
    assert allowed(ps, DB, host("10.0.0.5"), 32768)
    assert not allowed(ps, DB, host("10.0.0.5"), 32769)
    assert not allowed(ps, DB, host("10.0.0.5"), 31999)


def test_both_ends_must_allow() -> None:
    ps = policies("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-egress, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: api}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api-ingress, namespace: default}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: [{from: [{podSelector: {matchLabels: {app: gateway}}}]}]
""")
    web, api = pod("default", "web"), pod("default", "api")
    v = ps.evaluate(Connection(web, api, 6, 80))
    assert not v.allowed and "ingress of default/api" in v.reason
    assert allowed(ps, pod("default", "gateway"), api, 80)


def test_allow_all_and_deny_all_defaults() -> None:
    allow_all = policies("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all-ingress, namespace: default}
spec:
  podSelector: {}
  ingress: [{}]
  policyTypes: [Ingress]
""")
    deny_all = policies("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-all, namespace: default}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
""")
    a, b = pod("default", "a"), pod("default", "b")
    assert allowed(allow_all, host("203.0.113.9"), a, 22)
    assert not allowed(deny_all, a, b, 80) and not allowed(deny_all, a, host("1.1.1.1"), 53, 17)
    assert allowed(deny_all, pod("other", "x"), pod("other", "y"), 80)  # other namespace


def test_endpoints_outside_the_cluster_are_not_isolated() -> None:
    ps = policies("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-all, namespace: legacy}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
""")
    vm = Endpoint("legacy", "oracle", "vm", addresses=("10.20.0.5/32",))
    assert allowed(ps, pod("shop", "api"), vm, 1521)


def test_malformed_policies_are_input_errors() -> None:
    with pytest.raises(InputError, match="endPort"):
        policies("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec: {podSelector: {}, egress: [{ports: [{port: http, endPort: 90}]}]}
""")
    with pytest.raises(InputError, match="protocol"):
        policies("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p}
spec: {podSelector: {}, ingress: [{ports: [{protocol: ICMP}]}]}
""")


# -- Istio AuthorizationPolicy -----------------------------------------------------------

SLEEP = pod("foo", "sleep", sa="sleep")
HTTPBIN = pod("foo", "httpbin", sa="httpbin", version="v1")
TCP_ECHO = pod("foo", "tcp-echo", sa="tcp-echo")


def authz(name: str, spec: dict[str, Any], ns: str = "foo") -> str:
    return yaml.safe_dump({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                           "metadata": {"name": name, "namespace": ns}, "spec": spec})


def test_no_allow_policy_means_allow() -> None:
    assert allowed(policies(authz("deny-other", {
        "selector": {"matchLabels": {"app": "other"}}, "action": "DENY", "rules": [{}]})),
        SLEEP, HTTPBIN, 8000)


def test_allow_nothing_denies_everything() -> None:
    ps = policies(authz("allow-nothing", {}))
    v = ps.evaluate(Connection(SLEEP, HTTPBIN, 6, 8000))
    assert not v.allowed and v.plane == "istio"
    assert allowed(ps, SLEEP, pod("bar", "x"), 8000)  # another namespace


def test_deny_is_evaluated_before_allow() -> None:
    ps = policies(authz("allow-all", {"action": "ALLOW", "rules": [{}]}) + "---\n" + authz(
        "deny-dev", {"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["dev"]}}]}]}))
    assert allowed(ps, SLEEP, HTTPBIN, 8000)
    assert not allowed(ps, pod("dev", "x", sa="x"), HTTPBIN, 8000)


def test_deny_all_rule_matches_everything() -> None:
    ps = policies(authz("deny-all", {"action": "DENY", "rules": [{}]}) + "---\n" + authz(
        "allow-all", {"action": "ALLOW", "rules": [{}]}))
    assert not allowed(ps, SLEEP, HTTPBIN, 8000)


def test_principals_need_mtls_and_match_exactly_or_by_wildcard() -> None:
    ps = policies(authz("allow-sleep", {
        "selector": {"matchLabels": {"app": "httpbin"}}, "action": "ALLOW",
        "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/foo/sa/sleep"]}}]}]}))
    assert allowed(ps, SLEEP, HTTPBIN, 8000)
    assert not allowed(ps, pod("foo", "other", sa="other"), HTTPBIN, 8000)
    assert not allowed(ps, pod("foo", "sleep", sa="sleep", mesh=False), HTTPBIN, 8000)
    wildcard = policies(authz("any-foo", {"action": "ALLOW", "rules": [
        {"from": [{"source": {"principals": ["cluster.local/ns/foo/*"]}}]}]}))
    assert allowed(wildcard, pod("foo", "o", sa="o"), HTTPBIN, 80)
    assert not allowed(wildcard, pod("bar", "o", sa="o"), HTTPBIN, 80)


def test_require_mtls_denies_plaintext() -> None:
    ps = policies(authz("require-mtls", {"action": "DENY", "rules": [
        {"from": [{"source": {"notPrincipals": ["*"]}}]}]}))
    assert allowed(ps, SLEEP, HTTPBIN, 8000)
    assert not allowed(ps, pod("foo", "legacy", mesh=False), HTTPBIN, 8000)
    assert not allowed(ps, host("10.9.9.9", "vm"), HTTPBIN, 8000)


def test_selector_scopes_a_policy_to_matching_workloads() -> None:
    ps = policies(authz("httpbin-v1", {
        "selector": {"matchLabels": {"app": "httpbin", "version": "v1"}}, "action": "ALLOW",
        "rules": [{"from": [{"source": {"namespaces": ["bar"]}}]}]}))
    assert not allowed(ps, SLEEP, HTTPBIN, 8000)
    assert allowed(ps, SLEEP, pod("foo", "httpbin", sa="httpbin", version="v2"), 8000)
    assert allowed(ps, pod("bar", "b", sa="b"), HTTPBIN, 8000)


def test_root_namespace_policies_apply_to_the_whole_mesh() -> None:
    ps = policies(authz("global-deny", {"action": "DENY", "rules": [
        {"to": [{"operation": {"ports": ["23"]}}]}]}, ns="istio-system"))
    assert not allowed(ps, SLEEP, pod("bar", "telnetd"), 23)
    assert allowed(ps, SLEEP, pod("bar", "telnetd"), 22)


def test_ip_blocks_and_not_ip_blocks() -> None:
    ps = policies(authz("office", {"action": "ALLOW", "rules": [{"from": [{"source": {
        "ipBlocks": ["10.0.0.0/8"], "notIpBlocks": ["10.9.0.0/16"]}}]}]}))
    assert allowed(ps, host("10.1.2.3"), HTTPBIN, 80)
    assert not allowed(ps, host("10.9.2.3"), HTTPBIN, 80)
    assert not allowed(ps, WORLD, HTTPBIN, 80)


TCP_POLICY = {"selector": {"matchLabels": {"app": "tcp-echo"}}}


def test_tcp_task_allow_ports() -> None:
    ps = policies(authz("tcp-policy", {**TCP_POLICY, "action": "ALLOW",
                                       "rules": [{"to": [{"operation": {"ports": ["9000",
                                                                                  "9001"]}}]}]}))
    assert allowed(ps, SLEEP, TCP_ECHO, 9000)
    assert allowed(ps, SLEEP, TCP_ECHO, 9001)
    assert not allowed(ps, SLEEP, TCP_ECHO, 9002)


def test_tcp_task_allow_rule_with_http_only_fields_is_ignored() -> None:
    ps = policies(authz("tcp-policy", {**TCP_POLICY, "action": "ALLOW", "rules": [
        {"to": [{"operation": {"methods": ["GET"], "ports": ["9000"]}}]}]}))
    assert not allowed(ps, SLEEP, TCP_ECHO, 9000)
    assert not allowed(ps, SLEEP, TCP_ECHO, 9001)


def test_tcp_task_deny_with_http_only_fields_denies_every_port() -> None:
    ps = policies(authz("tcp-policy", {**TCP_POLICY, "action": "DENY", "rules": [
        {"to": [{"operation": {"methods": ["GET"]}}]}]}))
    assert not allowed(ps, SLEEP, TCP_ECHO, 9000)
    assert not allowed(ps, SLEEP, TCP_ECHO, 9001)


def test_tcp_task_deny_with_http_and_tcp_fields_keeps_the_ports() -> None:
    ps = policies(authz("tcp-policy", {**TCP_POLICY, "action": "DENY", "rules": [
        {"to": [{"operation": {"methods": ["GET"], "ports": ["9000"]}}]}]}))
    assert not allowed(ps, SLEEP, TCP_ECHO, 9000)
    assert allowed(ps, SLEEP, TCP_ECHO, 9001)


def test_istio_does_not_see_udp_and_ignores_non_mesh_servers() -> None:
    ps = policies(authz("allow-nothing", {}))
    assert allowed(ps, SLEEP, HTTPBIN, 53, proto=17)
    assert allowed(ps, SLEEP, pod("foo", "nomesh", mesh=False), 8000)


def test_both_planes_must_allow() -> None:
    ps = policies(authz("allow-sleep", {"action": "ALLOW", "rules": [
        {"from": [{"source": {"principals": ["cluster.local/ns/foo/sa/sleep"]}}]}]}) + """---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: foo}
spec:
  podSelector: {matchLabels: {app: httpbin}}
  ingress: [{ports: [{port: 8000}]}]
""")
    assert allowed(ps, SLEEP, HTTPBIN, 8000)
    v = ps.evaluate(Connection(SLEEP, HTTPBIN, 6, 9000))
    assert (v.allowed, v.plane) == (False, "networkpolicy")
    v = ps.evaluate(Connection(pod("foo", "x", sa="x"), HTTPBIN, 6, 8000))
    assert (v.allowed, v.plane) == (False, "istio")
