"""Render the egress to the internet as an allow-list: per workload, the destinations it may
reach outside the internal ranges, by DNS name where DNS data exists and by CIDR otherwise.

The list is plane-neutral data (``egress-allowlist/allowlist.yaml``) for an egress proxy,
a firewall's FQDN rules or a review. Egress to internal ranges is out of its scope (the
other renderers cover it). A rule towards "the internet" without any DNS name or range is
listed as ``0.0.0.0/0``/``::/0`` and reported as wider: the audit could not narrow it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from pipeline.core.events import proto_name
from pipeline.core.intents import CandidateRule
from pipeline.policy import _common as c
from pipeline.policy import cloud, labels, report

PLANE = "egress-allowlist"
FILE = "egress-allowlist/allowlist.yaml"


def _internal(cidr: str, internal: list[labels.IPNetwork]) -> bool:
    net = ipaddress.ip_network(cidr, strict=False)
    return any(net.version == i.version and net.subnet_of(i) for i in internal)  # type: ignore[arg-type]


def render_egress_allowlist(rules: Iterable[CandidateRule], *,
                            internal_cidrs: tuple[str, ...] = cloud.DEFAULT_INTERNAL,
                            ) -> c.RenderResult:
    """The internet egress of every workload as an allow-list document."""
    internal = [n for n in map(labels.parse_cidr, internal_cidrs) if n is not None]
    prepared = cloud.prepare_cloud(
        (r for r in rules if r.direction == "egress"), plane="allow-list",
        protos=frozenset({6, 17, 132, 1, 58}))
    wider: list[tuple[str, str]] = []
    per_app: dict[tuple[str, str], dict[tuple[str, str, str], set[int]]] = {}
    for r in prepared.rules:
        remote = r.remote
        if remote.kind == "group":
            continue
        if remote.kind == "cidr" and all(_internal(x, internal) for x in remote.cidrs):
            continue
        if remote.fqdns:
            dests = [("fqdn", f) for f in remote.fqdns]
        elif remote.kind == "cidr":
            dests = [("cidr", x) for x in remote.cidrs]
        else:
            dests = [("cidr", "0.0.0.0/0"), ("cidr", "::/0")]
            wider.append((str(r.rule.id), "wider: no DNS name or range is known for this"
                          " internet egress; the whole internet is listed"))
        app_dests = per_app.setdefault((r.group.key, r.group.env), {})
        for kind, value in dests:
            app_dests.setdefault((kind, value, proto_name(r.proto)), set()).update(r.rule.ports)
    entries: list[dict[str, Any]] = []
    for (app, env), by_dest in sorted(per_app.items()):
        items = []
        for (kind, value, proto), port_set in sorted(by_dest.items()):
            item: dict[str, Any] = {kind: value, "protocol": proto}
            if port_set:
                item["ports"] = sorted(port_set)
            items.append(item)
        entry: dict[str, Any] = {"workload": app}
        if env:
            entry["env"] = env
        entry["allow"] = items
        entries.append(entry)
    files = {}
    if entries:
        files[FILE] = c.dump({"apiVersion": "segflow.io/v1", "kind": "EgressAllowList",
                              "metadata": {"annotations": {c.GENERATED_BY_KEY: c.GENERATED_BY}},
                              "workloads": entries})
    protected = {k for k, _ in per_app}
    rep = report.entries(PLANE, prepared.by_id, prepared.skipped,
                         lambda rule: rule.app.key in protected, sorted(wider))
    return c.RenderResult(files, prepared.skipped, rep, PLANE)


__all__ = ["PLANE", "render_egress_allowlist"]
