"""Who exists when: the estate's workloads, their pods over time and their addresses.

Flow synthesis picks, for each flow, an incarnation alive at the flow's start, so flows
only ever use addresses that the inventory says are valid at that time.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field

import numpy as np

from pipeline.generate.catalog import (
    CACHE_PORT,
    DB_PORTS,
    DNS_PORT,
    LEGACY_DB_PORT,
    LOKI_PORT,
    PUBLIC_PORT,
    QUEUE_PORTS,
    AppTemplate,
    app_templates,
)
from pipeline.generate.config import GenerateConfig
from pipeline.generate.inventory import Entry, inventory_entries
from pipeline.generate.lifecycle import ChurnEvent, Lifecycles
from pipeline.generate.workload import SimWorkload

PODS_PER_NODE = 20  # nodes are added so each /26 block stays about a third full
DNS_SERVICE_IP = "10.96.0.10"
GATEWAY_IP = "203.0.113.10"
BASTION_IP = "10.30.0.4"
OFFICE_NET = "10.40.0.0/22"  # workstations (an office DHCP range)
INTERNET_NET = "198.18.0.0/15"  # what the office browses: not in the inventory (→ world)
INTERNET_HOSTS = 3000
_STEADY = ((15.0, 30.0), 0.005, 0.0)  # infra: rare rollouts, rare crashes, no scaling


@dataclass
class Population:
    """Workloads and incarnations of one estate (arrays sorted by slot, then start)."""

    workloads: list[SimWorkload]
    nodes: int
    ips: list[str]  # address text table; flows refer to addresses by index into it
    inc_slot: np.ndarray
    inc_wl: np.ndarray
    inc_start: np.ndarray
    inc_stop: np.ndarray
    inc_ip4: np.ndarray  # index into ips
    inc_ip6: np.ndarray  # index into ips, -1 when single-stack
    inc_node: np.ndarray  # -1 for non-pods
    inc_job: np.ndarray  # bool: a run of the weekly job
    inventory: list[Entry]
    churn: list[ChurnEvent]
    _origin: float = field(init=False)
    _keys: np.ndarray = field(init=False)
    _wl_slots: np.ndarray = field(init=False)
    _wl_base: np.ndarray = field(init=False)
    _wl_replicas: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self._origin = float(self.inc_start.min(initial=0.0))
        # one sorted search key per incarnation: slot-major, then start time
        self._keys = self.inc_slot * 1e8 + (self.inc_start - self._origin)
        self._wl_slots = np.array([w.n_slots for w in self.workloads], dtype=np.int64)
        self._wl_base = np.array([w.slot_base for w in self.workloads], dtype=np.int64)
        self._wl_replicas = np.array([max(w.base_replicas, 1) for w in self.workloads])

    @property
    def ip_reuses(self) -> int:
        """Addresses handed to a different workload during the window."""
        return sum(1 for c in self.churn if c.kind == "ip_reuse")

    def find(self, kind: str, key: str) -> SimWorkload | None:
        """The workload with this kind and ``namespace/app`` key, if any."""
        return next((w for w in self.workloads if w.key == key and w.kind == kind), None)

    def locate(self, slots: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Incarnation alive in each slot at each time, or -1."""
        q = slots * 1e8 + (t - self._origin)
        pos = np.maximum(np.searchsorted(self._keys, q, side="right") - 1, 0)
        ok = (self.inc_slot[pos] == slots) & (self.inc_start[pos] <= t) & (t < self.inc_stop[pos])
        return np.where(ok, pos, -1)

    def pick(self, wl: np.ndarray, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A random incarnation of each workload alive at each time (-1 when none is)."""
        n_slots, base, replicas = self._wl_slots[wl], self._wl_base[wl], self._wl_replicas[wl]
        local = (rng.random(len(wl)) * n_slots).astype(np.int64)
        inc = self.locate(base + local, t)
        miss = inc < 0
        if miss.any():  # scaled-down extra slot or a crash gap: fall back to a base replica
            inc[miss] = self.locate(base[miss] + local[miss] % replicas[miss], t[miss])
        return inc

    def alive(self, w: SimWorkload, t0: float, t1: float) -> np.ndarray:
        """Incarnations of ``w`` valid over the whole of [t0, t1]."""
        sel = (self.inc_wl == w.idx) & (self.inc_start <= t0) & (self.inc_stop > t1)
        return np.flatnonzero(sel)


def _app_workloads(lc: Lifecycles, templates: list[AppTemplate]) -> None:
    rng = lc.rng
    for tpl in templates:
        for tier in tpl.tiers:
            w = SimWorkload(0, tpl.namespace, f"{tpl.name}-{tier}", tier, "pod", tpl.name,
                         dual_stack=tpl.dual_stack)
            if tier in ("web", "api", "worker"):
                w.port = {"web": PUBLIC_PORT, "api": tpl.api_port, "worker": 0}[tier]
                if tier == "worker":
                    lc.deployment(w, int(rng.integers(1, 3)), 0, (3.0, 8.0), 0.01, 0.0)
                else:
                    lc.deployment(w, int(rng.integers(2, 4)), 2, (3.0, 8.0), 0.01, 0.07)
            else:
                w.engine = {"db": tpl.db, "queue": tpl.queue, "cache": "redis"}[tier]
                w.port = {"db": DB_PORTS.get(w.engine, 0), "queue": QUEUE_PORTS.get(w.engine, 0),
                          "cache": CACHE_PORT}[tier]
                replicas = 3 if w.engine == "kafka" else 1
                lc.deployment(w, replicas, 0, (10.0, 25.0), 0.005, 0.0)


def _infra_workloads(lc: Lifecycles, n_nodes: int) -> None:
    def pod(ns: str, app: str, port: int = 0, tier: str = "infra") -> SimWorkload:
        return SimWorkload(0, ns, app, tier, "pod", app, port=port)

    def outside(app: str, cidr: str, listed: bool = True, port: int = 0) -> SimWorkload:
        return SimWorkload(0, "external", app, "external", "external", app, port=port, cidr=cidr,
                        listed=listed)

    lc.deployment(pod("kube-system", "coredns", DNS_PORT), 2, 0, *_STEADY)
    lc.add_fixed(SimWorkload(0, "kube-system", "coredns", "service", "service", "coredns",
                          port=DNS_PORT), [DNS_SERVICE_IP])
    lc.deployment(pod("monitoring", "prometheus"), 1, 0, *_STEADY)
    lc.deployment(pod("monitoring", "blackbox-exporter"), 1, 0, *_STEADY)
    lc.daemonset(pod("logging", "fluent-bit"), n_nodes)
    lc.deployment(pod("logging", "loki", LOKI_PORT), 1, 0, *_STEADY)
    lc.deployment(pod("backup", "velero"), 1, 0, *_STEADY)
    lc.weekly_job(pod("analytics", "report-job", tier="job"))
    lc.add_fixed(SimWorkload(0, "ops", "bastion", "vm", "vm", "bastion", cidr="10.30.0.0/29"),
                 [BASTION_IP])
    lc.add_fixed(SimWorkload(0, "legacy", "oracle-db", "vm", "vm", "oracle-db", port=LEGACY_DB_PORT,
                          engine="oracle", cidr="10.20.0.0/28"), ["10.20.0.5", "10.20.0.6"])
    lc.add_fixed(outside("payment-gateway", "203.0.113.0/24", port=PUBLIC_PORT), [GATEWAY_IP])
    lc.add_fixed(outside("public-clients", "198.51.100.0/24"),
                 [f"198.51.100.{i}" for i in range(1, 255)])
    # internet scanners: blocked at the edge, and deliberately not in the inventory
    lc.add_fixed(outside("internet-scanners", "192.0.2.0/24", listed=False),
                 [f"192.0.2.{i}" for i in range(1, 255)])


def _office_workloads(lc: Lifecycles, n: int) -> None:
    """A flat office: workstations, a file server, domain controllers, an EDR console, and
    the internet they browse (many addresses, deliberately not in the inventory)."""
    def vm(app: str, cidr: str, hosts: list[str], port: int, tier: str = "server") -> None:
        lc.add_fixed(SimWorkload(0, "corp", app, tier, "vm", "office", port=port, cidr=cidr),
                     hosts)

    vm("workstation", OFFICE_NET, [f"10.40.{i // 200}.{10 + i % 200}" for i in range(n)], 445,
       tier="workstation")
    vm("file-server", "10.40.8.0/29", ["10.40.8.5"], 445)
    vm("domain-controller", "10.40.8.8/29", ["10.40.8.10", "10.40.8.11"], 389)
    vm("edr-console", "10.40.8.16/29", ["10.40.8.20"], 443)
    rng = np.random.default_rng([lc.cfg.seed, 5])
    base = int(ipaddress.IPv4Address(INTERNET_NET.split("/")[0]))
    offsets = np.sort(rng.choice(1 << 17, INTERNET_HOSTS, replace=False))
    hosts = [str(ipaddress.IPv4Address(base + int(o))) for o in offsets]
    lc.add_fixed(SimWorkload(0, "external", "internet", "external", "external", "internet",
                             port=443, cidr=INTERNET_NET, listed=False), hosts)


def build_population(cfg: GenerateConfig) -> Population:
    """Workloads, pods over time and their addresses, deterministic for ``cfg.seed``."""
    lc = Lifecycles(cfg)
    _app_workloads(lc, app_templates(cfg.apps))
    n_nodes = max(3, math.ceil((sum(w.n_slots for w in lc.workloads) + 8) / PODS_PER_NODE))
    _infra_workloads(lc, n_nodes)
    if cfg.workstations:
        _office_workloads(lc, cfg.workstations)
    churn = lc.allocate(n_nodes)

    incs = sorted(lc.incs, key=lambda i: (i.slot, i.start))
    ips: list[str] = []
    ip_idx: dict[str, int] = {}

    def intern(text: str) -> int:
        if text not in ip_idx:
            ip_idx[text] = len(ips)
            ips.append(text)
        return ip_idx[text]

    slot_wl = np.array(lc.slot_wl, dtype=np.int64)
    inc_slot = np.array([i.slot for i in incs], dtype=np.int64)
    return Population(
        workloads=lc.workloads,
        nodes=n_nodes,
        ips=ips,
        inc_slot=inc_slot,
        inc_wl=slot_wl[inc_slot],
        inc_start=np.array([i.start for i in incs]),
        inc_stop=np.array([i.stop for i in incs]),
        inc_ip4=np.array([intern(i.ip4) for i in incs], dtype=np.int32),
        inc_ip6=np.array([intern(i.ip6) if i.ip6 else -1 for i in incs], dtype=np.int32),
        inc_node=np.array([i.node for i in incs], dtype=np.int64),
        inc_job=np.array([i.cause[0] == "job" for i in incs], dtype=bool),
        inventory=inventory_entries(lc.workloads, incs, lc.slot_wl),
        churn=churn,
    )


__all__ = ["Population", "SimWorkload", "build_population"]
