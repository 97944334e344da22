"""A trustworthy audit: minimum support, audit-time findings and per-app readiness.

Why: the audit used to trust everything it saw. An edge seen on one day with two flows became
baseline and an allow rule (an attacker active during the audit *poisons* the baseline), a
scan during the audit was learned as normal, and nothing said when an app had stopped growing
new edges, i.e. when it was safe to enforce. Three parts, all pure and in event time:

**Minimum support** (:func:`trusted_rows`). An edge is *trusted* when the audit saw it on at
least :func:`min_days` distinct days and :attr:`~CoreSettings.trust_min_flows` flows. The days
needed scale with the audit: ``trust_min_days`` capped at the audit's whole weeks, at least 1
(a weekly job seen every week of the audit is trusted; an audit shorter than two weeks relies
on the flow count alone against a short burst, e.g. two flows on one day). Weaker edges
are *provisional*: learned (so they are neither ``new_edge`` nor ``new_port``), but they get no
allow rule (their candidate rules are separate, marked ``provisional`` and listed for review)
and a flow on one after the audit raises ``provisional_edge``. An edge that was part of an
audit finding needs one day more than the others: the finding's day does not count.

**Audit findings** (:class:`AuditWatch`). A client workload that reaches ``scan_threshold``
distinct *new* targets (edges whose first flow lies in the window) within one suppression
window is a scan: the window's new edges are marked findings (provisional, see above) and one
``scan`` violation with ``mode = "audit"`` (:data:`AUDIT_MODE`) and detector ``audit`` is
emitted when the window closes on the watermark — findings are violation events, declared once
(``VIOLATION.mode`` in :mod:`pipeline.core.records`). The audit's first
:func:`scan_warmup` seconds are not looked at (every edge is new then). Other detectors (the
per-host fan-out and beacon detectors) report through :meth:`AuditWatch.mark`: their edges
become findings too, and the finding is emitted the same way. Everything is decided from the
baseline's ``first_seen_`` once the watermark has passed the window's end plus the lateness,
so arrival order and batch boundaries do not change the result.

**Readiness** (:func:`readiness_rows`, :func:`readiness`). Per app and audit day, the edges
first seen that day with the app at either end (client or server: enforcing an app means its
ingress *and* egress rules; an edge from an app to itself counts once; the world, overflow,
``unknown:<ip>`` peers and local scopes are not apps). A day with at most
``readiness_max_new_edges`` new edges is *quiet*; an app is ready to enforce when its last
:func:`ready_days` audit days (from its own first day on) were all quiet. Rows are stored in
``app_readiness`` per (app, day, source): each streaming partition learns the edges of its
own clients, so summing the sources' rows gives the exact per-app counts, and the view
``readiness`` (:mod:`pipeline.storage.queries`) computes the same as :func:`readiness`.

Broadcast, multicast, link-local and unspecified destinations are scopes, not hosts: their
flows are never learned (:mod:`pipeline.core.enrich`), so they give no rule, no finding and no
readiness row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import pyarrow as pa

from pipeline.core.addresses import LOCAL_SCOPES
from pipeline.core.baseline import DAY, EdgeBaseline, unpack_keys
from pipeline.core.detect import SAMPLE, SCAN, Agg
from pipeline.core.records import APP_READINESS
from pipeline.core.workloads import OVERFLOW, WORLD, Workloads

if TYPE_CHECKING:
    from pipeline.core.settings import CoreSettings

AUDIT_MODE = "audit"  # VIOLATION.mode of an audit finding
AUDIT_DETECTOR = "audit"
_FINDINGS_MAX = 100_000  # finding edge keys remembered (each also a baseline edge)


def min_days(s: CoreSettings) -> int:
    """Distinct audit days a trusted edge needs: ``trust_min_days`` capped at the audit's
    whole weeks, at least 1 — an edge used every week of the audit (a weekly job) is
    trusted; demanding more days than the audit has weeks would make it provisional.

    >>> from pipeline.core.settings import CoreSettings
    >>> [min_days(CoreSettings(audit_days=d)) for d in (3, 7, 14, 30, 90)]
    [1, 1, 2, 3, 3]
    """
    return max(1, min(s.trust_min_days, int(s.audit_days // 7)))


def ready_days(s: CoreSettings) -> int:
    """Quiet days in a row that make an app ready: ``readiness_days`` capped at half the
    audit, at least 1."""
    return max(1, min(s.readiness_days, int(s.audit_days // 2)))


def scan_warmup(s: CoreSettings) -> float:
    """Seconds at the audit's start in which no scan finding is looked for."""
    return min(s.audit_scan_warmup, s.audit_days * DAY / 4)


def trusted_rows(baseline: EdgeBaseline, s: CoreSettings,
                 finding: np.ndarray | None = None) -> np.ndarray:
    """Per learned edge (row): trusted (True) or provisional; ``finding`` marks the rows of
    audit findings, which need one day more."""
    n = len(baseline)
    if not n:
        return np.zeros(0, dtype=bool)
    need = np.full(n, min_days(s), dtype=np.int64)
    if finding is not None:
        need = need + finding.astype(np.int64)
    return (baseline.days_[:n] >= need) & (baseline.flows_[:n] >= s.trust_min_flows)


class AuditWatch:
    """Audit-time findings (see the module docstring).

    Learned state: ``checked_`` (windows starting before it were looked at), the finding
    edge keys ``findings_`` (at most :data:`_FINDINGS_MAX`), the first flow's addresses of
    each edge first seen in a window not yet looked at (``firsts_``: row → (start, client
    ip, server ip), the evidence of a finding) and findings not yet taken (``pending_``).
    Bounded: ``firsts_`` only holds edges admitted within the last window plus lateness
    (and at most the baseline's edges); findings are capped."""

    checked_: float = float("-inf")

    def __init__(self, *, window: float = 3600.0, lateness: float = 300.0,
                 scan_threshold: int = 20, warmup: float = DAY) -> None:
        self.window = window
        self.lateness = lateness
        self.scan_threshold = scan_threshold
        self.warmup = warmup
        self.findings_: set[int] = set()
        self.firsts_: dict[int, tuple[float, str, str]] = {}
        self.pending_: list[Agg] = []

    # -- state ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "checked": self.checked_ if np.isfinite(self.checked_) else None,
            "findings": sorted(self.findings_),
            "firsts": [[r, *v] for r, v in sorted(self.firsts_.items())],
            "pending": [a.to_dict() for a in self.pending_],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None, **params: Any) -> Self:
        w = cls(**params)
        if not state:
            return w
        w.checked_ = float("-inf") if state["checked"] is None else float(state["checked"])
        w.findings_ = {int(k) for k in state["findings"]}
        w.firsts_ = {int(r): (float(t), str(c), str(s)) for r, t, c, s in state["firsts"]}
        w.pending_ = [Agg(**d) for d in state["pending"]]
        return w

    # -- learning ------------------------------------------------------------------------
    def observe(self, baseline: EdgeBaseline, keys: np.ndarray, start: np.ndarray,
                client_ip: Any, server_ip: Any, audit_start: float, *, admitted_from: int
                ) -> None:
        """Learned audit flows (after :meth:`EdgeBaseline.partial_fit`, which admitted rows
        ``admitted_from`` onwards): remember the first flow's addresses of edges first seen
        in windows not looked at yet. ``client_ip``/``server_ip``: callables from flow
        indices to address lists. Costs a vectorised membership test per batch; only the
        flows of recent edges are looked at one by one."""
        n = len(baseline)
        if not len(keys) or not n:
            return
        since = max(self.checked_, audit_start + self.warmup)
        cand = np.r_[np.fromiter(self.firsts_, dtype=np.int64, count=len(self.firsts_)),
                     np.arange(admitted_from, n, dtype=np.int64)]
        cand = cand[baseline.first_seen_[cand] >= since]
        if not len(cand):
            return
        cand_keys = baseline.keys_[cand]
        order = np.argsort(cand_keys)
        cand_keys, cand = cand_keys[order], cand[order]
        pos = np.minimum(np.searchsorted(cand_keys, keys), len(cand_keys) - 1)
        hit = (cand_keys[pos] == keys) & (start >= since)
        idx = np.flatnonzero(hit)
        if not len(idx):
            return
        rows = cand[pos[idx]]
        # per edge, its earliest flow in this batch (ties: the first in flow order)
        order = np.lexsort((idx, start[idx], rows))
        head = np.r_[True, rows[order][1:] != rows[order][:-1]]
        pick = order[head]
        sel = idx[pick]
        cips, sips = client_ip(sel), server_ip(sel)
        for r, t, c, s in zip(rows[pick].tolist(), start[sel].tolist(), cips, sips, strict=True):
            old = self.firsts_.get(r)
            if old is None or (t, c, s) < old:
                self.firsts_[r] = (t, c, s)

    def mark(self, kind: str, client: int, window: float, *, keys: Iterable[int] = (),
             first: float, last: float, count: int, client_ips: Sequence[str] = (),
             server_ips: Sequence[str] = (), server: int = -1, port: int = 0, proto: int = 0,
             extra: Mapping[str, Any] | None = None) -> None:
        """Report an audit finding of another detector (``kind``: a violation type, e.g. a
        fan-out or beacon seen during the audit): ``keys`` (edge keys, see
        :func:`~pipeline.core.baseline.edge_keys`) become findings — provisional, no allow
        rule — and one event with ``mode = "audit"`` is emitted. Call it before the audit
        ends (the edges' trust is fixed then); ``window`` is the finding's window start."""
        for k in keys:
            if len(self.findings_) < _FINDINGS_MAX:
                self.findings_.add(int(k))
        a = Agg(kind, client, server, port, proto, float(window), count=count, first=first,
                last=last, client_ips=list(client_ips)[:SAMPLE],
                server_ips=list(server_ips)[:SAMPLE], extra=dict(extra or {}))
        self.pending_.append(a)

    def check(self, baseline: EdgeBaseline, watermark: float, audit_start: float,
              audit_end: float, *, everything: bool = False) -> None:
        """Look at the windows that closed (window end + lateness <= ``watermark``; with
        ``everything``, every window of the audit): scans become findings."""
        limit = audit_end if everything else min(
            audit_end, np.floor((watermark - self.lateness) / self.window) * self.window)
        lo = max(self.checked_, audit_start + self.warmup)
        if limit <= self.checked_:
            return
        self.checked_ = float(limit)
        n = len(baseline)
        if n and limit > lo:
            first = baseline.first_seen_[:n]
            rows = np.flatnonzero((first >= lo) & (first < limit))
            if len(rows):
                self._scans(baseline, rows)
        self.firsts_ = {r: v for r, v in self.firsts_.items() if v[0] >= limit}

    def _scans(self, baseline: EdgeBaseline, rows: np.ndarray) -> None:
        client, server, port, proto = unpack_keys(baseline.keys_[rows])
        win = np.floor(baseline.first_seen_[rows] / self.window) * self.window
        group = np.stack([client, win.astype(np.int64)], axis=1)
        uniq, inv, counts = np.unique(group, axis=0, return_inverse=True, return_counts=True)
        inv = inv.ravel()
        for g in np.flatnonzero(counts >= self.scan_threshold):
            members = rows[inv == g]
            m_server, m_port, m_proto = server[inv == g], port[inv == g], proto[inv == g]
            firsts = baseline.first_seen_[members]
            order = np.lexsort((m_port, m_server, firsts))
            a = Agg(SCAN, int(uniq[g, 0]), -1, 0, int(np.bincount(m_proto).argmax()),
                    float(uniq[g, 1]), count=len(members), first=float(firsts.min()),
                    last=float(firsts.max()))
            for r in members[order].tolist():
                t = self.firsts_.get(r)
                if t is not None:
                    if t[1] not in a.client_ips and len(a.client_ips) < SAMPLE:
                        a.client_ips.append(t[1])
                    if t[2] not in a.server_ips and len(a.server_ips) < SAMPLE:
                        a.server_ips.append(t[2])
            a.extra = {"targets": len(members),
                       "ports": sorted({int(p) for p in m_port})[:64],
                       "servers": sorted({int(s) for s in m_server})[:64]}
            self.pending_.append(a)
            for k in baseline.keys_[members].tolist():
                if len(self.findings_) < _FINDINGS_MAX:
                    self.findings_.add(int(k))

    def finding_rows(self, baseline: EdgeBaseline) -> np.ndarray:
        """Per learned edge (row): part of an audit finding."""
        n = len(baseline)
        out = np.zeros(n, dtype=bool)
        if n and self.findings_:
            out = np.isin(baseline.keys_[:n], np.fromiter(self.findings_, dtype=np.int64))
        return out

    def take(self) -> list[Agg]:
        """Findings not taken yet, in a deterministic order."""
        out = sorted(self.pending_, key=lambda a: (a.window, a.type, a.first, a.client_ips,
                                                   a.count, a.client))
        self.pending_ = []
        return out


# -- readiness -----------------------------------------------------------------------------


def _subjects(workloads: Workloads) -> np.ndarray:
    """Per wid: an app readiness is reported for (not the world, overflow, an unknown
    address or a local scope)."""
    kind = workloads.column("kind")
    app = workloads.column("app").astype(str)
    ok = ~np.isin(kind, (*LOCAL_SCOPES, "unknown", "world")) & ~np.char.startswith(app, "unknown:")
    ok[[WORLD, OVERFLOW]] = False
    return ok


def readiness_rows(baseline: EdgeBaseline, workloads: Workloads, *, audit_start: float,
                   audit_end: float, days: int, source: str, max_new: int, need: int,
                   version: int, from_day: int = 0) -> pa.Table:
    """``app_readiness`` rows of audit days ``from_day`` … ``days - 1``: per app known to
    this baseline, from its first day on, the edges first seen that day and so far."""
    n = len(baseline)
    empty = APP_READINESS.schema.empty_table()
    if not n or days <= from_day:
        return empty
    client, server, _, _ = unpack_keys(baseline.keys_[:n])
    day = np.clip((baseline.first_seen_[:n] - audit_start) // DAY, 0, None).astype(np.int64)
    ok = _subjects(workloads)
    ends = np.r_[client, server]
    end_day = np.r_[day, day]
    keep = ok[ends] & np.r_[np.ones(n, dtype=bool), server != client]
    ends, end_day = ends[keep], end_day[keep]
    if not len(ends):
        return empty
    combo = ends * 4096 + np.minimum(end_day, 4095)
    groups, counts = np.unique(combo, return_counts=True)
    g_app, g_day = groups // 4096, groups % 4096
    apps, first_idx = np.unique(g_app, return_index=True)
    first_day = g_day[first_idx]
    start = np.maximum(first_day, from_day)
    span = np.maximum(days - start, 0)
    total = int(span.sum())
    if not total:
        return empty
    r_app = np.repeat(apps, span)
    offsets = np.arange(total) - np.repeat(np.cumsum(span) - span, span)
    r_day = np.repeat(start, span) + offsets
    pos = np.searchsorted(groups, r_app * 4096 + r_day)
    pos_c = np.minimum(pos, len(groups) - 1)
    new = np.where(groups[pos_c] == r_app * 4096 + r_day, counts[pos_c], 0)
    # edges so far: every group of the app up to that day
    cum = np.cumsum(counts)
    upto = np.searchsorted(groups, r_app * 4096 + r_day, side="right")
    app_lo = np.searchsorted(groups, r_app * 4096)
    edges = cum[upto - 1] - np.where(app_lo > 0, cum[np.maximum(app_lo - 1, 0)], 0)
    names = {c: pa.array(workloads.column(c), pa.string()) for c in ("namespace", "app")}
    idx = pa.array(r_app)
    m = len(r_app)

    def const(value: Any, kind: pa.DataType) -> pa.Array:
        return pa.array([value] * m, kind)

    return APP_READINESS.table_of({
        "namespace": names["namespace"].take(idx),
        "app": names["app"].take(idx),
        "day": pa.array((audit_start + r_day * DAY).astype(np.int64), pa.timestamp("s", tz="UTC")),
        "source": const(source, pa.string()),
        "new_edges": pa.array(new.astype(np.uint32), pa.uint32()),
        "edges": pa.array(edges.astype(np.uint32), pa.uint32()),
        "audit_start": const(int(audit_start), pa.timestamp("s", tz="UTC")),
        "audit_end": const(int(audit_end), pa.timestamp("s", tz="UTC")),
        "max_new_edges": const(max_new, pa.uint32()),
        "quiet_days_needed": const(need, pa.uint16()),
        "version": const(version, pa.uint64()),
    })


@dataclass(frozen=True, slots=True)
class AppReadiness:
    """One app's readiness over the audit days reported so far (see :func:`readiness`)."""

    namespace: str
    app: str
    first_day: float  # epoch s of its first audit day
    last_day: float  # the last audit day reported
    edges: int
    quiet_days: int  # quiet days in a row up to last_day
    ready: bool
    ready_since: float | None  # the day it became ready (quiet_days_needed quiet days after)
    new_edges_per_day: tuple[int, ...]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.app}" if self.namespace else self.app


def readiness(rows: pa.Table) -> list[AppReadiness]:
    """Per app, from ``app_readiness`` rows (any number of sources; a (app, day, source)
    given twice counts once, the highest version): what the ``readiness`` view computes."""
    if not rows.num_rows:
        return []
    d = rows.to_pydict()
    latest: dict[tuple[str, str, float, str], tuple[int, int]] = {}
    params: dict[tuple[str, str], tuple[int, int]] = {}
    for ns, app, day, src, new, ver, mx, need in zip(
            d["namespace"], d["app"], d["day"], d["source"], d["new_edges"], d["version"],
            d["max_new_edges"], d["quiet_days_needed"], strict=True):
        k = (ns, app, day.timestamp(), src)
        if k not in latest or ver >= latest[k][1]:
            latest[k] = (new, ver)
        p = params.get((ns, app), (0, 0))
        params[(ns, app)] = (max(p[0], mx), max(p[1], need))
    per_day: dict[tuple[str, str], dict[float, int]] = {}
    for (ns, app, day, _), (new, _) in latest.items():
        days = per_day.setdefault((ns, app), {})
        days[day] = days.get(day, 0) + new
    out = []
    for (ns, app), days in sorted(per_day.items()):
        mx, need = params[(ns, app)]
        first, last = min(days), max(days)
        busy = [t for t, v in days.items() if v > mx]
        quiet_start = max(busy) + DAY if busy else first
        quiet = round((last + DAY - quiet_start) / DAY)
        ready = quiet >= need
        span = round((last - first) / DAY) + 1
        series = tuple(days.get(first + i * DAY, 0) for i in range(span))
        out.append(AppReadiness(ns, app, first, last, sum(days.values()), quiet, ready,
                                quiet_start + need * DAY if ready else None, series))
    return out


__all__ = ["AUDIT_DETECTOR", "AUDIT_MODE", "AppReadiness", "AuditWatch", "min_days",
           "readiness", "readiness_rows", "ready_days", "scan_warmup", "trusted_rows"]
