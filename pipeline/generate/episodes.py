"""Ground truth: attacks, benign churn and rare jobs, and the flows attacks add.

Attack flows are synthesised here (they are not in the plan); benign churn comes from
:mod:`pipeline.generate.lifecycle` and the weekly job's flows from the plan itself.

Attack kinds (:data:`~pipeline.generate.config.ATTACK_KINDS`): the classic five (a new edge,
a fast port scan, a new port on a known edge, identity-wide exfiltration, off-hours use of a
bastion edge) and five that hide inside known identity edges: a worm spreading between
workstations over the SMB edge the audit saw, a beacon to a known peer, a slow horizontal
scan (internal hosts or internet addresses), one host's exfiltration on an edge its whole
fleet uses, and an attack during the audit. Timing (day, hour), size and pace are drawn at
random per estate; nothing here knows how the detectors work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

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
    _ip_index: dict[str, int] = field(default_factory=dict)

    def pod(self, w: SimWorkload, t0: float, t1: float) -> int | None:
        alive = self.pop.alive(w, t0, t1)
        return int(self.rng.choice(alive)) if len(alive) else None

    def flows(self, t: np.ndarray, src_inc: int, dst_inc: np.ndarray, dport: np.ndarray,
              size: np.ndarray, dur: np.ndarray, packets: np.ndarray | None = None,
              action: np.ndarray | None = None, flags: np.ndarray | None = None,
              dst_ip: np.ndarray | None = None) -> SimFlows:
        """Attack flows from one source incarnation; ``dst_ip`` (address indices) replaces
        the destinations' incarnation addresses (targets that are not hosts of the estate)."""
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
            dst=pop.inc_ip4[dst_inc] if dst_ip is None else np.asarray(dst_ip, dtype=np.int32),
            sport=self.rng.integers(32_768, 61_000, n).astype(np.int32),
            dport=np.asarray(dport, dtype=np.int32),
            proto=np.full(n, TCP, dtype=np.int16),
            bytes=np.maximum(size, packets * 40),
            packets=packets,
            action=(np.full(n, ACTION_ACCEPT) if action is None else action).astype(np.int8),
            flags=(np.full(n, 0x1B) if flags is None else flags).astype(np.int16),
            exporter=exporters_of(pop, src_incs, np.asarray(dst_inc)),
        )

    def ip(self, text: str) -> int:
        """Index of an address in the estate's address table (added when new)."""
        ips = self.pop.ips
        if not self._ip_index:
            self._ip_index.update((a, i) for i, a in enumerate(ips))
        idx = self._ip_index.get(text)
        if idx is None:
            idx = self._ip_index[text] = len(ips)
            ips.append(text)
        return idx

    def rows(self, *roles: str) -> list[int]:
        return [r for r in range(len(self.plan)) if self.plan.role[r] in roles]

    def fleet(self) -> SimWorkload | None:
        return self.pop.find("vm", "corp/workstation")

    def truth(self, kind: str, expected: str, src: SimWorkload, f: SimFlows,
              dst: SimWorkload | None, text: str) -> Truth:
        ips = self.pop.ips
        dst_ips = sorted({ips[int(i)] for i in np.unique(f.dst)})
        return {
            "type": kind,
            "malicious": True,
            "start": float(f.start.min()),
            "end": float(f.end.max()),
            "src_ip": ips[int(f.src[0])],
            "src_workload": src.key,
            "dst_ips": dst_ips[:64],
            "dst_hosts": len(dst_ips),
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


def _worm(a: _Attack, t0: float) -> tuple[Truth, SimFlows] | None:
    ws = a.fleet()
    if ws is None or not a.rows("ws->ws"):
        return None
    hosts = a.pop.alive(ws, t0, t0 + 4 * HOUR)
    if len(hosts) < 8:
        return None
    src = int(a.rng.choice(hosts))
    others = hosts[hosts != src]
    n = int(a.rng.integers(min(6, len(others)), min(60, len(others)) + 1))
    targets = a.rng.choice(others, n, replace=False)
    span = float(a.rng.uniform(120, 2 * HOUR))
    first = t0 + np.sort(a.rng.uniform(0, span, n))
    blocked = a.rng.random(n) < a.rng.uniform(0.0, 0.4)  # host firewalls
    tries = a.rng.integers(1, 4, n)  # probe, exploit, drop the payload
    t = np.concatenate([f + np.arange(k) * a.rng.uniform(0.5, 5) for f, k in
                        zip(first, tries, strict=True)])
    dst = np.repeat(targets, tries)
    rej = np.repeat(blocked, tries)
    size = np.where(rej, 120, a.rng.lognormal(np.log(60_000), 1.0, len(t)))
    f = a.flows(t, src, dst, np.full(len(t), ws.port), size, np.where(rej, 0, 2.0),
                action=np.where(rej, ACTION_REJECT, ACTION_ACCEPT),
                flags=np.where(rej, 0x02, 0x1B))
    text = (f"a worm on one {ws.key} host spreads to {n} other workstations over SMB/{ws.port}, "
            f"an edge the audit saw, in {span / 60:.0f} minutes")
    return a.truth("worm", "fan_out", ws, f, ws, text), f


def _beacon(a: _Attack, t0: float) -> tuple[Truth, SimFlows] | None:
    pop, plan = a.pop, a.plan
    rows = a.rows("api->partner", "api->api", "ws->internet")
    for r in a.rng.permutation(len(rows)):
        row = rows[int(r)]
        src, dst = pop.workloads[int(plan.src[row])], pop.workloads[int(plan.dst[row])]
        period = float(a.rng.uniform(30, 900))
        beats = int(a.rng.integers(12, 80))
        span = period * beats
        s, d = a.pod(src, t0, t0 + span), a.pod(dst, t0, t0 + span)
        if s is None or d is None:
            continue
        jitter = float(a.rng.uniform(0.0, 0.15))
        t = t0 + np.arange(beats) * period + a.rng.uniform(-jitter, jitter, beats) * period
        size = a.rng.lognormal(np.log(2_500), 0.5, beats)
        f = a.flows(np.sort(t), s, np.full(beats, d), np.full(beats, int(plan.port[row])), size,
                    a.rng.uniform(0.05, 1.0, beats))
        text = (f"implant on {src.key} beacons to its known peer {dst.key} every "
                f"{period:.0f} s (±{jitter:.0%}) for {span / 3600:.1f} h")
        return a.truth("beacon", "beacon", src, f, dst, text), f
    return None


SCAN_PORTS = (22, 23, 80, 443, 445, 3389, 5900, 8080)


def _slow_scan(a: _Attack, t0: float) -> tuple[Truth, SimFlows] | None:
    pop = a.pop
    sources = [w for w in a.tiers("api", "web", "worker")]
    if (ws := a.fleet()) is not None:
        sources.append(ws)
    src_w = sources[int(a.rng.integers(len(sources)))]
    n = int(a.rng.integers(25, 121))
    gap = a.rng.exponential(a.rng.uniform(30, 300), n)
    t = t0 + np.cumsum(gap)
    s = a.pod(src_w, t0, float(t[-1]))
    if s is None:
        return None
    port = int(a.rng.choice(SCAN_PORTS))
    internet = bool(a.rng.random() < 0.5)
    if internet:
        octets = a.rng.integers(1, 255, (n, 3))
        first = a.rng.choice([5, 31, 45, 62, 77, 91, 103, 141, 176, 185, 193, 212], n)
        texts = [f"{o}.{x}.{y}.{z}" for o, (x, y, z) in zip(first, octets, strict=True)]
    else:
        inside = np.array([w.kind in ("pod", "vm") for w in pop.workloads])[pop.inc_wl]
        alive = np.flatnonzero(inside & (pop.inc_start <= t0) & (pop.inc_stop > t[-1]))
        known = sorted({pop.ips[int(pop.inc_ip4[i])] for i in alive if i != s})
        real = a.rng.choice(known, min(len(known), n // 2), replace=False).tolist()
        empty = [f"10.{int(a.rng.integers(1, 60))}.{int(a.rng.integers(0, 256))}."
                 f"{int(a.rng.integers(1, 255))}" for _ in range(n - len(real))]
        texts = [str(x) for x in a.rng.permutation(np.array(real + empty, dtype=object))]
    dst_ip = np.array([a.ip(x) for x in texts], dtype=np.int32)
    answered = a.rng.random(n) < a.rng.uniform(0.05, 0.3)
    rejected = ~answered & (a.rng.random(n) < a.rng.uniform(0.0, 0.4))
    packets = np.where(answered, 3, a.rng.integers(1, 3, n))
    f = a.flows(t, s, np.full(n, s), np.full(n, port), packets * 60, np.zeros(n),
                packets=packets, action=np.where(rejected, ACTION_REJECT, ACTION_ACCEPT),
                flags=np.where(answered, 0x16, 0x02), dst_ip=dst_ip)
    where = "internet addresses" if internet else "internal addresses"
    text = (f"{src_w.key} host slowly sweeps {n} {where} on port {port} "
            f"over {(t[-1] - t0) / 3600:.1f} h")
    return a.truth("slow_scan", "fan_out", src_w, f, None, text), f


def _host_exfiltration(a: _Attack, t0: float) -> tuple[Truth, SimFlows] | None:
    pop, plan = a.pop, a.plan
    rows = a.rows("ws->internet", "ws->files") or a.rows("api->db", "reader->db", "api->partner")
    for r in a.rng.permutation(len(rows)):
        row = rows[int(r)]
        src, dst = pop.workloads[int(plan.src[row])], pop.workloads[int(plan.dst[row])]
        span = float(a.rng.uniform(20, 90)) * 60
        s, d = a.pod(src, t0, t0 + span), a.pod(dst, t0, t0 + span)
        if s is None or d is None or max(src.base_replicas, 1) < 2:
            continue
        per_host = plan.hourly[row] * plan.mean_bytes(row) / max(src.base_replicas, 1)
        factor = float(a.rng.uniform(10, 80))
        n = int(a.rng.integers(10, 60))
        w = a.rng.uniform(0.5, 1.5, n)
        size = w / w.sum() * per_host * factor * span / HOUR
        t = t0 + np.sort(a.rng.uniform(0, span, n))
        f = a.flows(t, s, np.full(n, d), np.full(n, int(plan.port[row])), size,
                    a.rng.uniform(10, 120, n))
        text = (f"one {src.key} host sends {factor:.0f}x its usual hourly bytes to {dst.key} "
                f"({int(size.sum())} bytes in {span / 60:.0f} min) over an edge its fleet uses")
        return a.truth("host_exfiltration", "host_volume", src, f, dst, text), f
    return None


def _audit_attack(a: _Attack, t0: float) -> tuple[Truth, SimFlows] | None:
    kinds = [_scan, _slow_scan] + ([_worm] if a.fleet() is not None else [])
    made = kinds[int(a.rng.integers(len(kinds)))](a, t0)
    if made is None:
        return None
    truth, f = made
    truth = {**truth, "type": f"audit_{truth['type']}", "expected": ["audit_finding"],
             "phase": "audit",
             "description": f"during the audit: {truth['description']}"}
    return truth, f


Make = Callable[[_Attack, float], tuple[Truth, SimFlows] | None]
# kind → (maker, fixed UTC hour or None for a random one)
ATTACKS: dict[str, tuple[Make, float | None]] = {
    "lateral_movement": (_lateral, None),
    "port_scan": (_scan, None),
    "new_listener": (_new_listener, None),
    "exfiltration": (_exfiltration, None),
    "off_hours": (_off_hours, 3.0),
    "worm": (_worm, None),
    "beacon": (_beacon, None),
    "slow_scan": (_slow_scan, None),
    "host_exfiltration": (_host_exfiltration, None),
    "audit_attack": (_audit_attack, None),
}


def build_attacks(
    cfg: GenerateConfig, pop: Population, plan: EdgePlan
) -> tuple[list[Truth], SimFlows]:
    """Attack episodes on distinct post-audit days (sharing days only when there are few) at
    random hours; ``audit_attack`` on a random day of the audit's second half."""
    post = list(range(cfg.audit_days, cfg.days))
    if not cfg.attacks:
        return [], SimFlows.empty()
    a = _Attack(pop, plan, np.random.default_rng([cfg.seed, 4]))
    truths: list[Truth] = []
    flows: list[SimFlows] = []
    kinds = [k for k in cfg.kinds if k != "audit_attack"]
    for i, kind in enumerate(kinds if post else ()):
        make, hour = ATTACKS[kind]
        day = post[i * len(post) // len(kinds)]
        h = hour if hour is not None else float(a.rng.integers(0, 23))
        t0 = cfg.start + day * DAY + h * HOUR + float(a.rng.uniform(0, 600))
        made = make(a, float(np.floor(t0)))
        if made is not None:
            truths.append({"phase": "enforce", **made[0]})
            flows.append(made[1])
    if "audit_attack" in cfg.kinds and cfg.audit_days >= 4:
        day = int(a.rng.integers(cfg.audit_days // 2, cfg.audit_days - 1))
        t0 = cfg.start + day * DAY + float(a.rng.integers(0, 20)) * HOUR
        made = _audit_attack(a, float(np.floor(t0)))
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
