"""Derive least-privilege candidate allow rules from the learned baseline.

Every learned edge (client → server : port/proto) yields an ingress rule on the server
(peer: the client) and an egress rule on the client (peer: the server). Edges with the
same app, direction, peer and protocol merge into one rule with a port list. Peers outside
the internal ranges become ``world``; internal addresses no inventory entry covers become
``/32`` (``/128``) CIDR peers so they stay visible instead of being silently widened.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from pipeline.core.baseline import EdgeBaseline, unpack_keys
from pipeline.core.events import stable_id
from pipeline.core.intents import CandidateRule, Evidence, Peer, Workload
from pipeline.core.workloads import OVERFLOW, WORLD, WorkloadInfo, Workloads

SELECTOR_KEYS = ("app", "app.kubernetes.io/name", "k8s-app", "name")
TIER_KEYS = ("tier", "app.kubernetes.io/component")


def to_workload(info: WorkloadInfo) -> Workload:
    """Policy-facing workload with a minimal pod selector."""
    labels = dict(info.labels)
    selector: tuple[tuple[str, str], ...] = ()
    for k in SELECTOR_KEYS:
        if k in labels:
            selector = ((k, labels[k]),)
            break
    if not selector and info.kind == "pod":
        selector = (("app", info.app),)
    tier = next((labels[k] for k in TIER_KEYS if k in labels), "")
    return Workload(info.namespace, info.app, info.kind, selector, env=info.env,
                    service_account=info.service_account, tier=tier)


def _peers(
    info: WorkloadInfo, wid: int, internal_cidrs: tuple[str, ...], cidrs: dict[int, list[str]]
) -> list[Peer]:
    """Policy peers for a workload: pods by selector; VMs, services without pods and
    external systems by the CIDRs the inventory gives them."""
    if wid == WORLD:
        return [Peer("world", cidr="0.0.0.0/0", except_cidrs=internal_cidrs)]
    if info.kind == "unknown" and info.app.startswith("unknown:"):
        ip = info.app.split(":", 1)[1]
        return [Peer("cidr", cidr=f"{ip}/{128 if ':' in ip else 32}")]
    if info.kind not in ("pod", "service") and cidrs.get(wid):
        return [Peer("cidr", workload=to_workload(info), cidr=c) for c in cidrs[wid]]
    return [Peer("workload", workload=to_workload(info))]


@dataclass(slots=True)
class _Acc:
    ports: set[int]
    flows: int
    bytes: int
    first: float
    last: float
    days: int


def derive_rules(
    baseline: EdgeBaseline,
    workloads: Workloads,
    *,
    audit_days: float,
    internal_cidrs: Iterable[str],
    workload_cidrs: dict[int, list[str]] | None = None,
    trusted: np.ndarray | None = None,
) -> list[CandidateRule]:
    """Candidate rules for every learned edge, sorted by id (deterministic).

    ``workload_cidrs`` maps non-pod workloads (VMs, external systems) to their address
    blocks so rules towards them can be expressed as CIDR peers. ``trusted`` (per learned
    edge, see :func:`pipeline.core.audit.trusted_rows`; default: all) keeps provisional
    edges out of the allow rules: they merge into separate *provisional* rules (listed for
    review, never rendered until accepted; their id says so).
    """
    n = len(baseline)
    if n == 0:
        return []
    internal = tuple(internal_cidrs)
    client, server, port, proto = unpack_keys(baseline.keys_[:n])
    trust = np.ones(n, dtype=bool) if trusted is None else trusted[:n]
    acc: dict[tuple[int, str, int, int, bool], _Acc] = {}
    groups: dict[tuple[int, str, int, int, bool], list[int]] = defaultdict(list)
    for row in range(n):
        c, s = int(client[row]), int(server[row])
        if OVERFLOW in (c, s):
            continue
        weak = not trust[row]
        groups[(s, "ingress", c, int(proto[row]), weak)].append(row)
        groups[(c, "egress", s, int(proto[row]), weak)].append(row)
    for gkey, rows in groups.items():
        r = np.asarray(rows)
        acc[gkey] = _Acc(
            ports={int(p) for p in port[r]},
            flows=int(baseline.flows_[r].sum()),
            bytes=int(baseline.bytes_[r].sum()),
            first=float(baseline.first_seen_[r].min()),
            last=float(baseline.last_seen_[r].max()),
            days=int(baseline.days_[r].max()),
        )
    rules = []
    expect_days = max(1.0, min(7.0, audit_days))
    for (app_wid, direction, peer_wid, pr, weak), a in acc.items():
        if app_wid == WORLD:
            continue  # the outside world is not a workload we protect
        app = to_workload(workloads.infos[app_wid])
        ports = tuple(sorted(a.ports)) if pr in (6, 17, 132) else ()
        persistence = min(1.0, a.days / expect_days)
        volume = min(1.0, math.log10(1 + a.flows) / 3)
        confidence = round(0.6 * persistence + 0.4 * volume, 3)
        for peer in _peers(workloads.infos[peer_wid], peer_wid, internal, workload_cidrs or {}):
            peer_key = peer.cidr if peer.kind != "workload" or not peer.workload else (
                peer.workload.key)
            rid = stable_id("r", app.key, direction, peer.kind, peer_key, pr,
                            ",".join(map(str, ports)), *(("provisional",) if weak else ()))
            rules.append(
                CandidateRule(
                    id=rid,
                    app=app,
                    direction=direction,  # type: ignore[arg-type]
                    peer=peer,
                    proto=pr,
                    ports=ports,
                    evidence=Evidence(a.flows, a.bytes, a.first, a.last, a.days),
                    confidence=confidence,
                    provisional=weak,
                )
            )
    rules.sort(key=lambda r: r.id)
    return rules


__all__ = ["derive_rules", "to_workload"]
