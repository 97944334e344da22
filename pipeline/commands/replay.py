"""File replay: the batch adapter around the core (files in; store, JSONL and YAML out).

Each file is parsed in line blocks; each block is one core batch whose aggregates carry a
key made from the input's content (:func:`content_key`), not its path, so replaying the same
flows again — from the same file or a copy anywhere — replaces rather than doubles rows in
the store. Output files are staged and put in place only when the whole run succeeded
(:class:`~pipeline.storage.files.Outputs`).

Identity: an end of a flow is named by the flow source when it carries identities (Hubble
endpoints, GKE details in GCP logs, goflow2's Kubernetes fields, canonical
``src_workload``/``dst_workload``) — that identity wins — otherwise by the inventory entry
valid at the flow's time; internal addresses neither names become ``unknown:<ip>``. The
inventory is optional for sources that carry identities; for the others replay refuses to
run without a non-empty one, since every internal address would be unknown.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.commands.progress import DEFAULT_EVERY, Progress
from pipeline.core.audit import AppReadiness, readiness
from pipeline.core.columns import Reject
from pipeline.core.inventory import Inventory
from pipeline.core.normalize import shifted
from pipeline.core.ocsf import violation_formatter
from pipeline.core.pipeline import BatchOutput, Pipeline
from pipeline.core.records import APP_READINESS
from pipeline.core.settings import CoreSettings
from pipeline.errors import InputError, StorageError
from pipeline.sources import ALIASES, detect_format, get_parser
from pipeline.sources.base import open_binary, parse_file
from pipeline.storage.files import Outputs
from pipeline.storage.writer import StoreWriter

STORE_ROWS = 100_000  # rows (aggregates + events) per insert; one more sealed batch may wait
# formats whose records can name the workload at each end (see the module docstring)
IDENTITY_FORMATS = frozenset({"hubble", "gcp-vpc", "goflow2", "canonical"})
INVENTORY_HINT = "pass --inventory FILE (JSONL or CSV of ip or cidr → app, namespace; see README)"


@dataclass
class ReplaySummary:
    """What a replay did, for the closing screen and for tests."""

    files: int = 0
    records: int = 0  # = flows + rejected + skipped (every non-blank line of a line format)
    flows: int = 0
    rejected: int = 0
    reject_reasons: Counter[str] = field(default_factory=Counter)
    skip_reasons: Counter[str] = field(default_factory=Counter)  # lines that are not flows
    audit_flows: int = 0
    enforce_flows: int = 0
    edges: int = 0
    workloads: int = 0
    violations: list[dict[str, Any]] = field(default_factory=list)  # final version per id
    violation_versions: int = 0  # violation events emitted (first emissions and updates)
    rules: list[dict[str, Any]] = field(default_factory=list)
    incidents: dict[str, dict[str, Any]] = field(default_factory=dict)  # latest per id
    edge_minute_rows: int = 0
    seconds: float = 0.0
    audit_start: float | None = None
    audit_end: float | None = None
    policy_files: list[Path] = field(default_factory=list)
    saturated_workloads: int = 0
    late_audit_flows: int = 0  # audit-phase flows that arrived after the audit had ended
    blocked_external_flows: int = 0
    local_scope_flows: int = 0  # broadcast/multicast/link-local: not learned, not alerted
    policy_skipped: int = 0
    inventory_entries: int = 0
    source_identity_flows: int = 0  # flows the source named at least one end of
    unidentified_flows: int = 0  # flows with an internal end nothing named (unknown:<ip>)
    empty_files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    data_start: float | None = None  # the earliest and latest accepted flow start
    data_end: float | None = None
    provisional_edges: int = 0  # learned but too weakly to trust: no allow rule
    audit_findings: int = 0  # e.g. scans during the audit (violations with mode audit)
    readiness: list[AppReadiness] = field(default_factory=list)
    audit_warnings: list[str] = field(default_factory=list)  # the audit left little to check

    @property
    def flows_per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


def expand_inputs(paths: Iterable[Path]) -> list[Path]:
    """Files as given; a directory stands for its files (sorted by name, hidden ones skipped)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file()
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not files:
                raise InputError(f"{p}: the directory has no files")
            out.extend(files)
        elif p.is_file():
            out.append(p)
        else:
            raise InputError(f"{p}: no such file; check the path")
    return out


def _head(path: Path) -> bytes:
    """The first bytes of the (decompressed) file that are not blank; b"" if all are."""
    for chunk in open_binary(path):
        if chunk.strip():
            return chunk.lstrip()[:65536]
    return b""


def resolve_format(path: Path, fmt: str, head: bytes | None = None) -> str:
    """The format to parse ``path`` with: as given, or detected from its first bytes."""
    if fmt != "auto":
        return ALIASES.get(fmt, fmt)
    head = _head(path) if head is None else head
    if not head:
        raise InputError(f"{path}: the file is empty (no flow records)")
    detected = detect_format(head)
    if detected is None:
        raise InputError(
            f"{path}: cannot tell its flow format; pass --format (see `segflow replay --help`)"
        )
    return detected


def _plan(paths: list[Path], fmt: str, summary: ReplaySummary,
          warn: Callable[[str], None]) -> list[tuple[Path, str]]:
    """(file, format) to replay, in order; empty files are skipped with a warning, and an
    input of nothing but empty files is an InputError."""
    plan = []
    for path in paths:
        head = _head(path)
        if not head:
            summary.empty_files.append(path)
            continue
        plan.append((path, resolve_format(path, fmt, head)))
    if not plan:
        one = len(paths) == 1
        raise InputError(f"{paths[0]} is empty: no flow records to replay" if one
                         else f"all {len(paths)} input files are empty: no flow records to replay")
    for path in summary.empty_files:
        warn(f"{path} is empty: skipped")
    return plan


def _refuse_without_identities(plan: list[tuple[Path, str]], why: str) -> None:
    """With no usable inventory, every file's format must be able to name workloads."""
    for path, name in plan:
        if name not in IDENTITY_FORMATS:
            raise InputError(f"{path}: {name} flows carry no workload identity and {why}; "
                             f"{INVENTORY_HINT}")


def _source_named(flows: pa.Table) -> int:
    """Rows whose source named the workload of at least one end."""
    n = flows.num_rows
    if flows.column("src_app").null_count == n and flows.column("dst_app").null_count == n:
        return 0
    named = pc.or_(pc.is_valid(flows.column("src_app")), pc.is_valid(flows.column("dst_app")))
    return int(pc.sum(named).as_py() or 0)


def _unidentified(edge_minutes: pa.Table) -> int:
    """Flows in an edge-minute batch with an end that nothing named (``unknown:<ip>``)."""
    if not edge_minutes.num_rows:
        return 0
    unknown = pc.or_(pc.starts_with(edge_minutes.column("src_app"), "unknown:"),
                     pc.starts_with(edge_minutes.column("dst_app"), "unknown:"))
    picked = pc.filter(edge_minutes.column("flows"), unknown)
    return int(pc.sum(picked).as_py() or 0)


def _stderr_warning(message: str) -> None:
    print(f"segflow: warning: {message}", file=sys.stderr, flush=True)


def replay(
    paths: Iterable[Path],
    inventory: Inventory | None,
    settings: CoreSettings,
    *,
    fmt: str = "auto",
    format_options: dict[str, Any] | None = None,
    store: Any = None,
    violations_path: Path | None = None,
    rules_path: Path | None = None,
    incidents_path: Path | None = None,
    dead_letter_path: Path | None = None,
    policies_dir: Path | None = None,
    policy_format: str = "networkpolicy",
    policy_cloud: str | None = None,
    baseline_dir: Path | None = None,
    progress: str = "off",
    progress_every: float = DEFAULT_EVERY,
    violations_format: str = "segflow",
    on_batch: Callable[[BatchOutput], None] | None = None,
    outputs: Outputs | None = None,
    warn: Callable[[str], None] = _stderr_warning,
    time_offset: float = 0.0,
) -> ReplaySummary:
    """Replay flow files through the core; write to the store and the requested files.

    The files are staged in ``outputs`` (the caller commits them, e.g. after more outputs of
    the same run) or, without it, put in place when the replay returns; a replay that raises
    leaves every existing output file as it was. ``inventory`` None or empty: allowed only
    when the flows name their workloads (InputError otherwise, before anything is written).
    ``progress``: auto, bar, log, off. ``time_offset``: seconds added to every flow time
    (for captures logged relative to their start).
    """
    if outputs is None:
        with Outputs() as own:
            return replay(paths, inventory, settings, fmt=fmt, format_options=format_options,
                          store=store, violations_path=violations_path, rules_path=rules_path,
                          incidents_path=incidents_path,
                          dead_letter_path=dead_letter_path, policies_dir=policies_dir,
                          policy_format=policy_format, policy_cloud=policy_cloud,
                          baseline_dir=baseline_dir, progress=progress,
                          progress_every=progress_every, violations_format=violations_format,
                          on_batch=on_batch, outputs=own, warn=warn, time_offset=time_offset)
    paths = expand_inputs(paths)
    summary = ReplaySummary(files=len(paths))

    def warning(message: str) -> None:
        summary.warnings.append(message)
        warn(message)

    plan = _plan(paths, fmt, summary, warning)
    why = ("no --inventory was given" if inventory is None
           else "the inventory is empty" if len(inventory) == 0 else "")
    if why:
        _refuse_without_identities(plan, why)
    if inventory is None:
        inventory = Inventory(internal_cidrs=settings.internal_cidrs)
    summary.inventory_entries = len(inventory)
    core = Pipeline(settings, inventory)
    bar = Progress(progress, [os.path.getsize(p) for p, _ in plan], every=progress_every)
    t0 = time.perf_counter()
    writer = StoreWriter(store, max_rows=STORE_ROWS, max_seconds=float("inf"),
                         max_pending_rows=STORE_ROWS) \
        if store is not None else None
    vio_out = outputs.jsonl(violations_path) if violations_path else None
    as_output = violation_formatter(violations_format, _version())
    rule_out = outputs.jsonl(rules_path) if rules_path else None
    inc_out = outputs.jsonl(incidents_path) if incidents_path else None
    dead = outputs.dead_letter(dead_letter_path) if dead_letter_path else None

    latest: dict[str, dict[str, Any]] = {}  # violation id → its highest version so far
    ready_rows: list[pa.Table] = []

    def take(out: BatchOutput) -> None:
        if out.readiness.num_rows:
            ready_rows.append(out.readiness)
        summary.violation_versions += len(out.violations)
        for v in out.violations:
            old = latest.get(v["id"])
            if old is None or v["version"] >= old["version"]:
                latest[v["id"]] = v
        summary.rules.extend(out.rules)
        for inc in out.incidents:
            old = summary.incidents.get(inc["id"])
            if old is None or inc["version"] >= old["version"]:
                summary.incidents[inc["id"]] = inc
        summary.edge_minute_rows += out.edge_minutes.num_rows
        if out.edge_minutes.num_rows:
            summary.unidentified_flows += _unidentified(out.edge_minutes)
        if writer is not None:
            writer.add(out.edge_minutes, out.violations, out.rules, incidents=out.incidents,
                       readiness=out.readiness)
        if rule_out and out.rules:
            rule_out.write(out.rules)
        if inc_out and out.incidents:
            inc_out.write(out.incidents)  # every version: readers keep the highest per id
        if on_batch:
            on_batch(out)

    def reject(rejects: list[Reject]) -> None:
        summary.rejected += len(rejects)
        summary.reject_reasons.update(r.reason for r in rejects)
        if dead and rejects:
            dead.write(rejects)

    checked = not why  # with no inventory, the first flows must show the source names workloads
    try:
        for path, name in plan:
            parser = get_parser(name, **(format_options or {}))
            seed = content_seed(name, format_options) + (
                f"|time_offset={time_offset!r}".encode() if time_offset else b"")
            source_id = ""
            bar.next_file(path)
            for result in shifted(parse_file(path, parser, seed=seed, on_read=bar.read),
                                  time_offset):
                summary.records += result.records_in + sum(result.skipped.values())
                summary.skip_reasons.update(result.skipped)
                reject(result.rejects)
                named = _source_named(result.flows) if result.flows.num_rows else 0
                if not checked and result.flows.num_rows:
                    if not named:
                        raise InputError(f"{path}: its {name} flows name no workload and {why}; "
                                         f"{INVENTORY_HINT}")
                    checked = True
                summary.source_identity_flows += named
                source_id = source_id or content_source_id(result.content_key)
                out = core.process(result.flows, source_id=source_id,
                                   block=content_block(result.content_key),
                                   version=result.flows.num_rows)
                summary.flows += result.flows.num_rows
                if result.flows.num_rows:
                    lo_hi = pc.min_max(result.flows.column("start")).as_py()
                    summary.data_start = min(lo_hi["min"], summary.data_start or lo_hi["min"])
                    summary.data_end = max(lo_hi["max"], summary.data_end or lo_hi["max"])
                take(out)
                newest = (pc.max(result.flows.column("start")).as_py()
                          if result.flows.num_rows else None)
                bar.update(flows=summary.flows, violations=len(latest), event_time=newest)
        take(core.flush())
        summary.violations = list(latest.values())
        if vio_out and summary.violations:  # one line per violation: its final version
            vio_out.write([as_output(v) for v in summary.violations])
        if writer is not None:
            writer.close()  # all rows stored (or the first write error raised) before summary
            writer = None
        bar.update(flows=summary.flows, violations=len(summary.violations), event_time=None)
        bar.close()
    finally:
        if writer is not None:  # an input error stopped the replay: still finish queued writes
            with contextlib.suppress(StorageError):
                writer.close()
        if bar.mode == "bar":
            bar.close()
    summary.seconds = time.perf_counter() - t0
    summary.audit_flows = core.counts["audit_flows"]
    summary.enforce_flows = core.counts["enforce_flows"]
    summary.late_audit_flows = core.counts["late_audit_flows"]
    summary.blocked_external_flows = core.counts["blocked_external_flows"]
    summary.local_scope_flows = core.counts["local_scope_flows"]
    summary.edges = len(core.baseline)
    summary.workloads = len(core.workloads)
    summary.audit_start = core.audit_start
    summary.audit_end = core.audit_end
    summary.saturated_workloads = len(core.baseline.saturated_)
    summary.provisional_edges = int((~core.trusted()).sum())
    summary.audit_findings = core.counts["audit_findings"]
    summary.readiness = readiness(pa.concat_tables(ready_rows) if ready_rows
                                  else APP_READINESS.schema.empty_table())
    for message in audit_warnings(summary, settings.audit_days):
        summary.audit_warnings.append(message)
        warning(message)
    if baseline_dir is not None:
        from pipeline.storage.artifacts import baseline_files

        for fname, data in baseline_files(core, inputs=[str(p) for p in paths]).items():
            outputs.stage(baseline_dir / fname, data)
    if policies_dir is not None:
        from pipeline.policy import render, write_rendered

        rendered = render(policy_format, core.candidate_rules(), cloud=policy_cloud)
        summary.policy_skipped = len(rendered.skipped)
        target = policies_dir

        def write() -> None:
            summary.policy_files = [p for p in write_rendered(rendered, target)
                                    if not p.name.startswith("render-report.")]

        outputs.defer(write)
    return summary


NEARLY_ALL = 0.9  # an audit over this share of the data's time span leaves too little checked


def audit_warnings(s: ReplaySummary, audit_days: float) -> list[str]:
    """What to say loudly when the audit left (almost) nothing to check: it covers all or
    nearly all of the data's time span, or no flow was checked after it."""
    if not s.flows or s.data_start is None or s.data_end is None or s.audit_end is None:
        return []
    span = max(s.data_end - s.data_start, 1.0)
    days = span / 86400
    covered = min(1.0, max(0.0, (s.audit_end - s.data_start) / span))
    if s.enforce_flows == 0:
        return [f"NO FLOW WAS CHECKED AFTER THE AUDIT: the {audit_days:g}-day audit covers all "
                f"of the data ({days:.1f} days), so nothing could be alerted; pass a shorter "
                "--audit-days or more data"]
    if covered >= NEARLY_ALL:
        return [f"THE AUDIT COVERS {covered:.0%} OF THE DATA: the {audit_days:g}-day audit "
                f"leaves {s.enforce_flows:,} of {s.flows:,} flows ({days * (1 - covered):.1f} of "
                f"{days:.1f} days) to check; pass a shorter --audit-days or more data"]
    return []


def content_seed(fmt: str, format_options: dict[str, Any] | None) -> bytes:
    """What, besides the bytes, decides which flows a file yields: its format and options."""
    return orjson.dumps({"format": fmt, "options": format_options or {}},
                        option=orjson.OPT_SORT_KEYS)


def content_source_id(first_key: bytes) -> str:
    """The aggregates' ``source_id`` for a file: its first block's content key (the same for
    every copy of the file; a label to find or delete one input's rows by)."""
    return "sha256:" + first_key[:16].hex()


def content_block(key: bytes) -> int:
    """The aggregates' ``block``: 64 bits of the block's chained content key."""
    return int.from_bytes(key[:8], "big")


__all__ = ["ReplaySummary", "audit_warnings", "content_block", "content_seed",
           "content_source_id", "replay", "resolve_format"]


def _version() -> str:
    try:
        return metadata.version("segflow")
    except metadata.PackageNotFoundError:  # pragma: no cover - source tree without install
        return ""
