"""Policy renderers: NetworkPolicy (schema-validated offline), Cilium, hostile input, writing."""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from pipeline.core.intents import (
    CandidateRule,
    Direction,
    Evidence,
    Peer,
    RuleStatus,
    Workload,
)
from pipeline.errors import InputError
from pipeline.policy import (
    GENERATED_BY,
    GENERATED_BY_KEY,
    RenderResult,
    render_cilium,
    render_networkpolicies,
    write_policies,
)
from pipeline.policy.labels import dns_label, label_key_error, label_value_error

K8S_VERSION = "1.37.0"  # newest schema bundled with kubernetes-validate 1.37 (no network)
DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
EV = Evidence(
    flows=10, bytes=4096, first_seen=1_700_000_000.0, last_seen=1_700_086_400.0, days_observed=2
)


def wl(ns: str, name: str, kind: str = "pod", /, **labels: str) -> Workload:
    return Workload(ns, name, kind, tuple(labels.items()))


def pods(ns: str, name: str, /, **labels: str) -> Peer:
    return Peer("workload", wl(ns, name, **labels))


def rule(
    app: Workload,
    direction: Direction,
    peer: Peer,
    proto: int = 6,
    ports: tuple[int, ...] = (80,),
    status: RuleStatus = "proposed",
) -> CandidateRule:
    digest = hashlib.sha256(repr((app, direction, peer, proto, ports)).encode()).hexdigest()
    return CandidateRule(f"r-{digest[:12]}", app, direction, peer, proto, ports, EV, 0.9, status)


API = wl("shop", "orders-api", app="orders-api", tier="backend")
WEB = wl("shop", "web")
WORLD = Peer("world", except_cidrs=("10.0.0.0/8", "192.168.0.0/16", "fd00::/8"))


def estate() -> list[CandidateRule]:
    return [
        rule(API, "ingress", pods("shop", "web"), ports=(8080,)),
        rule(API, "ingress", pods("shop", "web"), ports=(8443,)),
        rule(API, "ingress", pods("edge", "gateway"), ports=(8080,)),
        rule(API, "egress", pods("data", "pg"), ports=(5432,)),
        rule(API, "egress", WORLD, ports=(443,)),
        rule(API, "egress", Peer("cidr", cidr="172.16.5.0/24"), proto=17, ports=()),
        rule(
            API,
            "egress",
            Peer("workload", wl("", "mainframe", "vm"), cidr="10.9.8.7/32"),
            proto=132,
            ports=(2905,),
        ),
        rule(API, "ingress", pods("shop", "web"), proto=1, ports=()),
        rule(WEB, "egress", pods("shop", "orders-api"), ports=(8080,)),
        rule(wl("data", "pg"), "ingress", pods("shop", "orders-api"), ports=(5432,)),
        rule(wl("", "legacy-db", "vm"), "ingress", pods("shop", "web"), ports=(1521,)),
    ]


def docs(result: RenderResult) -> dict[str, dict[str, Any]]:
    return {path: yaml.safe_load(text) for path, text in result.files.items()}


def by_name(result: RenderResult, name: str) -> dict[str, Any]:
    return next(d for d in docs(result).values() if d["metadata"]["name"] == name)


@pytest.mark.parametrize("allow_dns", [False, True])
def test_networkpolicies_validate_against_kubernetes_schema(allow_dns: bool) -> None:
    result = render_networkpolicies(estate(), allow_dns=allow_dns)
    assert result.files
    for path, doc in docs(result).items():
        assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == "1.37", path
        assert DNS1123.fullmatch(doc["metadata"]["name"])
        assert doc["metadata"]["annotations"][GENERATED_BY_KEY] == GENERATED_BY


def test_peers_selectors_and_world() -> None:
    spec = by_name(render_networkpolicies(estate()), "segflow-allow-orders-api")["spec"]
    assert spec["podSelector"] == {"matchLabels": {"app": "orders-api", "tier": "backend"}}
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    froms = [peer for entry in spec["ingress"] for peer in entry["from"]]
    assert {"podSelector": {"matchLabels": {"app": "web"}}} in froms  # same namespace
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "edge"}},
        "podSelector": {"matchLabels": {"app": "gateway"}},
    } in froms
    tos = [peer for entry in spec["egress"] for peer in entry["to"]]
    assert {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "192.168.0.0/16"]}} in tos
    assert {"ipBlock": {"cidr": "::/0", "except": ["fd00::/8"]}} in tos
    assert {"ipBlock": {"cidr": "10.9.8.7/32"}} in tos  # vm peer via its CIDR
    sctp = next(e for e in spec["egress"] if e["to"] == [{"ipBlock": {"cidr": "10.9.8.7/32"}}])
    assert sctp["ports"] == [{"protocol": "SCTP", "port": 2905}]
    udp = next(e for e in spec["egress"] if e["to"] == [{"ipBlock": {"cidr": "172.16.5.0/24"}}])
    assert udp["ports"] == [{"protocol": "UDP"}]  # no ports = any port of the protocol


def test_ports_merge_per_peer_and_any_port_subsumes() -> None:
    spec = by_name(render_networkpolicies(estate()), "segflow-allow-orders-api")["spec"]
    same_ns_web = [{"podSelector": {"matchLabels": {"app": "web"}}}]
    web = [e for e in spec["ingress"] if e["from"] == same_ns_web]
    assert len(web) == 1
    assert web[0]["ports"] == [{"protocol": "TCP", "port": 8080}, {"protocol": "TCP", "port": 8443}]
    rules = [
        rule(WEB, "egress", pods("shop", "x"), ports=(80,)),
        rule(WEB, "egress", pods("shop", "x"), ports=()),
    ]
    spec = by_name(render_networkpolicies(rules), "segflow-allow-web")["spec"]
    assert [
        e["ports"]
        for e in spec["egress"]
        if "podSelector" in e["to"][0] and e["to"][0]["podSelector"]["matchLabels"] == {"app": "x"}
    ] == [[{"protocol": "TCP"}]]


def test_output_is_deterministic_under_permutation_and_duplicates() -> None:
    rules = estate()
    expected = render_networkpolicies(rules)
    expected_cilium = render_cilium(rules)
    rng = random.Random(7)
    for _ in range(5):
        shuffled = rules + rules[:3]
        rng.shuffle(shuffled)
        assert render_networkpolicies(shuffled) == expected
        assert render_cilium(shuffled) == expected_cilium


HOSTILE = "a\nkind: Secret"
LONG = "v" * 300


@pytest.mark.parametrize(
    ("app", "peer", "needle"),
    [
        (wl("shop", "api", app=HOSTILE), pods("shop", "web"), "Secret"),
        (wl("shop", "api", **{"bad key": "x"}), pods("shop", "web"), "bad key"),
        (wl("shop", "api", app=LONG), pods("shop", "web"), LONG),
        (wl("shop", "api"), pods("shop", "web", app=LONG), LONG),
        (wl("shop", "api"), pods("shop", "web", role="x: {y: z}"), "{y"),
        (wl("shop", "api"), pods("shop", "web", **{"evil.io/" + "p" * 250: "x"}), "p" * 250),
        (wl("Shop\n", "api"), pods("shop", "web"), "Shop"),
        (wl("shop", "api"), pods("shop\nkind: Secret", "web"), "Secret"),
        (wl("shop", "api: {x}"), pods("shop", "web"), "{x}"),
        (wl("shop", "ápp"), pods("shop", "web"), "ápp"),
        (wl("shop", "api"), pods("shop", "web\u202e"), "\\u202e"),
        (wl("shop", "api"), Peer("cidr", cidr="10.0.0.0/8\nkind: Secret"), "Secret"),
        (wl("shop", "api"), Peer("world", except_cidrs=("0.0.0.0/0",)), "0.0.0.0/0"),
    ],
)
def test_hostile_names_and_labels_are_skipped(app: Workload, peer: Peer, needle: str) -> None:
    bad = rule(app, "egress", peer)
    good = rule(WEB, "egress", pods("shop", "orders-api"), ports=(8080,))
    for result in (render_networkpolicies([bad, good]), render_cilium([bad, good])):
        assert [rid for rid, _ in result.skipped] == [bad.id]
        reason = result.skipped[0][1]
        assert reason.startswith("invalid") and "\n" not in reason and len(reason) < 200
        text = "".join(result.files.values())
        assert needle not in text and "Secret" not in text and bad.id not in text
        assert "segflow-allow-web" in text
        assert text.isascii()


def test_label_validators() -> None:
    assert label_key_error("app.kubernetes.io/name") is None
    assert label_key_error("k8s-app") is None
    assert label_key_error("bad key") and label_key_error("/x") and label_key_error("a/b/c")
    assert label_key_error("Upper.Case/x")  # prefix must be a lower-case DNS subdomain
    assert label_value_error("") is None
    assert label_value_error("v1.2_3-x") is None
    assert label_value_error("-x") and label_value_error("x" * 64) and label_value_error(7)


def test_default_deny_once_per_namespace() -> None:
    result = render_networkpolicies(estate())
    deny = sorted(p for p in result.files if p.endswith("/00-default-deny.yaml"))
    assert deny == ["data/00-default-deny.yaml", "shop/00-default-deny.yaml"]
    doc = yaml.safe_load(result.files["shop/00-default-deny.yaml"])
    assert doc["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    # the shop namespace had an unrendered (ICMP) rule: the deny policy says so
    assert "not rendered" in doc["metadata"]["annotations"]["segflow.io/notes"]
    assert not any(
        "default-deny" in p for p in render_networkpolicies(estate(), default_deny=False).files
    )


def test_non_pod_workloads_are_not_protected_and_counted() -> None:
    result = render_networkpolicies(estate())
    assert result.skip_counts() == {"non-pod": 1, "unsupported": 1}
    assert not any("legacy-db" in p for p in result.files)
    lone = rule(WEB, "egress", Peer("workload", wl("", "mainframe", "vm")), ports=(23,))
    skipped = render_networkpolicies([lone]).skipped
    assert skipped[0][0] == lone.id and skipped[0][1].startswith("non-pod")


def test_icmp_is_noted_not_rendered_in_networkpolicy() -> None:
    result = render_networkpolicies(estate())
    icmp = next(r for r in estate() if r.proto == 1)
    assert (icmp.id, "unsupported: ICMP cannot be expressed in a Kubernetes NetworkPolicy") in (
        result.skipped
    )
    ann = by_name(result, "segflow-allow-orders-api")["metadata"]["annotations"]
    assert f"rule {icmp.id}: ICMP cannot be expressed" in ann["segflow.io/notes"]
    assert icmp.id not in ann["segflow.io/rule-ids"]


def test_dns_note_and_allow_dns_option() -> None:
    result = render_networkpolicies(estate())
    web = by_name(result, "segflow-allow-web")
    assert "no DNS egress" in web["metadata"]["annotations"]["segflow.io/notes"]
    web = by_name(render_networkpolicies(estate(), allow_dns=True), "segflow-allow-web")
    assert "segflow.io/notes" not in web["metadata"]["annotations"]
    assert {
        "to": [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                },
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        ],
        "ports": [{"protocol": "TCP", "port": 53}, {"protocol": "UDP", "port": 53}],
    } in web["spec"]["egress"]
    # ingress-only app under default deny also gets DNS egress when asked
    pg = by_name(render_networkpolicies(estate(), allow_dns=True), "segflow-allow-pg")
    assert pg["spec"]["policyTypes"] == ["Ingress", "Egress"]
    with_dns = [*estate(), rule(WEB, "egress", pods("kube-system", "coredns"), 17, (53,))]
    web = by_name(render_networkpolicies(with_dns), "segflow-allow-web")
    assert "segflow.io/notes" not in web["metadata"]["annotations"]


def test_annotations_evidence_and_bounded_rule_ids() -> None:
    many = [rule(WEB, "egress", pods("shop", "orders-api"), ports=(p,)) for p in range(1, 301)]
    ann = by_name(render_networkpolicies(many), "segflow-allow-web")["metadata"]["annotations"]
    assert len(ann["segflow.io/rule-ids"]) <= 1024
    assert re.search(r",\+\d+ more$", ann["segflow.io/rule-ids"])
    assert ann["segflow.io/evidence"] == (
        "rules=300 flows=3000 first_seen=2023-11-14T22:13:20Z last_seen=2023-11-15T22:13:20Z"
        " days_observed=2"
    )


def test_long_and_odd_app_names_become_stable_dns_names() -> None:
    long_app = "Orders_API." + "x" * 50  # valid label value, not a DNS label
    result = render_networkpolicies([rule(wl("shop", long_app), "ingress", pods("shop", "web"))])
    name = docs(result)[f"shop/{dns_label(long_app)}.yaml"]["metadata"]["name"]
    assert len(name) <= 63 and DNS1123.fullmatch(name) and name.startswith("segflow-allow-orders")
    assert name == dns_label(long_app, prefix="segflow-allow-")
    assert dns_label(long_app + "y", prefix="segflow-allow-") != name
    reserved = frozenset({"00-default-deny"})
    assert dns_label("00-default-deny", reserved=reserved) != "00-default-deny"


def test_rejected_and_conflicting_rules_are_skipped() -> None:
    rejected = rule(WEB, "egress", pods("shop", "a"), status="rejected")
    other = rule(wl("shop", "web", app="web", v="2"), "egress", pods("shop", "b"))
    result = render_networkpolicies([rejected, rule(WEB, "egress", pods("shop", "c")), other])
    reasons = dict(result.skipped)
    assert reasons[rejected.id].startswith("rejected")
    assert reasons[other.id].startswith("conflict") and len(result.skipped) == 3
    assert not any("web" in p for p in result.files)


def test_cilium_structure() -> None:
    result = render_cilium(estate(), allow_dns=True)
    assert not any("default-deny" in p for p in result.files)
    for text in result.files.values():
        doc = yaml.safe_load(text)
        assert yaml.safe_load(yaml.safe_dump(doc)) == doc
        assert doc["apiVersion"] == "cilium.io/v2" and doc["kind"] == "CiliumNetworkPolicy"
        assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
        assert set(doc["spec"]) <= {"endpointSelector", "ingress", "egress"}
        for entry in doc["spec"].get("ingress", []) + doc["spec"].get("egress", []):
            assert set(entry) <= {
                "fromEndpoints",
                "toEndpoints",
                "fromCIDR",
                "toCIDR",
                "fromCIDRSet",
                "toCIDRSet",
                "fromEntities",
                "toEntities",
                "toPorts",
                "icmps",
            }
            for port in (p for tp in entry.get("toPorts", []) for p in tp["ports"]):
                assert isinstance(port["port"], str) and port["protocol"] in {"TCP", "UDP", "SCTP"}
    spec = by_name(result, "segflow-allow-orders-api")["spec"]
    assert spec["endpointSelector"] == {"matchLabels": {"app": "orders-api", "tier": "backend"}}
    assert {
        "fromEndpoints": [
            {"matchLabels": {"app": "gateway", "k8s:io.kubernetes.pod.namespace": "edge"}}
        ],
        "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}],
    } in spec["ingress"]
    assert {
        "fromEndpoints": [{"matchLabels": {"app": "web"}}],
        "icmps": [{"fields": [{"family": "IPv4", "type": 8}]}],
    } in spec["ingress"]
    assert {
        "toCIDRSet": [
            {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "192.168.0.0/16"]},
            {"cidr": "::/0", "except": ["fd00::/8"]},
        ],
        "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}],
    } in spec["egress"]
    assert {
        "toCIDR": ["172.16.5.0/24"],
        "toPorts": [{"ports": [{"port": "0", "protocol": "UDP"}]}],
    } in spec["egress"]
    assert any(
        e.get("toEndpoints")
        == [
            {
                "matchLabels": {
                    "k8s-app": "kube-dns",
                    "k8s:io.kubernetes.pod.namespace": "kube-system",
                }
            }
        ]
        for e in spec["egress"]
    )
    world = render_cilium([rule(WEB, "ingress", Peer("world"), ports=(443,))])
    assert by_name(world, "segflow-allow-web")["spec"]["ingress"] == [
        {"fromEntities": ["world"], "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]}
    ]


def test_write_policies_atomic_and_prunes_only_generated(tmp_path: Path) -> None:
    out = tmp_path / "policies"
    first = render_networkpolicies(estate())
    written = write_policies(first, out)
    assert sorted(p.relative_to(out).as_posix() for p in written) == sorted(first.files)
    assert all(p.read_text() == first.files[p.relative_to(out).as_posix()] for p in written)
    (out / "shop" / "hand-written.yaml").write_text("kind: NetworkPolicy\nmetadata: {name: x}\n")
    (out / "notes.txt").write_text("keep me")
    second = render_networkpolicies([rule(WEB, "egress", pods("shop", "orders-api"))])
    write_policies(second, out)
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert left == sorted([*second.files, "shop/hand-written.yaml", "notes.txt"])
    assert not (out / "data").exists()  # emptied by pruning
    assert not list(out.rglob("*.tmp"))
    with pytest.raises(InputError):
        write_policies(RenderResult({"../escape.yaml": "x"}), out)
