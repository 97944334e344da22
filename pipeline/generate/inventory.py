"""inventory.jsonl entries: CIDRs for VMs and external ranges, IPs for services and pods."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from pipeline.generate.lifecycle import Incarnation
from pipeline.generate.workload import SimWorkload

Entry = dict[str, object]


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _entry(w: SimWorkload, where: dict[str, str]) -> Entry:
    return {
        **where,
        "app": w.app,
        "namespace": w.namespace,
        "env": "prod",
        "labels": {"app": w.app, "tier": w.tier},
        "service_account": w.app if w.kind in ("pod", "vm") else "",
        "kind": w.kind,
    }


def inventory_entries(workloads: list[SimWorkload], incs: list[Incarnation],
                      slot_wl: list[int]) -> list[Entry]:
    """Fixed entries first, then one entry per pod address ordered by ``valid_from``.

    Pods alive when the window opens have no ``valid_from``; pods alive when it closes have
    no ``valid_to``. Unlisted workloads (internet scanners) are left out on purpose.
    """
    out: list[Entry] = []
    for w in workloads:
        if not w.listed or w.kind == "pod":
            continue
        if w.cidr:
            out.append(_entry(w, {"cidr": w.cidr}))
        else:
            out.extend(_entry(w, {"ip": i.ip4}) for i in incs if slot_wl[i.slot] == w.idx)
    pods: list[tuple[float, str, Entry]] = []
    for inc in incs:
        w = workloads[slot_wl[inc.slot]]
        if w.kind != "pod":
            continue
        for ip in (inc.ip4, inc.ip6):
            if not ip:
                continue
            e = _entry(w, {"ip": ip})
            if inc.has_start:
                e["valid_from"] = rfc3339(inc.start)
            if inc.has_stop:
                e["valid_to"] = rfc3339(inc.stop)
            pods.append((inc.start if inc.has_start else -math.inf, ip, e))
    pods.sort(key=lambda p: (p[0], p[1]))
    out.extend(e for _, _, e in pods)
    return out


__all__ = ["Entry", "inventory_entries", "rfc3339"]
