"""The core, end to end: enrich → audit/learn → score → aggregate → rules, one batch at a time.

:class:`Pipeline` knows nothing of files, Kafka or ClickHouse: adapters hand it normalised
flow tables and take back :class:`BatchOutput` (edge-minute aggregates as Arrow, violation and
candidate-rule events as dicts). Everything follows event time: the audit phase starts at
``audit_start`` (default: the first flow's start) and lasts ``audit_days``; windows close on
the event-time watermark, never on the wall clock.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np
import pyarrow as pa

from pipeline.core.audit import (
    AuditWatch,
    min_days,
    readiness_rows,
    ready_days,
    scan_warmup,
    trusted_rows,
)
from pipeline.core.baseline import (
    DAY,
    HOUR,
    EdgeBaseline,
    dilate24,
    edge_keys,
    popcount24,
    unpack_keys,
    whole_units,
)
from pipeline.core.behaviour import BehaviourGate, BehaviourModel
from pipeline.core.detect import (
    BEHAVIOUR,
    NEW_EDGE,
    NEW_PORT,
    OFF_HOURS,
    PROVISIONAL_EDGE,
    TYPES,
    VOLUME,
    Agg,
    Candidates,
    ViolationWindows,
)
from pipeline.core.enrich import Enriched, Orienter, enrich
from pipeline.core.events import (
    KnownTraffic,
    audit_finding_event,
    hours_of,
    rule_event,
    violation_event,
)
from pipeline.core.hostdetect import HostBehaviour, HostParams
from pipeline.core.hosts import HostFlows, empty_features
from pipeline.core.hostsets import unique_inverse
from pipeline.core.incidents import Incidents, parse_criticality
from pipeline.core.inventory import Inventory
from pipeline.core.records import APP_READINESS, EDGE_MINUTE
from pipeline.core.rules import derive_rules
from pipeline.core.settings import CoreSettings
from pipeline.core.workloads import EXTERNAL_KINDS, WORLD, Workloads

_TYPE_CODE = {t: i for i, t in enumerate(TYPES)}
SERVICE_CLIENTS_MAX = 8  # known_clients_of_service: the first clients by workload key
_PHASES = pa.array(["audit", "enforce"], pa.string())



@dataclass(slots=True)
class BatchOutput:
    """What one batch (or the final flush) produced."""

    edge_minutes: pa.Table = field(default_factory=EDGE_MINUTE.schema.empty_table)
    violations: list[dict[str, Any]] = field(default_factory=list)
    rules: list[dict[str, Any]] = field(default_factory=list)
    incidents: list[dict[str, Any]] = field(default_factory=list)  # changed ones, versioned
    readiness: pa.Table = field(default_factory=APP_READINESS.schema.empty_table)
    flows: int = 0
    audit_flows: int = 0
    enforce_flows: int = 0
    late_audit_flows: int = 0
    # per-(source host, window) feature rows of the host windows that closed (see
    # pipeline.core.hosts: FEATURES, HostWindows.take_closed)
    host_windows: dict[str, np.ndarray] = field(default_factory=empty_features)


def _host_params(s: CoreSettings) -> HostParams:
    return HostParams(window=s.host_window, fan_out_min=s.host_fan_out_min,
                      failures_min=s.host_failures_min, volume_min_bytes=s.volume_min_bytes,
                      beacon_min_beats=s.beacon_min_beats, beacon_max_jitter=s.beacon_max_jitter,
                      max_hosts=s.max_hosts)


def _behaviour_gate(s: CoreSettings) -> BehaviourGate | None:
    """The behaviour model's gate: fitted on the audit windows, shipped (a folder), or off."""
    if s.behaviour_model.lower() == "off":
        return None
    model: BehaviourModel | None = None
    if s.behaviour_model:
        from pathlib import Path

        from pipeline.storage.models import load_model

        model = load_model(Path(s.behaviour_model))[0]
    return BehaviourGate(window=s.host_window, delay=s.lateness,
                         type_code=TYPES.index(BEHAVIOUR), model=model)


def _behaviour_params(s: CoreSettings, gate: BehaviourGate) -> dict[str, Any]:
    return {"window": s.host_window, "delay": s.lateness, "type_code": gate.type_code,
            "model": gate.model_ if gate.shipped else None}


def _baseline_params(s: CoreSettings) -> dict[str, Any]:
    return {"max_edges": s.max_edges, "max_edges_per_workload": s.max_edges_per_workload,
            "volume_min_bytes": s.volume_min_bytes, "lateness": s.lateness}


def _incidents_params(s: CoreSettings) -> dict[str, Any]:
    return {"window": s.incident_window, "hold": s.suppress_window + s.lateness,
            "criticality": parse_criticality(s.criticality_labels),
            "max_open": s.max_open_incidents}


def _windows_params(s: CoreSettings) -> dict[str, Any]:
    return {"window": s.suppress_window, "lateness": s.lateness,
            "scan_threshold": s.scan_threshold, "max_open": s.max_open_violations,
            "detect_lateness": s.detection_lateness}


def _audit_params(s: CoreSettings) -> dict[str, Any]:
    return {"window": s.suppress_window, "lateness": s.lateness,
            "scan_threshold": s.scan_threshold, "warmup": scan_warmup(s)}


class Pipeline:
    """Stateful core for one stream of flows (one replay, or one worker's partitions).

    Its parts (:class:`EdgeBaseline`, :class:`ViolationWindows`, :class:`Orienter`, the
    inventory's :class:`Workloads`) each own their learned state; :meth:`state` composes
    theirs and :meth:`from_state` restores it. Drive it with :meth:`process` per batch,
    :meth:`advance` when event time moves without flows, and :meth:`flush` at the end."""

    def __init__(self, settings: CoreSettings, inventory: Inventory) -> None:
        self.settings = settings
        self.inventory = inventory
        self.orienter = Orienter()
        self.baseline = EdgeBaseline(**_baseline_params(settings))
        self.windows = ViolationWindows(**_windows_params(settings))
        self.incidents = Incidents(**_incidents_params(settings))
        self.hosts = HostBehaviour(_host_params(settings))
        self.behaviour = _behaviour_gate(settings)
        self._external: tuple[Any, np.ndarray] = (None, np.zeros(0, dtype=bool))
        self.counts: dict[str, int] = defaultdict(int)
        self._audit_start: float | None = settings.audit_start
        self._rules_emitted = False
        self._known = KnownTraffic()
        self.audit = AuditWatch(**_audit_params(settings))
        self._trusted = np.zeros(0, dtype=bool)  # per learned edge, fixed at the audit's end
        self._finding = np.zeros(0, dtype=bool)  # per learned edge: part of an audit finding
        self._readiness_days = 0  # audit days whose readiness rows were emitted
        self._pending_readiness: list[pa.Table] = []
        self.readiness_source = ""  # app_readiness.source: "" (replay) or the partition

    @property
    def workloads(self) -> Workloads:
        """The workload registry (the inventory's): wid → names."""
        return self.inventory.workloads

    @property
    def audit_start(self) -> float | None:
        """Event time the audit starts (settings, :meth:`start_audit` or the first flow)."""
        return self._audit_start

    @property
    def audit_end(self) -> float | None:
        if self._audit_start is None:
            return None
        return self._audit_start + self.settings.audit_days * DAY

    @property
    def audit_ended(self) -> bool:
        """The baseline is frozen: flows are scored, no longer learned."""
        return self.baseline.frozen_

    def start_audit(self, t: float) -> None:
        """Fix the audit start at ``t`` unless it is already known (from the settings, an
        earlier call, a snapshot or a first flow)."""
        if self._audit_start is None:
            self._audit_start = float(t)

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
        self.start_audit(float(e.start.min()))
        audit_end = self.audit_end
        assert audit_end is not None
        keys = edge_keys(e.client_wid, e.server_wid, e.service_port, e.proto)
        in_audit = e.start < audit_end
        out.audit_flows = int(in_audit.sum())
        out.enforce_flows = len(e) - out.audit_flows
        local = e.local  # broadcast/multicast/link-local: aggregated, never learned or alerted
        if local.any():
            self.counts["local_scope_flows"] += int(local.sum())
        learn = in_audit & ~e.rejected & ~local
        host_rows = ~local & ~self._external_mask()[e.client_wid]
        new_edge = np.zeros(len(e), dtype=bool)  # after the audit: set by _score
        if learn.any():
            if self.baseline.frozen_:
                out.late_audit_flows = int(learn.sum())
            else:
                newest = float(e.start.max())
                n0 = len(self.baseline)
                wm = newest if watermark is None else min(newest, watermark)
                self.baseline.partial_fit(
                    keys[learn], e.start[learn], e.bytes[learn], e.packets[learn], watermark=wm)
                l_idx = np.flatnonzero(learn)
                self.audit.observe(self.baseline, keys[l_idx], e.start[l_idx],
                                   lambda sel: e.client_ip(l_idx[sel]),
                                   lambda sel: e.server_ip(l_idx[sel]), self._audit_start,
                                   admitted_from=n0)
                self._audit_progress(wm)
        violating = np.zeros(len(e), dtype=bool)
        if out.enforce_flows:
            out.rules.extend(self.end_audit())
            violating = self._score(e, keys, ~in_audit & ~local, new_edge)
        out.edge_minutes = self._aggregate(e, keys, in_audit, violating, source_id, block, version)
        newest = float(e.start.max())
        wm = newest if watermark is None else min(newest, watermark)
        self.hosts.add(_host_flows(e, keys, new_edge, np.flatnonzero(host_rows)))
        out.host_windows = self._advance_hosts(wm)
        self.windows.advance(wm)
        out.violations.extend(self.drain_events())
        self._take_audit(out)
        for k in ("flows", "audit_flows", "enforce_flows", "late_audit_flows"):
            self.counts[k] += getattr(out, k)
        return self._with_incidents(out)

    def advance(self, t: float) -> BatchOutput:
        """Move event time to ``t`` without flows: end the audit once ``t`` passes its end and
        close the violation windows behind the watermark — what :meth:`process` does after a
        batch whose newest flow starts at ``t`` (streaming: a partition's watermark moved)."""
        out = BatchOutput()
        end = self.audit_end
        if end is not None and t >= end:
            out.rules.extend(self.end_audit())
        self.baseline.advance(t)
        out.host_windows = self._advance_hosts(t)
        if not self.baseline.frozen_:
            self._audit_progress(t)
        self.windows.advance(t)
        out.violations.extend(self.drain_events())
        self._take_audit(out)
        return self._with_incidents(out)

    def drain_events(self) -> list[dict[str, Any]]:
        """Violation events of the windows that are done: closed early by the bound on open
        windows, then those that ended before the watermark (each returned once)."""
        events = self._events(self.windows.take_forced())
        events.extend(self._events(self.windows.close()))
        self.counts["violations"] += len(events)
        return events

    def flush(self) -> BatchOutput:
        """End of input: close every open window; emit rules if the audit never ended."""
        out = BatchOutput()
        if not self.baseline.frozen_ and self._audit_start is not None:
            end = self.audit_end
            assert end is not None
            self.audit.check(self.baseline, end, self._audit_start, end, everything=True)
            n = len(self.baseline)
            last = float(self.baseline.last_seen_[:n].max()) if n else self._audit_start
            self._emit_readiness(int((last - self._audit_start) // DAY) + 1, from_day=0,
                                 version=int(last * 1000) + 1)
        if not self._rules_emitted and self._audit_start is not None:
            out.rules.extend(self._rule_events(final=False))
        out.host_windows = self._advance_hosts(float("inf"), everything=True)
        out.violations.extend(self._events(self.windows.close(everything=True)))
        self.counts["violations"] += len(out.violations)
        self._take_audit(out)
        return self._with_incidents(out)

    def _with_incidents(self, out: BatchOutput) -> BatchOutput:
        """Group ``out``'s violations (new or updated) into incidents; ``out.incidents``
        gets the incidents they changed (pipeline/core/incidents.py)."""
        infos = self.workloads.infos

        def labels_of(namespace: str, app: str) -> tuple[tuple[str, str], ...]:
            wid = self.workloads.lookup(namespace, app)
            return infos[wid].labels if wid is not None else ()

        out.incidents.extend(self.incidents.absorb(out.violations, labels_of))
        self.incidents.advance(self.windows.watermark_)
        return out

    def _first_seen(self, keys: np.ndarray) -> np.ndarray:
        """First flow time the baseline knows for each edge key (inf if unknown)."""
        uniq, inv = np.unique(keys, return_inverse=True)
        rows = self.baseline.lookup(uniq)
        if not (rows >= 0).any():
            return np.full(len(keys), np.inf)
        return np.where(rows >= 0, self.baseline.first_seen_[np.maximum(rows, 0)], np.inf)[inv]

    def _external_mask(self) -> np.ndarray:
        """Per wid: the workload is outside (world, listed external): its addresses are
        internet clients, not hosts of the estate, so they get no per-host state."""
        kind = self.workloads.column("kind")
        if self._external[0] is not kind:
            self._external = (kind, np.isin(kind, list(EXTERNAL_KINDS)))
        return self._external[1]

    def _advance_hosts(self, t: float, *, everything: bool = False) -> dict[str, np.ndarray]:
        """Per-host detectors up to event time ``t`` minus the detection lateness (their
        candidates go to the violation windows); returns the host windows that ``t`` minus
        the lateness closed (feature rows)."""
        st = self.settings
        watch = np.inf if self._audit_start is None else self._audit_start + scan_warmup(st)
        cands, feats = self.hosts.advance(t - st.detection_lateness, t - st.lateness,
                                          self.audit_end, everything=everything,
                                          first_seen=self._first_seen, watch_from=watch)
        for c in cands:
            self._add_candidates(c)
        for fd in self.hosts.take_findings():  # per-host detectors' audit-time findings
            self.audit.mark(fd.kind, fd.app, fd.window, keys=fd.keys, first=fd.first,
                            last=fd.last, count=fd.count, client_ips=fd.client_ips,
                            server_ips=fd.server_ips, port=fd.port, proto=fd.proto,
                            extra={"peers": fd.peers, "threshold": fd.threshold})
        if self.behaviour is not None:
            infos = self.workloads.infos
            found = self.behaviour.step(feats, lambda wid: infos[wid].key)
            if found is not None:
                rows = found.pop("rows")
                self.windows.add(Candidates(
                    client=np.asarray(feats["app"])[rows].astype(np.int64),
                    bytes=np.asarray(feats["bytes_out"])[rows].astype(np.int64),
                    rejected=np.zeros(len(rows), dtype=bool), **found))
        return feats

    # -- audit findings and readiness ------------------------------------------------------
    def _audit_progress(self, t: float) -> None:
        """During the audit, event time reached ``t``: look for findings in the windows that
        closed, and emit the readiness rows of the audit days that closed."""
        start, end = self._audit_start, self.audit_end
        if start is None or end is None or not np.isfinite(t):
            return
        self.audit.check(self.baseline, t, start, end)
        days = int(min((t - self.settings.lateness - start) // DAY, -(-self.settings.audit_days
                                                                     // 1)))
        if days > self._readiness_days:
            self._emit_readiness(days, from_day=self._readiness_days,
                                 version=int((start + days * DAY) * 1000))

    def _emit_readiness(self, days: int, *, from_day: int, version: int) -> None:
        start, end = self._audit_start, self.audit_end
        assert start is not None and end is not None
        s = self.settings
        rows = readiness_rows(self.baseline, self.workloads, audit_start=start, audit_end=end,
                              days=days, source=self.readiness_source,
                              max_new=s.readiness_max_new_edges, need=ready_days(s),
                              version=version, from_day=from_day)
        self._readiness_days = max(self._readiness_days, days)
        if rows.num_rows:
            self._pending_readiness.append(rows)

    def _take_audit(self, out: BatchOutput) -> None:
        """Move audit findings and readiness rows produced so far into ``out``."""
        st = self.settings
        found = [audit_finding_event(a, self.workloads, self._known,
                                     scan_threshold=st.scan_threshold,
                                     suppress_window=st.suppress_window,
                                     lateness=st.lateness)
                 for a in self.audit.take()]
        if found:
            self.counts["audit_findings"] += len(found)
            out.violations.extend(found)
        if self._pending_readiness:
            tables = [out.readiness, *self._pending_readiness] if out.readiness.num_rows \
                else self._pending_readiness
            out.readiness = pa.concat_tables(tables)
            self._pending_readiness = []

    def _fix_trust(self) -> None:
        self._finding = self.audit.finding_rows(self.baseline)
        self._trusted = trusted_rows(self.baseline, self.settings, self._finding)

    def trusted(self) -> np.ndarray:
        """Per learned edge: trusted (allow rule) or provisional (see
        :mod:`pipeline.core.audit`); fixed when the audit ends."""
        if self.baseline.frozen_ and len(self._trusted) == len(self.baseline):
            return self._trusted
        return trusted_rows(self.baseline, self.settings, self.audit.finding_rows(self.baseline))

    def _add_candidates(self, c: Candidates) -> None:
        """Rule-based candidates into the violation windows (and to the behaviour model,
        which only ever corroborates them)."""
        self.windows.add(c)
        if self.behaviour is not None:
            self.behaviour.note(c.type_code, c.start, c.client_ip, c.server, c.port, c.proto,
                                c.server_ip)

    # -- audit end -----------------------------------------------------------------------
    def end_audit(self) -> list[dict[str, Any]]:
        """End the audit now (freeze the baseline) and return the candidate-rule events;
        nothing if it has ended already."""
        if self.baseline.frozen_:
            return []
        start, end = self._audit_start, self.audit_end
        if start is not None and end is not None:
            self.audit.check(self.baseline, end, start, end, everything=True)
            self._emit_readiness(-int(-self.settings.audit_days // 1), from_day=0,
                                 version=int(end * 1000) + 1)
        self.baseline.freeze()
        self._fix_trust()
        self.counts["provisional_edges"] = int((~self._trusted).sum())
        self._known = self._known_traffic()
        return self._rule_events(final=True)

    def _known_traffic(self) -> KnownTraffic:
        """Evidence lookups over the frozen baseline: known ports per pair, and per service
        its first :data:`SERVICE_CLIENTS_MAX` clients by workload key (a property of the data,
        not of learning order or process-local ids, so partitions' lists can be merged)."""
        n = len(self.baseline)
        if not n:
            return KnownTraffic()
        client, server, port, proto = unpack_keys(self.baseline.keys_[:n])
        pairs: dict[int, set[int]] = defaultdict(set)
        for c, s, p in zip(client.tolist(), server.tolist(), port.tolist(), strict=True):
            pairs[(c << 19) | s].add(p)
        names = self.workloads.keys()[client].astype(str)
        order = np.lexsort((names, proto, port, server))
        svc = np.stack([server, port, proto], axis=1)[order]
        head = np.r_[True, (svc[1:] != svc[:-1]).any(axis=1)]
        starts = np.flatnonzero(head)
        rank = np.arange(n) - starts[np.cumsum(head) - 1]
        keep = rank < SERVICE_CLIENTS_MAX
        kept_names = names[order][keep].tolist()
        sizes = np.minimum(np.diff(np.r_[starts, n]), SERVICE_CLIENTS_MAX)
        ends = np.cumsum(sizes)
        return KnownTraffic(
            pair_ports={k: sorted(v) for k, v in pairs.items()},
            service_clients={
                (int(s), int(p), int(pr)): kept_names[lo:hi]
                for (s, p, pr), lo, hi in zip(svc[starts].tolist(), (ends - sizes).tolist(),
                                              ends.tolist(), strict=True)})

    def service_clients(self) -> dict[tuple[str, int, int], list[str]]:
        """(server key, port, proto) → its first known clients by key (after the audit)."""
        infos = self.workloads.infos
        return {(infos[s].key, p, pr): c for (s, p, pr), c in self._known.service_clients.items()}

    def _rule_events(self, *, final: bool) -> list[dict[str, Any]]:
        if final:
            self._rules_emitted = True
        rules = self.candidate_rules()
        n = len(self.baseline)
        version = int((self.audit_end or 0) * 1000) if final else int(
            float(self.baseline.last_seen_[:n].max(initial=0) if n else 0) * 1000)
        return [rule_event(r, version) for r in rules]

    def candidate_rules(self) -> list[Any]:
        """The current candidate rules (intents), e.g. for rendering policies."""
        return derive_rules(self.baseline, self.workloads, audit_days=self.settings.audit_days,
                            internal_cidrs=self.settings.internal_cidrs,
                            workload_cidrs=self.inventory.workload_cidrs(),
                            trusted=self.trusted())

    # -- state ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The learned state (not the settings or the inventory's entries): each part's
        :meth:`state` plus the audit start and counters; numpy arrays and JSON values."""
        return {
            "audit_start": self._audit_start,
            "rules_emitted": self._rules_emitted,
            "counts": dict(self.counts),
            "workloads": self.workloads.state(),
            "baseline": self.baseline.state(),
            "windows": self.windows.state(),
            "incidents": self.incidents.state(),
            "listeners": self.orienter.state(),
            "hosts": self.hosts.state(),
            "audit": self.audit.state(),
            "readiness_days": self._readiness_days,
            **({"behaviour": self.behaviour.state()} if self.behaviour is not None else {}),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], settings: CoreSettings,
                   inventory: Inventory) -> Self:
        """A pipeline with ``settings`` and the learned ``state``; ``inventory`` is switched
        to the snapshot's workload registry so that wids match it."""
        inventory.use_workloads(Workloads.from_state(
            state["workloads"], max_size=inventory.workloads.max_size))
        p = cls(settings, inventory)
        p._audit_start = state["audit_start"]
        p._rules_emitted = bool(state["rules_emitted"])
        p.counts.update(state["counts"])
        p.baseline = EdgeBaseline.from_state(state["baseline"], **_baseline_params(settings))
        p.windows = ViolationWindows.from_state(state["windows"], **_windows_params(settings))
        p.incidents = Incidents.from_state(state.get("incidents"), **_incidents_params(settings))
        p.orienter = Orienter.from_state(state["listeners"])
        if "hosts" in state:
            p.hosts = HostBehaviour.from_state(state["hosts"], _host_params(settings))
        p.audit = AuditWatch.from_state(state.get("audit"), **_audit_params(settings))
        p._readiness_days = int(state.get("readiness_days", 0))
        if p.behaviour is not None and "behaviour" in state:
            p.behaviour = BehaviourGate.from_state(state["behaviour"],
                                                   **_behaviour_params(settings, p.behaviour))
        if p.baseline.frozen_:
            p._known = p._known_traffic()
            p._fix_trust()
        return p

    # -- scoring -------------------------------------------------------------------------
    def _score(self, e: Enriched, keys: np.ndarray, enforce: np.ndarray,
               new_edge: np.ndarray) -> np.ndarray:
        """Find violation candidates among post-audit flows; returns the violating mask and
        marks the flows of edges the baseline does not know in ``new_edge``."""
        idx = np.flatnonzero(enforce)
        uniq, inv = np.unique(keys[idx], return_inverse=True)
        rows_u = self.baseline.lookup(uniq)
        rows = rows_u[inv]
        new_edge[idx] = rows < 0
        violating = np.zeros(len(e), dtype=bool)
        parts: list[tuple[np.ndarray, np.ndarray, list[dict[str, Any] | None] | None]] = []

        unknown = rows < 0
        if not self.settings.alert_rejected_external:
            noise = unknown & e.rejected[idx] & (e.client_wid[idx] == WORLD)
            self.counts["blocked_external_flows"] += int(noise.sum())
            unknown &= ~noise
        if unknown.any():
            known_pair = np.fromiter(
                (int(k >> 24) in self._known.pair_ports for k in uniq), dtype=bool, count=len(uniq)
            )[inv]
            u_idx = idx[unknown]
            codes = np.where(known_pair[unknown], _TYPE_CODE[NEW_PORT], _TYPE_CODE[NEW_EDGE])
            parts.append((u_idx, codes, None))
            violating[u_idx] = True

        known = (rows >= 0) & ~e.rejected[idx]
        weak = np.zeros(len(idx), dtype=bool)
        weak[known] = ~self._trusted[rows[known]]
        if weak.any():
            w_idx, w_rows = idx[weak], rows[weak]
            finding = self._finding
            st = self.settings
            lo = {"min_days": min_days(st), "min_flows": st.trust_min_flows}
            days, flows = self.baseline.days_[w_rows], self.baseline.flows_[w_rows]
            extra_w: list[dict[str, Any] | None] = [
                {"audit_days": int(d), "audit_flows": int(f), "audit_finding": bool(fd), **lo}
                for d, f, fd in zip(days, flows, finding[w_rows], strict=True)]
            parts.append((w_idx, np.full(len(w_idx), _TYPE_CODE[PROVISIONAL_EDGE]), extra_w))
            violating[w_idx] = True
            known &= ~weak
        if known.any():
            k_idx, k_rows = idx[known], rows[known]
            mask = self.baseline.hour_mask_[k_rows]
            hour = whole_units(e.start[k_idx], HOUR) % 24
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
                    {"hour": int(h), "usual_hours": hours_of(int(m))}
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
            self._add_candidates(
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
        """Edge-minute rows of the batch, ordered by (edge key, minute). Names are looked up
        once per distinct workload of the batch, not per row or per registered workload.

        (Two sorts stay (``unique_inverse``): measured against one sort of both keys (two
        stable radix passes) and a dense (edge, minute) table, they cost as much or less.)"""
        minute = whole_units(e.start, 60)
        ukeys, kinv = unique_inverse(keys)
        m0 = int(minute.min())
        span = int(minute.max()) - m0 + 1
        combo = kinv.astype(np.int64) * span + (minute - m0)
        groups, ginv = unique_inverse(combo)
        g = len(groups)
        flows = np.bincount(ginv, minlength=g)
        nbytes = np.bincount(ginv, weights=e.bytes, minlength=g)
        packets = np.bincount(ginv, weights=e.packets, minlength=g)
        rejected = np.bincount(ginv, weights=e.rejected, minlength=g)
        viol = np.bincount(ginv, weights=violating, minlength=g)
        audit = np.bincount(ginv, weights=in_audit, minlength=g) > 0
        gk = groups // span  # the group's edge (index into ukeys)
        gmin = (groups % span + m0) * 60
        client, server, port, proto = unpack_keys(ukeys)
        wids = np.unique(np.concatenate([client, server]))
        infos = self.workloads.infos
        picked = [infos[w] for w in wids.tolist()]
        names = {c: pa.array([getattr(i, c) for i in picked], pa.string())
                 for c in ("namespace", "app", "kind")}
        ci = pa.array(np.searchsorted(wids, client)[gk])
        si = pa.array(np.searchsorted(wids, server)[gk])
        columns: dict[str, pa.Array] = {
            "minute": pa.array(gmin, pa.timestamp("s", tz="UTC")),
            "src_namespace": names["namespace"].take(ci),
            "src_app": names["app"].take(ci),
            "dst_namespace": names["namespace"].take(si),
            "dst_app": names["app"].take(si),
            "src_kind": names["kind"].take(ci),
            "dst_kind": names["kind"].take(si),
            "service_port": pa.array(port[gk], pa.uint16()),
            "proto": pa.array(proto[gk], pa.uint8()),
            "phase": _PHASES.take(pa.array(np.where(audit, 0, 1).astype(np.int8))),
            "flows": pa.array(flows, pa.uint64()),
            "bytes": pa.array(nbytes.astype(np.uint64), pa.uint64()),
            "packets": pa.array(packets.astype(np.uint64), pa.uint64()),
            "rejected_flows": pa.array(rejected.astype(np.uint64), pa.uint64()),
            "violating_flows": pa.array(viol.astype(np.uint64), pa.uint64()),
            "source_id": pa.array([source_id], pa.string()).take(
                pa.array(np.zeros(g, dtype=np.int8))),
            "block": pa.array(np.full(g, block, dtype=np.uint64), pa.uint64()),
            "version": pa.array(np.full(g, version, dtype=np.uint64), pa.uint64()),
        }
        return EDGE_MINUTE.table_of(columns)

    # -- events ------------------------------------------------------------------------
    def _events(self, aggs: Iterable[Agg]) -> list[dict[str, Any]]:
        st = self.settings
        return [violation_event(a, self.workloads, self._known, scan_threshold=st.scan_threshold,
                                suppress_window=st.suppress_window,
                                detection_lateness=st.detection_lateness) for a in aggs]


def _host_flows(e: Enriched, keys: np.ndarray, new_edge: np.ndarray, rows: np.ndarray
                ) -> HostFlows:
    """The columns the per-host state reads, for ``rows`` of an enriched batch."""
    return HostFlows(
        start=e.start[rows], host=e.client_host[rows], peer=e.server_host[rows],
        app=e.client_wid[rows].astype(np.int64), peer_app=e.server_wid[rows].astype(np.int64),
        port=e.service_port[rows].astype(np.int32), proto=e.proto[rows].astype(np.int16),
        bytes=e.bytes[rows].astype(np.int64), rejected=e.rejected[rows],
        failed=e.rejected[rows] | e.unanswered[rows], new_edge=new_edge[rows],
        edge=keys[rows].astype(np.int64))


__all__ = ["SERVICE_CLIENTS_MAX", "BatchOutput", "Pipeline"]
