"""Render candidate rules as AWS security groups: EC2 API request JSON and Terraform.

One security group per protected workload (its tier's group: ``segflow-<ns>-<app>``); a rule
whose peer is another workload references that workload's group, so the database's group
admits only the app tier's group. External systems and unknown addresses become CIDR
ranges, the internet ``0.0.0.0/0`` and ``::/0``. Security groups only allow: instances with
a group are denied everything else inbound, and (the default egress rule being revoked)
outbound; the render report lists what that will block.

Security groups cannot subtract ranges, so "the internet except our internal ranges" is
rendered as the whole internet and reported as wider. SCTP (and other protocols without
ports on EC2) is allowed on every port, also reported as wider.

- ``render_aws_sg``: ``aws-sg/security-groups.json``, the ordered EC2 API calls
  (``CreateSecurityGroup``, ``RevokeSecurityGroupEgress`` of the default egress rule,
  ``AuthorizeSecurityGroupIngress``/``Egress``) with their request parameters; group ids
  appear as ``{{<group name>}}`` placeholders to substitute with the ids the first calls
  return.
- ``render_aws_terraform``: ``terraform/aws/segflow.tf.json`` with ``aws_security_group``
  and ``aws_vpc_security_group_ingress_rule``/``egress_rule`` resources.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from typing import Any

import orjson

from pipeline.core.intents import CandidateRule
from pipeline.policy import _common as c
from pipeline.policy import cloud, report

PLANE = "aws-sg"
TF_PLANE = "terraform-aws"
PROTOCOLS = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6", 132: "132"}
PORTED = {6, 17}
JSON_FILE = "aws-sg/security-groups.json"
TF_FILE = "terraform/aws/segflow.tf.json"


def _json(doc: Any) -> str:
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n"


def _port_span(proto: int, rng: cloud.PortRange) -> tuple[int, int] | None:
    """(FromPort, ToPort) for EC2, None when the protocol takes no ports."""
    if proto in PORTED:
        return (0, 65535) if rng == (-1, -1) else rng
    if proto in c.ICMP_PROTOS:  # FromPort = ICMP type, ToPort = ICMP code (-1: any)
        return (-1, -1) if rng == (-1, -1) else (rng[0], -1)
    return None


def _sources(remote: cloud.Remote) -> list[tuple[str, str]]:
    """(kind, value) pairs: ``group`` name, ``v4``/``v6`` CIDR."""
    if remote.kind == "group" and remote.group is not None:
        return [("group", remote.group.name)]
    cidrs = remote.cidrs if remote.kind == "cidr" else ("0.0.0.0/0", "::/0")
    return [("v6" if ipaddress.ip_network(x).version == 6 else "v4", x) for x in cidrs]


def _wider(prepared: cloud.CloudPrepared) -> list[tuple[str, str]]:
    out = []
    for r in prepared.rules:
        if r.remote.excepts:
            out.append((str(r.rule.id), "wider: security groups cannot exclude"
                        f" {', '.join(r.remote.excepts)}; the whole range is allowed"))
        elif r.proto not in PORTED and r.proto not in c.ICMP_PROTOS and r.rule.ports:
            out.append((str(r.rule.id), f"wider: EC2 matches IP protocol {r.proto} on every"
                        " port"))
    return sorted(out)


def _finish(plane: str, files: dict[str, str], prepared: cloud.CloudPrepared) -> c.RenderResult:
    protected = {r.group.key for r in prepared.rules}

    def isolated(rule: CandidateRule) -> bool:
        return rule.app.key in protected

    entries = report.entries(plane, prepared.by_id, prepared.skipped, isolated,
                             _wider(prepared))
    return c.RenderResult(files, prepared.skipped, entries, plane)


def _prepare(rules: Iterable[CandidateRule]) -> cloud.CloudPrepared:
    return cloud.prepare_cloud(rules, plane="security group", protos=frozenset(PROTOCOLS))


def _tags(group: cloud.Group) -> dict[str, str]:
    tags = {"Name": group.name, "segflow:workload": group.key, "managed-by": "segflow"}
    if group.tier:
        tags["segflow:tier"] = group.tier
    if group.env:
        tags["segflow:env"] = group.env
    return tags


def _protected_groups(prepared: cloud.CloudPrepared) -> list[cloud.Group]:
    return sorted({r.group for r in prepared.rules}
                  | {r.remote.group for r in prepared.rules if r.remote.group is not None})


def render_aws_sg(rules: Iterable[CandidateRule]) -> c.RenderResult:
    """EC2 API calls creating one security group per workload and its rules."""
    prepared = _prepare(rules)
    groups = _protected_groups(prepared)
    calls: list[dict[str, Any]] = []
    for g in groups:
        calls.append({"action": "CreateSecurityGroup", "params": {
            "GroupName": g.name,
            "Description": f"segflow: {g.key}"[:255],
            "VpcId": "{{vpc_id}}",
            "TagSpecifications": [{"ResourceType": "security-group", "Tags": [
                {"Key": k, "Value": v} for k, v in _tags(g).items()]}],
        }})
    with_rules = sorted({r.group for r in prepared.rules})
    for g in with_rules:  # a new group allows all egress until its default rule is revoked
        calls.append({"action": "RevokeSecurityGroupEgress", "params": {
            "GroupId": f"{{{{{g.name}}}}}",
            "IpPermissions": [{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
                              {"IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}],
        }})
    perms: dict[tuple[str, str], dict[tuple[Any, ...], dict[str, Any]]] = {}
    for r in sorted(prepared.rules, key=lambda r: (r.group, r.direction, str(r.rule.id))):
        for rng in r.ranges:
            span = _port_span(r.proto, rng)
            key = (PROTOCOLS[r.proto], span)
            perm = perms.setdefault((r.group.name, r.direction), {}).setdefault(
                key, {"IpProtocol": PROTOCOLS[r.proto]})
            if span is not None:
                perm["FromPort"], perm["ToPort"] = span
            for kind, value in _sources(r.remote):
                desc = cloud.description(r.rule)
                if kind == "group":
                    item, field = {"GroupId": f"{{{{{value}}}}}", "Description": desc}, \
                        "UserIdGroupPairs"
                elif kind == "v4":
                    item, field = {"CidrIp": value, "Description": desc}, "IpRanges"
                else:
                    item, field = {"CidrIpv6": value, "Description": desc}, "Ipv6Ranges"
                if item not in perm.setdefault(field, []):
                    perm[field].append(item)
    for (name, direction), by_key in sorted(perms.items()):
        action = ("AuthorizeSecurityGroupIngress" if direction == "ingress"
                  else "AuthorizeSecurityGroupEgress")
        permissions = [by_key[k] for k in sorted(by_key, key=repr)]
        calls.append({"action": action,
                      "params": {"GroupId": f"{{{{{name}}}}}", "IpPermissions": permissions}})
    files = {}
    if calls:
        files[JSON_FILE] = _json({
            "generated_by": c.GENERATED_BY,
            "placeholders": "{{vpc_id}} is your VPC id; {{<group name>}} is the GroupId"
                            " CreateSecurityGroup returned for that group",
            "calls": calls,
        })
    return _finish(PLANE, files, prepared)


def _tf_name(*parts: object) -> str:
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=5).hexdigest()
    return f"{parts[0]}_{digest}"


def render_aws_terraform(rules: Iterable[CandidateRule]) -> c.RenderResult:
    """Terraform (JSON syntax) for the same security groups and rules."""
    prepared = _prepare(rules)
    groups = _protected_groups(prepared)
    sg: dict[str, Any] = {}
    for g in groups:
        sg[g.name] = {"name": g.name, "description": f"segflow: {g.key}"[:255],
                      "vpc_id": "${var.vpc_id}", "tags": _tags(g)}
    rules_out: dict[str, dict[str, Any]] = {"ingress": {}, "egress": {}}
    for r in prepared.rules:
        for rng in r.ranges:
            span = _port_span(r.proto, rng)
            for kind, value in _sources(r.remote):
                body: dict[str, Any] = {
                    "security_group_id": f"${{aws_security_group.{r.group.name}.id}}",
                    "ip_protocol": PROTOCOLS[r.proto],
                    "description": cloud.description(r.rule),
                }
                if span is not None:
                    body["from_port"], body["to_port"] = span
                if kind == "group":
                    body["referenced_security_group_id"] = f"${{aws_security_group.{value}.id}}"
                else:
                    body["cidr_ipv4" if kind == "v4" else "cidr_ipv6"] = value
                name = _tf_name(r.group.name, r.direction, kind, value, r.proto, rng)
                rules_out[r.direction][name] = body
    resource: dict[str, Any] = {}
    if sg:
        resource["aws_security_group"] = dict(sorted(sg.items()))
    for direction in ("ingress", "egress"):
        if rules_out[direction]:
            resource[f"aws_vpc_security_group_{direction}_rule"] = dict(
                sorted(rules_out[direction].items()))
    files = {}
    if resource:
        files[TF_FILE] = _json({
            "terraform": {"required_providers": {
                "aws": {"source": "hashicorp/aws", "version": ">= 5.30"}}},
            "variable": {"vpc_id": {"type": "string",
                                    "description": "VPC the security groups belong to"}},
            "resource": resource,
        })
    return _finish(TF_PLANE, files, prepared)


__all__ = ["PLANE", "TF_PLANE", "render_aws_sg", "render_aws_terraform"]
