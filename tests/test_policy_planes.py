"""Every plane's rendering validated against that plane's published shape.

Kubernetes objects with kubernetes-validate; Cilium, Calico and Istio objects against their
CRDs' OpenAPI schemas (tests/fixtures/policy_schemas, vendored with source and version);
AWS calls against botocore's EC2 request shapes; GCP firewalls against the Compute v1
discovery document; Azure rules against the REST API spec; Terraform JSON against the
providers' argument references. Plus hostile values, YAML quoting, env filtering, review of
provisional rules, the render report and determinism, for every format.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import os
import random
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from pipeline.core.intents import CandidateRule, Direction, Evidence, Peer, RuleStatus, Workload
from pipeline.errors import ConfigError
from pipeline.policy import FORMATS, RenderResult, render, write_rendered
from pipeline.policy.report import REPORT_JSONL, REPORT_TEXT

SCHEMAS = Path(__file__).parent / "fixtures" / "policy_schemas"
K8S_VERSION = "1.37.0"
DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
EV = Evidence(flows=50, bytes=4096, first_seen=1_767_571_200.0, last_seen=1_768_000_000.0,
              days_observed=5)
INTERNAL = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8")
ALL = [(f, None) for f in FORMATS if f != "terraform"] + [
    ("terraform", c) for c in ("aws", "gcp", "azure")]


def wl(ns: str, name: str, kind: str = "pod", /, *, sa: str = "", tier: str = "",
       env: str = "prod", **labels: str) -> Workload:
    selector = tuple(labels.items()) or ((("app", name),) if kind == "pod" else ())
    return Workload(ns, name, kind, selector, env=env, service_account=sa, tier=tier)


def rule(app: Workload, direction: Direction, peer: Peer, proto: int = 6,
         ports: tuple[int, ...] = (80,), status: RuleStatus = "proposed", *,
         provisional: bool = False, methods: tuple[str, ...] = (),
         paths: tuple[str, ...] = ()) -> CandidateRule:
    digest = hashlib.sha256(repr((app, direction, peer, proto, ports)).encode()).hexdigest()
    return CandidateRule(f"r-{digest[:12]}", app, direction, peer, proto, ports, EV, 0.9, status,
                         provisional=provisional, methods=methods, paths=paths)


WEB = wl("shop", "orders-web", sa="orders-web", tier="web")
API = wl("shop", "orders-api", sa="orders-api", tier="api")
DB = wl("shop", "orders-db", sa="orders-db", tier="db")
PAY = wl("payments", "payments-api", sa="payments-api", tier="api")
LEGACY = Workload("legacy", "oracle-db", "vm", env="prod", tier="db")
GATEWAY = Workload("external", "payment-gateway", "external", env="prod")
WORLD = Peer("world", except_cidrs=INTERNAL)


def pods(w: Workload) -> Peer:
    return Peer("workload", w)


def estate() -> list[CandidateRule]:
    """A small estate touching every kind of intent."""
    return [
        rule(WEB, "ingress", WORLD, ports=(443,)),
        rule(WEB, "egress", pods(API), ports=(8080,)),
        rule(API, "ingress", pods(WEB), ports=(8080,), methods=("GET", "POST"), paths=("/v1",)),
        rule(API, "egress", pods(DB), ports=(5432,)),
        rule(API, "egress", pods(PAY), ports=(443,)),
        rule(API, "egress", Peer("workload", LEGACY, cidr="10.20.0.0/28"), ports=(1521,)),
        rule(API, "egress", Peer("cidr", GATEWAY, cidr="203.0.113.0/24",
                                 fqdns=("api.gateway.example",)), ports=(443,)),
        rule(API, "egress", pods(wl("kube-system", "coredns", **{"k8s-app": "kube-dns"})),
             17, (53,)),
        rule(API, "ingress", Peer("namespace", Workload("monitoring", "prometheus")),
             ports=(9090,)),
        rule(API, "ingress", pods(WEB), 1, (8,)),  # ICMP echo
        rule(API, "egress", WORLD, ports=(443, 444, 445)),
        rule(DB, "ingress", pods(API), ports=(5432,)),
        rule(PAY, "ingress", pods(API), ports=(443,)),
        rule(PAY, "ingress", Peer("cidr", cidr="10.9.8.7/32"), 132, (2905,)),
        rule(LEGACY, "ingress", pods(API), ports=(1521,)),
        rule(DB, "ingress", pods(wl("backup", "velero", sa="velero")), ports=(5432,),
             provisional=True),
        rule(wl("dev-shop", "orders-api", env="dev"), "ingress", pods(WEB), ports=(8080,)),
    ]


# -- schema helpers --------------------------------------------------------------------


def strict(schema: Any) -> Any:
    """A copy where every object schema listing properties rejects unknown members."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and (
                    "additionalProperties" not in node):
                node["additionalProperties"] = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    return schema


FORMATS_CHECKER = jsonschema.FormatChecker()


@FORMATS_CHECKER.checks("cidr", raises=ValueError)
def _is_cidr(value: object) -> bool:
    return not isinstance(value, str) or bool(ipaddress.ip_network(value, strict=False))


def validator(schema: dict[str, Any], ref: str | None = None) -> jsonschema.Validator:
    root = strict(schema)
    target = {"$ref": f"#/$defs/{ref}", "$defs": root["$defs"]} if ref else root
    return jsonschema.Draft202012Validator(target, format_checker=FORMATS_CHECKER)


def load_schema(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((SCHEMAS / name).read_text())
    return data


def errors(v: jsonschema.Validator, doc: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(doc)]


def yaml_docs(result: RenderResult) -> dict[str, dict[str, Any]]:
    return {p: yaml.safe_load(t) for p, t in result.files.items() if p.endswith(".yaml")}


def check_k8s_metadata(doc: dict[str, Any], namespaced: bool = True) -> None:
    meta = doc["metadata"]
    assert DNS1123.fullmatch(meta["name"]) and len(meta["name"]) <= 63
    assert ("namespace" in meta) == namespaced
    if namespaced:
        assert DNS1123.fullmatch(meta["namespace"])
    assert meta["annotations"]["segflow.io/generated-by"] == "segflow"


# -- validity per plane ----------------------------------------------------------------


def test_networkpolicy_valid() -> None:
    result = render("networkpolicy", estate())
    assert result.files
    for path, doc in yaml_docs(result).items():
        assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == "1.37", path


def test_cilium_valid_against_crd_schema() -> None:
    v = validator(load_schema("cilium-networkpolicy.schema.yaml"))
    docs = yaml_docs(render("cilium", estate()))
    assert len(docs) >= 5
    for path, doc in docs.items():
        assert (doc["apiVersion"], doc["kind"]) == ("cilium.io/v2", "CiliumNetworkPolicy")
        assert errors(v, doc) == [], path
        check_k8s_metadata(doc)
    api = docs["shop/orders-api.yaml"]["spec"]
    assert {"toFQDNs": [{"matchName": "api.gateway.example"}],
            "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]} in api["egress"]
    dns = [e for e in api["egress"] if e.get("toEndpoints", [{}])[0].get("matchLabels", {}).get(
        "k8s-app") == "kube-dns"]
    assert dns and all(p["rules"] == {"dns": [{"matchPattern": "*"}]} for e in dns
                       for p in e["toPorts"])
    assert {"fromEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "monitoring"}}],
            "toPorts": [{"ports": [{"port": "9090", "protocol": "TCP"}]}]} in api["ingress"]
    # a deliberately broken document is caught by the same validator
    bad = copy.deepcopy(docs["shop/orders-api.yaml"])
    bad["spec"]["egress"][0]["toPorts"] = [{"ports": [{"port": 443, "protocol": "TCP"}]}]
    assert errors(v, bad)


@pytest.mark.parametrize("staged", [False, True])
def test_calico_valid_against_crd_schemas(staged: bool) -> None:
    schema = load_schema("calico-policies.schema.yaml")
    docs = yaml_docs(render("calico", estate(), staged=staged))
    kinds = set()
    for path, doc in docs.items():
        assert doc["apiVersion"] == "projectcalico.org/v3"
        kinds.add(doc["kind"])
        assert errors(validator(schema, doc["kind"]), doc["spec"]) == [], path
        check_k8s_metadata(doc, namespaced="Global" not in doc["kind"])
        if staged:
            assert doc["spec"]["stagedAction"] == "Set"
    prefix = "Staged" if staged else ""
    assert kinds == {f"{prefix}NetworkPolicy", f"{prefix}GlobalNetworkPolicy"}
    api = docs["shop/orders-api.yaml"]["spec"]
    assert {"action": "Allow", "protocol": "ICMP", "ipVersion": 4, "icmp": {"type": 8},
            "source": {"selector": "app == 'orders-web'"}} in api["ingress"]
    world = [r for r in api["egress"] if r.get("destination", {}).get("nets") == ["0.0.0.0/0"]]
    assert world[0]["destination"]["notNets"] == ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
    deny = docs["_global/segflow-default-deny.yaml"]["spec"]
    assert deny["namespaceSelector"] == "projectcalico.org/name in {'dev-shop', 'payments', 'shop'}"
    assert "ingress" not in deny and "egress" not in deny


def test_istio_valid_against_crd_schema() -> None:
    v = validator(load_schema("istio-authorizationpolicy.schema.yaml"))
    docs = yaml_docs(render("istio", estate()))
    for path, doc in docs.items():
        assert (doc["apiVersion"], doc["kind"]) == ("security.istio.io/v1", "AuthorizationPolicy")
        assert errors(v, doc) == [], path
        check_k8s_metadata(doc)
    assert docs["shop/00-allow-nothing.yaml"]["spec"] == {}
    rules = docs["shop/orders-api.yaml"]["spec"]["rules"]
    assert {"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/orders-web"]}}],
            "to": [{"operation": {"ports": ["8080"], "methods": ["GET", "POST"],
                                  "paths": ["/v1/*"]}}]} in rules
    assert {"from": [{"source": {"namespaces": ["monitoring"]}}],
            "to": [{"operation": {"ports": ["9090"]}}]} in rules


def test_aws_calls_match_ec2_request_shapes() -> None:
    botocore_session = pytest.importorskip("botocore.session")
    from botocore.validate import ParamValidator

    model = botocore_session.get_session().get_service_model("ec2")
    result = render("aws-sg", estate())
    doc = json.loads(result.files["aws-sg/security-groups.json"])
    actions = [c["action"] for c in doc["calls"]]
    assert actions.index("CreateSecurityGroup") < actions.index("AuthorizeSecurityGroupIngress")
    for call in doc["calls"]:
        shape = model.operation_model(call["action"]).input_shape
        report = ParamValidator().validate(call["params"], shape)
        assert not report.has_errors(), report.generate_report()
    # the database's group admits only the api tier's group
    db_in = [c["params"] for c in doc["calls"] if c["action"] == "AuthorizeSecurityGroupIngress"
             and c["params"]["GroupId"] == "{{segflow-shop-orders-db}}"]
    assert db_in == [{"GroupId": "{{segflow-shop-orders-db}}", "IpPermissions": [
        {"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432, "UserIdGroupPairs": [
            {"GroupId": "{{segflow-shop-orders-api}}", "Description": db_in[0]["IpPermissions"][0]
             ["UserIdGroupPairs"][0]["Description"]}]}]}]
    # consecutive ports merge into one range
    api_out = next(c["params"]["IpPermissions"] for c in doc["calls"]
                   if c["action"] == "AuthorizeSecurityGroupEgress"
                   and c["params"]["GroupId"] == "{{segflow-shop-orders-api}}")
    assert any(p.get("FromPort") == 443 and p.get("ToPort") == 445 for p in api_out)
    bad = ParamValidator().validate({"GroupId": "x", "IpPermissions": [{"FromPort": "a"}]},
                                    model.operation_model("AuthorizeSecurityGroupIngress")
                                    .input_shape)
    assert bad.has_errors()


def _discovery_schema(name: str) -> dict[str, Any]:
    """A JSON Schema for one Compute v1 discovery-document schema (refs → $defs)."""
    googleapiclient = pytest.importorskip("googleapiclient")
    path = Path(googleapiclient.__file__).parent / "discovery_cache/documents/compute.v1.json"
    doc = json.loads(path.read_text())

    def convert(node: Any) -> Any:
        if isinstance(node, list):
            return [convert(v) for v in node]
        if not isinstance(node, dict):
            return node
        out: dict[str, Any] = {}
        for k, v in node.items():
            if k == "$ref":
                out["$ref"] = f"#/$defs/{v}"
            elif k == "properties":  # member names, not schema keywords
                out[k] = {name: convert(sub) for name, sub in v.items()}
            elif k in ("description", "id", "annotations", "enumDescriptions", "enumDeprecated"):
                continue  # documentation, not constraints
            elif k == "format" and v in ("int64", "uint64", "uint32", "int32", "byte"):
                continue
            else:
                out[k] = convert(v)
        if out.get("type") == "any":
            del out["type"]
        return out

    defs = {k: convert(v) for k, v in doc["schemas"].items()}
    return {"$defs": defs}


def test_gcp_firewalls_match_compute_api_shape() -> None:
    v = validator(_discovery_schema("Firewall"), "Firewall")
    for target in ("tag", "service-account"):
        result = render("gcp-firewall", estate(), gcp_target=target)  # type: ignore[arg-type]
        doc = json.loads(result.files["gcp-firewall/firewalls.json"])
        names = [b["name"] for b in doc["firewalls"]]
        assert len(names) == len(set(names))
        for body in doc["firewalls"]:
            assert errors(v, body) == [], body["name"]
            assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", body["name"])
            assert len(body["name"]) <= 63
            if body["direction"] == "EGRESS":
                assert "sourceRanges" not in body and "sourceTags" not in body
            else:
                assert "destinationRanges" not in body
        db = [b for b in doc["firewalls"] if b.get("targetTags") == ["segflow-shop-orders-db"]
              or b.get("targetServiceAccounts", [""])[0].startswith("orders-db@")]
        assert len(db) == 1 and db[0]["allowed"] == [{"IPProtocol": "tcp", "ports": ["5432"]}]
    assert errors(v, {"name": "x", "allowed": [{"IPProtocol": 6}]})


def test_azure_rules_match_rest_api_shape() -> None:
    schema = load_schema("azure-nsg.schema.yaml")
    rule_v, nsg_v = validator(schema, "SecurityRule"), validator(
        schema, "NetworkSecurityGroupPropertiesFormat")
    doc = json.loads(render("azure-nsg", estate()).files["azure-nsg/segflow-nsg.json"])
    assert doc["$schema"].endswith("deploymentTemplate.json#")
    by_type: dict[str, list[dict[str, Any]]] = {}
    for res in doc["resources"]:
        assert set(res) <= {"type", "apiVersion", "name", "location", "tags", "dependsOn",
                            "properties"}
        by_type.setdefault(res["type"], []).append(res)
    nsg = by_type["Microsoft.Network/networkSecurityGroups"][0]
    assert errors(nsg_v, nsg["properties"]) == []
    priorities: dict[str, set[int]] = {}
    for r in nsg["properties"]["securityRules"]:
        assert errors(rule_v, r) == [], r["name"]
        p = r["properties"]
        assert p["priority"] not in priorities.setdefault(p["direction"], set())
        priorities[p["direction"]].add(p["priority"])
    asgs = {a["name"] for a in by_type["Microsoft.Network/applicationSecurityGroups"]}
    assert "segflow-shop-orders-db" in asgs
    db = [r["properties"] for r in nsg["properties"]["securityRules"]
          if r["properties"]["direction"] == "Inbound"
          and "segflow-shop-orders-db'" in json.dumps(r["properties"].get(
              "destinationApplicationSecurityGroups", []))]
    assert len(db) == 1 and "segflow-shop-orders-api'" in json.dumps(
        db[0]["sourceApplicationSecurityGroups"])
    assert {r["properties"]["access"] for r in nsg["properties"]["securityRules"]
            if r["properties"]["priority"] == 4096} == {"Deny"}


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_terraform_json_matches_provider_arguments(cloud: str) -> None:
    reference = yaml.safe_load((SCHEMAS / "terraform-arguments.yaml").read_text())
    result = render("terraform", estate(), cloud=cloud)
    (path, text), = result.files.items()
    assert path == f"terraform/{cloud}/segflow.tf.json"
    doc = json.loads(text)
    declared = {(t, n) for t, items in doc["resource"].items() for n in items}
    variables = set(doc.get("variable", {}))
    for rtype, items in doc["resource"].items():
        ref = reference[rtype]
        for name, body in items.items():
            assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name)
            assert set(body) <= set(ref["arguments"]), (rtype, set(body) - set(ref["arguments"]))
            assert set(ref["required"]) <= set(body), (rtype, name)
            if "one_of" in ref:
                assert len(set(ref["one_of"]) & set(body)) == 1, (rtype, name)
            for arg, allowed in ref.get("enums", {}).items():
                if arg in body:
                    assert body[arg] in allowed, (rtype, arg, body[arg])
            for block, bref in ref.get("blocks", {}).items():
                for item in body.get(block, []):
                    assert set(item) <= set(bref["arguments"]) and set(bref["required"]) <= set(
                        item)
                    for arg, allowed in bref.get("enums", {}).items():
                        assert item.get(arg, allowed[0]) in allowed
    for ref_type, ref_name, _ in re.findall(r"\$\{([a-z_]+)\.([A-Za-z0-9_-]+)\.(id|name)\}", text):
        if ref_type != "var":
            assert (ref_type, ref_name) in declared, (ref_type, ref_name)
    assert set(re.findall(r"\$\{var\.([a-z_]+)\}", text)) <= variables


# -- behaviour shared by every format --------------------------------------------------


@pytest.mark.parametrize(("fmt", "cloud"), ALL)
def test_every_format_is_deterministic(fmt: str, cloud: str | None) -> None:
    rules = estate()
    expected = render(fmt, rules, cloud=cloud)
    assert expected.files
    rng = random.Random(11)
    for _ in range(3):
        shuffled = rules + rules[:4]
        rng.shuffle(shuffled)
        assert render(fmt, shuffled, cloud=cloud) == expected


HOSTILE = "a\nkind: Secret"


@pytest.mark.parametrize(("fmt", "cloud"), ALL)
@pytest.mark.parametrize(("bad_app", "bad_peer", "needle"), [
    (wl("shop", "api", app=HOSTILE), pods(WEB), "Secret"),
    (wl("shop", "api", sa="sa\nx: y"), pods(WEB), "x: y"),
    (wl("shop", "api", env="prod'; drop"), pods(WEB), "drop"),
    (wl("shop", "api", tier="db\u202e"), pods(WEB), "\u202e"),
    (wl("shop", "api"), Peer("cidr", cidr="10.0.0.0/8\nkind: Secret"), "Secret"),
    (wl("shop", "api"), Peer("world", fqdns=("evil.example\nkind: Secret",)), "Secret"),
    (wl("shop", "api"), Peer("world", fqdns=("*.*.example",)), "*.*"),
    (wl("shop", "api"), pods(wl("shop", "web", sa="web&x")), "web&x"),
    (wl("shop", "api" + "x" * 80), pods(WEB), "x" * 70),
])
def test_hostile_values_are_refused_in_every_format(
        fmt: str, cloud: str | None, bad_app: Workload, bad_peer: Peer, needle: str) -> None:
    allowlist = fmt == "egress-allowlist"  # only internet egress is in its scope
    direction: Direction = "egress" if bad_peer.kind == "world" or allowlist else "ingress"
    bad = rule(bad_app, direction, bad_peer, ports=(443,))
    good = rule(API, "egress", WORLD, ports=(443,)) if allowlist else rule(
        API, "ingress", pods(WEB), ports=(8080,))
    result = render(fmt, [bad, good], cloud=cloud)
    reasons = dict(result.skipped)
    assert reasons[bad.id].startswith("invalid"), reasons
    assert "\n" not in reasons[bad.id] and len(reasons[bad.id]) < 200
    text = "".join(result.files.values())
    assert needle not in text and "Secret" not in text and bad.id not in text
    assert text.isascii() and result.files
    assert any(e["rule_id"] == bad.id and e["category"] == "invalid" for e in result.report)


@pytest.mark.parametrize("value", ["1:20", ".inf", "~", "+12", "-1"])
def test_label_values_that_are_not_label_values_are_refused(value: str) -> None:
    rules = [rule(wl("shop", "api", app="api", version=value), "ingress", pods(WEB))]
    for fmt in ("networkpolicy", "cilium", "calico", "istio"):
        result = render(fmt, rules)
        assert not result.files and result.skipped[0][1].startswith("invalid workload: label")


@pytest.mark.parametrize("value", ["1e3", "yes", "null", "0x1F", "010", "y", "NO", "0o17", "1_000",
                                   "true", "1.5", "6e-3"])
def test_label_values_yaml_would_misread_are_quoted(value: str) -> None:
    app = wl("shop", "api", app="api", version=value)
    rules = [rule(app, "ingress", pods(wl("shop", "web", release=value)), ports=(80,))]
    for fmt in ("networkpolicy", "cilium", "istio"):
        result = render(fmt, rules)
        text = result.files["shop/api.yaml"]
        assert f"'{value}'" in text, (fmt, value)
        doc = yaml.safe_load(text)
        assert value in json.dumps(doc)  # read back as the same string, not a number or bool
    np_doc = yaml.safe_load(render("networkpolicy", rules).files["shop/api.yaml"])
    assert np_doc["spec"]["podSelector"]["matchLabels"]["version"] == value
    assert kubernetes_validate.validate(np_doc, K8S_VERSION, strict=True)


def test_env_selects_the_environment_rules() -> None:
    prod = render("networkpolicy", estate(), env="prod")
    dev = render("networkpolicy", estate(), env="dev")
    assert "dev-shop/orders-api.yaml" in dev.files and not any(
        p.startswith("dev-shop/") for p in prod.files)
    assert not any(p.startswith("shop/") for p in dev.files)


def test_provisional_rules_are_listed_for_review_until_accepted() -> None:
    rules = estate()
    prov = next(r for r in rules if r.provisional)
    result = render("networkpolicy", rules)
    assert dict(result.skipped)[prov.id].startswith("review: provisional")
    entry = next(e for e in result.report if e["rule_id"] == prov.id)
    assert entry["effect"] == "blocked" and "velero" in entry["peer"]
    accepted = [r if r is not prov else CandidateRule(
        prov.id, prov.app, prov.direction, prov.peer, prov.proto, prov.ports, prov.evidence,
        prov.confidence, "accepted", provisional=True) for r in rules]
    assert prov.id not in dict(render("networkpolicy", accepted).skipped)


def test_render_report_says_what_the_default_deny_blocks(tmp_path: Path) -> None:
    result = render("networkpolicy", estate())
    by_id = {e["rule_id"]: e for e in result.report}
    icmp = next(r for r in estate() if r.proto == 1)
    assert by_id[icmp.id]["effect"] == "blocked"
    assert by_id[icmp.id]["category"] == "unsupported"
    legacy = next(r for r in estate() if r.app.kind == "vm")
    assert by_id[legacy.id]["effect"] == "not-enforced"
    written = write_rendered(result, tmp_path)
    assert tmp_path / REPORT_JSONL in written
    lines = (tmp_path / REPORT_JSONL).read_text().splitlines()
    assert [json.loads(x)["rule_id"] for x in lines] == [e["rule_id"] for e in result.report]
    summary = (tmp_path / REPORT_TEXT).read_text()
    assert "will block" in summary and icmp.id in summary
    deny = yaml.safe_load((tmp_path / "shop" / "00-default-deny.yaml").read_text())
    assert "render report" in deny["metadata"]["annotations"]["segflow.io/notes"]
    aws = render("aws-sg", estate())
    wider = {e["rule_id"]: e for e in aws.report if e["effect"] == "wider"}
    world = next(r for r in estate() if r.app == WEB and r.peer == WORLD)
    assert "cannot exclude" in wider[world.id]["reason"]
    assert os.path.basename(REPORT_TEXT) == "render-report.txt"


def test_terraform_needs_a_cloud() -> None:
    with pytest.raises(ConfigError, match="--cloud"):
        render("terraform", estate())
    with pytest.raises(ConfigError, match="unknown policy format"):
        render("pf", estate())
