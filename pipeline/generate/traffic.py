"""Vectorised flow synthesis: one day of the plan at a time, as numpy columns."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from pipeline.core.columns import ACTION_ACCEPT, ACTION_REJECT, NO_TCP_FLAGS
from pipeline.generate.catalog import PROBE_PORTS
from pipeline.generate.config import DAY, HOUR, GenerateConfig
from pipeline.generate.edges import (
    ICMP,
    LEAD,
    PERIODIC,
    PROBE,
    SPAN,
    TCP,
    UDP,
    EdgePlan,
    profiles,
)
from pipeline.generate.population import Population

EPHEMERAL = (32_768, 61_000)  # Linux default ip_local_port_range, upper bound exclusive
# client→server OR-ed flags: full connection, long-lived (no SYN/FIN seen), reset
FWD_FLAGS = np.array([0x1B, 0x18, 0x1F], dtype=np.int16)
FWD_P = np.array([0.85, 0.10, 0.05])
# server→client: SYN+ACK, ACK, PSH, FIN; without PSH; long-lived
REV_FLAGS = np.array([0x1B, 0x13, 0x18], dtype=np.int16)
REV_P = np.array([0.85, 0.05, 0.10])


@dataclass
class SimFlows:
    """Flow columns; addresses are indices into ``Population.ips``, exporters into a name list."""

    start: np.ndarray  # float64 epoch s
    end: np.ndarray
    src: np.ndarray  # int32
    dst: np.ndarray
    sport: np.ndarray  # int32
    dport: np.ndarray
    proto: np.ndarray  # int16
    bytes: np.ndarray  # int64
    packets: np.ndarray
    action: np.ndarray  # int8 ACTION_* code
    flags: np.ndarray  # int16, NO_TCP_FLAGS for non-TCP
    exporter: np.ndarray  # int16

    def __len__(self) -> int:
        return len(self.start)

    def take(self, idx: np.ndarray) -> SimFlows:
        return SimFlows(*(getattr(self, f.name)[idx] for f in fields(self)))

    @staticmethod
    def concat(parts: list[SimFlows]) -> SimFlows:
        return SimFlows(*(np.concatenate([getattr(p, f.name) for p in parts])
                           for f in fields(SimFlows)))

    @staticmethod
    def empty() -> SimFlows:
        f, i4, i8 = np.float64, np.int32, np.int64
        return SimFlows(*(np.empty(0, dtype=t) for t in
                           (f, f, i4, i4, i4, i4, np.int16, i8, i8, np.int8, np.int16, np.int16)))


def ms_floor(t: np.ndarray) -> np.ndarray:
    """Times truncated to whole milliseconds (short, exact-looking JSON)."""
    return np.floor(t * 1000.0) / 1000.0


def packets_for(rng: np.random.Generator, size: np.ndarray, proto: np.ndarray) -> np.ndarray:
    """Packet counts for byte counts: 500-1400 byte packets, >= 3 for TCP, >= 1 otherwise."""
    per = rng.uniform(500.0, 1400.0, len(size))
    least = np.where(proto == TCP, 3, 1)
    return np.maximum(least, np.ceil(size / per)).astype(np.int64)


def exporters_of(pop: Population, src_inc: np.ndarray, dst_inc: np.ndarray) -> np.ndarray:
    """Node that observed each flow: the source pod's node, else the destination's, else the VPC."""
    node = np.where(src_inc >= 0, pop.inc_node[np.maximum(src_inc, 0)], -1)
    dst_node = np.where(dst_inc >= 0, pop.inc_node[np.maximum(dst_inc, 0)], -1)
    node = np.where(node >= 0, node, dst_node)
    return np.where(node >= 0, node, pop.nodes).astype(np.int16)


def exporter_names(pop: Population) -> list[str]:
    return [f"node-{n + 1}" for n in range(pop.nodes)] + ["vpc-flowlogs"]


def synth_day(cfg: GenerateConfig, pop: Population, plan: EdgePlan, day: int,
              extra: SimFlows) -> SimFlows:
    """Client→server flows of day ``day`` plus ``extra`` (episodes), their sampled responses,
    sorted by start and all starting within the day."""
    rng = np.random.default_rng([cfg.seed, 3, day])
    t_day = cfg.start + day * DAY
    hours = t_day + np.arange(24) * HOUR
    lam = plan.hourly[:, None] * profiles(hours)[plan.sched]
    counts = rng.poisson(lam).ravel()
    cell = np.repeat(np.arange(counts.size), counts)
    e, h = cell // 24, cell % 24
    sched = plan.sched[e]
    t = hours[h] + LEAD[sched] + rng.random(len(e)) * SPAN[sched]
    src_inc = pop.pick(plan.src[e], t, rng)
    p_e, p_t, p_src = _periodic(cfg, pop, plan, t_day)
    e, t, src_inc = np.r_[e, p_e], np.r_[t, p_t], np.r_[src_inc, p_src]
    dst_inc = pop.pick(plan.dst[e], t, rng)
    ok = (src_inc >= 0) & (dst_inc >= 0)
    e, t, src_inc, dst_inc = e[ok], t[ok], src_inc[ok], dst_inc[ok]
    n = len(e)

    v6 = plan.v6[e] & (pop.inc_ip6[src_inc] >= 0) & (pop.inc_ip6[dst_inc] >= 0)
    v6 &= rng.random(n) < 0.5
    src = np.where(v6, pop.inc_ip6[src_inc], pop.inc_ip4[src_inc])
    dst = np.where(v6, pop.inc_ip6[dst_inc], pop.inc_ip4[dst_inc])
    proto = plan.proto[e]
    dport = plan.port[e].copy()
    probe = dport == PROBE
    probe_ports = np.array(PROBE_PORTS, dtype=np.int32)
    dport[probe] = probe_ports[rng.integers(0, len(probe_ports), probe.sum())]
    sport = rng.integers(*EPHEMERAL, n).astype(np.int32)
    icmp = proto == ICMP
    sport[icmp], dport[icmp] = 0, 0
    size = np.exp(plan.bytes_mu[e] + plan.bytes_sigma[e] * rng.standard_normal(n))
    reject = plan.reject[e]
    packets = packets_for(rng, size, proto)
    packets[reject] = rng.integers(1, 3, reject.sum())
    size[reject] = packets[reject] * 60
    size = np.maximum(size, packets * 40).astype(np.int64)
    dur = np.exp(plan.dur_mu[e] + plan.dur_sigma[e] * rng.standard_normal(n))
    start = ms_floor(t)
    flags = FWD_FLAGS[rng.choice(len(FWD_FLAGS), n, p=FWD_P)]
    flags[reject] = 0x02
    flags[proto != TCP] = NO_TCP_FLAGS
    fwd = SimFlows(
        start=start,
        end=ms_floor(start + np.where(reject, 0.0, dur)),
        src=src.astype(np.int32),
        dst=dst.astype(np.int32),
        sport=sport,
        dport=dport,
        proto=proto,
        bytes=size,
        packets=packets,
        action=np.where(reject, ACTION_REJECT, ACTION_ACCEPT).astype(np.int8),
        flags=flags,
        exporter=exporters_of(pop, src_inc, dst_inc),
    )
    lo, hi = t_day, t_day + DAY
    extra = extra.take(np.flatnonzero((extra.start >= lo) & (extra.start < hi)))
    both = SimFlows.concat([fwd, extra])
    parts = [both, _responses(cfg, rng, both, hi)]
    out = SimFlows.concat(parts)
    return out.take(np.argsort(out.start, kind="stable"))


def _periodic(cfg: GenerateConfig, pop: Population, plan: EdgePlan,
              t_day: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(edge row, time, source incarnation) of PERIODIC edges on one day: every host of the
    source workload sends once per ``period`` at its own fixed phase, ±1 s of jitter."""
    out_e, out_t, out_src = [np.zeros(0, np.int64)], [np.zeros(0)], [np.zeros(0, np.int64)]
    for row in np.flatnonzero(plan.sched == PERIODIC):
        w = pop.workloads[int(plan.src[row])]
        period = float(plan.period[row])
        phase = np.random.default_rng([cfg.seed, 6, int(row)]).uniform(0, period, w.n_slots)
        first = t_day + np.mod(phase - t_day, period)
        k = np.arange(int(DAY // period) + 1)
        t = (first[:, None] + k[None, :] * period).ravel()
        slots = np.repeat(w.slot_base + np.arange(w.n_slots), len(k))
        jitter = np.random.default_rng([cfg.seed, 7, int(row), int(t_day)]).uniform(-1, 1, len(t))
        t = t + jitter
        keep = (t >= t_day) & (t < t_day + DAY)
        out_e.append(np.full(int(keep.sum()), row, dtype=np.int64))
        out_t.append(t[keep])
        out_src.append(pop.locate(slots[keep], t[keep]))
    return np.concatenate(out_e), np.concatenate(out_t), np.concatenate(out_src)


def _responses(cfg: GenerateConfig, rng: np.random.Generator, fwd: SimFlows,
               day_end: float) -> SimFlows:
    """Server→client records for a ``reverse_share`` sample of accepted TCP/UDP flows."""
    n = len(fwd)
    answerable = (fwd.action == ACTION_ACCEPT) & (
        (fwd.proto == UDP) | ((fwd.proto == TCP) & (fwd.packets >= 3)))
    pick = np.flatnonzero(answerable & (rng.random(n) < cfg.reverse_share))
    f = fwd.take(pick)
    m = len(f)
    start = np.minimum(ms_floor(f.start + rng.uniform(0.0005, 0.003, m)), day_end - 0.001)
    size = np.maximum(1, f.bytes * np.exp(rng.normal(0.5, 0.8, m))).astype(np.int64)
    packets = packets_for(rng, size.astype(np.float64), f.proto)
    size = np.maximum(size, packets * 40)
    flags = REV_FLAGS[rng.choice(len(REV_FLAGS), m, p=REV_P)]
    flags[f.flags == 0x18] = 0x18
    flags[f.proto != TCP] = NO_TCP_FLAGS
    return SimFlows(
        start=start,
        end=np.maximum(f.end, start),
        src=f.dst,
        dst=f.src,
        sport=f.dport,
        dport=f.sport,
        proto=f.proto,
        bytes=size,
        packets=packets,
        action=f.action,
        flags=flags,
        exporter=f.exporter,
    )


__all__ = ["SimFlows", "exporter_names", "exporters_of", "ms_floor", "packets_for", "synth_day"]
