"""The communication plan: which workload talks to which, on what port, how often, how much.

Each edge has a schedule (diurnal business traffic, flat infrastructure chatter, nightly
backups, weekday office hours, the weekly job) and lognormal bytes and durations with
edge-specific medians. Rates are normalised so a week averages ``flows_per_day``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.generate.catalog import DNS_PORT, LOKI_PORT, METRICS_PORT, PUBLIC_PORT, app_templates
from pipeline.generate.config import DAY, HOUR, GenerateConfig
from pipeline.generate.population import Population
from pipeline.generate.workload import SimWorkload

TCP, UDP, ICMP = 6, 17, 1
PROBE = -1  # port placeholder: a random port from PROBE_PORTS per flow

# schedules (PERIODIC edges are not Poisson: each source host sends every ``period`` seconds)
DIURNAL, FLAT, BACKUP, BUSINESS, WEEKLY, PERIODIC = range(6)
LEAD = np.array([0.0, 0.0, 0.0, 0.0, 5.0, 0.0])  # seconds after the hour a schedule may start
SPAN = np.array([HOUR, HOUR, HOUR, HOUR, 1_790.0, HOUR])  # seconds of the hour it may use
NIGHT_FLOOR = 0.3  # night volume relative to the afternoon peak
WEEKEND = 0.5  # weekend volume relative to weekdays
FLAT_SHARES = {"scrape": 0.07, "logs": 0.03, "icmp": 0.01, "probe": 0.005}
WEEK_MEAN = (NIGHT_FLOOR + (1 - NIGHT_FLOOR) / 2) * (5 + 2 * WEEKEND) / 7


def profiles(hour_starts: np.ndarray) -> np.ndarray:
    """Relative rate of each schedule (rows) in each UTC hour (columns)."""
    hod = (hour_starts // HOUR) % 24
    dow = ((hour_starts // DAY).astype(np.int64) + 3) % 7  # Monday = 0
    weekday = dow < 5
    out = np.zeros((6, len(hour_starts)))  # PERIODIC stays 0: synthesised separately
    bump = 0.5 - 0.5 * np.cos(2 * np.pi * (hod + 0.5 - 2.5) / 24)  # trough 02:30, peak 14:30
    out[DIURNAL] = (NIGHT_FLOOR + (1 - NIGHT_FLOOR) * bump) * np.where(weekday, 1.0, WEEKEND)
    out[FLAT] = 1.0
    out[BACKUP] = hod == 2
    out[BUSINESS] = weekday & (hod >= 9) & (hod < 17)
    out[WEEKLY] = (dow == 6) & (hod == 4)
    return out


@dataclass
class EdgePlan:
    """Edges as parallel arrays (one row per src workload → dst workload:port)."""

    src: np.ndarray
    dst: np.ndarray
    proto: np.ndarray
    port: np.ndarray
    sched: np.ndarray
    hourly: np.ndarray  # expected flows per hour when the schedule's profile is 1
    bytes_mu: np.ndarray  # log of the median bytes
    bytes_sigma: np.ndarray
    dur_mu: np.ndarray  # log of the median duration (s)
    dur_sigma: np.ndarray
    v6: np.ndarray  # may use IPv6 when both ends are dual-stack
    reject: np.ndarray  # the flows are blocked
    role: list[str]  # what the edge is, e.g. "api->db"
    period: np.ndarray  # seconds between a source host's flows on PERIODIC edges, else 0

    def __len__(self) -> int:
        return len(self.src)

    def mean_bytes(self, row: int) -> float:
        """Expected bytes of one flow on edge ``row`` (lognormal mean)."""
        return float(np.exp(self.bytes_mu[row] + self.bytes_sigma[row] ** 2 / 2))


class _Rows:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.rows: list[tuple] = []

    def add(self, src: SimWorkload, dst: SimWorkload, proto: int, port: int, sched: int,
            rate: float, size: float, size_sigma: float, dur: float, role: str,
            group: str = "diurnal", v6: bool = False, reject: bool = False,
            dur_sigma: float = 0.8, period: float = 0.0) -> None:
        jitter = float(self.rng.lognormal(0.0, 0.4))
        weight = rate * float(self.rng.lognormal(0.0, 0.3))
        self.rows.append((src.idx, dst.idx, proto, port, sched, weight, np.log(size * jitter),
                          size_sigma, np.log(dur), dur_sigma, v6, reject, role, group, period))


def build_plan(cfg: GenerateConfig, pop: Population) -> EdgePlan:
    """Every edge of the estate, with rates scaled to ``cfg.flows_per_day``."""
    rng = np.random.default_rng([cfg.seed, 2])
    rows = _Rows(rng)
    wls = pop.workloads
    by_group: dict[str, dict[str, SimWorkload]] = {}
    for w in wls:
        if w.kind == "pod" and w.tier in ("web", "api", "worker", "db", "cache", "queue"):
            by_group.setdefault(w.group, {})[w.tier] = w
    templates = {t.name: t for t in app_templates(cfg.apps)}

    def infra(kind: str, key: str) -> SimWorkload:
        w = pop.find(kind, key)
        assert w is not None, key
        return w

    public = infra("external", "external/public-clients")
    gateway = infra("external", "external/payment-gateway")
    oracle = infra("vm", "legacy/oracle-db")
    for name, tiers in by_group.items():
        tpl = templates[name]
        web, api, worker = tiers.get("web"), tiers.get("api"), tiers.get("worker")
        front = api or worker
        ds = tpl.dual_stack
        if web:
            rows.add(public, web, TCP, PUBLIC_PORT, DIURNAL, 10, 30_000, 1.0, 1.0, "internet->web")
            if api:
                rows.add(web, api, TCP, api.port, DIURNAL, 8, 8_000, 0.8, 0.15, "web->api", v6=ds)
        if front is None:
            continue
        if db := tiers.get("db"):
            rows.add(front, db, TCP, db.port, DIURNAL, 6, 4_000, 0.9, 0.03, "api->db", v6=ds)
        if cache := tiers.get("cache"):
            rows.add(front, cache, TCP, cache.port, DIURNAL, 8, 600, 0.5, 0.005, "api->cache",
                     v6=ds)
        if queue := tiers.get("queue"):
            rows.add(front, queue, TCP, queue.port, DIURNAL, 2, 3_000, 0.7, 0.05, "api->queue")
        if api:
            for other in tpl.calls:
                peer = by_group.get(other, {}).get("api")
                if peer is not None and peer is not api:
                    rows.add(api, peer, TCP, peer.port, DIURNAL, 3, 5_000, 0.8, 0.1, "api->api")
        for other in tpl.consumes:
            if (q := by_group.get(other, {}).get("queue")) is not None:
                rows.add(front, q, TCP, q.port, DIURNAL, 1.5, 20_000, 0.8, 0.5, "consumer->queue")
        for other in tpl.reads:
            if (d := by_group.get(other, {}).get("db")) is not None:
                rows.add(front, d, TCP, d.port, DIURNAL, 0.5, 200_000, 1.0, 2.0, "reader->db")
        if tpl.egress and api:
            rows.add(api, gateway, TCP, PUBLIC_PORT, DIURNAL, 2, 6_000, 0.7, 0.3, "api->partner")
        if tpl.legacy and api:
            rows.add(api, oracle, TCP, oracle.port, DIURNAL, 1, 8_000, 0.9, 0.05, "api->legacy")

    _shared_rows(rows, pop, by_group, rng)
    if cfg.workstations:
        _office_rows(rows, pop)
    return _finish(rows, cfg)


EDR_PERIOD = 600.0  # seconds between an EDR agent's check-ins (legitimately periodic)


def _office_rows(rows: _Rows, pop: Population) -> None:
    """Workstation traffic, mostly in office hours; rates are per workstation and hour."""
    find = pop.find
    ws, files = find("vm", "corp/workstation"), find("vm", "corp/file-server")
    dc, edr = find("vm", "corp/domain-controller"), find("vm", "corp/edr-console")
    internet = find("external", "external/internet")
    assert ws and files and dc and edr and internet
    n = ws.base_replicas

    def add(dst: SimWorkload, proto: int, port: int, sched: int, per_host: float, size: float,
            sigma: float, dur: float, role: str) -> None:
        rows.add(ws, dst, proto, port, sched, per_host * n, size, sigma, dur, role, group="abs")

    add(files, TCP, 445, BUSINESS, 4.0, 150_000, 1.5, 2.0, "ws->files")
    add(dc, TCP, 389, BUSINESS, 2.0, 3_000, 0.6, 0.05, "ws->dc")
    add(dc, TCP, 88, BUSINESS, 1.0, 2_500, 0.5, 0.05, "ws->dc")
    add(dc, UDP, DNS_PORT, DIURNAL, 4.0, 120, 0.3, 0.002, "ws->dns")
    add(ws, TCP, 445, BUSINESS, 0.1, 400_000, 1.5, 3.0, "ws->ws")  # shares, printing
    add(internet, TCP, PUBLIC_PORT, BUSINESS, 12.0, 60_000, 1.6, 2.0, "ws->internet")
    add(internet, TCP, 80, BUSINESS, 2.0, 20_000, 1.4, 0.5, "ws->internet")
    rows.add(ws, edr, TCP, PUBLIC_PORT, PERIODIC, 0.0, 2_000, 0.3, 0.2, "ws->edr", group="abs",
             period=EDR_PERIOD)


def _shared_rows(rows: _Rows, pop: Population, by_group: dict[str, dict[str, SimWorkload]],
                 rng: np.random.Generator) -> None:
    """DNS, metrics scrapes, log shipping, probes, backups, the bastion and the weekly job."""
    find = pop.find
    dns, prom = find("service", "kube-system/coredns"), find("pod", "monitoring/prometheus")
    fluent, loki = find("pod", "logging/fluent-bit"), find("pod", "logging/loki")
    blackbox, velero = find("pod", "monitoring/blackbox-exporter"), find("pod", "backup/velero")
    job, bastion = find("pod", "analytics/report-job"), find("vm", "ops/bastion")
    scanners = find("external", "external/internet-scanners")
    assert dns and prom and fluent and loki and blackbox and velero and job and bastion and scanners
    out_weight: dict[int, float] = {}
    for row in rows.rows:
        out_weight[row[0]] = out_weight.get(row[0], 0.0) + row[5]
    for w in pop.workloads:
        if w.kind != "pod" or w is job:
            continue
        if w.app != "coredns":  # every pod resolves names through the cluster DNS service
            weight = 0.15 * out_weight.get(w.idx, 0.0) + 0.3
            rows.add(w, dns, UDP, DNS_PORT, DIURNAL, weight, 90, 0.25, 0.002, "pod->dns")
        rows.add(prom, w, TCP, METRICS_PORT, FLAT, max(w.base_replicas, 1), 25_000, 0.3, 0.15,
                 "scrape", group="scrape")
    rows.add(fluent, loki, TCP, LOKI_PORT, FLAT, 1, 120_000, 0.8, 2.0, "logs", group="logs")
    dbs = [t["db"] for t in by_group.values() if "db" in t]
    for tiers in by_group.values():
        if web := tiers.get("web"):
            rows.add(blackbox, web, ICMP, 0, FLAT, 1, 84, 0.05, 0.001, "icmp", group="icmp")
            rows.add(scanners, web, TCP, PROBE, FLAT, 1, 60, 0.1, 0.001, "probe", group="probe",
                     reject=True)
    for db in dbs:
        rows.add(velero, db, TCP, db.port, BACKUP, 3, 2e9, 0.5, 600, "backup", group="abs",
                 dur_sigma=0.4)
    picks = rng.choice(len(dbs), size=min(3, len(dbs)), replace=False)
    for i in sorted(picks.tolist()):
        rows.add(bastion, dbs[i], TCP, dbs[i].port, BUSINESS, 0.75, 200_000, 1.5, 300, "bastion",
                 group="abs")
    target = by_group.get("orders", {}).get("db", dbs[0])
    rows.add(job, target, TCP, target.port, WEEKLY, 24, 5e6, 0.8, 30, "weekly-job", group="abs")
    rows.add(job, dns, UDP, DNS_PORT, WEEKLY, 8, 90, 0.25, 0.002, "pod->dns", group="abs")


def _finish(rows: _Rows, cfg: GenerateConfig) -> EdgePlan:
    cols = list(zip(*rows.rows, strict=True))
    weight = np.array(cols[5], dtype=np.float64)
    group = np.array(cols[13])
    hourly = np.zeros(len(weight))
    shares = {"diurnal": 1.0 - sum(FLAT_SHARES.values()), **FLAT_SHARES}
    for g, share in shares.items():
        sel = group == g
        total = weight[sel].sum()
        mean_mod = WEEK_MEAN if g == "diurnal" else 1.0
        if total > 0:
            hourly[sel] = share * cfg.flows_per_day * weight[sel] / (total * mean_mod * 24)
    absolute = group == "abs"  # scheduled jobs: the weight is the count per active hour
    hourly[absolute] = weight[absolute]
    sched = np.array(cols[4], dtype=np.int64)
    hourly[sched == PERIODIC] = 0.0
    return EdgePlan(
        src=np.array(cols[0], dtype=np.int64),
        dst=np.array(cols[1], dtype=np.int64),
        proto=np.array(cols[2], dtype=np.int16),
        port=np.array(cols[3], dtype=np.int32),
        sched=sched,
        hourly=hourly,
        bytes_mu=np.array(cols[6]),
        bytes_sigma=np.array(cols[7]),
        dur_mu=np.array(cols[8]),
        dur_sigma=np.array(cols[9]),
        v6=np.array(cols[10], dtype=bool),
        reject=np.array(cols[11], dtype=bool),
        role=list(cols[12]),
        period=np.array(cols[14], dtype=np.float64),
    )


__all__ = ["BACKUP", "BUSINESS", "DIURNAL", "FLAT", "ICMP", "LEAD", "PERIODIC", "PROBE", "SPAN",
           "TCP", "UDP", "WEEKLY", "EdgePlan", "build_plan", "profiles"]
