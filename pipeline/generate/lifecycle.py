"""Pods over time: rollouts, crashes, scale-outs and the weekly job, then their addresses.

Every workload owns *slots* (replica positions); a slot is filled by a chain of
*incarnations* (pods, or fixed hosts for VMs and external ranges), each with one address
and a validity interval in whole seconds (as the inventory states it). A rolled-out pod
outlives its replacement's start by ``GRACE``; a crashed pod leaves a short gap before its
replacement starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.errors import ConfigError
from pipeline.generate.config import DAY, HOUR, GenerateConfig
from pipeline.generate.ipam import NodeBlock, ipv4_text
from pipeline.generate.workload import SimWorkload

GRACE = 20.0
SENTINEL = DAY  # pods alive at the window edges are valid this far beyond it
RECYCLE_SHARE = 0.2  # pod starts that take the node's most recently released address
JOB_HOUR = 4  # the weekly report job runs Sundays 04:00 UTC
JOB_MINUTES = 35
SUNDAY = 6
Cause = tuple[str, int]  # ("initial"|"rollout"|"crash"|"scale"|"job"|"fixed", event id)
_Replacement = tuple[float, float, Cause]  # (old pod stops, new pod starts, cause)


@dataclass
class Incarnation:
    """One pod (or fixed host) in a slot, valid over [start, stop)."""

    slot: int
    start: float
    stop: float
    has_start: bool  # started inside the window (else valid since before it)
    has_stop: bool  # stopped inside the window
    cause: Cause
    node: int = -1
    ip4: str = ""
    ip6: str | None = None


@dataclass(frozen=True)
class ChurnEvent:
    """A benign change worth a truth line: rollout, pod_restart, scale_out or ip_reuse."""

    kind: str
    start: float
    end: float
    workload: int
    ips: tuple[str, ...]  # addresses of the new pods (the reused address for ip_reuse)
    previous: int = -1  # for ip_reuse: the workload that held the address before


def weekday(t: float) -> int:
    """Monday = 0 (1970-01-01 was a Thursday)."""
    return (int(t // DAY) + 3) % 7


def _business_time(rng: np.random.Generator, t: float) -> float:
    """A weekday 09:00-18:00 UTC moment on the day of ``t`` or the next weekday after it."""
    day = math.floor(t / DAY) * DAY
    while weekday(day) >= 5:
        day += DAY
    return day + float(rng.integers(9 * 3600, 18 * 3600))


def _spaced(times: list[float], lo: float, hi: float, gap: float = 120.0) -> list[float]:
    """Sorted times within (lo+gap, hi-gap), dropping ones closer than ``gap`` to the previous."""
    out: list[float] = []
    for t in sorted(times):
        if lo + gap < t < hi - gap and (not out or t - out[-1] >= gap):
            out.append(t)
    return out


class Lifecycles:
    """Collects workloads and their incarnations; :meth:`allocate` then assigns addresses."""

    def __init__(self, cfg: GenerateConfig) -> None:
        self.cfg = cfg
        self.rng = np.random.default_rng([cfg.seed, 1])
        self.t0, self.t1 = cfg.start, cfg.end
        self.workloads: list[SimWorkload] = []
        self.slot_wl: list[int] = []
        self.slot_node: list[int] = []  # pinned node or -1
        self.incs: list[Incarnation] = []
        self.events: list[tuple[str, float, float, int]] = []  # (kind, start, end, workload)

    def add(self, w: SimWorkload, slots: int, replicas: int,
            pinned: list[int] | None = None) -> None:
        w.idx, w.slot_base = len(self.workloads), len(self.slot_wl)
        w.n_slots, w.base_replicas = slots, replicas
        self.workloads.append(w)
        self.slot_wl.extend([w.idx] * slots)
        self.slot_node.extend(pinned if pinned is not None else [-1] * slots)

    def add_fixed(self, w: SimWorkload, hosts: list[str]) -> None:
        """A VM, service or external peer: one slot per host, valid throughout."""
        self.add(w, len(hosts), len(hosts))
        for i, ip in enumerate(hosts):
            self.incs.append(Incarnation(w.slot_base + i, self.t0 - SENTINEL, self.t1 + SENTINEL,
                                         False, False, ("fixed", 0), ip4=ip))

    def daemonset(self, w: SimWorkload, nodes: int) -> None:
        """One pod pinned to each node, never replaced."""
        self.add(w, nodes, nodes, pinned=list(range(nodes)))
        for k in range(nodes):
            self.incs.append(Incarnation(w.slot_base + k, self.t0 - SENTINEL, self.t1 + SENTINEL,
                                         False, False, ("initial", 0)))

    def deployment(self, w: SimWorkload, replicas: int, extra: int, every: tuple[float, float],
                   crash_per_day: float, scale_prob: float) -> None:
        """Pods of ``w``: rollouts every ``every`` days in office hours, random crashes, and
        weekday scale-outs by up to ``extra`` replicas with probability ``scale_prob`` a day."""
        self.add(w, replicas + extra, replicas)
        rng = self.rng
        rollouts: list[float] = []
        t = self.t0 + rng.uniform(0.3, every[1]) * DAY
        while (r := _business_time(rng, t)) < self.t1:
            rollouts.append(r)
            t = r + rng.uniform(*every) * DAY
        scales: list[tuple[float, float, int]] = []
        for d in range(self.cfg.days if extra else 0):
            day = self.t0 + d * DAY
            if weekday(day) < 5 and rng.random() < scale_prob:
                up = day + float(rng.integers(10 * 3600, 12 * 3600))
                if not scales or up >= scales[-1][1] + HOUR:
                    down = up + float(rng.integers(4 * 3600, 30 * 3600))
                    scales.append((up, down, int(rng.integers(1, extra + 1))))
        rollout_ids = [self._event("rollout", r, r + 30 * (replicas + extra), w) for r in rollouts]
        scale_ids = [self._event("scale_out", up, down, w) for up, down, _ in scales]
        for k in range(replicas + extra):
            slot = w.slot_base + k
            repl = [(r + 30 * k + GRACE, r + 30 * k, ("rollout", eid))
                    for r, eid in zip(rollouts, rollout_ids, strict=True)]
            crashes = rng.uniform(self.t0, self.t1, rng.poisson(crash_per_day * self.cfg.days))
            for c in np.floor(np.sort(crashes)).tolist():
                eid = self._event("pod_restart", c, c, w)
                repl.append((c, c + float(rng.integers(10, 40)), ("crash", eid)))
            if k < replicas:
                self._chain(slot, self.t0 - SENTINEL, self.t1 + SENTINEL, repl, ("initial", 0))
                continue
            for (up, down, n), eid in zip(scales, scale_ids, strict=True):
                if k - replicas < n:
                    s = up + 20 * (k - replicas)
                    self._chain(slot, s, min(down, self.t1 + SENTINEL), repl, ("scale", eid))

    def weekly_job(self, w: SimWorkload) -> None:
        """A CronJob pod each Sunday 04:00 UTC for ``JOB_MINUTES``."""
        self.add(w, 1, 0)
        day = math.floor(self.t0 / DAY) * DAY
        while day < self.t1:
            s, stop = day + JOB_HOUR * HOUR, day + JOB_HOUR * HOUR + JOB_MINUTES * 60
            if weekday(day) == SUNDAY and self.t0 <= s and stop <= self.t1:
                eid = self._event("job", s, stop, w)
                self.incs.append(Incarnation(w.slot_base, s, stop, True, True, ("job", eid)))
            day += DAY

    def _event(self, kind: str, start: float, end: float, w: SimWorkload) -> int:
        self.events.append((kind, start, end, w.idx))
        return len(self.events) - 1

    def _chain(self, slot: int, a: float, b: float, repl: list[_Replacement],
               cause: Cause) -> None:
        """Incarnations of ``slot`` over [a, b), replaced at each (old_stop, new_start, cause)."""
        cuts = {new: (old, c) for old, new, c in repl}
        start, has_start = a, a >= self.t0
        for new in _spaced(list(cuts), a, b):
            old, c = cuts[new]
            self.incs.append(Incarnation(slot, start, old, has_start, True, cause))
            start, has_start, cause = new, True, c
        self.incs.append(Incarnation(slot, start, b, has_start, b <= self.t1, cause))

    def allocate(self, n_nodes: int) -> list[ChurnEvent]:
        """Give every pod incarnation an address from its node's block, in time order.

        Returns the churn worth recording: rollouts, restarts and scale-outs that happened,
        and every address handed to a different workload than its previous holder.
        """
        blocks = [NodeBlock(n) for n in range(n_nodes)]
        ev: list[tuple[float, int, int]] = []
        for i, inc in enumerate(self.incs):
            if inc.cause[0] == "fixed":
                continue
            ev.append((inc.start, 1, i))
            if inc.has_stop:
                ev.append((inc.stop, 0, i))
        ev.sort()
        last_owner: dict[str, int] = {}
        churn: list[ChurnEvent] = []
        for t, is_start, i in ev:
            inc = self.incs[i]
            if not is_start:
                blocks[inc.node].release(_ip4_int(inc.ip4), t)
                continue
            pinned = self.slot_node[inc.slot]
            first = pinned if pinned >= 0 else int(self.rng.integers(n_nodes))
            recycle = bool(self.rng.random() < RECYCLE_SHARE)
            for step in range(n_nodes):
                node = (first + step) % n_nodes
                if (ip := blocks[node].allocate(t, recycle)) is not None:
                    break
            else:
                raise ConfigError("the pod address blocks are full; use fewer apps")
            inc.node, inc.ip4 = node, ipv4_text(ip)
            wl = self.slot_wl[inc.slot]
            if self.workloads[wl].dual_stack:
                inc.ip6 = blocks[node].allocate_v6()
            prev = last_owner.get(inc.ip4)
            if prev is not None and prev != wl and t >= self.t0:
                end = min(inc.stop, self.t1)
                churn.append(ChurnEvent("ip_reuse", t, end, wl, (inc.ip4,), prev))
            last_owner[inc.ip4] = wl
        return self._replacements() + churn

    def _replacements(self) -> list[ChurnEvent]:
        born: dict[int, list[Incarnation]] = {}
        for inc in self.incs:
            if inc.cause[0] in ("rollout", "crash", "scale"):
                born.setdefault(inc.cause[1], []).append(inc)
        out: list[ChurnEvent] = []
        for eid, (kind, start, end, wl) in enumerate(self.events):
            new = sorted(born.get(eid, []), key=lambda i: i.start)
            if kind == "job" or not new:
                continue
            if kind == "scale_out":
                end = max(i.stop for i in new)
            out.append(ChurnEvent(kind, start, min(end, self.t1), wl, tuple(i.ip4 for i in new)))
        return out


def _ip4_int(text: str) -> int:
    a, b, c, d = (int(x) for x in text.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


__all__ = ["ChurnEvent", "Incarnation", "Lifecycles", "weekday"]
