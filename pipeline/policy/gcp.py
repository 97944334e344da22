"""Render candidate rules as GCP VPC firewall rules: Compute API JSON and Terraform.

Each protected workload is targeted by a network tag (``segflow-<ns>-<app>``) or, with
``target="service-account"``, by its service account
(``<sa>@<project>.iam.gserviceaccount.com``). Ingress rules admit the peer workload's tag
(or service account), external ranges by CIDR. GCP denies ingress by default (the implied
rule), so only allows are written; egress is allowed by default, so every target with egress
rules also gets a low-priority ``deny all`` egress rule.

GCP egress rules take destination *ranges* only: egress to another workload is allowed
towards the internal ranges on the learned ports (the peer's own ingress rules then narrow
it), reported as wider. "The internet except our internal ranges" cannot be expressed
either (no exclusions): rendered as ``0.0.0.0/0``, reported as wider.

- ``render_gcp_firewall``: ``gcp-firewall/firewalls.json`` — ``firewalls.insert`` bodies.
- ``render_gcp_terraform``: ``terraform/gcp/segflow.tf.json`` — ``google_compute_firewall``.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from typing import Any, Literal

import orjson

from pipeline.core.intents import CandidateRule
from pipeline.policy import _common as c
from pipeline.policy import cloud, report
from pipeline.policy.labels import dns_label

PLANE = "gcp-firewall"
TF_PLANE = "terraform-gcp"
PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp", 1: "icmp", 58: "58"}
PORTED = {6, 17, 132}
ALLOW_PRIORITY = 1000
DENY_PRIORITY = 65000
JSON_FILE = "gcp-firewall/firewalls.json"
TF_FILE = "terraform/gcp/segflow.tf.json"
Target = Literal["tag", "service-account"]


def _json(doc: Any) -> str:
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n"


def _sa_email(group: cloud.Group) -> str:
    return f"{group.service_account}@{{{{project}}}}.iam.gserviceaccount.com"


def _allowed(proto: int, ranges: Iterable[cloud.PortRange]) -> dict[str, Any]:
    entry: dict[str, Any] = {"IPProtocol": PROTOCOLS[proto]}
    if proto in PORTED:
        ports = [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges if lo >= 0]
        if ports and all(lo >= 0 for lo, _ in ranges):
            entry["ports"] = ports
    return entry


def _rule_name(group: str, direction: str, *parts: object) -> str:
    text = "|".join(map(str, (group, direction, *parts)))
    digest = hashlib.blake2b(text.encode(), digest_size=5).hexdigest()
    return dns_label(f"{group}-{direction[:2]}-{digest}")


def _model(rules: Iterable[CandidateRule], target: Target, internal: tuple[str, ...],
           ) -> tuple[list[dict[str, Any]], cloud.CloudPrepared, list[tuple[str, str]]]:
    """Firewall resources in Compute API field names, plus skips and widenings."""
    prepared = cloud.prepare_cloud(rules, plane="VPC firewall", protos=frozenset(PROTOCOLS))
    wider: list[tuple[str, str]] = []
    usable: list[cloud.CloudRule] = []
    for r in prepared.rules:
        if target == "service-account" and (
                not r.group.service_account
                or (r.remote.group is not None and not r.remote.group.service_account)):
            prepared.skipped.append((str(r.rule.id), "unsupported: a workload without a service"
                                     " account cannot be targeted by service account"))
            continue
        usable.append(r)
    prepared.rules = usable
    prepared.skipped.sort()
    out: list[dict[str, Any]] = []
    grouped: dict[tuple[Any, ...], list[cloud.CloudRule]] = {}
    for r in usable:
        if r.direction == "egress" and r.remote.kind == "group":
            source_key: tuple[Any, ...] = ("ranges", internal)
            wider.append((str(r.rule.id), "wider: GCP egress rules take destination ranges"
                          " only; allowed towards every internal range on these ports"))
        elif r.remote.kind == "group" and r.remote.group is not None:
            source_key = ("group", r.remote.group)
        else:
            cidrs = r.remote.cidrs or ("0.0.0.0/0", "::/0")
            source_key = ("ranges", cidrs)
            if r.remote.excepts:
                wider.append((str(r.rule.id), "wider: VPC firewall rules cannot exclude"
                              f" {', '.join(r.remote.excepts)}; the whole range is allowed"))
        grouped.setdefault((r.group, r.direction, source_key, r.proto), []).append(r)
    wider.extend((str(r.rule.id), "wider: VPC firewall rules match ICMP without types")
                 for r in usable if r.proto in c.ICMP_PROTOS and r.rule.ports)
    for (group, direction, source_key, proto), items in sorted(grouped.items(), key=repr):
        ranges = sorted({rng for r in items for rng in r.ranges})
        for version in (4, 6):
            body: dict[str, Any] = {
                "direction": "INGRESS" if direction == "ingress" else "EGRESS",
                "priority": ALLOW_PRIORITY,
                "allowed": [_allowed(proto, ranges)],
                "description": "segflow " + ",".join(sorted(str(r.rule.id) for r in items))[:200],
                "logConfig": {"enable": True},
            }
            if target == "tag":
                body["targetTags"] = [group.name]
            else:
                body["targetServiceAccounts"] = [_sa_email(group)]
            if source_key[0] == "group":
                if version == 6:
                    continue  # tags and service accounts cover both families in one rule
                peer = source_key[1]
                if target == "tag":
                    body["sourceTags"] = [peer.name]
                else:
                    body["sourceServiceAccounts"] = [_sa_email(peer)]
            else:
                nets = [n for n in source_key[1] if ipaddress.ip_network(n).version == version]
                if not nets:
                    continue  # a firewall rule cannot mix IPv4 and IPv6 ranges
                body["sourceRanges" if direction == "ingress" else "destinationRanges"] = nets
            body["name"] = _rule_name(group.name, direction, source_key, proto, version)
            out.append(body)
    for group in sorted({r.group for r in usable if r.direction == "egress"}):
        for version, everywhere in ((4, "0.0.0.0/0"), (6, "::/0")):
            body = {"name": dns_label(f"{group.name}-deny-egress-v{version}"),
                    "direction": "EGRESS", "priority": DENY_PRIORITY,
                    "denied": [{"IPProtocol": "all"}], "destinationRanges": [everywhere],
                    "description": "segflow: deny egress not allowed above",
                    "logConfig": {"enable": True}}
            if target == "tag":
                body["targetTags"] = [group.name]
            else:
                body["targetServiceAccounts"] = [_sa_email(group)]
            out.append(body)
    out.sort(key=lambda b: b["name"])
    return out, prepared, sorted(wider)


def _finish(plane: str, files: dict[str, str], prepared: cloud.CloudPrepared,
            wider: list[tuple[str, str]]) -> c.RenderResult:
    egress = {r.group.key for r in prepared.rules if r.direction == "egress"}

    def isolated(rule: CandidateRule) -> bool:  # implied deny ingress applies to every VM
        return rule.app.kind in cloud.GROUP_KINDS and (
            rule.direction == "ingress" or rule.app.key in egress)

    entries = report.entries(plane, prepared.by_id, prepared.skipped, isolated, wider)
    return c.RenderResult(files, prepared.skipped, entries, plane)


def render_gcp_firewall(rules: Iterable[CandidateRule], *, target: Target = "tag",
                        internal_cidrs: tuple[str, ...] = cloud.DEFAULT_INTERNAL,
                        ) -> c.RenderResult:
    """Compute API ``firewalls.insert`` request bodies, one per rule."""
    bodies, prepared, wider = _model(rules, target, internal_cidrs)
    for b in bodies:
        b["network"] = "global/networks/{{network}}"
    files = {}
    if bodies:
        files[JSON_FILE] = _json({
            "generated_by": c.GENERATED_BY,
            "placeholders": "{{network}} is your VPC network name; {{project}} your project id",
            "firewalls": bodies,
        })
    return _finish(PLANE, files, prepared, wider)


def _tf_body(b: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": b["name"], "network": "${var.network}", "direction": b["direction"],
        "priority": b["priority"], "description": b["description"],
        "log_config": [{"metadata": "INCLUDE_ALL_METADATA"}],
    }
    for api, tf in (("targetTags", "target_tags"), ("sourceTags", "source_tags"),
                    ("sourceRanges", "source_ranges"),
                    ("destinationRanges", "destination_ranges"),
                    ("targetServiceAccounts", "target_service_accounts"),
                    ("sourceServiceAccounts", "source_service_accounts")):
        if api in b:
            out[tf] = [v.replace("{{project}}", "${var.project}") for v in b[api]]
    for api in ("allowed", "denied"):
        if api in b:
            out["allow" if api == "allowed" else "deny"] = [
                {"protocol": a["IPProtocol"], **({"ports": a["ports"]} if "ports" in a else {})}
                for a in b[api]]
    return out


def render_gcp_terraform(rules: Iterable[CandidateRule], *, target: Target = "tag",
                         internal_cidrs: tuple[str, ...] = cloud.DEFAULT_INTERNAL,
                         ) -> c.RenderResult:
    """Terraform (JSON syntax) ``google_compute_firewall`` resources."""
    bodies, prepared, wider = _model(rules, target, internal_cidrs)
    files = {}
    if bodies:
        variables: dict[str, Any] = {"network": {"type": "string",
                                                 "description": "VPC network name"}}
        if target == "service-account":
            variables["project"] = {"type": "string", "description": "GCP project id"}
        files[TF_FILE] = _json({
            "terraform": {"required_providers": {
                "google": {"source": "hashicorp/google", "version": ">= 5.0"}}},
            "variable": variables,
            "resource": {"google_compute_firewall": {
                b["name"]: _tf_body(b) for b in bodies}},
        })
    return _finish(TF_PLANE, files, prepared, wider)


__all__ = ["PLANE", "TF_PLANE", "render_gcp_firewall", "render_gcp_terraform"]
