"""Ground truth: attacks after the audit, benign churn and rare jobs, and the flows attacks add.

Attack flows are synthesised here (they are not in the plan); benign churn comes from
:mod:`pipeline.generate.lifecycle` and the weekly job's flows from the plan itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.core.columns import ACTION_ACCEPT, ACTION_REJECT
from pipeline.generate.catalog import METRICS_PORT
from pipeline.generate.config import DAY, HOUR, GenerateConfig
from pipeline.generate.edges import TCP, WEEKLY, EdgePlan
from pipeline.generate.population import Population
from pipeline.generate.traffic import SimFlows, exporters_of, ms_floor
from pipeline.generate.workload import SimWorkload

Truth = dict[str, object]
NEW_PORTS = (4444, 31337, 1337, 6666, 8888)


@dataclass
class _Attack:
    pop: Population
    plan: EdgePlan
    rng: np.random.Generator

    def pod(self, w: SimWorkload, t0: float, t1: float) -> int | None:
        alive = self.pop.alive(w, t0, t1)
        return int(self.rng.choice(alive)) if len(alive) else None

    def flows(self, t: np.ndarray, src_inc: int, dst_inc: np.ndarray, dport: np.ndarray,
              size: np.ndarray, dur: np.ndarray, packets: np.ndarray | None = None,
              action: np.ndarray | None = None, flags: np.ndarray | None = None) -> SimFlows:
        n = len(t)
        pop = self.pop
        src_incs = np.full(n, src_inc)
        start = ms_floor(t)
        size = np.asarray(size, dtype=np.int64)
        if packets is None:
            packets = np.maximum(3, np.ceil(size / 1200)).astype(np.int64)
        return SimFlows(
            start=start,
            end=ms_floor(start + dur),
            src=pop.inc_ip4[src_incs],
            dst=pop.inc_ip4[dst_inc],
            sport=self.rng.integers(32_768, 61_000, n).astype(np.int32),
            dport=np.asarray(dport, dtype=np.int32),
            proto=np.full(n, TCP, dtype=np.int16),
            bytes=np.maximum(size, packets * 40),
            packets=packets,
            action=(np.full(n, ACTION_ACCEPT) if action is None else action).astype(np.int8),
            flags=(np.full(n, 0x1B) if flags is None else flags).astype(np.int16),
            exporter=exporters_of(pop, src_incs, dst_inc),
        )

    def truth(self, kind: str, expected: str, src: SimWorkload, f: SimFlows,
              dst: SimWorkload | None, text: str) -> Truth:
        ips = self.pop.ips
        return {
            "type": kind,
            "malicious": True,
            "start": float(f.start.min()),
            "end": float(f.end.max()),
            "src_ip": ips[int(f.src[0])],
            "src_workload": src.key,
            "dst_ips": sorted({ips[int(i)] for i in np.unique(f.dst)}),
            "dst_workload": dst.key if dst else None,
            "dst_ports": sorted(int(p) for p in np.unique(f.dport)),
            "expected": [expected],
            "description": text,
        }

    def tiers(self, *tiers: str) -> list[SimWorkload]:
        return [w for w in self.pop.workloads if w.kind == "pod" and w.tier in tiers]


def _lateral(a: _Attack, t0: float) -> tuple[Truth, SimFlows] | None:
    known = set(zip(a.plan.src.tolist(), a.plan.dst.tolist(), strict=True))
    pairs = [(s, d) for s in a.tiers("web", "api") for d in a.tiers("db")
             if s.group != d.group and (s.idx, d.idx) not in known]
    for i in a.rng.permutation(len(pairs)):
        src, dst = pairs[int(i)]
        s, d = a.pod(src, t0, t0 + 1800), a.pod(dst, t0, t0 + 1800)
        if s is None or d is None:
            continue
        n = int(a.rng.integers(8, 16))
        t = t0 + np.sort(a.rng.uniform(0, 1200, n))
        size = a.rng.lognormal(np.log(50_000), 0.8, n)
        size[:3] = a.rng.uniform(600, 2000, 3)
        f = a.flows(t, s, np.full(n, d), np.full(n, dst.port), size, a.rng.uniform(0.05, 3, n))
        text = (f"compromised {src.key} pod connects to {dst.key} on {dst.port}, "
                "an edge never seen during the audit")
        return a.truth("lateral_movement", "new_edge", src, f, dst, text), f
    return None


def _scan(a: _Attack, t0: float) -> tuple[Truth, SimFlows] | None:
    srcs = a.tiers("api")
    src = srcs[int(a.rng.integers(len(srcs)))]
    s = a.pod(src, t0, t0 + 900)
    others = [w for w in a.tiers("web", "api", "db", "cache", "queue") if w.group != src.group]
    if s is None or len(others) < 3:
        return None
    want = int(a.rng.integers(3, 6))
    hosts: list[tuple[SimWorkload, int]] = []
    for i in a.rng.permutation(len(others)):
        d = a.pod(others[int(i)], t0, t0 + 900)
        if d is not None:
            hosts.append((others[int(i)], d))
        if len(hosts) == want:
            break
    if len(hosts) < 3:
        return None
    span = a.rng.uniform(120, 300)
    parts: list[SimFlows] = []
    for k, (w, d) in enumerate(hosts):
        ports = np.sort(a.rng.choice(np.arange(1, 10_001), int(a.rng.integers(200, 301)),
                                     replace=False))
        n = len(ports)
        slot = span / len(hosts)
        t = t0 + k * slot + np.sort(a.rng.uniform(0, slot, n))
        open_ = (ports == w.port) | (ports == METRICS_PORT)
        refused = ~open_ & (a.rng.random(n) < 0.15)  # closed port answered with RST
        packets = np.where(open_, 3, np.where(refused, 1, a.rng.integers(1, 3, n)))
        action = np.where(open_ | refused, ACTION_ACCEPT, ACTION_REJECT)
        flags = np.where(open_, 0x16, 0x02)
        parts.append(a.flows(t, s, np.full(n, d), ports, packets * 60, np.zeros(n), packets=packets,
                             action=action, flags=flags))
    f = SimFlows.concat(parts)
    text = (f"compromised {src.key} pod sweeps {len(f)} ports on {len(hosts)} hosts "
            f"in {span / 60:.0f} minutes")
    dst = hosts[0][0] if len({w.idx for w, _ in hosts}) == 1 else None
    return a.truth("port_scan", "scan", src, f, dst, text), f


def _new_listener(a: _Attack, t0: float) -> tuple[Truth, SimFlows] | None:
    pop, plan = a.pop, a.plan
    rows = [r for r in range(len(plan)) if plan.role[r] == "api->db"]
    for r in a.rng.permutation(len(rows)):
        row = rows[int(r)]
        src, dst = pop.workloads[int(plan.src[row])], pop.workloads[int(plan.dst[row])]
        used = set(plan.port[plan.dst == dst.idx].tolist())
        port = next(p for p in NEW_PORTS if p not in used)
        s, d = a.pod(src, t0, t0 + 2400), a.pod(dst, t0, t0 + 2400)
        if s is None or d is None:
            continue
        n = int(a.rng.integers(10, 26))
        t = t0 + np.sort(a.rng.uniform(0, 1800, n))
        f = a.flows(t, s, np.full(n, d), np.full(n, port), a.rng.lognormal(np.log(20_000), 0.8, n),
                    a.rng.uniform(0.05, 5, n))
        text = f"{src.key}, a known client of {dst.key}, starts talking to it on new port {port}"
        return a.truth("new_listener", "new_port", src, f, dst, text), f
    return None


def _exfiltration(a: _Attack, t0: float) -> tuple[Truth, SimFlows] | None:
    pop, plan = a.pop, a.plan
    for role in ("api->partner", "reader->db", "api->db"):
        rows = [r for r in range(len(plan)) if plan.role[r] == role]
        for r in a.rng.permutation(len(rows)):
            row = rows[int(r)]
            src, dst = pop.workloads[int(plan.src[row])], pop.workloads[int(plan.dst[row])]
            s, d = a.pod(src, t0, t0 + 3700), a.pod(dst, t0, t0 + 3700)
            if s is None or d is None:
                continue
            usual = plan.hourly[row] * plan.mean_bytes(row)  # weekday peak-hour bytes
            factor = float(a.rng.uniform(50, 100))
            n = int(a.rng.integers(30, 61))
            weights = a.rng.uniform(0.5, 1.5, n)
            size = weights / weights.sum() * usual * factor
            t = t0 + np.sort(a.rng.uniform(0, 3500, n))
            f = a.flows(t, s, np.full(n, d), np.full(n, int(plan.port[row])), size,
                        a.rng.uniform(30, 120, n))
            text = (f"{src.key} → {dst.key} carries {factor:.0f}× its usual peak-hour bytes "
                    f"({int(size.sum())} bytes) for about an hour")
            return a.truth("exfiltration", "volume_spike", src, f, dst, text), f
    return None


def _off_hours(a: _Attack, t0: float) -> tuple[Truth, SimFlows] | None:
    pop, plan = a.pop, a.plan
    rows = [r for r in range(len(plan)) if plan.role[r] == "bastion"]
    for r in a.rng.permutation(len(rows)):
        row = rows[int(r)]
        src, dst = pop.workloads[int(plan.src[row])], pop.workloads[int(plan.dst[row])]
        s, d = a.pod(src, t0, t0 + 1800), a.pod(dst, t0, t0 + 1800)
        if s is None or d is None:
            continue
        n = int(a.rng.integers(3, 7))
        t = t0 + np.sort(a.rng.uniform(0, 1200, n))
        f = a.flows(t, s, np.full(n, d), np.full(n, dst.port),
                    a.rng.lognormal(np.log(200_000), 1.0, n), a.rng.uniform(60, 600, n))
        text = f"{src.key} → {dst.key}, used only on weekdays 09:00-17:00 UTC, opened at 03:00 UTC"
        return a.truth("off_hours", "off_hours", src, f, dst, text), f
    return None


ATTACKS: tuple[tuple[Callable[[_Attack, float], tuple[Truth, SimFlows] | None], float], ...] = (
    (_lateral, 10.0),
    (_scan, 13.0),
    (_new_listener, 11.0),
    (_exfiltration, 14.0),
    (_off_hours, 3.0),
)


def build_attacks(
    cfg: GenerateConfig, pop: Population, plan: EdgePlan
) -> tuple[list[Truth], SimFlows]:
    """Attack episodes on distinct post-audit days (sharing days only when there are few)."""
    post = list(range(cfg.audit_days, cfg.days))
    if not cfg.attacks or not post:
        return [], SimFlows.empty()
    a = _Attack(pop, plan, np.random.default_rng([cfg.seed, 4]))
    truths: list[Truth] = []
    flows: list[SimFlows] = []
    for i, (make, hour) in enumerate(ATTACKS):
        day = post[i * len(post) // len(ATTACKS)]
        t0 = cfg.start + day * DAY + hour * HOUR + float(a.rng.uniform(0, 600))
        made = make(a, float(np.floor(t0)))
        if made is not None:
            truths.append(made[0])
            flows.append(made[1])
    return truths, SimFlows.concat(flows) if flows else SimFlows.empty()


def scheduled_jobs(pop: Population, plan: EdgePlan) -> list[Truth]:
    """The weekly report job's runs: rare but legitimate."""
    rows = [r for r in range(len(plan)) if plan.sched[r] == WEEKLY and plan.role[r] == "weekly-job"]
    if not rows:
        return []
    src = pop.workloads[int(plan.src[rows[0]])]
    dst = pop.workloads[int(plan.dst[rows[0]])]
    out: list[Truth] = []
    for inc in np.flatnonzero(pop.inc_job):
        start, stop = float(pop.inc_start[inc]), float(pop.inc_stop[inc])
        alive = np.flatnonzero((pop.inc_wl == dst.idx) & (pop.inc_start < stop)
                               & (pop.inc_stop > start))
        out.append({
            "type": "scheduled_job", "malicious": False, "start": start, "end": stop,
            "src_ip": pop.ips[int(pop.inc_ip4[inc])], "src_workload": src.key,
            "dst_ips": sorted({pop.ips[int(pop.inc_ip4[i])] for i in alive}),
            "dst_workload": dst.key, "dst_ports": [dst.port], "expected": [],
            "description": f"weekly {src.key} run against {dst.key} (Sundays 04:00 UTC)",
        })
    return out


def churn_truth(pop: Population) -> list[Truth]:
    """Benign lines for rollouts, crashed-pod restarts, scale-outs and cross-app IP reuse."""
    verbs = {"rollout": "rolled out", "pod_restart": "restarted a crashed pod",
             "scale_out": "scaled out"}
    out: list[Truth] = []
    for c in pop.churn:
        key = pop.workloads[c.workload].key
        if c.kind == "ip_reuse":
            text = f"{c.ips[0]} released by {pop.workloads[c.previous].key} now belongs to {key}"
        else:
            text = f"{key} {verbs[c.kind]}: new pod IPs {', '.join(c.ips)}"
        out.append({"type": c.kind, "malicious": False, "start": c.start, "end": c.end,
                    "src_ip": c.ips[0], "src_workload": key, "dst_ips": [], "dst_workload": None,
                    "dst_ports": [], "expected": [], "description": text})
    return out


def number(episodes: list[Truth]) -> list[Truth]:
    """Episodes sorted by time, each with a stable ``id`` first."""
    counts: dict[str, int] = {}
    out: list[Truth] = []
    for ep in sorted(episodes, key=lambda e: (e["start"], e["type"], e["src_ip"])):  # type: ignore[return-value]
        kind = str(ep["type"])
        counts[kind] = counts.get(kind, 0) + 1
        out.append({"id": f"{kind}-{counts[kind]:03d}", **ep})
    return out


__all__ = ["build_attacks", "churn_truth", "number", "scheduled_jobs"]
