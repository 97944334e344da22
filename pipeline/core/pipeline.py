"""The core, end to end: enrich → audit/learn → score → aggregate → rules, one batch at a time.

:class:`Pipeline` knows nothing of files, Kafka or ClickHouse: adapters hand it normalised
flow tables and take back :class:`BatchOutput` (edge-minute aggregates as Arrow, violation and
candidate-rule events as dicts). Everything follows event time: the audit phase starts at
``audit_start`` (default: the first flow's start) and lasts ``audit_days``; windows close on
the event-time watermark, never on the wall clock.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.core.baseline import (
    DAY,
    HOUR,
    EdgeBaseline,
    dilate24,
    edge_keys,
    popcount24,
    unpack_keys,
)
from pipeline.core.detect import (
    NEW_EDGE,
    NEW_PORT,
    OFF_HOURS,
    SCAN,
    TYPES,
    VOLUME,
    Agg,
    Candidates,
    ViolationWindows,
)
from pipeline.core.enrich import SERVICE_PORTS, Enriched, Orienter, enrich
from pipeline.core.events import iso, proto_name, rule_event, severity_label, stable_id
from pipeline.core.inventory import DEFAULT_INTERNAL_CIDRS, Inventory
from pipeline.core.records import EDGE_MINUTE
from pipeline.core.rules import derive_rules
from pipeline.core.workloads import WORLD

DATA_PORTS = frozenset({1433, 1521, 3306, 5432, 5984, 6379, 7000, 9042, 9200, 11211, 27017})
ADMIN_PORTS = frozenset({22, 23, 135, 445, 3389, 5900, 5985, 5986})
_TYPE_CODE = {t: i for i, t in enumerate(TYPES)}
SERVICE_CLIENTS_MAX = 8  # known_clients_of_service: the first clients by workload key

EDGE_MINUTE_SCHEMA = EDGE_MINUTE.schema  # declared in pipeline/core/records.py


@dataclass(frozen=True, slots=True)
class CoreSettings:
    """Parameters of the core (the CLI and worker map their config onto this)."""

    audit_days: float = 30.0
    audit_start: float | None = None  # epoch s; None = the first flow's start
    suppress_window: float = 3600.0  # one violation per edge per window (event time)
    lateness: float = 300.0  # how far behind the newest flow a window may still change
    scan_threshold: int = 20  # distinct new targets from one workload in a window → scan
    max_edges: int = 500_000
    max_edges_per_workload: int = 4_096
    max_open_violations: int = 100_000
    off_hours_max_active: int = 16  # edges active in more UTC hours than this are 24/7
    off_hours_min_days: int = 3  # evidence needed before an hour pattern is trusted
    volume_min_bytes: float = 1e6
    # rejected flows from outside the internal ranges are internet background noise that a
    # firewall already stopped: aggregated, but not alerted (unless this is set)
    alert_rejected_external: bool = False
    internal_cidrs: tuple[str, ...] = DEFAULT_INTERNAL_CIDRS

    def __post_init__(self) -> None:
        if not 0 < self.audit_days <= 366:
            raise ValueError("audit_days must be in (0, 366]; 30–90 is the recommended range")
        if self.suppress_window <= 0 or self.lateness < 0:
            raise ValueError("suppress_window must be > 0 and lateness >= 0")


@dataclass(slots=True)
class BatchOutput:
    """What one batch (or the final flush) produced."""

    edge_minutes: pa.Table = field(default_factory=EDGE_MINUTE_SCHEMA.empty_table)
    violations: list[dict[str, Any]] = field(default_factory=list)
    rules: list[dict[str, Any]] = field(default_factory=list)
    flows: int = 0
    audit_flows: int = 0
    enforce_flows: int = 0
    late_audit_flows: int = 0


class Pipeline:
    """Stateful core for one stream of flows (one replay, or one worker's partitions)."""

    def __init__(self, settings: CoreSettings, inventory: Inventory) -> None:
        self.settings = settings
        self.inventory = inventory
        self.workloads = inventory.workloads
        self.orienter = Orienter()
        self.baseline = EdgeBaseline(
            max_edges=settings.max_edges,
            max_edges_per_workload=settings.max_edges_per_workload,
            volume_min_bytes=settings.volume_min_bytes,
        )
        self.windows = ViolationWindows(
            window=settings.suppress_window,
            lateness=settings.lateness,
            scan_threshold=settings.scan_threshold,
            max_open=settings.max_open_violations,
        )
        self.audit_start: float | None = settings.audit_start
        self.rules_emitted = False
        self._pair_ports: dict[int, list[int]] = {}
        self._service_clients: dict[tuple[int, int, int], list[str]] = {}  # → client keys
        self.counts: dict[str, int] = defaultdict(int)

    @property
    def audit_end(self) -> float | None:
        if self.audit_start is None:
            return None
        return self.audit_start + self.settings.audit_days * DAY

    # -- the batch path ------------------------------------------------------------------
    def process(self, flows: pa.Table, *, source_id: str = "", block: int = 0,
                version: int = 0, watermark: float | None = None) -> BatchOutput:
        """Run one normalised flow batch through every stage.

        Violation windows then advance to the batch's newest flow start (replay: time-sorted
        input), or at most to ``watermark`` when given: event time the caller knows every
        source has reached (streaming, where a batch can run ahead of other sources)."""
        out = BatchOutput(flows=flows.num_rows)
        if flows.num_rows == 0:
            return out
        e = enrich(flows, self.inventory, self.orienter)
        if self.audit_start is None:
            self.audit_start = float(e.start.min())
        audit_end = self.audit_end
        assert audit_end is not None
        keys = edge_keys(e.client_wid, e.server_wid, e.service_port, e.proto)
        in_audit = e.start < audit_end
        out.audit_flows = int(in_audit.sum())
        out.enforce_flows = len(e) - out.audit_flows
        learn = in_audit & ~e.rejected
        if learn.any():
            if self.baseline.frozen_:
                out.late_audit_flows = int(learn.sum())
            else:
                self.baseline.partial_fit(keys[learn], e.start[learn], e.bytes[learn],
                                          e.packets[learn])
        violating = np.zeros(len(e), dtype=bool)
        if out.enforce_flows:
            if not self.baseline.frozen_:
                out.rules.extend(self._end_audit())
            violating = self._score(e, keys, ~in_audit)
        out.edge_minutes = self._aggregate(e, keys, in_audit, violating, source_id, block, version)
        newest = float(e.start.max())
        self.windows.advance(newest if watermark is None else min(newest, watermark))
        out.violations.extend(self._events(self.windows.take_forced()))
        out.violations.extend(self._events(self.windows.close()))
        for k in ("flows", "audit_flows", "enforce_flows", "late_audit_flows"):
            self.counts[k] += getattr(out, k)
        self.counts["violations"] += len(out.violations)
        return out

    def flush(self) -> BatchOutput:
        """End of input: close every open window; emit rules if the audit never ended."""
        out = BatchOutput()
        if not self.rules_emitted and self.audit_start is not None:
            out.rules.extend(self._rule_events(final=False))
        out.violations.extend(self._events(self.windows.close(everything=True)))
        self.counts["violations"] += len(out.violations)
        return out

    # -- audit end -----------------------------------------------------------------------
    def _end_audit(self) -> list[dict[str, Any]]:
        self.baseline.freeze()
        self.rebuild_lookups()
        return self._rule_events(final=True)

    def rebuild_lookups(self) -> None:
        """Evidence lookups over the frozen baseline: known ports per pair, and per service
        its first :data:`SERVICE_CLIENTS_MAX` clients by workload key (a property of the data,
        not of learning order or process-local ids, so partitions' lists can be merged)."""
        n = len(self.baseline)
        client, server, port, proto = unpack_keys(self.baseline.keys_[:n])
        pairs: dict[int, set[int]] = defaultdict(set)
        for c, s, p in zip(client.tolist(), server.tolist(), port.tolist(), strict=True):
            pairs[(c << 19) | s].add(p)
        self._pair_ports = {k: sorted(v) for k, v in pairs.items()}
        names = self.workloads.keys()[client].astype(str)
        order = np.lexsort((names, proto, port, server))
        svc = np.stack([server, port, proto], axis=1)[order]
        head = np.r_[True, (svc[1:] != svc[:-1]).any(axis=1)] if n else np.zeros(0, bool)
        starts = np.flatnonzero(head)
        rank = np.arange(n) - starts[np.cumsum(head) - 1]
        keep = rank < SERVICE_CLIENTS_MAX
        kept_names = names[order][keep].tolist()
        sizes = np.minimum(np.diff(np.r_[starts, n]), SERVICE_CLIENTS_MAX)
        ends = np.cumsum(sizes)
        self._service_clients = {
            (int(s), int(p), int(pr)): kept_names[lo:hi]
            for (s, p, pr), lo, hi in zip(svc[starts].tolist(), (ends - sizes).tolist(),
                                          ends.tolist(), strict=True)}

    def service_clients(self) -> dict[tuple[str, int, int], list[str]]:
        """(server key, port, proto) → its first known clients by key (after the audit)."""
        infos = self.workloads.infos
        return {(infos[s].key, p, pr): c for (s, p, pr), c in self._service_clients.items()}

    def _rule_events(self, *, final: bool) -> list[dict[str, Any]]:
        if final:
            self.rules_emitted = True
        rules = self.candidate_rules()
        version = int((self.audit_end or 0) * 1000) if final else int(
            float(self.baseline.last_seen_[: len(self.baseline)].max(initial=0)) * 1000)
        return [rule_event(r, version) for r in rules]

    def candidate_rules(self) -> list[Any]:
        """The current candidate rules (intents), e.g. for rendering policies."""
        return derive_rules(self.baseline, self.workloads, audit_days=self.settings.audit_days,
                            internal_cidrs=self.settings.internal_cidrs,
                            workload_cidrs=self.inventory.workload_cidrs())

    # -- scoring -------------------------------------------------------------------------
    def _score(self, e: Enriched, keys: np.ndarray, enforce: np.ndarray) -> np.ndarray:
        """Find violation candidates among post-audit flows; returns the violating mask."""
        idx = np.flatnonzero(enforce)
        uniq, inv = np.unique(keys[idx], return_inverse=True)
        rows_u = self.baseline.lookup(uniq)
        rows = rows_u[inv]
        violating = np.zeros(len(e), dtype=bool)
        parts: list[tuple[np.ndarray, np.ndarray, list[dict[str, Any] | None] | None]] = []

        unknown = rows < 0
        if not self.settings.alert_rejected_external:
            noise = unknown & e.rejected[idx] & (e.client_wid[idx] == WORLD)
            self.counts["blocked_external_flows"] += int(noise.sum())
            unknown &= ~noise
        if unknown.any():
            known_pair = np.fromiter(
                (int(k >> 24) in self._pair_ports for k in uniq), dtype=bool, count=len(uniq)
            )[inv]
            u_idx = idx[unknown]
            codes = np.where(known_pair[unknown], _TYPE_CODE[NEW_PORT], _TYPE_CODE[NEW_EDGE])
            parts.append((u_idx, codes, None))
            violating[u_idx] = True

        known = (rows >= 0) & ~e.rejected[idx]
        if known.any():
            k_idx, k_rows = idx[known], rows[known]
            mask = self.baseline.hour_mask_[k_rows]
            hour = (e.start[k_idx] // HOUR).astype(np.int64) % 24
            active = popcount24(mask)
            # hours a uniform spread of the edge's audit flows would have covered: an hour
            # pattern is only evidence when the edge used far fewer hours than that
            flows = self.baseline.flows_[k_rows].astype(np.float64)
            uniform_hours = 24.0 * (1.0 - (23.0 / 24.0) ** flows)
            trusted = (
                (active <= self.settings.off_hours_max_active)
                & (self.baseline.days_[k_rows] >= self.settings.off_hours_min_days)
                & (active <= uniform_hours / 2)
            )
            off = trusted & (((dilate24(mask) >> hour) & 1) == 0)
            if off.any():
                o_idx = k_idx[off]
                extra: list[dict[str, Any] | None] = [
                    {"hour": int(h), "usual_hours": _hours(int(m))}
                    for h, m in zip(hour[off], mask[off], strict=True)]
                parts.append((o_idx, np.full(len(o_idx), _TYPE_CODE[OFF_HOURS]), extra))
                violating[o_idx] = True
            over, cum = self.baseline.hourly_volume(k_rows, e.start[k_idx], e.bytes[k_idx])
            if len(over):
                # the flows from the one that crossed its edge's hourly threshold onwards
                s_idx, s_rows, s_bytes = k_idx[over], k_rows[over], cum
                extra = [
                    {"hour_bytes": float(b), "threshold_bytes": float(self.baseline.threshold_[r]),
                     "median_hour_bytes": float(self.baseline.median_hour_bytes_[r])}
                    for r, b in zip(s_rows, s_bytes, strict=True)
                ]
                parts.append((s_idx, np.full(len(s_idx), _TYPE_CODE[VOLUME]), extra))
                violating[s_idx] = True

        for rows_idx, codes, extras in parts:
            self.windows.add(
                Candidates(
                    type_code=codes.astype(np.int64),
                    client=e.client_wid[rows_idx],
                    server=e.server_wid[rows_idx],
                    port=e.service_port[rows_idx],
                    proto=e.proto[rows_idx],
                    start=e.start[rows_idx],
                    bytes=e.bytes[rows_idx],
                    rejected=e.rejected[rows_idx],
                    client_ip=e.client_ip(rows_idx),
                    server_ip=e.server_ip(rows_idx),
                    extra=extras if extras is not None else [None] * len(rows_idx),
                )
            )
        return violating

    # -- aggregates ----------------------------------------------------------------------
    def _aggregate(self, e: Enriched, keys: np.ndarray, in_audit: np.ndarray,
                   violating: np.ndarray, source_id: str, block: int, version: int) -> pa.Table:
        minute = (e.start // 60).astype(np.int64)
        ukeys, kinv = np.unique(keys, return_inverse=True)
        m0 = int(minute.min())
        span = int(minute.max()) - m0 + 1
        combo = kinv.astype(np.int64) * span + (minute - m0)
        groups, ginv = np.unique(combo, return_inverse=True)
        g = len(groups)
        flows = np.bincount(ginv, minlength=g)
        nbytes = np.bincount(ginv, weights=e.bytes, minlength=g)
        packets = np.bincount(ginv, weights=e.packets, minlength=g)
        rejected = np.bincount(ginv, weights=e.rejected, minlength=g)
        viol = np.bincount(ginv, weights=violating, minlength=g)
        audit = np.bincount(ginv, weights=in_audit, minlength=g) > 0
        gkey = ukeys[groups // span]
        gmin = (groups % span + m0) * 60
        client, server, port, proto = unpack_keys(gkey)
        names = {c: pa.array(self.workloads.column(c), pa.string())
                 for c in ("namespace", "app", "kind")}
        ci, si = pa.array(client), pa.array(server)
        columns: dict[str, pa.Array] = {
            "minute": pa.array(gmin, pa.timestamp("s", tz="UTC")),
            "src_namespace": names["namespace"].take(ci),
            "src_app": names["app"].take(ci),
            "dst_namespace": names["namespace"].take(si),
            "dst_app": names["app"].take(si),
            "src_kind": names["kind"].take(ci),
            "dst_kind": names["kind"].take(si),
            "service_port": pa.array(port, pa.uint16()),
            "proto": pa.array(proto, pa.uint8()),
            "phase": pa.array(np.where(audit, "audit", "enforce"), pa.string()),
            "flows": pa.array(flows, pa.uint64()),
            "bytes": pa.array(nbytes.astype(np.uint64), pa.uint64()),
            "packets": pa.array(packets.astype(np.uint64), pa.uint64()),
            "rejected_flows": pa.array(rejected.astype(np.uint64), pa.uint64()),
            "violating_flows": pa.array(viol.astype(np.uint64), pa.uint64()),
            "source_id": pa.array([source_id], pa.string()).take(
                pa.array(np.zeros(g, dtype=np.int64))),
            "block": pa.array(np.full(g, block, dtype=np.uint64), pa.uint64()),
            "version": pa.array(np.full(g, version, dtype=np.uint64), pa.uint64()),
        }
        return EDGE_MINUTE.table_of(columns)

    # -- events --------------------------------------------------------------------------
    def _events(self, aggs: Iterable[Agg]) -> list[dict[str, Any]]:
        return [self._event(a) for a in aggs]

    def _event(self, a: Agg) -> dict[str, Any]:
        infos = self.workloads.infos
        ci = infos[a.client]
        si = infos[a.server] if a.server >= 0 else None
        if a.type == SCAN:
            servers = sorted(infos[s].key for s in a.extra.get("servers", []))
            dst_key = servers[0] if len(servers) == 1 else "multiple"
            dst_ns = si.namespace if si else (infos[a.extra["servers"][0]].namespace
                                              if len(servers) == 1 else "")
            dst_app = infos[a.extra["servers"][0]].app if len(servers) == 1 else "multiple"
        else:
            assert si is not None
            dst_key, dst_ns, dst_app = si.key, si.namespace, si.app
        evidence, reason, score = self._explain(a, ci.key, dst_key)
        vid = stable_id("v", a.type, ci.key, dst_key, a.port, a.proto, int(a.window))
        return {
            "schema_version": 1,
            "id": vid,
            "ts": iso(a.window),
            "type": a.type,
            "severity": {"label": severity_label(score), "score": score},
            "src_ip": a.client_ips[0] if a.client_ips else "",
            "dst_ip": a.server_ips[0] if a.server_ips else "",
            "dst_port": a.port,
            "proto": a.proto,
            "proto_name": proto_name(a.proto),
            "src_workload": ci.key,
            "src_namespace": ci.namespace,
            "src_app": ci.app,
            "dst_workload": dst_key,
            "dst_namespace": dst_ns,
            "dst_app": dst_app,
            "mode": "enforce",
            "reason": reason,
            "evidence": evidence,
            "count": a.count,
            "first_seen": iso(a.first),
            "last_seen": iso(a.last),
            "detector": "edge_baseline",
            "version": int(a.last * 1000) * 1000 + min(a.count, 999),
        }

    def _explain(self, a: Agg, src: str, dst: str) -> tuple[dict[str, Any], str, int]:
        seen: dict[str, Any] = {
            "flows": a.count,
            "bytes": a.bytes,
            "rejected_flows": a.rejected,
            "src_ips": a.client_ips,
            "dst_ips": a.server_ips,
        }
        port = f"{proto_name(a.proto)}/{a.port}"
        outside = a.client == WORLD or self.workloads.infos[a.client].kind == "unknown"
        blocked = a.rejected == a.count
        if a.type == NEW_EDGE:
            expected: dict[str, Any] = {"known_clients_of_service": list(
                self._service_clients.get((a.server, a.port, a.proto), []))}
            score = 60 + (15 if a.port in DATA_PORTS or a.port in ADMIN_PORTS else 0)
            score += 10 if outside else 0
            reason = f"{src} connected to {dst} on {port}, an edge never seen during the audit."
        elif a.type == NEW_PORT:
            ports = self._pair_ports.get((a.client << 19) | a.server, [])
            expected = {"known_ports": ports}
            score = 50 + (15 if a.port not in SERVICE_PORTS else 0)
            score += 10 if a.port in ADMIN_PORTS else 0
            reason = (f"{src} reached {dst} on {port}; during the audit it only used "
                      f"{', '.join(map(str, ports[:6])) or 'other ports'}.")
        elif a.type == SCAN:
            targets = int(a.extra.get("targets", 0))
            ports_seen = a.extra.get("ports", [])
            seen["distinct_targets"] = targets
            seen["ports"] = ports_seen[:32]
            seen["dst_workloads"] = sorted(self.workloads.infos[s].key
                                           for s in a.extra.get("servers", []))[:16]
            expected = {"max_new_targets_per_window": self.settings.scan_threshold}
            score = min(95, 70 + targets // 20)
            reason = (f"{src} tried {targets} new destination/port pairs within "
                      f"{int(self.settings.suppress_window // 60)} min (port scan or sweep).")
        elif a.type == VOLUME:
            hb = float(a.extra.get("hour_bytes", a.bytes))
            thr = float(a.extra.get("threshold_bytes", 0.0))
            med = float(a.extra.get("median_hour_bytes", 0.0))
            ratio = hb / med if med > 0 else math.inf
            seen["hour_bytes"] = int(hb)
            expected = {"threshold_bytes_per_hour": int(thr), "median_bytes_per_hour": int(med)}
            score = int(min(95, 60 + 10 * math.log10(max(ratio, 1.0))))
            reason = (f"{src} sent {_human(hb)} to {dst} on {port} within an hour, "
                      f"~{ratio:.0f}x its usual hourly volume.")
        else:  # OFF_HOURS
            hours = a.extra.get("usual_hours", [])
            seen["hour_utc"] = a.extra.get("hour")
            expected = {"usual_hours_utc": hours}
            score = 55 + (10 if a.port in DATA_PORTS or a.port in ADMIN_PORTS else 0)
            reason = (f"{src} used its edge to {dst} on {port} at {a.extra.get('hour')}:00 UTC; "
                      f"during the audit it was only active at hours {_ranges(hours)} UTC.")
        if blocked and a.type != SCAN:
            score -= 20
            reason += " All attempts were rejected."
        return {"expected": expected, "seen": seen}, reason, max(0, min(100, score))


def _hours(mask: int) -> list[int]:
    return [h for h in range(24) if mask >> h & 1]


def _ranges(hours: list[int]) -> str:
    if not hours:
        return "none"
    out, start, prev = [], hours[0], hours[0]
    for h in [*hours[1:], None]:
        if h is not None and h == prev + 1:
            prev = h
            continue
        out.append(f"{start:02d}" if start == prev else f"{start:02d}-{prev:02d}")
        if h is not None:
            start = prev = h
    return ", ".join(out)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:.0f} {unit}"
        n /= 1000
    return f"{n:.0f} PB"


__all__ = ["EDGE_MINUTE_SCHEMA", "SERVICE_CLIENTS_MAX", "BatchOutput", "CoreSettings", "Pipeline"]
