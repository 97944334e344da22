"""Scoring detectors against labeled episodes: incidents, recall, precision, time to detect.

Every detector (segflow and the naive baselines of ``segflow eval``) is reduced to
:class:`Alert` records; alerts group into incidents (the core's ``incident_id`` when it sets
one, else one incident per source within ``gap`` seconds of its previous alert), and
incidents and episodes are matched by *source address* (the source workload when an alert
names no address) and overlapping time. Definitions, as printed by ``segflow eval``:

- episode recall: malicious episodes with at least one matching alert / malicious episodes;
- incident precision: incidents with an alert matching a malicious episode / incidents;
- false incidents per 100 workloads per day: the other incidents / (workloads / 100) / the
  days checked after the audit (workloads: pod deployments plus VM/workstation hosts);
- time to detect: per caught episode, the earliest ``detected_at`` of a matching alert
  minus the episode's first flow (event seconds; the median is reported).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.normalize import parse_time_text

GAP = 3600.0  # an alert more than this after its source's last one opens a new incident
SLACK = 300.0  # alert and episode time spans may miss each other by this much


@dataclass(slots=True)
class Alert:
    """One finding of one detector, reduced to what scoring needs."""

    kind: str
    src_ips: frozenset[str]
    src_workload: str
    first: float  # first flow it covers (event time)
    last: float
    detected_at: float  # event-time watermark when the detector first reported it
    dst_ips: frozenset[str] = frozenset()
    incident: str = ""  # the detector's own incident id, if it has one


@dataclass(slots=True)
class Episode:
    """A labeled episode: an attack (malicious) or benign churn."""

    id: str
    type: str
    malicious: bool
    start: float
    end: float
    src_ips: frozenset[str]
    src_workload: str = ""
    hosts: frozenset[str] = frozenset()  # internal hosts it must involve (inbound attacks)


def _t(v: Any) -> float:
    if isinstance(v, int | float):
        return float(v)
    t = parse_time_text(str(v))
    return 0.0 if t is None else t


def alert_from_violation(v: Mapping[str, Any], emitted_at: float) -> Alert:
    """A segflow violation (or audit finding) event as an alert; ``detected_at`` from the event
    when it carries one, else ``emitted_at`` (when the harness first saw it)."""
    seen = v.get("evidence", {}).get("seen", {})
    src = {ip for ip in [v.get("src_ip"), *seen.get("src_ips", [])] if ip}
    dst = {ip for ip in [v.get("dst_ip"), *seen.get("dst_ips", [])] if ip}
    detected = v.get("detected_at")
    return Alert(
        kind=str(v.get("type", "")),
        src_ips=frozenset(src),
        src_workload=str(v.get("src_workload", "")),
        first=_t(v.get("first_seen", v.get("ts"))),
        last=_t(v.get("last_seen", v.get("ts"))),
        detected_at=_t(detected) if detected is not None else emitted_at,
        dst_ips=frozenset(dst),
        incident=str(v.get("incident_id") or ""),
    )


def episode_from_truth(t: Mapping[str, Any]) -> Episode:
    """An episode from a ``truth.jsonl`` line."""
    return Episode(id=str(t["id"]), type=str(t["type"]), malicious=bool(t.get("malicious")),
                   start=_t(t["start"]), end=_t(t["end"]),
                   src_ips=frozenset([t["src_ip"]] if t.get("src_ip") else []),
                   src_workload=str(t.get("src_workload") or ""))


def matches(a: Alert, ep: Episode, slack: float = SLACK) -> bool:
    """Same source (address, or workload when the alert names no address), overlapping time,
    and, for episodes tied to hosts, an alert that involves one of them."""
    if a.last < ep.start - slack or a.first > ep.end + slack:
        return False
    if a.src_ips:
        if not a.src_ips & ep.src_ips:
            return False
    elif not ep.src_workload or a.src_workload != ep.src_workload:
        return False
    return not ep.hosts or bool((a.src_ips | a.dst_ips) & ep.hosts)


def incidents(alerts: Iterable[Alert], gap: float = GAP) -> list[list[Alert]]:
    """Alerts grouped into incidents: by the detector's incident id, else per source
    (workload, or first address) with at most ``gap`` seconds between consecutive alerts."""
    by_id: dict[str, list[Alert]] = defaultdict(list)
    loose: dict[str, list[Alert]] = defaultdict(list)
    for a in alerts:
        if a.incident:
            by_id[a.incident].append(a)
        else:
            key = a.src_workload or min(a.src_ips, default="")
            loose[key].append(a)
    out = list(by_id.values())
    for group in loose.values():
        group.sort(key=lambda a: a.first)
        current = [group[0]]
        last = group[0].last
        for a in group[1:]:
            if a.first - last > gap:
                out.append(current)
                current = []
            current.append(a)
            last = max(last, a.last)
        out.append(current)
    return out


@dataclass
class TypeScore:
    episodes: int = 0
    caught: int = 0
    ttd: list[float] = field(default_factory=list)

    @property
    def recall(self) -> float | None:
        return self.caught / self.episodes if self.episodes else None

    @property
    def median_ttd(self) -> float | None:
        return statistics.median(self.ttd) if self.ttd else None


@dataclass
class Score:
    """One detector on one labeled run."""

    detector: str
    workloads: int
    eval_days: float
    by_type: dict[str, TypeScore] = field(default_factory=dict)
    incidents: int = 0
    true_incidents: int = 0
    alerts: int = 0

    @property
    def overall(self) -> TypeScore:
        out = TypeScore()
        for s in self.by_type.values():
            out.episodes += s.episodes
            out.caught += s.caught
            out.ttd.extend(s.ttd)
        return out

    @property
    def false_incidents(self) -> int:
        return self.incidents - self.true_incidents

    @property
    def precision(self) -> float | None:
        return self.true_incidents / self.incidents if self.incidents else None

    @property
    def false_per_100_day(self) -> float:
        scale = max(self.workloads, 1) / 100 * max(self.eval_days, 1e-9)
        return self.false_incidents / scale

    def as_dict(self) -> dict[str, Any]:
        o = self.overall
        return {
            "detector": self.detector, "workloads": self.workloads,
            "eval_days": round(self.eval_days, 3), "alerts": self.alerts,
            "incidents": self.incidents, "true_incidents": self.true_incidents,
            "false_incidents": self.false_incidents, "incident_precision": self.precision,
            "false_incidents_per_100_workloads_per_day": round(self.false_per_100_day, 4),
            "episode_recall": o.recall, "median_ttd_s": o.median_ttd,
            "by_type": {k: {"episodes": s.episodes, "caught": s.caught, "recall": s.recall,
                            "median_ttd_s": s.median_ttd, "ttd_s": s.ttd}
                        for k, s in sorted(self.by_type.items())},
        }


def score(detector: str, alerts: list[Alert], episodes: Iterable[Episode], *, workloads: int,
          eval_days: float, gap: float = GAP, slack: float = SLACK) -> Score:
    """Recall and time to detect per episode type, and incident precision, for one detector."""
    res = Score(detector, workloads, eval_days, alerts=len(alerts))
    malicious = [ep for ep in episodes if ep.malicious]
    for ep in malicious:
        ts = res.by_type.setdefault(ep.type, TypeScore())
        ts.episodes += 1
        hits = [a for a in alerts if matches(a, ep, slack)]
        if hits:
            ts.caught += 1
            ts.ttd.append(max(0.0, min(a.detected_at for a in hits) - ep.start))
    groups = incidents(alerts, gap)
    res.incidents = len(groups)
    res.true_incidents = sum(any(matches(a, ep, slack) for a in g for ep in malicious)
                             for g in groups)
    return res


__all__ = ["GAP", "SLACK", "Alert", "Episode", "Score", "TypeScore", "alert_from_violation",
           "episode_from_truth", "incidents", "matches", "score"]
