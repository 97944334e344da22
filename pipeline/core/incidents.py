"""Incidents: the violations of one source within one event-time window, as one finding.

Why: one compromised host raises a new_edge, a scan and a volume_spike within minutes; an
analyst should get *one* incident with the strongest severity of its parts (raised when it
touches a critical asset), not three unrelated alerts. And because violations are emitted
on their first flow and then updated (same id, higher ``version``), incidents are versioned
the same way: every change of a member re-emits its incident with a higher ``version``.

Grouping. A violation belongs to the incident of its *source* — the client workload
(``ns/app``), or for sources without an identity (``world``, ``overflow``) the internal
workload they reached (else the client address) — and of the epoch-aligned ``window`` its
``ts`` falls in. Both are properties of the violation, so the incident id
(:func:`incident_id`: the source and the window start) and its membership do not depend on
batch boundaries, arrival order or the process. A member is kept per violation id at its
highest version: an update replaces it, a repeat is ignored (idempotent). The incident is a
pure function of its members' latest versions:

- ``severity``: the strongest member score plus the highest criticality boost among the
  assets its members touch (source and destinations, through inventory labels:
  ``criticality_labels`` setting, e.g. ``tier=db:15``), capped at 100;
- ``version``: the sum of its members' versions — it grows with every new member and every
  member update, so the latest emitted incident carries the highest version (a store or
  :func:`pipeline.stream.outputs.latest_by_id` keeps it);
- ``detected_at``: the earliest member ``detected_at`` (the member's ``ts`` when absent),
  i.e. when the incident was first emitted.

Bounded: at most ``max_open`` incidents are open (their window plus the suppression window
and lateness is not yet behind the watermark) and ``max_open`` recently closed ones are kept
to absorb late member updates; past the bound the oldest windows close early. An incident
keeps at most :data:`MEMBERS_MAX` members (ids, for the evidence); a member beyond it still
raises the severity but is counted in ``dropped_members_``, not listed.

Estimator-like: ``__init__`` stores parameters; ``open_``, ``recent_`` and ``watermark_``
are learned state, given as JSON values by :meth:`Incidents.state`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Self

from pipeline.core.events import iso, severity_label, stable_id

MEMBERS_MAX = 256  # member violations listed per incident
DST_MAX = 16  # destinations listed per incident
ANONYMOUS = frozenset({"world", "overflow", "multiple", ""})  # apps that name no one source

LabelsOf = Callable[[str, str], Iterable[tuple[str, str]]]
"""(namespace, app) → the workload's inventory labels."""


def parse_criticality(items: Iterable[str]) -> dict[tuple[str, str], int]:
    """``("tier=db:15", …)`` → {("tier", "db"): 15}; ValueError naming a bad item.

    >>> parse_criticality(["tier=db:15", "criticality=high:20"])
    {('tier', 'db'): 15, ('criticality', 'high'): 20}
    """
    out: dict[tuple[str, str], int] = {}
    for item in items:
        label, sep, boost = str(item).strip().rpartition(":")
        key, eq, value = label.partition("=")
        if not sep or not eq or not key.strip() or not value.strip():
            raise ValueError(f"'{item}' is not key=value:points (e.g. tier=db:15)")
        try:
            points = int(boost)
        except ValueError:
            raise ValueError(f"'{item}': points must be an integer") from None
        if not 0 <= points <= 100:
            raise ValueError(f"'{item}': points must be in [0, 100]")
        out[(key.strip(), value.strip())] = points
    return out


def _epoch(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def source_of(v: Mapping[str, Any]) -> str:
    """The violation's source: its client workload; for a client without an identity of its
    own (the internet, the overflow workload) the internal target it reached
    (``world->ns/app``: many internet addresses probing one service are one incident, not
    one per address), or ``app:ip`` when the target names no one workload either.

    >>> source_of({"src_workload": "shop/web", "src_app": "web", "src_ip": "10.0.0.1"})
    'shop/web'
    >>> source_of({"src_workload": "world", "src_app": "world", "src_ip": "8.8.8.8",
    ...            "dst_workload": "shop/web", "dst_app": "web"})
    'world->shop/web'
    >>> source_of({"src_workload": "world", "src_app": "world", "src_ip": "8.8.8.8",
    ...            "dst_workload": "world", "dst_app": "world"})
    'world:8.8.8.8'
    """
    app = str(v.get("src_app", ""))
    if app in ANONYMOUS:
        dst, dst_app = str(v.get("dst_workload") or ""), str(v.get("dst_app", ""))
        if dst and dst_app not in ANONYMOUS:
            return f"{app or 'unknown'}->{dst}"
        return f"{app or 'unknown'}:{v.get('src_ip', '')}"
    ns = str(v.get("src_namespace", ""))
    return str(v.get("src_workload") or (f"{ns}/{app}" if ns else app))


def incident_id(source: str, window_start: float) -> str:
    """``inc-<20 hex>`` from the source and the window start: the same in every process."""
    return stable_id("inc", source, int(window_start))


@dataclass(slots=True)
class Member:
    """What an incident keeps of one member violation (its latest version)."""

    id: str
    version: int
    ts: float
    last_seen: float
    detected_at: float
    type: str
    score: int
    count: int
    src_ip: str
    dsts: list[str]
    boost: int
    assets: list[str]  # "ns/app (tier=db)" for each critical asset it touches

    def to_list(self) -> list[Any]:
        return [self.id, self.version, self.ts, self.last_seen, self.detected_at, self.type,
                self.score, self.count, self.src_ip, self.dsts, self.boost, self.assets]


@dataclass(slots=True)
class Incident:
    """An open (or recently closed) incident: its members by violation id."""

    source: str
    window: float  # window start, epoch s
    src_namespace: str = ""
    src_app: str = ""
    members: dict[str, Member] = field(default_factory=dict)
    version: int = 0  # sum of the members' versions
    max_score: int = 0  # of members beyond MEMBERS_MAX (listed ones count by their latest)
    max_boost: int = 0
    extra_assets: list[str] = field(default_factory=list)  # of members beyond MEMBERS_MAX

    @property
    def id(self) -> str:
        return incident_id(self.source, self.window)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "window": self.window,
                "src_namespace": self.src_namespace, "src_app": self.src_app,
                "members": [m.to_list() for m in self.members.values()],
                "version": self.version, "max_score": self.max_score,
                "max_boost": self.max_boost, "extra_assets": self.extra_assets}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Incident:
        inc = cls(d["source"], float(d["window"]), d["src_namespace"], d["src_app"],
                  version=int(d["version"]), max_score=int(d["max_score"]),
                  max_boost=int(d["max_boost"]), extra_assets=list(d["extra_assets"]))
        for m in d["members"]:
            inc.members[m[0]] = Member(*m)
        return inc


class Incidents:
    """Groups violation events into versioned incident events (see the module docstring).

    ``window``: incident window (event-time s); ``hold``: how long after a window ends its
    members may still be updated (the suppression window plus lateness); ``criticality``:
    (label key, value) → severity points; ``max_open``: the bound on open incidents."""

    watermark_: float = float("-inf")
    dropped_members_: int = 0  # members beyond MEMBERS_MAX (not listed)
    forced_closes_: int = 0  # incidents closed early by max_open
    open_: dict[tuple[str, float], Incident]
    recent_: OrderedDict[tuple[str, float], Incident]

    def __init__(self, *, window: float = 3600.0, hold: float = 3900.0,
                 criticality: Mapping[tuple[str, str], int] | None = None,
                 max_open: int = 100_000) -> None:
        self.window = window
        self.hold = hold
        self.criticality = dict(criticality or {})
        self.max_open = max_open

    def _allocate(self) -> None:
        if not hasattr(self, "open_"):
            self.open_ = {}
            self.recent_ = OrderedDict()

    # -- state ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Open and recently closed incidents and the watermark (JSON values)."""
        self._allocate()
        return {"watermark": self.watermark_ if self.watermark_ > float("-inf") else None,
                "open": [i.to_dict() for i in self.open_.values()],
                "recent": [i.to_dict() for i in self.recent_.values()],
                "dropped_members": self.dropped_members_}

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None, **params: Any) -> Self:
        """Incidents with ``params`` (as for ``__init__``) and the learned ``state``."""
        inc = cls(**params)
        inc._allocate()
        if not state:
            return inc
        wm = state.get("watermark")
        inc.watermark_ = float("-inf") if wm is None else float(wm)
        inc.dropped_members_ = int(state.get("dropped_members", 0))
        for d in state.get("open", []):
            i = Incident.from_dict(d)
            inc.open_[(i.source, i.window)] = i
        for d in state.get("recent", []):
            i = Incident.from_dict(d)
            inc.recent_[(i.source, i.window)] = i
        return inc

    # -- the path ------------------------------------------------------------------------
    def absorb(self, violations: Sequence[Mapping[str, Any]], labels_of: LabelsOf
               ) -> list[dict[str, Any]]:
        """Add violation events (new or updated); the incidents they changed, as events
        (each once, in (ts, id) order)."""
        if not violations:
            return []
        self._allocate()
        changed: dict[tuple[str, float], Incident] = {}
        for v in violations:
            ts = _epoch(v["ts"])
            source = source_of(v)
            key = (source, ts // self.window * self.window)
            inc = self.open_.get(key)
            if inc is None:
                inc = self.recent_.pop(key, None)
                if inc is None:
                    inc = Incident(source, key[1])
                self.open_[key] = inc
            if self._add(inc, v, ts, labels_of):
                changed[key] = inc
        if len(self.open_) > self.max_open:
            self._force_close()
        return [incident_event(changed[k]) for k in sorted(changed, key=lambda k: (k[1], k[0]))]

    def _add(self, inc: Incident, v: Mapping[str, Any], ts: float, labels_of: LabelsOf
             ) -> bool:
        vid, version = str(v["id"]), int(v.get("version", 0))
        old = inc.members.get(vid)
        if old is not None and old.version >= version:
            return False
        if not inc.src_app or (v.get("src_app", ""), v.get("src_namespace", "")) < (
                inc.src_app, inc.src_namespace):
            inc.src_namespace = str(v.get("src_namespace", ""))
            inc.src_app = str(v.get("src_app", ""))
        dsts = _destinations(v)
        ends = [(str(v.get("src_namespace", "")), str(v.get("src_app", "")))]
        ends += [(d.rpartition("/")[0], d.rpartition("/")[2]) for d in dsts]
        boost, assets = self._criticality(ends, labels_of)
        m = Member(
            id=vid, version=version, ts=ts,
            last_seen=_epoch(v.get("last_seen") or v["ts"]),
            detected_at=_epoch(v.get("detected_at") or v["ts"]),
            type=str(v.get("type", "")), score=int(v.get("severity", {}).get("score", 0)),
            count=int(v.get("count", 1)), src_ip=str(v.get("src_ip", "")), dsts=dsts,
            boost=boost, assets=assets)
        if old is None and len(inc.members) >= MEMBERS_MAX:
            # not listed: still raises the severity; its updates re-emit at the same version
            self.dropped_members_ += 1
            inc.max_score = max(inc.max_score, m.score)
            inc.max_boost = max(inc.max_boost, m.boost)
            for a in assets:
                if a not in inc.extra_assets and len(inc.extra_assets) < DST_MAX:
                    inc.extra_assets.append(a)
            return True
        inc.version += version - (old.version if old is not None else 0)
        inc.members[vid] = m
        return True

    def _criticality(self, ends: list[tuple[str, str]], labels_of: LabelsOf
                     ) -> tuple[int, list[str]]:
        if not self.criticality:
            return 0, []
        boost, assets = 0, []
        for ns, app in ends:
            if app in ANONYMOUS:
                continue
            hits = [(k, val, self.criticality[(k, val)]) for k, val in labels_of(ns, app)
                    if (k, val) in self.criticality]
            if hits:
                boost = max(boost, *(p for _, _, p in hits))
                key = f"{ns}/{app}" if ns else app
                assets.append(f"{key} ({', '.join(f'{k}={val}' for k, val, _ in sorted(hits))})")
        return boost, assets

    def advance(self, watermark: float) -> None:
        """Event time (minus lateness) reached ``watermark``: incidents whose members can no
        longer change move to the recently closed ones."""
        self._allocate()
        self.watermark_ = max(self.watermark_, watermark)
        limit = self.watermark_ - self.window - self.hold
        for key in [k for k in self.open_ if k[1] <= limit]:
            self._close(key)

    def _close(self, key: tuple[str, float]) -> None:
        self.recent_[key] = self.open_.pop(key)
        if len(self.recent_) > self.max_open:
            self.recent_.popitem(last=False)

    def _force_close(self) -> None:
        self.forced_closes_ += 1
        for key in sorted(self.open_, key=lambda k: (k[1], k[0]))[: len(self.open_) // 2]:
            self._close(key)

    def __len__(self) -> int:
        return len(self.open_) if hasattr(self, "open_") else 0


def _destinations(v: Mapping[str, Any]) -> list[str]:
    dst = str(v.get("dst_workload", ""))
    if dst and dst != "multiple":
        return [dst]
    seen = v.get("evidence", {}).get("seen", {}) if isinstance(v.get("evidence"), dict) else {}
    return [str(d) for d in seen.get("dst_workloads", [])][:DST_MAX]


def incident_event(inc: Incident) -> dict[str, Any]:
    """The incident event (``schemas/incident.schema.json``) of ``inc``'s current members."""
    members = sorted(inc.members.values(), key=lambda m: (m.ts, m.id))
    base = max(inc.max_score, *(m.score for m in members))
    boost = max(inc.max_boost, *(m.boost for m in members))
    score = min(100, base + boost)
    types = sorted({m.type for m in members})
    dsts = sorted({d for m in members for d in m.dsts})
    assets = sorted({a for m in members for a in m.assets} | set(inc.extra_assets))
    first = members[0]
    flows = sum(m.count for m in members)
    n = len(members)
    what = ", ".join(types)
    reason = (f"{inc.source} raised {n} violation{'s' if n != 1 else ''} ({what}) "
              f"towards {len(dsts)} destination{'s' if len(dsts) != 1 else ''} "
              f"within {_span(members)}.")
    if assets:
        reason += f" Critical assets involved: {', '.join(assets[:4])}."
    return {
        "schema_version": 1,
        "id": inc.id,
        "ts": iso(inc.window),
        "severity": {"label": severity_label(score), "score": score},
        "source": inc.source,
        "src_namespace": inc.src_namespace,
        "src_app": inc.src_app,
        "src_ip": first.src_ip,
        "first_seen": iso(first.ts),
        "last_seen": iso(max(m.last_seen for m in members)),
        "detected_at": iso(min(m.detected_at for m in members)),
        "violations": len(members),
        "flows": flows,
        "types": types,
        "dst_workloads": dsts[:DST_MAX],
        "violation_ids": [m.id for m in members],
        "base_score": base,
        "criticality": boost,
        "critical_assets": assets[:DST_MAX],
        "reason": reason,
        "version": inc.version,
    }


def _span(members: list[Member]) -> str:
    s = max(m.last_seen for m in members) - members[0].ts
    return f"{s / 60:.0f} min" if s >= 60 else f"{s:.0f} s"


__all__ = ["MEMBERS_MAX", "Incident", "Incidents", "incident_event", "incident_id",
           "parse_criticality", "source_of"]
