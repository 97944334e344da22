"""Per-host detector findings made *during* the audit (fan-out for now).

Why: an attacker active during the audit used to be learned — a worm spreading over the SMB
edge the audit saw, or a slow sweep of internet addresses (one ``world`` edge) raised nothing
and its windows went into the per-host history that later thresholds scale. The per-host
fan-out detector therefore also scores audit flows once the audit's warm-up has passed
(against the history learned so far); its hits collect here per (source host, port, proto,
window) and, when that window closes, become one finding each: reported through
:meth:`pipeline.core.audit.AuditWatch.mark` (``mode = "audit"``, their identity edges need one
more day of support before they are trusted) and left out of the fan-out history.

Rows arrive in event-time order from the release buffer, and a finding is only handed over
once its window closed on the watermark, so findings do not depend on batch boundaries.
Bounded: at most ``max_open`` open findings (further ones are counted in ``refused_``), each
with at most :data:`MAX_KEYS` edge keys and :data:`~pipeline.core.detect.SAMPLE` addresses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Self

import numpy as np

from pipeline.core.detect import SAMPLE
from pipeline.core.hosts import HostFlows, host_text
from pipeline.core.hostsets import combine

MAX_KEYS = 256  # identity edge keys remembered per finding


@dataclass(slots=True)
class HostFinding:
    """One (source host, port, proto, window) of the audit: a candidate while its window is
    open (its distinct peers passed the detector's floor), a finding once its window closed
    above the threshold its history gives."""

    kind: str
    host: int  # host key
    app: int  # client workload id
    port: int
    proto: int
    win: int  # window index (start / window length)
    window: float  # window start
    first: float
    last: float
    count: int = 0  # flows from the floor's crossing on
    peers: int = 0  # distinct peers of the group (largest running count seen)
    threshold: int = 0
    keys: list[int] = field(default_factory=list)  # identity edge keys its flows used
    client_ips: list[str] = field(default_factory=list)
    server_ips: list[str] = field(default_factory=list)

    @property
    def host_port(self) -> int:
        """The (host, port) key the fan-out history is kept by."""
        return int(combine(np.array([self.host], dtype=np.uint64),
                           np.array([self.port], dtype=np.int64))[0])


class HostAuditFindings:
    """Open audit findings of the per-host detectors (see the module docstring)."""

    def __init__(self, *, max_open: int = 4096) -> None:
        self.max_open = max_open
        self.open_: dict[tuple[str, int, int, int, int], HostFinding] = {}
        self.refused_ = 0

    def add(self, kind: str, f: HostFlows, rows: np.ndarray, win: np.ndarray,
            peers: np.ndarray, window: float) -> None:
        """Rows of ``f`` (time-ordered) whose group is a candidate, with their window index and
        their group's running distinct peers; ``window`` is the window length (s).
        Vectorised per group; Python only loops over the groups."""
        if not len(rows):
            return
        host, port, proto = f.host[rows], f.port[rows], f.proto[rows]
        g = combine(host, port.astype(np.int64), proto.astype(np.int64), win)
        uniq, first, inv = np.unique(g, return_index=True, return_inverse=True)
        t = f.start[rows]
        last = np.zeros(len(uniq))
        np.maximum.at(last, inv, t)
        most = np.zeros(len(uniq), dtype=np.int64)
        np.maximum.at(most, inv, peers)
        count = np.bincount(inv, minlength=len(uniq))
        # distinct (group, edge) and (group, peer) in time order
        ek = np.unique(np.stack([inv, f.edge[rows]], axis=1), axis=0)
        pk_first = np.unique(np.stack([inv, f.peer[rows].view(np.int64)], axis=1), axis=0,
                             return_index=True)[1]
        pk_first = np.sort(pk_first)
        texts = host_text(np.r_[host[first], f.peer[rows][pk_first]])
        client_text, peer_text = texts[: len(uniq)], texts[len(uniq):]
        edges: dict[int, list[int]] = {}
        for gi, k in ek.tolist():
            edges.setdefault(gi, []).append(k)
        peers_of: dict[int, list[str]] = {}
        for gi, txt in zip(inv[pk_first].tolist(), peer_text, strict=True):
            peers_of.setdefault(gi, []).append(txt)
        for gi, r in enumerate(first.tolist()):
            key = (kind, int(host[r]), int(port[r]), int(proto[r]), int(win[r]))
            fd = self.open_.get(key)
            if fd is None:
                if len(self.open_) >= self.max_open:
                    self.refused_ += 1
                    continue
                fd = self.open_[key] = HostFinding(
                    kind, key[1], int(f.app[rows[r]]), key[2], key[3], key[4],
                    key[4] * window, float(t[r]), float(t[r]), client_ips=[client_text[gi]])
            fd.last = max(fd.last, float(last[gi]))
            fd.count += int(count[gi])
            fd.peers = max(fd.peers, int(most[gi]))
            for k in edges.get(gi, []):
                if len(fd.keys) >= MAX_KEYS:
                    break
                if k not in fd.keys:
                    fd.keys.append(k)
            for txt in peers_of.get(gi, []):
                if len(fd.server_ips) >= SAMPLE:
                    break
                if txt not in fd.server_ips:
                    fd.server_ips.append(txt)

    def close(self, before_win: int) -> list[HostFinding]:
        """The candidates of windows before ``before_win`` (window index), in a deterministic
        order, removed."""
        done = sorted(k for k in self.open_ if k[4] < before_win)
        out = [self.open_.pop(k) for k in done]
        return sorted(out, key=lambda fd: (fd.window, fd.first, fd.host, fd.port, fd.kind))

    def state(self) -> dict[str, Any]:
        return {"open": [asdict(fd) for _, fd in sorted(self.open_.items())],
                "refused": self.refused_}

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None, **params: Any) -> Self:
        h = cls(**params)
        if not state:
            return h
        for d in state["open"]:
            fd = HostFinding(**d)
            h.open_[(fd.kind, fd.host, fd.port, fd.proto, fd.win)] = fd
        h.refused_ = int(state["refused"])
        return h


__all__ = ["MAX_KEYS", "HostAuditFindings", "HostFinding"]
