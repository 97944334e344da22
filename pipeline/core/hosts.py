"""Per-source-host behaviour windows: what each client *address* did in each event-time window.

Why per host: identity edges (client workload → server workload, port) hide what one host does
inside its role — a worm spreading workstation → workstation over a port the audit saw, a
horizontal scan of internet addresses (all one ``world`` identity), one host's volume spike
diluted across its fleet. This module keeps, per (source host, window), counters and distinct
sets keyed by *addresses*; :mod:`pipeline.core.hostdetect` scores them and the behaviour
model reads them as feature rows.

Flow input is a :class:`HostFlows` batch (built by the pipeline from an enriched batch: client
address = source host, flows from the internet and local-scope flows left out). Flows pass a
:class:`ReleaseBuffer` first: they are processed only once the detection watermark (newest
flow minus the detection lateness, ≤ 60 s) passes them, sorted by (time, content), so every
count and every threshold crossing is the same whatever the batch boundaries or the arrival
order within the detection lateness. Flows later than that (up to the lateness) are still
counted in their window (``late_flows_``); windows close at the closing watermark (newest
flow minus the lateness).

Feature rows (for the behaviour model) — :meth:`HostWindows.take_closed` returns the windows
that closed since the last call as a dict of equal-length numpy arrays, one row per
(source host, window); :data:`FEATURES` lists the feature columns:

==============  ===========================================================================
``host``        uint64 address key of the source host (IPv4: ``0xffff_xxxxxxxx``)
``src_ip``      the source address as text (object array)
``app``         int64 workload id of the source (resolve with ``Workloads.infos[wid]``)
``window``      float64 window start, epoch seconds (windows are ``window`` s long)
``audit``       bool, the whole window lies inside the audit
``flows``       flows started by the host in the window
``peers``       distinct destination addresses
``ports``       distinct destination (service) ports
``pairs``       distinct (destination address, port) pairs
``apps``        distinct destination workloads
``bytes_out``   bytes of its flows (both directions, as the records count them)
``failures``    rejected or unanswered (SYN without ACK) flows
``failure_share`` failures / flows
``new_edges``   distinct identity edges its flows used that the baseline did not know
``hour_of_week`` 0..167, Monday 00:00 UTC = 0, of the window start
==============  ===========================================================================

Bounds (state is O(these), whatever the input): open (host, window) rows ≤ ``max_hosts``
(flows of further hosts are dropped from these counters and counted in ``dropped_flows_``);
distinct members per set ≤ ``max_members`` and per (host, window[, port]) ≤ ``per_group``
(counts saturate there); the release buffer holds ≤ ``max_pending`` flows (past it the oldest
are released early, ``early_released_``). A spoofed-source flood therefore costs at most
``max_hosts`` rows and ``3 × max_members`` set members.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Self

import numpy as np

from pipeline.core.addresses import int_to_ip
from pipeline.core.hostsets import (
    DistinctCounter,
    Repeats,
    combine,
    group_cummax,
    group_cumsum,
    sorted_find,
    stable_order,
    unique_first,
)

FEATURES = ("flows", "peers", "ports", "pairs", "apps", "bytes_out", "failures",
            "failure_share", "new_edges", "hour_of_week")
WEEK_ORIGIN = 4 * 86400.0  # 1970-01-05, a Monday
_V4 = np.uint64(0xFFFF_0000_0000)
_MASK64 = (1 << 64) - 1
_V6_TEXT: dict[int, str] = {}  # folded IPv6 key → text (bounded cache, for display only)
_V6_TEXT_MAX = 1 << 16


def host_keys(addrs: list[int]) -> np.ndarray:
    """64-bit host key of each 128-bit address (as from ``encode_ips``): an IPv4 address keeps
    its mapped value (``0xffff_xxxxxxxx``, invertible); IPv6 is folded (hi hashed into lo)."""
    out = np.empty(len(addrs), dtype=np.uint64)
    for i, a in enumerate(addrs):
        if a >> 32 == 0xFFFF:
            out[i] = a
        else:
            k = (a & _MASK64) ^ int(combine(np.array([a >> 64], dtype=np.uint64))[0])
            k = k | (1 << 63) if k >> 32 == 0xFFFF else k  # never looks like IPv4
            if len(_V6_TEXT) > _V6_TEXT_MAX:
                _V6_TEXT.clear()
            _V6_TEXT[k] = int_to_ip(a)
            out[i] = k
    return out


def host_text(keys: np.ndarray) -> list[str]:
    """Address text of host keys (IPv6 from a bounded cache, else ``v6:<hex key>``)."""
    uk, inv = np.unique(keys, return_inverse=True)  # each distinct address once
    texts = []
    for k in uk.tolist():
        if k >> 32 == 0xFFFF:
            texts.append(int_to_ip(k))
        else:
            texts.append(_V6_TEXT.get(k, f"v6:{k:016x}"))
    return np.array(texts, dtype=object)[inv].tolist()  # type: ignore[no-any-return]


@dataclass(slots=True)
class HostFlows:
    """Flows for the per-host state (parallel numpy arrays; client = the source host)."""

    start: np.ndarray  # float64
    host: np.ndarray  # uint64 client address key
    peer: np.ndarray  # uint64 server address key
    app: np.ndarray  # int64 client workload id
    peer_app: np.ndarray  # int64 server workload id
    port: np.ndarray  # int32 service port
    proto: np.ndarray  # int16
    bytes: np.ndarray  # int64
    rejected: np.ndarray  # bool
    failed: np.ndarray  # bool: rejected or unanswered
    new_edge: np.ndarray  # bool: the identity edge was unknown to the baseline
    edge: np.ndarray  # int64 identity edge key

    def __len__(self) -> int:
        return len(self.start)

    def take(self, rows: np.ndarray) -> HostFlows:
        return HostFlows(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    @classmethod
    def concat(cls, parts: list[HostFlows]) -> HostFlows:
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts])
                      for f in fields(cls)})

    @classmethod
    def empty(cls) -> HostFlows:
        dt = {"start": np.float64, "host": np.uint64, "peer": np.uint64, "app": np.int64,
              "peer_app": np.int64, "port": np.int32, "proto": np.int16, "bytes": np.int64,
              "rejected": bool, "failed": bool, "new_edge": bool, "edge": np.int64}
        return cls(**{k: np.zeros(0, dtype=v) for k, v in dt.items()})

    def as_dict(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class ReleaseBuffer:
    """Holds flows until the watermark passes them, then releases them in (time, content)
    order: the order is the same for any batch split or arrival order within the lateness.
    Bounded by ``max_pending`` flows (the oldest are released early past it)."""

    def __init__(self, *, max_pending: int = 1 << 21) -> None:
        self.max_pending = max_pending
        self.pending_ = HostFlows.empty()
        self.released_upto_ = float("-inf")
        self.early_released_ = 0
        self.late_flows_ = 0

    def push(self, f: HostFlows) -> None:
        if not len(f):
            return
        self.late_flows_ += int((f.start < self.released_upto_).sum())
        self.pending_ = HostFlows.concat([self.pending_, f]) if len(self.pending_) else f

    def pop(self, upto: float) -> HostFlows:
        """Flows with start <= ``upto`` (and the oldest past ``max_pending``), sorted."""
        p = self.pending_
        if not len(p):
            self.released_upto_ = max(self.released_upto_, upto)
            return p
        out = p.start <= upto
        over = len(p) - int(out.sum()) - self.max_pending
        if over > 0:
            order = np.argsort(np.where(out, -np.inf, p.start), kind="stable")
            out[order[: int(out.sum()) + over]] = True
            self.early_released_ += over
        if not out.any():
            self.released_upto_ = max(self.released_upto_, upto)
            return HostFlows.empty()
        rows = np.flatnonzero(out)
        rel = p.take(rows[_release_order(p, rows)])
        self.pending_ = p.take(np.flatnonzero(~out))
        self.released_upto_ = max(self.released_upto_, upto)
        return rel

    def state(self) -> dict[str, Any]:
        return {"pending": self.pending_.as_dict(),
                "released_upto": (self.released_upto_ if np.isfinite(self.released_upto_)
                                  else None),
                "early_released": self.early_released_, "late_flows": self.late_flows_}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], **params: Any) -> Self:
        b = cls(**params)
        empty = HostFlows.empty().as_dict()
        b.pending_ = HostFlows(**{k: np.array(v, dtype=empty[k].dtype)
                                  for k, v in state["pending"].items()})
        up = state["released_upto"]
        b.released_upto_ = float("-inf") if up is None else float(up)
        b.early_released_ = int(state["early_released"])
        b.late_flows_ = int(state["late_flows"])
        return b


def flow_tuples(f: HostFlows, win: np.ndarray) -> Repeats:
    """Flows grouped by everything the per-host keys are made of (host, peer, window, edge,
    app, peer app, port, proto): state keyed by any of those columns is merged once per
    distinct tuple (a hash: two tuples colliding is a 2^-64 event, as for every key here)."""
    cols = (f.app, f.peer_app, f.port, f.proto)
    if all(_fits(c, bits) for c, bits in zip(cols, (20, 20, 16, 8), strict=True)):
        u = [c.astype(np.uint64) for c in cols]
        small = u[0] | u[1] << np.uint64(20) | u[2] << np.uint64(40) | u[3] << np.uint64(56)
        return Repeats(combine(f.host, f.peer, win, f.edge, small))
    return Repeats(combine(f.host, f.peer, win, f.edge, *(c.astype(np.int64) for c in cols)))


def _fits(a: np.ndarray, bits: int) -> bool:
    return not len(a) or (int(a.min()) >= 0 and int(a.max()) < 1 << bits)


def _release_order(f: HostFlows, rows: np.ndarray) -> np.ndarray:
    """The order of ``f``'s ``rows`` by (start, host, peer, port, proto, bytes), as
    ``np.lexsort``: a stable sort by start (cheap on time-ordered input), then the full
    lexsort only among flows that share a start."""
    start = f.start[rows]
    order = np.argsort(start, kind="stable")
    s = start[order]
    same = s[1:] == s[:-1]
    if same.any():
        tie = np.flatnonzero(np.r_[same, False] | np.r_[False, same])
        sub = order[tie]  # ascending within each start (stable)
        r = rows[sub]
        order[tie] = sub[np.lexsort((f.bytes[r], f.proto[r], f.port[r], f.peer[r], f.host[r],
                                     f.start[r]))]
    return order


@dataclass(slots=True)
class HostRows:
    """What :meth:`HostWindows.add` tells the detectors about each released flow."""

    tracked: np.ndarray  # bool: the flow's (host, window) row is tracked (bound not hit)
    row_key: np.ndarray  # uint64 (host, window) key
    win: np.ndarray  # int64 window index
    port_peers: np.ndarray  # distinct peers of (host, port, window) after this flow
    flows: np.ndarray  # flows of (host, window) after this flow
    failures: np.ndarray  # failures of (host, window) after this flow
    known_failures: np.ndarray  # those on identity edges the baseline knows


_COLS = ("host", "win", "app", "flows", "bytes", "failures", "known_failures", "ports",
         "pairs")


class HostWindows:
    """Per (source host, window) counters and distinct sets (see the module docstring)."""

    def __init__(self, *, window: float = 3600.0, max_hosts: int = 1 << 16,
                 per_group: int = 4096, max_members: int = 1 << 20) -> None:
        self.window = window
        self.max_hosts = max_hosts
        self.per_group = per_group
        self.max_members = max_members
        self.keys_ = np.zeros(0, dtype=np.uint64)
        self.cols_: dict[str, np.ndarray] = {
            "host": np.zeros(0, dtype=np.uint64), **{c: np.zeros(0, dtype=np.int64)
                                                     for c in _COLS[1:]}}
        p = {"per_group": per_group, "max_members": max_members}
        self.peers_ = DistinctCounter(**p)
        self.port_peers_ = DistinctCounter(**p)
        self.apps_ = DistinctCounter(**p)
        self.new_edges_ = DistinctCounter(**p)
        self.dropped_flows_ = 0
        # (app-port key, host-port key, window, distinct peers) of the (host, window, port)
        # groups the last take_closed removed (the detectors learn from them)
        self.closed_port_groups: tuple[np.ndarray, ...] = ()

    def __len__(self) -> int:
        return len(self.keys_)

    def add(self, f: HostFlows, *, running: bool = True, rep: Repeats | None = None,
            counts: bool | None = None) -> HostRows:
        """Merge released (time-ordered) flows; per-flow running counts for the detectors
        (left at 0 without ``running``: audit flows are learned, not scored; ``counts``
        False leaves the flow and failure counts at 0 but not the distinct peers). ``rep``:
        the :func:`flow_tuples` of ``f`` when the caller has them."""
        n = len(f)
        win = np.floor(f.start / self.window).astype(np.int64)
        if rep is None:
            rep = flow_tuples(f, win)
        rk_sel = combine(f.host[rep.sel], win[rep.sel])
        uk, first, inv = rep.unique(rk_sel)
        rk = rk_sel[rep.rep]
        pos = sorted_find(self.keys_, uk)
        new = np.flatnonzero(pos < 0)
        if len(new):
            room = max(self.max_hosts - len(self.keys_), 0)
            take = np.sort(new[np.argsort(first[new], kind="stable")][:room])
            if len(take):
                at = np.searchsorted(self.keys_, uk[take])
                self.keys_ = np.insert(self.keys_, at, uk[take])
                fr = first[take]
                init = {"host": f.host[fr], "win": win[fr], "app": f.app[fr]}
                for c, arr in self.cols_.items():
                    self.cols_[c] = np.insert(arr, at, init.get(c, 0))
                pos = sorted_find(self.keys_, uk)
        tracked_u = pos >= 0
        tracked = tracked_u[inv]
        self.dropped_flows_ += int(n - tracked.sum())
        rows = np.flatnonzero(tracked)
        ridx = pos[inv]  # row per flow (-1 untracked)
        out = HostRows(tracked=tracked, row_key=rk, win=win,
                       port_peers=np.zeros(n, dtype=np.int64),
                       flows=np.zeros(n, dtype=np.int64), failures=np.zeros(n, dtype=np.int64),
                       known_failures=np.zeros(n, dtype=np.int64))
        if not len(rows):
            return out
        t = f
        if len(rows) < n:
            t = f.take(rows)
            rep = flow_tuples(t, win[rows])
        tr, tk, tw = ridx[rows], rk[rows], win[rows]
        c = self.cols_
        failed = t.failed.astype(np.int64)
        kf = (t.failed & ~t.new_edge).astype(np.int64)
        if running if counts is None else counts:
            order = stable_order(tr)  # one grouping for the three running sums
            ones = np.ones(len(rows), dtype=np.int64)
            out.flows[rows] = c["flows"][tr] + group_cumsum(tr, ones, order)
            out.failures[rows] = c["failures"][tr] + group_cumsum(tr, failed, order)
            out.known_failures[rows] = c["known_failures"][tr] + group_cumsum(tr, kf, order)
        nr = len(c["flows"])
        c["flows"] += np.bincount(tr, minlength=nr)
        c["bytes"] += np.bincount(tr, weights=t.bytes, minlength=nr).astype(np.int64)
        c["failures"] += np.bincount(tr, weights=failed, minlength=nr).astype(np.int64)
        c["known_failures"] += np.bincount(tr, weights=kf, minlength=nr).astype(np.int64)
        # the distinct counters see each flow tuple once: its first flow (in row order) is
        # the first flow of every coarser key too
        sel = rep.sel
        np.maximum.at(c["app"], tr[sel], t.app[sel])
        s_tk, s_tw, s_peer = tk[sel], tw[sel], t.peer[sel]
        hw = unique_first(s_tk)
        self.peers_.add(s_tk, s_peer, s_tw, running=False, groups=hw)
        self.apps_.add(s_tk, t.peer_app[sel].astype(np.uint64), s_tw, running=False,
                       groups=hw)
        s_port = t.port[sel].astype(np.int64)
        s_pk = combine(s_tk, s_port)
        hwp = unique_first(s_pk)
        pp, stored, created = self.port_peers_.add(
            s_pk, s_peer, s_tw, label=combine(t.app[sel], s_port),
            label2=combine(t.host[sel], s_port), running=running, groups=hwp)
        stored, created = sel[stored], sel[created]
        if pp is not None:
            # a flow's count is that of the last first-of-its-tuple flow of its (host,
            # window, port) at or before it: counts only grow within a group
            after = np.zeros(len(t), dtype=np.int64)
            after[sel] = pp
            out.port_peers[rows] = group_cummax(hwp[2][rep.rep], after)
        c["pairs"] += np.bincount(tr[stored], minlength=nr)
        c["ports"] += np.bincount(tr[created], minlength=nr)
        ne = np.flatnonzero(t.new_edge)
        if len(ne):
            self.new_edges_.add(tk[ne], t.edge[ne].astype(np.uint64), tw[ne], running=False)
        return out

    def take_closed(self, watermark: float, audit_end: float | None = None, *,
                    everything: bool = False) -> dict[str, np.ndarray]:
        """Feature rows of the windows that ended at or before ``watermark`` (all with
        ``everything``), removed from the state. See the module docstring for the columns."""
        self.closed_port_groups = ()
        limit = np.iinfo(np.int64).max if everything else int(
            np.floor(watermark / self.window)) if np.isfinite(watermark) else None
        if limit is None or not len(self.keys_):
            return empty_features()
        c = self.cols_
        done = c["win"] < limit
        if not done.any():
            return empty_features()
        keys = self.keys_[done]
        d = {k: v[done] for k, v in c.items()}
        start = d["win"].astype(np.float64) * self.window
        flows = d["flows"]
        out = {
            "host": d["host"],
            "src_ip": np.array(host_text(d["host"]), dtype=object),
            "app": d["app"],
            "window": start,
            "audit": (start + self.window <= audit_end) if audit_end is not None
            else np.zeros(len(keys), dtype=bool),
            "flows": flows,
            "peers": self.peers_.counts(keys),
            "ports": d["ports"],
            "pairs": d["pairs"],
            "apps": self.apps_.counts(keys),
            "bytes_out": d["bytes"],
            "failures": d["failures"],
            "failure_share": d["failures"] / np.maximum(flows, 1),
            "new_edges": self.new_edges_.counts(keys),
            "hour_of_week": (((start - WEEK_ORIGIN) // 3600) % 168).astype(np.int64),
        }
        keep = ~done
        self.keys_ = self.keys_[keep]
        self.cols_ = {k: v[keep] for k, v in c.items()}
        for s in (self.peers_, self.apps_, self.new_edges_):
            s.prune(limit)
        self.closed_port_groups = self.port_peers_.prune(limit)
        order = np.lexsort((out["host"], out["window"]))
        return {k: v[order] for k, v in out.items()}

    def state(self) -> dict[str, Any]:
        return {"keys": self.keys_, "cols": dict(self.cols_), "peers": self.peers_.state(),
                "port_peers": self.port_peers_.state(), "apps": self.apps_.state(),
                "new_edges": self.new_edges_.state(), "dropped_flows": self.dropped_flows_}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], **params: Any) -> Self:
        w = cls(**params)
        w.keys_ = np.array(state["keys"], dtype=np.uint64)
        w.cols_ = {c: np.array(state["cols"][c],
                                 dtype=np.uint64 if c == "host" else np.int64) for c in _COLS}
        p = {"per_group": w.per_group, "max_members": w.max_members}
        w.peers_ = DistinctCounter.from_state(state["peers"], **p)
        w.port_peers_ = DistinctCounter.from_state(state["port_peers"], **p)
        w.apps_ = DistinctCounter.from_state(state["apps"], **p)
        w.new_edges_ = DistinctCounter.from_state(state["new_edges"], **p)
        w.dropped_flows_ = int(state["dropped_flows"])
        return w


def empty_features() -> dict[str, np.ndarray]:
    """Feature rows with no row (same columns and dtypes as :meth:`HostWindows.take_closed`)."""
    out: dict[str, np.ndarray] = {
        "host": np.zeros(0, dtype=np.uint64), "src_ip": np.zeros(0, dtype=object),
        "app": np.zeros(0, dtype=np.int64), "window": np.zeros(0),
        "audit": np.zeros(0, dtype=bool)}
    for k in FEATURES:
        out[k] = np.zeros(0) if k == "failure_share" else np.zeros(0, dtype=np.int64)
    return out


__all__ = ["FEATURES", "HostFlows", "HostRows", "HostWindows", "ReleaseBuffer",
           "empty_features", "flow_tuples", "host_keys", "host_text"]
