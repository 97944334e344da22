"""Suppression windows for violations: one event per (type, edge, window), with a count.

Candidates from a batch are grouped with numpy, then merged into the open windows. A window
closes when the event-time watermark (latest flow start seen minus ``lateness``) passes its
end; closed windows become events, so a replay yields the same events whatever the batch
size. Scan folding: when one client workload reaches ``scan_threshold`` distinct new targets
(server, port, proto) in a window, its new_edge/new_port candidates of that window are
reported as a single ``scan`` event instead.

Late data: the last ``max_open`` closed windows are remembered, so a flow that arrives after
its window closed reopens it and the window is emitted again with the cumulative count (same
id, higher ``version``) instead of a second event that would undercount.

Bounded: at most ``max_open`` open and ``max_open`` recently closed windows; past it the
oldest windows are closed early (a later event with the same id and a higher ``version``
supersedes them).

Estimator-like: ``__init__`` only stores parameters; the windows (``open_``, ``recent_``,
``targets_``, ``watermark_``) are learned attributes, given as plain JSON values by
:meth:`ViolationWindows.state` and restored by :meth:`ViolationWindows.from_state`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np

NEW_EDGE = "new_edge"
NEW_PORT = "new_port"
SCAN = "scan"
VOLUME = "volume_spike"
OFF_HOURS = "off_hours"
TYPES = (NEW_EDGE, NEW_PORT, SCAN, VOLUME, OFF_HOURS)
_TYPE_CODE = {t: i for i, t in enumerate(TYPES)}
SAMPLE = 8  # addresses / ports kept as evidence per event
_TARGETS_MAX = 4096  # distinct targets tracked per client window


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

    def key(self) -> tuple[int, int, int, int, int, float]:
        return (_TYPE_CODE[self.type], self.client, self.server, self.port, self.proto, self.window)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (shared, not copied); ``Agg(**a.to_dict()) == a``."""
        return {
            "type": self.type, "client": self.client, "server": self.server, "port": self.port,
            "proto": self.proto, "window": self.window, "count": self.count, "first": self.first,
            "last": self.last, "bytes": self.bytes, "rejected": self.rejected,
            "client_ips": self.client_ips, "server_ips": self.server_ips, "extra": self.extra,
        }


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


def _add_sample(target: list[str], value: str) -> None:
    if value not in target and len(target) < SAMPLE:
        target.append(value)


class ViolationWindows:
    """Open violation windows keyed by (type, client, server, port, proto, window start)."""

    # learned scalars readable before the first batch
    watermark_: float = float("-inf")  # event time minus lateness, never backwards
    forced_closes_: int = 0  # times the max_open bound closed windows early
    reopened_: int = 0  # closed windows reopened by late flows
    # allocated at first use
    open_: dict[tuple[int, int, int, int, int, float], Agg]
    recent_: OrderedDict[tuple[int, int, int, int, int, float], Agg]  # closed, reopenable
    targets_: dict[tuple[int, float], set[tuple[int, int, int]]]  # (client, window) → new
    _pending_forced: list[Agg]  # closed by the bound, not taken yet (empty between batches)

    def __init__(
        self,
        *,
        window: float = 3600.0,
        lateness: float = 300.0,
        scan_threshold: int = 20,
        max_open: int = 100_000,
    ) -> None:
        self.window = window
        self.lateness = lateness
        self.scan_threshold = scan_threshold
        self.max_open = max_open

    def _allocate(self) -> None:
        if hasattr(self, "open_"):
            return
        self.open_ = {}
        self.recent_ = OrderedDict()
        self.targets_ = {}
        self._pending_forced = []

    def state(self) -> dict[str, Any]:
        """Open and recently closed windows, scan targets and the watermark (JSON values)."""
        self._allocate()
        return {
            "watermark": self.watermark_ if np.isfinite(self.watermark_) else None,
            "open": [a.to_dict() for a in self.open_.values()],
            "recent": [a.to_dict() for a in self.recent_.values()],
            "targets": [[k[0], k[1], sorted(v)] for k, v in self.targets_.items()],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], **params: Any) -> Self:
        """Windows with ``params`` (as for ``__init__``) and the learned ``state``."""
        w = cls(**params)
        w._allocate()
        wm = state["watermark"]
        w.watermark_ = float("-inf") if wm is None else float(wm)
        for d in state["open"]:
            a = Agg(**d)
            w.open_[a.key()] = a
        for d in state.get("recent", []):
            a = Agg(**d)
            w.recent_[a.key()] = a
        for client, window, targets in state["targets"]:
            w.targets_[(int(client), float(window))] = {tuple(t) for t in targets}
        return w

    def add(self, c: Candidates) -> None:
        """Merge one batch of candidates."""
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
            agg.count += int(count[gi])
            agg.bytes += int(nbytes[gi])
            agg.rejected += int(rejected[gi])
            agg.first = min(agg.first, float(first[gi]))
            agg.last = max(agg.last, float(last[gi]))
            members = order[bounds[gi] : bounds[gi + 1]]
            # the first SAMPLE distinct addresses in flow order: the same whatever the batches
            for ips, source in ((agg.client_ips, c.client_ip), (agg.server_ips, c.server_ip)):
                for m in members:
                    if len(ips) >= SAMPLE:
                        break
                    _add_sample(ips, source[m])
            for m in members if c.extra[members[0]] is not None else ():
                ex = c.extra[m]  # numeric evidence keeps its maximum over every flow
                if ex:
                    for k, v in ex.items():
                        old = agg.extra.get(k)
                        numeric = isinstance(v, int | float) and old is not None
                        agg.extra[k] = max(old, v) if numeric else v
            if TYPES[t] in (NEW_EDGE, NEW_PORT):
                tk = (cl, float(w))
                tset = self.targets_.setdefault(tk, set())
                if len(tset) < _TARGETS_MAX:
                    tset.add((sv, port, proto))
        if len(self.open_) > self.max_open:
            self._force_close()

    def advance(self, max_event_time: float) -> None:
        """Move the event-time watermark (never backwards)."""
        self.watermark_ = max(self.watermark_, max_event_time - self.lateness)

    def close(self, *, everything: bool = False) -> list[Agg]:
        """Close windows that ended before the watermark (or all); scan-fold; return them."""
        self._allocate()
        limit = float("inf") if everything else self.watermark_ - self.window
        done = [k for k in self.open_ if k[5] <= limit]
        return self._emit(done, limit)

    def _force_close(self) -> None:
        self.forced_closes_ += 1
        windows = sorted({k[5] for k in self.open_})
        done: list[tuple[int, int, int, int, int, float]] = []
        for w in windows:
            done.extend(k for k in self.open_ if k[5] == w)
            if len(self.open_) - len(done) <= self.max_open // 2:
                break
        self._pending_forced.extend(self._emit(done, max(k[5] for k in done)))

    def take_forced(self) -> list[Agg]:
        """Windows the ``max_open`` bound closed early since the last call."""
        self._allocate()
        out, self._pending_forced = self._pending_forced, []
        return out

    def _emit(self, keys: list[tuple[int, int, int, int, int, float]], limit: float) -> list[Agg]:
        out: list[Agg] = []
        scans: dict[tuple[int, float], Agg] = {}
        def stable(k: tuple[int, int, int, int, int, float]) -> tuple[Any, ...]:
            # event-time and address order, never process-local workload ids, so every process
            # folds scans and emits events in the same order
            a = self.open_[k]
            return (k[5], k[0], a.first, k[3], k[4], a.server_ips[:1], a.client_ips[:1], a.last)

        for k in sorted(keys, key=stable):
            agg = self.open_.pop(k)
            self.recent_[k] = agg
            if len(self.recent_) > self.max_open:
                self.recent_.popitem(last=False)
            tk = (agg.client, agg.window)
            targets = self.targets_.get(tk)
            if agg.type in (NEW_EDGE, NEW_PORT) and targets and len(targets) >= self.scan_threshold:
                s = scans.get(tk)
                if s is None:
                    s = Agg(SCAN, agg.client, -1, 0, agg.proto, agg.window)
                    s.extra = {"targets": len(targets), "ports": [], "servers": []}
                    scans[tk] = s
                s.count += agg.count
                s.bytes += agg.bytes
                s.rejected += agg.rejected
                s.first = min(s.first, agg.first)
                s.last = max(s.last, agg.last)
                for ip in agg.client_ips:
                    _add_sample(s.client_ips, ip)
                for ip in agg.server_ips:
                    _add_sample(s.server_ips, ip)
                ports = s.extra["ports"]
                if agg.port not in ports and len(ports) < 64:
                    ports.append(agg.port)
                servers = s.extra["servers"]
                if agg.server not in servers and len(servers) < 64:
                    servers.append(agg.server)
                continue
            out.append(agg)
        for tk in [tk for tk in self.targets_ if tk[1] <= limit]:
            del self.targets_[tk]
        for s in scans.values():
            s.extra["ports"] = sorted(s.extra["ports"])
            out.append(s)
        return out

    def __len__(self) -> int:
        return len(self.open_) if hasattr(self, "open_") else 0


__all__ = [
    "NEW_EDGE",
    "NEW_PORT",
    "OFF_HOURS",
    "SCAN",
    "TYPES",
    "VOLUME",
    "Agg",
    "Candidates",
    "ViolationWindows",
]
