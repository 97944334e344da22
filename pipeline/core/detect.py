"""Violation windows: one violation per (type, edge, suppression window), emitted on its
first flow and updated as more flows arrive.

Why: a SOC must learn of lateral movement within a minute of its first flow, not when an
hourly window closes. So a window is *emitted* as soon as the detection watermark (newest
flow start minus ``detect_lateness``, ≤ 60 s) passes its first flow, with ``first`` = that
flow's time; it is *updated* (same key, so the same event id; a higher ``count``, which is
its version) when its count has doubled since the last emission, and once more when the
window *closes* (the closing watermark — newest flow start minus ``lateness`` — passes its
end) if anything changed since. A flow arriving after its window closed reopens it (the
last ``max_open`` closed windows are remembered) and the next drain emits it again with the
cumulative count. Which intermediate versions are emitted depends on the batches; the final
version of every window never does, nor on the arrival order within ``detect_lateness``
(sums, minima, maxima, the addresses seen earliest, numeric evidence's maximum).

Scan folding, decided per target from event time so that it does not depend on batches:
the *targets* of a client workload in a window are its distinct new (server, port, proto)
(new_edge and new_port), ranked by their first flow (ties: port, proto, earliest server
address). The target that reaches ``scan_threshold`` is the *crossing* target. A target is
folded into the client window's one ``scan`` event when the crossing target's first flow
comes at most :attr:`~ViolationWindows.scan_horizon` (half the detection lateness) after its
own — so a fast scan is one event — and reported alone (new_edge/new_port) otherwise: a slow
scan first shows as up to ``scan_threshold - 1`` new edges, then the scan. The scan's first
flow is its earliest folded target's. The decision is taken when the target becomes due and
never revised; it equals the time-sorted decision whenever flows arrive at most half the
detection lateness out of order (by then every target that could cross within the horizon
has arrived). Later reordering (up to ``lateness``) can only report alone a target that time
order would have folded, or the reverse; no flow is lost or counted twice.

Bounded: at most ``max_open`` open windows (past it the oldest close early, emitting their
current totals) and ``max_open`` recently closed ones; per client window at most
``_TARGETS_MAX`` targets are ranked and a scan lists at most that many servers and
``_PORTS_MAX`` ports; address samples keep ``SAMPLE`` addresses.

Estimator-like: ``__init__`` only stores parameters; the windows (``open_``, ``recent_``,
``targets_``, ``dirty_``, the watermarks) are learned attributes, given as plain JSON values
by :meth:`ViolationWindows.state` and restored by :meth:`ViolationWindows.from_state`.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np

NEW_EDGE = "new_edge"
NEW_PORT = "new_port"
SCAN = "scan"
VOLUME = "volume_spike"
OFF_HOURS = "off_hours"
# per-source-host behaviour (pipeline.core.hostdetect)
FAN_OUT = "fan_out"
FAILED = "failed_connections"
HOST_VOLUME = "host_volume"
BEACON = "beacon"
PROVISIONAL_EDGE = "provisional_edge"  # a flow on an edge the audit saw too little to trust
BEHAVIOUR = "behaviour_anomaly"  # the behaviour model corroborating a rule (core.behaviour)
TYPES = (NEW_EDGE, NEW_PORT, SCAN, VOLUME, OFF_HOURS, FAN_OUT, FAILED, HOST_VOLUME, BEACON,
         PROVISIONAL_EDGE, BEHAVIOUR)
_TYPE_CODE = {t: i for i, t in enumerate(TYPES)}
SAMPLE = 8  # addresses kept as evidence per event
_TARGETS_MAX = 4096  # distinct targets ranked per client window (and servers per scan)
_PORTS_MAX = 64  # ports listed per scan (the lowest)
DETECT_LATENESS_MAX = 60.0  # seconds: a violation is emitted at most this long after its flow

Key = tuple[int, int, int, int, int, float]
Rank = tuple[float, int, int, str]  # (first flow, port, proto, server address at it)


@dataclass(slots=True)
class Agg:
    """An open (or closed) violation window."""

    type: str
    client: int  # wid
    server: int  # wid (-1 for scan)
    port: int
    proto: int
    window: float  # window start, epoch s
    count: int = 0
    first: float = float("inf")
    last: float = float("-inf")
    bytes: int = 0
    rejected: int = 0
    client_ips: list[str] = field(default_factory=list)
    server_ips: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    client_times: list[float] = field(default_factory=list)  # earliest flow per sample address
    server_times: list[float] = field(default_factory=list)
    emitted: int = 0  # count at the last emission (0: never emitted)
    folded: bool = False  # a new_edge/new_port target reported inside its client's scan

    def key(self) -> Key:
        proto = 0 if self.type == SCAN else self.proto  # one scan per client window
        return (_TYPE_CODE[self.type], self.client, self.server, self.port, proto, self.window)

    def rank(self) -> Rank:
        """Scan order of a target: first flow, port, proto, its earliest server address."""
        return (self.first, self.port, self.proto, self.server_ips[0] if self.server_ips else "")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (shared, not copied); ``Agg(**a.to_dict()) == a``."""
        return {
            "type": self.type, "client": self.client, "server": self.server, "port": self.port,
            "proto": self.proto, "window": self.window, "count": self.count, "first": self.first,
            "last": self.last, "bytes": self.bytes, "rejected": self.rejected,
            "client_ips": self.client_ips, "server_ips": self.server_ips, "extra": self.extra,
            "client_times": self.client_times, "server_times": self.server_times,
            "emitted": self.emitted, "folded": self.folded,
        }

    def copy(self) -> Agg:
        """A snapshot that later flows do not change (what an emission hands out)."""
        extra = {k: list(v) if isinstance(v, list) else v for k, v in self.extra.items()}
        return Agg(self.type, self.client, self.server, self.port, self.proto, self.window,
                   self.count, self.first, self.last, self.bytes, self.rejected,
                   list(self.client_ips), list(self.server_ips), extra,
                   list(self.client_times), list(self.server_times), self.emitted, self.folded)


@dataclass(slots=True)
class Candidates:
    """Flows that broke the baseline in one batch (parallel numpy arrays)."""

    type_code: np.ndarray
    client: np.ndarray
    server: np.ndarray
    port: np.ndarray
    proto: np.ndarray
    start: np.ndarray
    bytes: np.ndarray
    rejected: np.ndarray
    client_ip: list[str]
    server_ip: list[str]
    extra: list[dict[str, Any] | None]


def _earliest(ips: list[str], times: list[float], seen: Iterable[tuple[float, str]]) -> None:
    """Keep ``ips`` (and their ``times``) the SAMPLE addresses whose earliest flow is earliest
    (ties: the lowest address), given more (time, address) pairs: the same in any order."""
    best = dict(zip(ips, times, strict=True))
    changed = False
    for t, ip in seen:
        old = best.get(ip)
        if old is None or t < old:
            best[ip] = t
            changed = True
    if changed:
        kept = sorted((t, ip) for ip, t in best.items())[:SAMPLE]
        ips[:] = [ip for _, ip in kept]
        times[:] = [t for t, _ in kept]


def _first_distinct(rows: np.ndarray, start: np.ndarray, ips: list[str]
                    ) -> list[tuple[float, str]]:
    """(time, address) of the first SAMPLE distinct addresses of ``rows`` (sorted by time,
    then address): each address at its earliest flow."""
    out: list[tuple[float, str]] = []
    seen: set[str] = set()
    for m in rows:
        ip = ips[m]
        if ip not in seen:
            seen.add(ip)
            out.append((float(start[m]), ip))
            if len(out) >= SAMPLE:
                break
    return out


def _add_lowest(target: list[Any], values: Iterable[Any], limit: int) -> None:
    """Keep ``target`` the sorted ``limit`` lowest distinct values seen (order-free)."""
    for v in values:
        i = bisect.bisect_left(target, v)
        if i < limit and (i == len(target) or target[i] != v):
            target.insert(i, v)
            if len(target) > limit:
                target.pop()


@dataclass(slots=True)
class _Group:
    """One batch's flows of one window (what :meth:`ViolationWindows.add` merges)."""

    count: int
    bytes: int
    rejected: int
    first: float
    last: float
    members: np.ndarray  # candidate rows, in flow order
    clients: list[tuple[float, str]]  # earliest (time, address) pairs, at most SAMPLE
    servers: list[tuple[float, str]]


class ViolationWindows:
    """Violation windows keyed by (type, client, server, port, proto, window start)."""

    # learned scalars readable before the first batch
    event_time_: float = float("-inf")  # newest flow start seen
    watermark_: float = float("-inf")  # closing watermark: event time minus lateness
    detect_watermark_: float = float("-inf")  # event time minus detect_lateness
    forced_closes_: int = 0  # times the max_open bound closed windows early
    reopened_: int = 0  # closed windows reopened by late flows
    # allocated at first use
    open_: dict[Key, Agg]
    recent_: OrderedDict[Key, Agg]  # closed, reopenable
    targets_: dict[tuple[int, float], dict[tuple[int, int, int], Rank]]  # (client, window)
    dirty_: set[Key]  # open windows changed since their last emission
    _cross: dict[tuple[int, float], Rank]  # cached crossing target rank per client window
    _oldest: float  # the oldest open window's start (closing scans nothing before it)
    _pending_forced: list[Agg]  # closed by the bound, not taken yet (empty between batches)

    def __init__(
        self,
        *,
        window: float = 3600.0,
        lateness: float = 300.0,
        scan_threshold: int = 20,
        max_open: int = 100_000,
        detect_lateness: float = 30.0,
    ) -> None:
        self.window = window
        self.lateness = lateness
        self.scan_threshold = scan_threshold
        self.max_open = max_open
        self.detect_lateness = detect_lateness

    @property
    def scan_horizon(self) -> float:
        """A target folds into its client's scan when the crossing target's first flow is at
        most this long after its own: half the detection lateness, so the decision is the
        time-sorted one for flows up to the other half out of order."""
        return self.detect_lateness / 2

    def _allocate(self) -> None:
        if hasattr(self, "open_"):
            return
        self.open_ = {}
        self.recent_ = OrderedDict()
        self.targets_ = {}
        self.dirty_ = set()
        self._oldest = float("inf")
        self._cross = {}
        self._pending_forced = []

    # -- state ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Open and recently closed windows, scan targets and event time (JSON values)."""
        self._allocate()
        return {
            "event_time": self.event_time_ if np.isfinite(self.event_time_) else None,
            "watermark": self.watermark_ if np.isfinite(self.watermark_) else None,
            "open": [a.to_dict() for a in self.open_.values()],
            "recent": [a.to_dict() for a in self.recent_.values()],
            "targets": [[k[0], k[1], [[*t, *r] for t, r in sorted(v.items())]]
                        for k, v in self.targets_.items()],
            "dirty": sorted(list(k) for k in self.dirty_),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], **params: Any) -> Self:
        """Windows with ``params`` (as for ``__init__``) and the learned ``state``."""
        w = cls(**params)
        w._allocate()
        et = state.get("event_time")
        if et is None and state.get("watermark") is not None:  # older snapshots
            et = float(state["watermark"]) + w.lateness
        if et is not None:
            w.advance(float(et))
        for d in state["open"]:
            a = Agg(**d)
            w.open_[a.key()] = a
        w._oldest = min((k[5] for k in w.open_), default=float("inf"))
        for d in state.get("recent", []):
            a = Agg(**d)
            w.recent_[a.key()] = a
        for client, window, targets in state["targets"]:
            w.targets_[(int(client), float(window))] = {
                (int(t[0]), int(t[1]), int(t[2])): (float(t[3]), int(t[4]), int(t[5]), str(t[6]))
                for t in targets if len(t) == 7}
        if "dirty" in state:
            w.dirty_ = {(int(k[0]), int(k[1]), int(k[2]), int(k[3]), int(k[4]), float(k[5]))
                        for k in state["dirty"]}
        else:  # older snapshots: every open window not emitted in full
            w.dirty_ = {k for k, a in w.open_.items() if a.count != a.emitted}
        return w

    # -- batches -------------------------------------------------------------------------
    def add(self, c: Candidates) -> None:
        """Merge one batch of candidates (nothing is emitted here; see :meth:`close`)."""
        n = len(c.start)
        if n == 0:
            return
        self._allocate()
        win = np.floor(c.start / self.window) * self.window
        stacked = np.stack(
            [c.type_code, c.client, c.server, c.port, c.proto, win.astype(np.int64)], axis=1
        ).astype(np.int64)
        groups, inv = np.unique(stacked, axis=0, return_inverse=True)
        inv = inv.ravel()
        g = len(groups)
        count = np.bincount(inv, minlength=g)
        nbytes = np.bincount(inv, weights=c.bytes, minlength=g).astype(np.int64)
        rejected = np.bincount(inv, weights=c.rejected, minlength=g).astype(np.int64)
        first = np.full(g, np.inf)
        last = np.full(g, -np.inf)
        np.minimum.at(first, inv, c.start)
        np.maximum.at(last, inv, c.start)
        order = np.argsort(inv, kind="stable")
        bounds = np.r_[0, np.cumsum(count)]
        # per group by time then address: each address first at its earliest flow
        by_client = np.lexsort((np.asarray(c.client_ip), c.start, inv))
        by_server = np.lexsort((np.asarray(c.server_ip), c.start, inv))
        for gi in range(g):
            t, cl, sv, port, proto, w = (int(x) for x in groups[gi])
            key = (t, cl, sv, port, proto, float(w))
            agg = self.open_.get(key)
            if agg is None:
                agg = self.recent_.pop(key, None)
                if agg is not None:
                    self.reopened_ += 1
                else:
                    agg = Agg(TYPES[t], cl, sv, port, proto, float(w))
                self.open_[key] = agg
                self._oldest = min(self._oldest, key[5])
            lo, hi = bounds[gi], bounds[gi + 1]
            members = order[lo:hi]
            grp = _Group(int(count[gi]), int(nbytes[gi]), int(rejected[gi]), float(first[gi]),
                         float(last[gi]), members,
                         _first_distinct(by_client[lo:hi], c.start, c.client_ip),
                         _first_distinct(by_server[lo:hi], c.start, c.server_ip))
            self._merge(agg, grp, c)
            if agg.type in (NEW_EDGE, NEW_PORT):
                self._rank_target(agg)
            if agg.folded:
                self._merge_scan(agg, grp, c)
            else:
                self.dirty_.add(key)
        if len(self.open_) > self.max_open:
            self._force_close()

    @staticmethod
    def _merge(agg: Agg, grp: _Group, c: Candidates) -> None:
        agg.count += grp.count
        agg.bytes += grp.bytes
        agg.rejected += grp.rejected
        agg.first = min(agg.first, grp.first)
        agg.last = max(agg.last, grp.last)
        # the SAMPLE addresses seen earliest: the same whatever the batches and their order
        _earliest(agg.client_ips, agg.client_times, grp.clients)
        _earliest(agg.server_ips, agg.server_times, grp.servers)
        for m in grp.members if c.extra[grp.members[0]] is not None else ():
            ex = c.extra[m]  # numeric evidence keeps its maximum over every flow
            if ex:
                for k, v in ex.items():
                    old = agg.extra.get(k)
                    numeric = isinstance(v, int | float) and old is not None
                    agg.extra[k] = max(old, v) if numeric else v

    def _rank_target(self, agg: Agg) -> None:
        tk = (agg.client, agg.window)
        tmap = self.targets_.setdefault(tk, {})
        target = (agg.server, agg.port, agg.proto)
        if target not in tmap and len(tmap) >= _TARGETS_MAX:
            return
        rank = agg.rank()
        if tmap.get(target) == rank:
            return
        tmap[target] = rank
        cross = self._cross.get(tk)
        if cross is None or rank <= cross:
            self._cross.pop(tk, None)  # recomputed when next needed

    def _crossing(self, client: int, window: float) -> Rank | None:
        """Rank of the target that reached the scan threshold in this client window."""
        tk = (client, window)
        cross = self._cross.get(tk)
        if cross is None:
            tmap = self.targets_.get(tk)
            if not tmap or len(tmap) < self.scan_threshold:
                return None
            cross = sorted(tmap.values())[self.scan_threshold - 1]
            self._cross[tk] = cross
        return cross

    def _scan_of(self, member: Agg) -> Agg:
        key = (_TYPE_CODE[SCAN], member.client, -1, 0, 0, member.window)
        scan = self.open_.get(key)
        if scan is None:
            scan = self.recent_.pop(key, None)
            if scan is None:
                scan = Agg(SCAN, member.client, -1, 0, member.proto, member.window)
                scan.extra = {"targets": 0, "ports": [], "servers": []}
            self.open_[key] = scan
            self._oldest = min(self._oldest, key[5])
        self.dirty_.add(key)
        tmap = self.targets_.get((member.client, member.window))
        scan.extra["targets"] = max(int(scan.extra["targets"]), len(tmap) if tmap else 0)
        return scan

    def _fold(self, member: Agg) -> None:
        """Report ``member`` (due, never emitted) inside its client window's scan."""
        member.folded = True
        self.dirty_.discard(member.key())
        scan = self._scan_of(member)
        scan.count += member.count
        scan.bytes += member.bytes
        scan.rejected += member.rejected
        if (member.first, member.proto) < (scan.first, scan.proto):
            scan.proto = member.proto  # the earliest target's (the lowest on a tie)
        scan.first = min(scan.first, member.first)
        scan.last = max(scan.last, member.last)
        self._scan_lists(scan, zip(member.client_times, member.client_ips, strict=True),
                         zip(member.server_times, member.server_ips, strict=True), member)

    def _merge_scan(self, member: Agg, grp: _Group, c: Candidates) -> None:
        """Later flows of a folded target: into its scan."""
        scan = self._scan_of(member)
        scan.count += grp.count
        scan.bytes += grp.bytes
        scan.rejected += grp.rejected
        if (grp.first, member.proto) < (scan.first, scan.proto):
            scan.proto = member.proto
        scan.first = min(scan.first, grp.first)
        scan.last = max(scan.last, grp.last)
        self._scan_lists(scan, grp.clients, grp.servers, member)

    @staticmethod
    def _scan_lists(scan: Agg, clients: Iterable[tuple[float, str]],
                    servers: Iterable[tuple[float, str]], member: Agg) -> None:
        # earliest addresses, lowest ports: the same whatever the order targets fold in
        _earliest(scan.client_ips, scan.client_times, clients)
        _earliest(scan.server_ips, scan.server_times, servers)
        _add_lowest(scan.extra["ports"], (member.port,), _PORTS_MAX)
        wids: list[int] = scan.extra["servers"]
        if member.server not in wids and len(wids) < _TARGETS_MAX:
            wids.append(member.server)

    def advance(self, max_event_time: float) -> None:
        """Move event time (never backwards) and with it both watermarks."""
        self.event_time_ = max(self.event_time_, max_event_time)
        self.watermark_ = self.event_time_ - self.lateness
        self.detect_watermark_ = self.event_time_ - self.detect_lateness

    # -- emission ------------------------------------------------------------------------
    def close(self, *, everything: bool = False) -> list[Agg]:
        """Emit what is due and close windows behind the closing watermark (or all).

        Emitted (as snapshots): windows whose first flow the detection watermark passed and
        never emitted, or whose count doubled since their last emission; then, once more,
        every window that closes with changes not yet emitted."""
        self._allocate()
        limit = float("inf") if everything else self.watermark_ - self.window
        out = self._emit(limit, everything)
        if len(self.open_) > self.max_open:  # scans this drain opened
            self._force_close()
            out += self.take_forced()
        return out

    def _emit(self, limit: float, everything: bool) -> list[Agg]:
        """Fold due targets, emit (snapshots), close windows starting at or before ``limit``."""
        if not self.dirty_ and limit < self._oldest:
            return []
        wd = float("inf") if everything else self.detect_watermark_
        due = [k for k in self.dirty_ if self.open_[k].first < wd or k[5] <= limit]
        # fold decisions in rank order of each client window (not needed for correctness:
        # each decision reads only the crossing rank, but it keeps the order readable)
        for k in sorted(due, key=lambda k: (k[5], self.open_[k].rank())):
            a = self.open_[k]
            if a.type in (NEW_EDGE, NEW_PORT) and not a.emitted and not a.folded:
                cross = self._crossing(a.client, a.window)
                first, port, proto, ip = a.rank()
                if cross is not None and cross <= (first + self.scan_horizon, port, proto, ip):
                    self._fold(a)
        out: list[Agg] = []
        for k in list(self.dirty_):
            a = self.open_[k]
            closing = k[5] <= limit
            first_time = not a.emitted and a.first < wd
            if first_time or closing or (a.emitted and a.count >= 2 * a.emitted):
                a.emitted = a.count
                out.append(a.copy())
                self.dirty_.discard(k)
        if limit >= self._oldest:
            for k in [k for k in self.open_ if k[5] <= limit]:
                a = self.open_.pop(k)
                self.recent_[k] = a
                if len(self.recent_) > self.max_open:
                    self.recent_.popitem(last=False)
            self._oldest = min((k[5] for k in self.open_), default=float("inf"))
            for tk in [tk for tk in self.targets_ if tk[1] <= limit]:
                del self.targets_[tk]
                self._cross.pop(tk, None)
        # event-time and address order, never process-local workload ids, so every process
        # emits events in the same order
        out.sort(key=lambda a: (a.first, _TYPE_CODE[a.type], a.port, a.proto, a.server_ips[:1],
                                a.client_ips[:1], a.window))
        return out

    def _force_close(self) -> None:
        self.forced_closes_ += 1
        windows = sorted({k[5] for k in self.open_})
        done: list[Key] = []
        for w in windows:
            done.extend(k for k in self.open_ if k[5] == w)
            if len(self.open_) - len(done) <= self.max_open // 2:
                break
        self._pending_forced.extend(self._emit(max(k[5] for k in done), False))

    def take_forced(self) -> list[Agg]:
        """Windows the ``max_open`` bound closed early since the last call (and what their
        closing made due)."""
        self._allocate()
        out, self._pending_forced = self._pending_forced, []
        return out

    def __len__(self) -> int:
        return len(self.open_) if hasattr(self, "open_") else 0


__all__ = [
    "BEACON",
    "BEHAVIOUR",
    "DETECT_LATENESS_MAX",
    "FAILED",
    "FAN_OUT",
    "HOST_VOLUME",
    "NEW_EDGE",
    "NEW_PORT",
    "OFF_HOURS",
    "PROVISIONAL_EDGE",
    "SCAN",
    "TYPES",
    "VOLUME",
    "Agg",
    "Candidates",
    "ViolationWindows",
]
