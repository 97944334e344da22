"""Render candidate rules as an Azure NSG between application security groups: an ARM
template and Terraform.

Each protected workload gets an application security group (``segflow-<ns>-<app>``); one
network security group holds the rules, each between two ASGs where both ends are
workloads ("the database's ASG admits only the app tier's ASG"), address prefixes for
external systems and the ``Internet`` service tag for the internet (which already means
"outside the virtual network"). Two deny rules at priority 4096 shadow Azure's default
``AllowVnetInBound``/``AllowVnetOutBound``/``AllowInternetOutBound``, so only the learned
traffic stays allowed. An NSG holds at most 1,000 rules (priorities 100–4095); rules past
that are reported. Azure NSGs have no SCTP and no ICMP types: such rules are rendered with
protocol ``*`` / any ICMP and reported as wider.

- ``render_azure_nsg``: ``azure-nsg/segflow-nsg.json`` (ARM deployment template).
- ``render_azure_terraform``: ``terraform/azure/segflow.tf.json``
  (``azurerm_application_security_group``, ``azurerm_network_security_group``,
  ``azurerm_network_security_rule``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from pipeline.core.intents import CandidateRule
from pipeline.policy import _common as c
from pipeline.policy import cloud, report
from pipeline.policy.labels import dns_label

PLANE = "azure-nsg"
TF_PLANE = "terraform-azure"
API_VERSION = "2024-05-01"
PROTOCOLS = {6: "Tcp", 17: "Udp", 1: "Icmp", 58: "Icmp", 132: "*"}
MAX_RULES = 1000
FIRST_PRIORITY = 100
DENY_PRIORITY = 4096
NSG_NAME = "segflow-nsg"
NSG_REF = f"${{azurerm_network_security_group.{NSG_NAME}.name}}"
JSON_FILE = "azure-nsg/segflow-nsg.json"
TF_FILE = "terraform/azure/segflow.tf.json"
SCHEMA = "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#"


def _json(doc: Any) -> str:
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n"


def _ports(proto: int, ranges: Iterable[cloud.PortRange]) -> list[str]:
    if proto not in (6, 17):
        return ["*"]
    out = [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges]
    return ["*"] if "-1" in out else out


Side = tuple[str, Any]  # ("asg", Group) | ("prefixes", [..]) | ("tag", "Internet")


def _model(rules: Iterable[CandidateRule]) -> tuple[
        list[dict[str, Any]], list[cloud.Group], cloud.CloudPrepared, list[tuple[str, str]]]:
    """Security rules (ARM property names, ASGs as Group objects), groups, skips, wider."""
    prepared = cloud.prepare_cloud(rules, plane="NSG", protos=frozenset(PROTOCOLS))
    wider: list[tuple[str, str]] = []
    merged: dict[tuple[Any, ...], list[cloud.CloudRule]] = {}
    for r in prepared.rules:
        if r.remote.kind == "group" and r.remote.group is not None:
            remote: Side = ("asg", r.remote.group)
        elif r.remote.kind == "world":
            remote = ("tag", "Internet")
        else:
            remote = ("prefixes", r.remote.cidrs)
            if r.remote.excepts:
                wider.append((str(r.rule.id), "wider: NSG rules cannot exclude"
                              f" {', '.join(r.remote.excepts)}; the whole range is allowed"))
        if r.proto == 132:
            wider.append((str(r.rule.id), "wider: NSGs have no SCTP; allowed as any protocol"))
        elif r.proto in c.ICMP_PROTOS and r.rule.ports:
            wider.append((str(r.rule.id), "wider: NSGs match ICMP without types"))
        merged.setdefault((r.group, r.direction, remote, PROTOCOLS[r.proto]), []).append(r)
    out: list[dict[str, Any]] = []
    ordered = sorted(merged.items(), key=lambda kv: (kv[0][1] != "ingress", repr(kv[0])))
    for n, ((group, direction, remote, proto), items) in enumerate(ordered):
        if n >= MAX_RULES - 2:
            prepared.skipped.extend(
                (str(r.rule.id), f"unsupported: an NSG holds at most {MAX_RULES} rules")
                for r in items)
            prepared.rules = [r for r in prepared.rules if r not in items]
            continue
        ranges = sorted({rng for r in items for rng in r.ranges})
        local: Side = ("asg", group)
        src, dst = (remote, local) if direction == "ingress" else (local, remote)
        out.append({
            "name": dns_label(f"{group.name}-{direction[:2]}-{n:04d}"),
            "description": ("segflow " + ",".join(sorted(str(r.rule.id) for r in items)))[:140],
            "protocol": proto,
            "direction": "Inbound" if direction == "ingress" else "Outbound",
            "access": "Allow",
            "priority": FIRST_PRIORITY + n,
            "sourcePortRange": "*",
            "ports": _ports(items[0].proto, ranges),
            "source": src,
            "destination": dst,
        })
    if out:
        for direction, src, dst in (("Inbound", ("tag", "VirtualNetwork"), ("tag", "*")),
                                    ("Outbound", ("tag", "*"), ("tag", "*"))):
            out.append({"name": f"segflow-deny-{direction.lower()}",
                        "description": "segflow: deny what the rules above do not allow",
                        "protocol": "*", "direction": direction, "access": "Deny",
                        "priority": DENY_PRIORITY, "sourcePortRange": "*", "ports": ["*"],
                        "source": src, "destination": dst})
    prepared.skipped.sort()
    groups = sorted({r.group for r in prepared.rules}
                    | {r.remote.group for r in prepared.rules if r.remote.group is not None})
    return out, groups, prepared, sorted(wider)


def _finish(plane: str, files: dict[str, str], prepared: cloud.CloudPrepared,
            wider: list[tuple[str, str]]) -> c.RenderResult:
    isolated_any = bool(prepared.rules)  # the NSG's deny rules cover every NIC it is on

    def isolated(rule: CandidateRule) -> bool:
        return isolated_any and rule.app.kind in cloud.GROUP_KINDS

    entries = report.entries(plane, prepared.by_id, prepared.skipped, isolated, wider)
    return c.RenderResult(files, prepared.skipped, entries, plane)


def _tags(group: cloud.Group) -> dict[str, str]:
    tags = {"segflow-workload": group.key, "managed-by": "segflow"}
    if group.tier:
        tags["segflow-tier"] = group.tier
    if group.env:
        tags["segflow-env"] = group.env
    return tags


def _arm_side(side: Side, which: str) -> dict[str, Any]:
    kind, value = side
    if kind == "asg":
        ref = f"[resourceId('Microsoft.Network/applicationSecurityGroups', '{value.name}')]"
        return {f"{which}ApplicationSecurityGroups": [{"id": ref}]}
    if kind == "prefixes":
        return {f"{which}AddressPrefixes": list(value)}
    return {f"{which}AddressPrefix": value}


def render_azure_nsg(rules: Iterable[CandidateRule]) -> c.RenderResult:
    """An ARM template with the ASGs and one NSG holding every rule."""
    model, groups, prepared, wider = _model(rules)
    files = {}
    if model:
        resources: list[dict[str, Any]] = [{
            "type": "Microsoft.Network/applicationSecurityGroups", "apiVersion": API_VERSION,
            "name": g.name, "location": "[parameters('location')]", "tags": _tags(g),
            "properties": {}} for g in groups]
        security_rules = []
        for m in model:
            props: dict[str, Any] = {
                "description": m["description"], "protocol": m["protocol"],
                "direction": m["direction"], "access": m["access"], "priority": m["priority"],
                "sourcePortRange": m["sourcePortRange"],
                **_arm_side(m["source"], "source"), **_arm_side(m["destination"], "destination"),
            }
            if len(m["ports"]) == 1:
                props["destinationPortRange"] = m["ports"][0]
            else:
                props["destinationPortRanges"] = m["ports"]
            security_rules.append({"name": m["name"], "properties": props})
        resources.append({
            "type": "Microsoft.Network/networkSecurityGroups", "apiVersion": API_VERSION,
            "name": NSG_NAME, "location": "[parameters('location')]",
            "tags": {"managed-by": "segflow"},
            "dependsOn": [f"[resourceId('Microsoft.Network/applicationSecurityGroups',"
                          f" '{g.name}')]" for g in groups],
            "properties": {"securityRules": security_rules},
        })
        files[JSON_FILE] = _json({
            "$schema": SCHEMA, "contentVersion": "1.0.0.0",
            "parameters": {"location": {"type": "string",
                                        "defaultValue": "[resourceGroup().location]"}},
            "resources": resources,
        })
    return _finish(PLANE, files, prepared, wider)


def _tf_side(side: Side, which: str) -> dict[str, Any]:
    kind, value = side
    if kind == "asg":
        return {f"{which}_application_security_group_ids": [
            f"${{azurerm_application_security_group.{value.name}.id}}"]}
    if kind == "prefixes":
        if len(value) == 1:
            return {f"{which}_address_prefix": value[0]}
        return {f"{which}_address_prefixes": list(value)}
    return {f"{which}_address_prefix": value}


def render_azure_terraform(rules: Iterable[CandidateRule]) -> c.RenderResult:
    """Terraform (JSON syntax) for the same ASGs, NSG and rules."""
    model, groups, prepared, wider = _model(rules)
    files = {}
    if model:
        where = {"location": "${var.location}", "resource_group_name": "${var.resource_group_name}"}
        nsg_rules = {}
        for m in model:
            body: dict[str, Any] = {
                "name": m["name"], "description": m["description"], "priority": m["priority"],
                "direction": m["direction"], "access": m["access"], "protocol": m["protocol"],
                "source_port_range": "*",
                "resource_group_name": "${var.resource_group_name}",
                "network_security_group_name": NSG_REF,
                **_tf_side(m["source"], "source"), **_tf_side(m["destination"], "destination"),
            }
            if len(m["ports"]) == 1:
                body["destination_port_range"] = m["ports"][0]
            else:
                body["destination_port_ranges"] = m["ports"]
            nsg_rules[m["name"]] = body
        files[TF_FILE] = _json({
            "terraform": {"required_providers": {
                "azurerm": {"source": "hashicorp/azurerm", "version": ">= 3.0"}}},
            "variable": {
                "location": {"type": "string", "description": "Azure region"},
                "resource_group_name": {"type": "string", "description": "resource group"},
            },
            "resource": {
                "azurerm_application_security_group": {
                    g.name: {"name": g.name, **where, "tags": _tags(g)} for g in groups},
                "azurerm_network_security_group": {
                    NSG_NAME: {"name": NSG_NAME, **where, "tags": {"managed-by": "segflow"}}},
                "azurerm_network_security_rule": nsg_rules,
            },
        })
    return _finish(TF_PLANE, files, prepared, wider)


__all__ = ["PLANE", "TF_PLANE", "render_azure_nsg", "render_azure_terraform"]
