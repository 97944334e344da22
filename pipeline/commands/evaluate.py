"""``segflow eval``: detection quality on labeled data, against two naive detectors.

:func:`run_eval` generates labeled estates (several seeds, sizes and audit lengths, every
attack kind), runs the core on each one in event-time slices, and scores its violations
next to the naive detectors of :mod:`pipeline.commands.naive` with the definitions of
:mod:`pipeline.commands.scoring`. :func:`run_capture` does the same on a real labeled Zeek
conn log (``label``/``detailedlabel`` columns, as in the Stratosphere captures).

:func:`evaluate` (used by the replay summary) is the simpler check of one replay against a
``truth.jsonl``: an episode is *caught* when a violation of one of its expected types
overlaps its time span (± one suppression window) and names its source address or source
workload; violations that match no malicious episode are *unexplained*.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.commands.naive import NewPairDetector, RateDetector
from pipeline.commands.scoring import (
    GAP,
    Alert,
    Episode,
    Score,
    TypeScore,
    alert_from_violation,
    episode_from_truth,
    score,
)
from pipeline.core.enrich import Orienter, enrich
from pipeline.core.events import latest_by_id
from pipeline.core.inventory import Inventory, entry_from_record
from pipeline.core.normalize import parse_time_text
from pipeline.core.pipeline import CoreSettings, Pipeline
from pipeline.errors import InputError


@dataclass
class Evaluation:
    caught: list[dict[str, Any]] = field(default_factory=list)
    missed: list[dict[str, Any]] = field(default_factory=list)
    unexplained: list[dict[str, Any]] = field(default_factory=list)
    benign_episodes: int = 0

    @property
    def recall(self) -> float:
        total = len(self.caught) + len(self.missed)
        return len(self.caught) / total if total else 1.0


def load_truth(path: Path) -> list[dict[str, Any]]:
    try:
        return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    except (OSError, orjson.JSONDecodeError) as exc:
        raise InputError(f"cannot read ground truth {path}: {exc}") from exc


def _t(v: Any) -> float:
    if isinstance(v, int | float):
        return float(v)
    t = parse_time_text(str(v))
    return 0.0 if t is None else t


def _matches(v: dict[str, Any], ep: dict[str, Any], slack: float, any_type: bool = False) -> bool:
    if not any_type and v["type"] not in ep.get("expected", []):
        return False
    first, last = _t(v["first_seen"]), _t(v["last_seen"])
    if last < _t(ep["start"]) - slack or first > _t(ep["end"]) + slack:
        return False
    ips = set(v["evidence"]["seen"].get("src_ips", [])) | {v.get("src_ip")}
    return ep.get("src_ip") in ips or ep.get("src_workload") == v.get("src_workload")


def evaluate(
    violations: Iterable[dict[str, Any]], truth: Iterable[dict[str, Any]], *, slack: float = 3600
) -> Evaluation:
    vs = list(latest_by_id(violations).values())  # one per violation, not per version
    res = Evaluation()
    explained: set[str] = set()
    for ep in truth:
        if not ep.get("malicious"):
            res.benign_episodes += 1
            continue
        hits = [v for v in vs if _matches(v, ep, slack)]
        explained.update(v["id"] for v in vs if _matches(v, ep, slack, any_type=True))
        entry = {**ep, "violations": [v["id"] for v in hits],
                 "types": sorted({v["type"] for v in hits})}
        (res.caught if hits else res.missed).append(entry)
    res.unexplained = [v for v in vs if v["id"] not in explained]
    return res


# ---- segflow eval -------------------------------------------------------------------------

SIZES: dict[str, dict[str, int]] = {  # apps, workstations, cloud flows per day
    "small": {"apps": 6, "workstations": 30, "flows_per_day": 8_000},
    "medium": {"apps": 12, "workstations": 80, "flows_per_day": 30_000},
    "large": {"apps": 24, "workstations": 200, "flows_per_day": 80_000},
}
DAY = 86_400.0
SLICE = 300.0  # event seconds per core batch after the audit (emission-time resolution)
TARGETS = {"recall": 0.95, "false_per_100_day": 1.0, "median_ttd_s": 60.0}


@dataclass(frozen=True)
class EstateSpec:
    """One generated estate of the evaluation."""

    seed: int
    size: str
    audit_days: int
    post_days: int = 7

    @property
    def label(self) -> str:
        return f"seed {self.seed} {self.size} audit {self.audit_days}d"

    def config(self, kinds: tuple[str, ...]) -> Any:
        from pipeline.generate import GenerateConfig

        size = SIZES[self.size]
        return GenerateConfig(seed=self.seed, days=self.audit_days + self.post_days,
                              audit_days=self.audit_days, attack_kinds=kinds,
                              apps=size["apps"], workstations=size["workstations"],
                              flows_per_day=size["flows_per_day"])


@dataclass
class RunResult:
    """Scores of every detector on one labeled run."""

    label: str
    flows: int
    scores: list[Score]
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "flows": self.flows, "seconds": round(self.seconds, 2),
                "scores": [s.as_dict() for s in self.scores]}


class _Harness:
    """Feeds flow tables to the core and the naive detectors; collects their alerts."""

    def __init__(self, settings: CoreSettings, inventory: Inventory) -> None:
        self.core = Pipeline(settings, inventory)
        self.inventory = inventory
        self.orienter = Orienter()
        self.naive: list[Any] = [NewPairDetector(), RateDetector()]
        self.first_emit: dict[str, float] = {}
        self.violations: dict[str, dict[str, Any]] = {}
        self.incident_of: dict[str, str] = {}  # violation id → the core's incident id
        self.flows = 0

    def feed(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        self.flows += table.num_rows
        out = self.core.process(table)
        now = float(pc.max(table.column("start")).as_py())
        self._take(out.violations, now, out.incidents)
        audit_end = self.core.audit_end
        assert audit_end is not None
        e = enrich(table, self.inventory, self.orienter)
        in_audit = e.start < audit_end
        for d in self.naive:
            d.feed(e, in_audit)

    def _take(self, violations: list[dict[str, Any]], now: float,
              incidents: list[dict[str, Any]]) -> None:
        for inc in incidents:  # a violation's incident never changes (source and window)
            for vid in inc["violation_ids"]:
                self.incident_of[vid] = inc["id"]
        for v in violations:
            self.first_emit.setdefault(v["id"], now)
            old = self.violations.get(v["id"])
            if old is None or v.get("version", 0) >= old.get("version", 0):
                self.violations[v["id"]] = v

    def finish(self, end: float) -> dict[str, list[Alert]]:
        out = self.core.flush()
        self._take(out.violations, end, out.incidents)
        segflow = [alert_from_violation({**v, "incident_id": self.incident_of.get(k, "")},
                                        self.first_emit[k])
                   for k, v in self.violations.items()]
        return {"segflow": segflow, **{d.name: d.alerts for d in self.naive}}


def _slices(table: pa.Table, after: float, step: float) -> Iterator[pa.Table]:
    """The table whole before ``after``; in ``step``-second slices from it on (sorted input)."""
    start = table.column("start").to_numpy()
    if not len(start) or start[-1] < after:
        yield table
        return
    cut = int(np.searchsorted(start, after))
    if cut:
        yield table.slice(0, cut)
    edges = np.arange(np.floor(start[cut] / step) * step + step, start[-1] + step, step)
    bounds = [cut, *np.searchsorted(start, edges).tolist(), len(start)]
    for lo, hi in itertools.pairwise(bounds):
        if hi > lo:
            yield table.slice(lo, hi - lo)


def run_estate(spec: EstateSpec, kinds: tuple[str, ...], *, slice_s: float = SLICE,
               core: dict[str, Any] | None = None) -> RunResult:
    """Generate one estate and score segflow and the naive detectors on it."""
    from pipeline.generate import build_estate, iter_flow_chunks

    t0 = time.perf_counter()
    cfg = spec.config(kinds)
    estate = build_estate(cfg)
    inventory = Inventory([entry_from_record(r) for r in estate.inventory])
    h = _Harness(CoreSettings(**{**(core or {}), "audit_days": cfg.audit_days,
                                 "audit_start": cfg.start}), inventory)
    for day in iter_flow_chunks(estate):
        for part in _slices(day, cfg.audit_end, slice_s):
            h.feed(part)
    alerts = h.finish(cfg.end)
    episodes = [episode_from_truth(t) for t in estate.truth]
    hosts = sum(max(w.base_replicas, 1) for w in estate.population.workloads if w.kind == "vm")
    pods = len({w.key for w in estate.population.workloads if w.kind == "pod"})
    scores = [score(name, a, episodes, workloads=pods + hosts, eval_days=cfg.days - cfg.audit_days)
              for name, a in alerts.items()]
    return RunResult(spec.label, h.flows, scores, time.perf_counter() - t0)


def run_eval(specs: Iterable[EstateSpec], kinds: tuple[str, ...] | None = None, *,
             slice_s: float = SLICE, progress: Any = None,
             core: dict[str, Any] | None = None) -> list[RunResult]:
    """Every estate of ``specs`` (all attack kinds unless ``kinds``)."""
    from pipeline.generate.config import ATTACK_KINDS

    out = []
    for spec in specs:
        res = run_estate(spec, kinds or ATTACK_KINDS, slice_s=slice_s, core=core)
        if progress is not None:
            progress(res)
        out.append(res)
    return out


# ---- real labeled captures ----------------------------------------------------------------

LABEL_FIELDS = ("label", "detailedlabel", "detailed-label", "detailed_label")


def read_zeek_labels(path: Path) -> list[tuple[float, str, str, str]]:
    """(ts, orig_h, resp_h, episode label) of every labeled record of a Zeek TSV conn log.

    The label is ``detailedlabel`` (else ``label``) for malicious records and "" otherwise.
    Labeled IoT-23 files separate the last fields by spaces instead of tabs; both work.
    """
    from pipeline.sources.base import open_binary

    data = b"".join(open_binary(path)).decode("utf-8", "replace")
    fields: list[str] = []
    out: list[tuple[float, str, str, str]] = []
    for line in data.splitlines():
        if line.startswith("#fields"):
            fields = line.split()[1:]
            continue
        if not line or line.startswith("#") or not fields:
            continue
        parts = line.split("\t")
        if len(parts) < len(fields):
            parts = parts[:-1] + parts[-1].split()
        rec = dict(zip(fields, parts, strict=False))
        label = rec.get("label", "")
        if "malicious" not in label.lower():
            label = ""
        else:
            detail = next((rec[f] for f in LABEL_FIELDS[1:] if rec.get(f) not in (None, "-",
                                                                                "(empty)")), "")
            label = detail or label
        try:
            out.append((float(rec["ts"]), rec["id.orig_h"], rec["id.resp_h"], label))
        except (KeyError, ValueError):
            continue
    if not fields or not any(f in fields for f in ("label",)):
        raise InputError(f"{path}: no '#fields' header with a 'label' column; "
                         "is this a labeled Zeek conn log?")
    return out


def capture_episodes(records: list[tuple[float, str, str, str]], inventory: Inventory,
                     offset: float, gap: float = GAP) -> tuple[list[Episode], set[str]]:
    """Malicious records grouped by (label, internal host), split where they pause longer
    than ``gap``; and the internal hosts seen (the capture's workloads)."""
    from pipeline.core.addresses import ip_to_int, local_scope

    def inside(ip: str) -> bool:
        try:
            addr = ip_to_int(ip)
        except ValueError:
            return False
        return local_scope(addr) is None and inventory.is_internal(addr)

    hosts: set[str] = set()
    groups: dict[tuple[str, str], list[tuple[float, str]]] = defaultdict(list)
    for ts, orig, resp, label in records:
        for ip in (orig, resp):
            if inside(ip):
                hosts.add(ip)
        if label:
            host = orig if inside(orig) else resp
            groups[(label, host)].append((ts + offset, orig))
    episodes: list[Episode] = []
    for (label, host), recs in sorted(groups.items()):
        recs.sort()
        parts: list[list[tuple[float, str]]] = [[recs[0]]]
        for r in recs[1:]:
            if r[0] - parts[-1][-1][0] > gap:
                parts.append([])
            parts[-1].append(r)
        for part in parts:
            episodes.append(Episode(
                id=f"{label}-{host}-{len(episodes) + 1:03d}", type=label, malicious=True,
                start=part[0][0], end=part[-1][0], src_ips=frozenset(o for _, o in part),
                hosts=frozenset([host])))
    return episodes, hosts


def run_capture(paths: list[Path], *, audit_days: float, inventory: Inventory,
                internal_cidrs: tuple[str, ...], offset: float = 0.0,
                slice_s: float = SLICE) -> RunResult:
    """Score segflow and the naive detectors on real labeled Zeek conn logs (in time order)."""
    from pipeline.core.normalize import time_offset
    from pipeline.sources import get_parser
    from pipeline.sources.base import parse_file

    t0 = time.perf_counter()
    labels = [r for p in paths for r in read_zeek_labels(p)]
    if not labels:
        raise InputError("the capture has no records")
    episodes, hosts = capture_episodes(labels, inventory, offset)
    tables: list[pa.Table] = []
    rejects: dict[str, int] = defaultdict(int)
    with time_offset(offset):
        for path in paths:
            parser = get_parser("zeek")
            for res in parse_file(path, parser):
                tables.append(res.flows)
                for r in res.rejects:
                    rejects[r.reason] += 1
    flows = pa.concat_tables(tables)
    if not flows.num_rows:
        detail = ", ".join(f"{k} {v:,}" for k, v in rejects.items())
        hint = ("the times look relative to the capture's start: pass --time-offset with when "
                "it began (e.g. its '#open' time)" if "time_relative" in rejects
                else "check that these are Zeek conn logs")
        raise InputError(f"no usable flows in the capture ({detail}); {hint}")
    flows = flows.take(pc.sort_indices(flows, [("start", "ascending")]))
    start = float(pc.min(flows.column("start")).as_py())
    end = float(pc.max(flows.column("start")).as_py())
    settings = CoreSettings(audit_days=audit_days, audit_start=start,
                            internal_cidrs=internal_cidrs)
    h = _Harness(settings, inventory)
    for part in _slices(flows, start + audit_days * DAY, slice_s):
        h.feed(part)
    alerts = h.finish(end)
    eval_days = max(end - (start + audit_days * DAY), 0.0) / DAY
    scores = [score(name, a, episodes, workloads=max(len(hosts), 1), eval_days=eval_days)
              for name, a in alerts.items()]
    label = ", ".join(p.name for p in paths) + (
        f" ({sum(rejects.values()):,} records rejected: "
        + ", ".join(f"{k} {v}" for k, v in rejects.items()) + ")" if rejects else "")
    return RunResult(label, h.flows, scores, time.perf_counter() - t0)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def _secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}s"


def format_results(results: list[RunResult]) -> str:
    """Per estate, then per attack type and overall across estates, for every detector."""
    lines: list[str] = []
    detectors = [s.detector for s in results[0].scores] if results else []
    lines.append("per run (episode recall, incident precision, false incidents per 100 "
                 "workloads per day, median time to detect):")
    for r in results:
        lines.append(f"  {r.label}  ({r.flows:,} flows, {r.seconds:.0f} s)")
        for s in r.scores:
            o = s.overall
            ok = (s.detector == "segflow" and (o.recall or 0) >= TARGETS["recall"]
                  and s.false_per_100_day <= TARGETS["false_per_100_day"]
                  and (o.median_ttd or 0) <= TARGETS["median_ttd_s"])
            mark = ("  targets met" if ok else "  targets NOT met") if s.detector == "segflow" \
                else ""
            lines.append(f"    {s.detector:<15} recall {_pct(o.recall):>5}  precision "
                         f"{_pct(s.precision):>5}  false/100/day {s.false_per_100_day:7.2f}  "
                         f"ttd {_secs(o.median_ttd):>7}  incidents {s.incidents:,}{mark}")
    lines.append("")
    lines.append("per attack type, all runs (recall, median time to detect):")
    types = sorted({t for r in results for s in r.scores for t in s.by_type})
    head = "  " + f"{'type':<24}" + "".join(f"{d:>26}" for d in detectors)
    lines.append(head)
    for t in [*types, "overall"]:
        cells = []
        for d in detectors:
            agg = TypeScore()
            for r in results:
                for s in r.scores:
                    if s.detector != d:
                        continue
                    ts = s.overall if t == "overall" else s.by_type.get(t)
                    if ts is not None:
                        agg.episodes += ts.episodes
                        agg.caught += ts.caught
                        agg.ttd.extend(ts.ttd)
            cells.append(f"{agg.caught}/{agg.episodes} {_pct(agg.recall):>5} "
                         f"{_secs(agg.median_ttd):>7}")
        lines.append("  " + f"{t:<24}" + "".join(f"{c:>26}" for c in cells))
    lines.append("")
    lines.append("false incidents per 100 workloads per day (mean, worst run): " + ", ".join(
        f"{d} {statistics.mean(s.false_per_100_day for r in results for s in r.scores if s.detector == d):.2f}"  # noqa: E501
        f"/{max(s.false_per_100_day for r in results for s in r.scores if s.detector == d):.2f}"
        for d in detectors))
    lines.extend(target_lines(results))
    return "\n".join(lines) + "\n"


def target_lines(results: list[RunResult], detector: str = "segflow") -> list[str]:
    """The issue's targets against ``detector``'s results over every run: overall episode
    recall, the worst run's false incidents per 100 workloads per day, the median time to
    detect over every caught episode; each PASS or FAIL, and the attack types below target."""
    scores = [s for r in results for s in r.scores if s.detector == detector]
    if not scores:
        return []
    overall = TypeScore()
    by_type: dict[str, TypeScore] = defaultdict(TypeScore)
    for s in scores:
        for t, ts in s.by_type.items():
            for agg in (overall, by_type[t]):
                agg.episodes += ts.episodes
                agg.caught += ts.caught
                agg.ttd.extend(ts.ttd)
    worst = max(s.false_per_100_day for s in scores)
    recall, ttd = overall.recall or 0.0, overall.median_ttd

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    low = [f"{t} {_pct(ts.recall)}" for t, ts in sorted(by_type.items())
           if (ts.recall or 0.0) < TARGETS["recall"]]
    slow = [f"{t} {_secs(ts.median_ttd)}" for t, ts in sorted(by_type.items())
            if ts.median_ttd is not None and ts.median_ttd > TARGETS["median_ttd_s"]]
    return [
        "",
        f"targets ({detector}, {len(scores)} runs):",
        f"  episode recall >= {TARGETS['recall']:.0%}: {_pct(recall)} "
        f"{verdict(recall >= TARGETS['recall'])}"
        + (f" (below: {', '.join(low)})" if low else ""),
        f"  false incidents per 100 workloads per day <= {TARGETS['false_per_100_day']:g} in "
        f"every run: worst {worst:.2f} {verdict(worst <= TARGETS['false_per_100_day'])}",
        f"  median time to detect <= {TARGETS['median_ttd_s']:.0f} s: {_secs(ttd)} "
        f"{verdict(ttd is not None and ttd <= TARGETS['median_ttd_s'])}"
        + (f" (slower: {', '.join(slow)})" if slow else ""),
    ]


__all__ = ["SIZES", "EstateSpec", "Evaluation", "RunResult", "capture_episodes", "evaluate",
           "format_results", "load_truth", "read_zeek_labels", "run_capture", "run_estate",
           "run_eval", "target_lines"]
