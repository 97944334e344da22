"""Per-source-host detectors: fan-out, failed connections, host volume and beacons.

Learned per source *host* (address) and per *app* (client workload) during the audit, in
event time, from closed :class:`~pipeline.core.hosts.HostWindows` windows; scored after it on
known and unknown identity edges alike (rejected flows on known edges included):

- ``fan_out``: distinct destination addresses of one (host, service port) in a window above
  ``max(floor, FAN_K × q99)`` of that (app, port)'s and that (host, port)'s audit windows —
  a worm over a known identity edge, a horizontal scan of internet addresses (counted by
  address, not by the ``world`` identity);
- ``failed_connections``: rejected or unanswered flows of one host in a window above
  ``max(floor, FAIL_K × q99)`` of its app's and its own audit windows;
- ``host_volume``: one host's bytes on one identity edge in a window, its largest flow left
  out (many large flows, not one long download), above ``max(volume_min_bytes, VOL_K × q99)``
  of the same measure over the per-host windows of that edge during the audit (a host's
  spike is no longer diluted by its fleet);
- ``beacon``: a periodic (host, peer, port) series (:mod:`pipeline.core.beacon`) whose
  (app, peer app, port) had no periodic series during the audit (EDR check-ins, scrapes).

Candidates are flows in event-time order from the one that crossed the threshold on, given
to :class:`~pipeline.core.detect.ViolationWindows` like every other detector's. Quantiles
come from log-scale histograms (:class:`~pipeline.core.hostsets.LogHistograms`): a handful of
attack windows in the audit barely moves a q99 over many windows, and the floors keep
quiet apps from alerting on a few extra peers.

Bounds: the :class:`HostWindows` bounds, ``max_hosts × 4`` open (host, edge, window) sums,
:class:`BeaconSeries` ``max_series``, and ``max_keys`` (65,536) histogram keys per statistic
(5 statistics, ≤ 96 uint32 bins each: ≤ 100 MB worst case, a few hundred KB on a real estate).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Self

import numpy as np

from pipeline.core.beacon import BeaconSeries, series_keys
from pipeline.core.detect import BEACON, FAILED, FAN_OUT, HOST_VOLUME, TYPES, Candidates
from pipeline.core.hostaudit import HostAuditFindings, HostFinding
from pipeline.core.hosts import (
    HostFlows,
    HostWindows,
    ReleaseBuffer,
    empty_features,
    flow_tuples,
    host_text,
)
from pipeline.core.hostsets import (
    LogHistograms,
    RunningSums,
    combine,
    mix,
    sorted_find,
    sorted_unique,
    unique_inverse,
)

Q = 0.99  # the audit quantile a threshold scales
FAN_K = 2.0
FAIL_K = 2.0
VOL_K = 3.0
VOL_FULL_K = 2.0
VOL_MIN_SAMPLES = 48  # per-host windows an edge needs before its volume is judged
VOL_MIN_FLOWS = 5  # flows of the host on the edge in the window: a sustained transfer
_CODE = {t: i for i, t in enumerate(TYPES)}


@dataclass(frozen=True, slots=True)
class HostParams:
    """Parameters of :class:`HostBehaviour` (from the core settings)."""

    window: float = 3600.0
    fan_out_min: int = 8
    failures_min: int = 10
    volume_min_bytes: float = 1e6
    beacon_min_beats: int = 8
    beacon_max_jitter: float = 0.15
    max_hosts: int = 1 << 16


class HostBehaviour:
    """Release buffer → host windows → detectors and audit learning (see module docstring).

    Drive it with :meth:`add` per batch and :meth:`advance` with the watermark (newest flow
    start minus lateness); :meth:`advance` returns the candidates for the violation windows and
    the feature rows of the windows that closed."""

    def __init__(self, params: HostParams) -> None:
        self.params = params
        self.buffer_ = ReleaseBuffer()
        self.windows_ = HostWindows(window=params.window, max_hosts=params.max_hosts)
        self.volume_ = RunningSums(max_groups=4 * params.max_hosts)
        self.beacons_ = BeaconSeries(min_beats=params.beacon_min_beats,
                                     max_jitter=params.beacon_max_jitter)
        self.fan_app_ = LogHistograms()
        self.fan_host_ = LogHistograms()
        self.fail_app_ = LogHistograms()
        self.fail_host_ = LogHistograms()
        self.vol_edge_ = LogHistograms(bins=96, per_octave=2)
        self.vol_full_ = LogHistograms(bins=96, per_octave=2)
        self.periodic_ = np.zeros(0, dtype=np.uint64)  # (app, peer app, port, proto) keys
        self._first_seen: Callable[[np.ndarray], np.ndarray] | None = None
        self._watch_from = np.inf
        self.audit_found_ = HostAuditFindings()  # open audit-time findings
        self.audit_closed_: list[HostFinding] = []  # closed ones, for the caller to take

    def add(self, f: HostFlows) -> None:
        """Buffer a batch's flows until the watermark passes them."""
        self.buffer_.push(f)

    def advance(self, release: float, watermark: float, audit_end: float | None, *,
                everything: bool = False,
                first_seen: Callable[[np.ndarray], np.ndarray] | None = None,
                watch_from: float = np.inf,
                ) -> tuple[list[Candidates], dict[str, np.ndarray]]:
        """Process the flows the detection watermark ``release`` passed (event time minus the
        detection lateness), close the windows the closing ``watermark`` passed (minus the
        lateness); (candidates, closed feature rows).

        ``first_seen(edge keys)``: when the baseline first saw each edge (inf if never), so
        that an audit flow counts as a new edge of its window exactly when its edge's first
        flow falls in that window, whatever the arrival order. Audit flows from ``watch_from``
        on are scored too: their hits become audit findings (:meth:`take_findings`)."""
        self._first_seen = first_seen
        self._watch_from = watch_from
        upto = np.inf if everything else max(release, watermark)
        rel = self.buffer_.pop(upto)
        cands: list[Candidates] = []
        parts: list[dict[str, np.ndarray]] = []
        if len(rel):
            if audit_end is not None and rel.start[-1] >= audit_end:
                # the audit's windows are learned before the first flow after it is scored,
                # however the flows were batched
                cut = int(np.searchsorted(rel.start, audit_end))
                if cut:
                    cands += self._process(rel.take(np.arange(cut)), audit_end)
                parts.append(self._close(audit_end, audit_end, False))
                rel = rel.take(np.arange(cut, len(rel)))
            if len(rel):
                cands += self._process(rel, audit_end)
        if everything or np.isfinite(watermark):
            parts.append(self._close(watermark, audit_end, everything))
            if np.isfinite(watermark):
                self.beacons_.expire(watermark)
        feats = parts[0] if len(parts) == 1 else (
            {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts
            else empty_features())
        return cands, feats

    def _close(self, watermark: float, audit_end: float | None, everything: bool
               ) -> dict[str, np.ndarray]:
        feats = self.windows_.take_closed(watermark, audit_end, everything=everything)
        limit = np.iinfo(np.int64).max if everything else (
            int(np.floor(watermark / self.params.window)) if np.isfinite(watermark) else None)
        found = self.audit_found_.close(limit) if limit is not None else []
        self._learn(feats, audit_end, watermark, everything, found)
        return feats

    def take_findings(self) -> list[HostFinding]:
        """Audit findings (:mod:`pipeline.core.hostaudit`) whose window closed since the
        last call."""
        out, self.audit_closed_ = self.audit_closed_, []
        return out

    # -- per released batch ------------------------------------------------------------------
    def _process(self, f: HostFlows, audit_end: float | None) -> list[Candidates]:
        p = self.params
        win = np.floor(f.start / p.window).astype(np.int64)
        rep = flow_tuples(f, win)  # keys below are computed once per distinct flow tuple
        sel = rep.sel
        if self._first_seen is not None:
            a = np.flatnonzero(f.start < audit_end) if audit_end is not None else np.arange(len(f))
            if len(a) == len(f):  # (host, window, edge) → one lookup per flow tuple
                win0 = win[sel].astype(np.float64) * p.window
                f.new_edge[:] = (self._first_seen(f.edge[sel]) >= win0)[rep.rep]
            elif len(a):
                win0 = np.floor(f.start[a] / p.window) * p.window
                f.new_edge[a] = self._first_seen(f.edge[a]) >= win0
        scoring = audit_end is not None and bool(f.start[-1] >= audit_end)
        watch = (f.start >= self._watch_from) if not scoring and audit_end is not None \
            else np.zeros(len(f), dtype=bool)
        hr = self.windows_.add(f, running=scoring or bool(watch.any()), rep=rep,
                               counts=scoring)  # the audit's watch reads distinct peers only
        vol_sum, vol_max, vol_n, vol_ok = self.volume_.add(
            f.edge, f.edge, hr.win, f.bytes, running=scoring,
            groups=rep.unique(combine(f.host[sel], f.edge[sel], win[sel])))
        per, period, jitter, beats = self.beacons_.add(
            f.host, f.peer, f.port, f.proto, f.start,
            series=rep.unique(series_keys(f.host[sel], f.peer[sel], f.port[sel], f.proto[sel])))
        audit = np.ones(len(f), dtype=bool) if audit_end is None else f.start < audit_end
        app_key = combine(f.app[sel], f.peer_app[sel], f.port[sel].astype(np.int64),
                          f.proto[sel].astype(np.int64))[rep.rep]
        learn_per = per & audit
        if learn_per.any():
            self.periodic_ = sorted_unique(np.r_[self.periodic_, app_key[learn_per]])
        enforce = ~audit & hr.tracked
        port64 = f.port.astype(np.int64)
        if watch.any():  # fan-out during the audit: candidates past the floor, any edge
            rows = np.flatnonzero(watch & hr.tracked & (hr.port_peers > p.fan_out_min))
            self.audit_found_.add(FAN_OUT, f, rows, hr.win[rows], hr.port_peers[rows],
                                  p.window)
        if not scoring or not enforce.any():
            return []
        out: list[Candidates] = []
        # flows on unknown identity edges are new_edge/new_port/scan already: fan-out, failure
        # and volume findings are made of flows on known edges (beacons of any edge)
        known = enforce & ~f.new_edge
        idx = np.flatnonzero(known)
        # fan-out per (host, port)
        t_fan = self._fan_threshold(f, idx, port64)
        hit = hr.port_peers[idx] > t_fan
        if hit.any():
            rows = idx[hit]
            extra = [{"peers": int(a), "threshold": int(b)}
                     for a, b in zip(hr.port_peers[rows], t_fan[hit], strict=True)]
            out.append(self._cands(f, rows, FAN_OUT, extra, host_level=True))
        # failed connections per host
        t_fail = self._threshold((self.fail_app_, mix(f.app[idx])),
                                 (self.fail_host_, f.host[idx]), FAIL_K, p.failures_min)
        hit = f.failed[idx] & (hr.known_failures[idx] > t_fail)
        if hit.any():
            rows = idx[hit]
            extra = [{"failures": int(a), "flows": int(b), "threshold": int(c)}
                     for a, b, c in zip(hr.known_failures[rows], hr.flows[rows], t_fail[hit],
                                        strict=True)]
            out.append(self._cands(f, rows, FAILED, extra, host_level=True))
        # host volume per (host, edge)
        ek = mix(f.edge[idx])
        uk, inv = unique_inverse(ek)
        q, n = self.vol_edge_.quantile(uk, Q)
        q_full, _ = self.vol_full_.quantile(uk, Q)
        med, _ = self.vol_full_.quantile(uk, 0.5)
        t_vol = np.where(n >= VOL_MIN_SAMPLES,
                         np.maximum(p.volume_min_bytes, np.maximum(VOL_K * q, VOL_FULL_K * q_full)),
                         np.inf)[inv]
        vol_run = vol_sum - vol_max  # the largest flow left out: many big flows, not one
        hit = vol_ok[idx] & (vol_run[idx] > t_vol) & (vol_n[idx] >= VOL_MIN_FLOWS)
        if hit.any():
            rows = idx[hit]
            extra = [{"host_bytes": float(a), "threshold_bytes": float(b),
                      "median_host_bytes": float(c)}
                     for a, b, c in zip(vol_run[rows], t_vol[hit], med[inv][hit], strict=True)]
            out.append(self._cands(f, rows, HOST_VOLUME, extra, host_level=False))
        # beacons on series whose apps had no periodic traffic in the audit
        idx = np.flatnonzero(enforce)
        hit = per[idx] & (sorted_find(self.periodic_, app_key[idx]) < 0)
        if hit.any():
            rows = idx[hit]
            extra = [{"period_s": round(float(a), 1), "jitter": round(float(b), 3),
                      "beats": int(c)}
                     for a, b, c in zip(period[rows], jitter[rows], beats[rows], strict=True)]
            out.append(self._cands(f, rows, BEACON, extra, host_level=False))
        return out

    def _fan_threshold(self, f: HostFlows, idx: np.ndarray, port64: np.ndarray) -> np.ndarray:
        return self._threshold(
            (self.fan_app_, combine(f.app[idx], port64[idx])),
            (self.fan_host_, combine(f.host[idx], port64[idx])), FAN_K,
            self.params.fan_out_min)

    @staticmethod
    def _threshold(app: tuple[LogHistograms, np.ndarray], host: tuple[LogHistograms, np.ndarray],
                   k: float, floor: int) -> np.ndarray:
        """``max(floor, ceil(k × max(app q99, host q99)))`` per row (unknown → floor)."""
        qs = []
        for hist, keys in (app, host):
            uk, inv = unique_inverse(keys)
            q, _ = hist.quantile(uk, Q)
            qs.append(np.nan_to_num(q, nan=0.0)[inv])
        return np.maximum(floor, np.ceil(k * np.maximum(qs[0], qs[1]))).astype(np.int64)

    @staticmethod
    def _cands(f: HostFlows, rows: np.ndarray, kind: str, extra: list[dict[str, Any]], *,
               host_level: bool) -> Candidates:
        n = len(rows)
        fan = kind == FAN_OUT
        return Candidates(
            type_code=np.full(n, _CODE[kind], dtype=np.int64),
            client=f.app[rows],
            server=np.full(n, -1, dtype=np.int64) if host_level else f.peer_app[rows],
            port=f.port[rows] if (fan or not host_level) else np.zeros(n, dtype=np.int32),
            proto=f.proto[rows] if (fan or not host_level) else np.zeros(n, dtype=np.int16),
            start=f.start[rows],
            bytes=f.bytes[rows],
            rejected=f.rejected[rows],
            client_ip=host_text(f.host[rows]),
            server_ip=host_text(f.peer[rows]),
            extra=list(extra),
        )

    # -- learning at window close -----------------------------------------------------------
    def _learn(self, feats: dict[str, np.ndarray], audit_end: float | None, watermark: float,
               everything: bool, found: list[HostFinding]) -> None:
        w = self.params.window
        limit = np.iinfo(np.int64).max if everything else int(np.floor(watermark / w))
        labels, win, sums, maxima = self.volume_.pop(limit)
        if audit_end is None:
            return
        a = feats["audit"]
        if a.any():
            self.fail_app_.add(mix(feats["app"][a]), feats["failures"][a])
            self.fail_host_.add(feats["host"][a], feats["failures"][a])
        if self.windows_.closed_port_groups:
            app_port, host_port, pwin, count = self.windows_.closed_port_groups
            a = (pwin + 1) * w <= audit_end
            # audit candidates are judged against the windows before theirs (whatever
            # closed together), and a finding's group is not part of the history
            for cw in sorted({fd.win for fd in found}):
                before = a & (pwin < cw)
                self._learn_fan(app_port[before], host_port[before], count[before])
                a &= ~before
                cand = [fd for fd in found if fd.win == cw]
                thr = self._threshold(
                    (self.fan_app_, combine(np.array([fd.app for fd in cand], dtype=np.int64),
                                            np.array([fd.port for fd in cand], dtype=np.int64))),
                    (self.fan_host_, _host_ports(cand)),
                    FAN_K, self.params.fan_out_min)
                hits = [fd for fd, t in zip(cand, thr.tolist(), strict=True) if fd.peers > t]
                for fd, t in zip(cand, thr.tolist(), strict=True):
                    fd.threshold = t
                self.audit_closed_.extend(hits)
                if hits:
                    bad = _host_ports(hits)
                    a &= ~((pwin == cw) & np.isin(host_port, bad))
            self._learn_fan(app_port[a], host_port[a], count[a])
        a = (win + 1) * w <= audit_end
        if a.any():
            self.vol_edge_.add(mix(labels[a]), sums[a] - maxima[a])
            self.vol_full_.add(mix(labels[a]), sums[a])

    def _learn_fan(self, app_port: np.ndarray, host_port: np.ndarray, count: np.ndarray) -> None:
        if len(count):
            self.fan_app_.add(app_port, count)
            self.fan_host_.add(host_port, count)

    # -- state -------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"buffer": self.buffer_.state(), "windows": self.windows_.state(),
                "volume": self.volume_.state(), "beacons": self.beacons_.state(),
                "fan_app": self.fan_app_.state(), "fan_host": self.fan_host_.state(),
                "fail_app": self.fail_app_.state(), "fail_host": self.fail_host_.state(),
                "vol_edge": self.vol_edge_.state(), "vol_full": self.vol_full_.state(),
                "periodic": self.periodic_, "audit_found": self.audit_found_.state(),
                "audit_closed": [asdict(fd) for fd in self.audit_closed_]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], params: HostParams) -> Self:
        h = cls(params)
        h.buffer_ = ReleaseBuffer.from_state(state["buffer"])
        h.windows_ = HostWindows.from_state(state["windows"], window=params.window,
                                            max_hosts=params.max_hosts)
        h.volume_ = RunningSums.from_state(state["volume"], max_groups=4 * params.max_hosts)
        h.beacons_ = BeaconSeries.from_state(state["beacons"], min_beats=params.beacon_min_beats,
                                             max_jitter=params.beacon_max_jitter)
        for name in ("fan_app", "fan_host", "fail_app", "fail_host"):
            setattr(h, f"{name}_", LogHistograms.from_state(state[name]))
        h.vol_edge_ = LogHistograms.from_state(state["vol_edge"], bins=96, per_octave=2)
        h.vol_full_ = LogHistograms.from_state(state["vol_full"], bins=96, per_octave=2)
        h.periodic_ = np.array(state["periodic"], dtype=np.uint64)
        h.audit_found_ = HostAuditFindings.from_state(state.get("audit_found"))
        h.audit_closed_ = [HostFinding(**d) for d in state.get("audit_closed", [])]
        return h


def _host_ports(found: list[HostFinding]) -> np.ndarray:
    """:attr:`HostFinding.host_port` of each finding, in one vectorised pass."""
    return combine(np.array([fd.host for fd in found], dtype=np.uint64),
                   np.array([fd.port for fd in found], dtype=np.int64))


__all__ = ["HostBehaviour", "HostParams"]
