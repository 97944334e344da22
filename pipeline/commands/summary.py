"""The one-screen summary printed after a replay or the demo."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.commands.evaluate import evaluate
from pipeline.commands.replay import ReplaySummary
from pipeline.core.events import iso
from pipeline.core.text import printable
from pipeline.storage.url import redact


def _say(text: str = "") -> None:
    """Print one line of the summary; names from inventories and flows can hold terminal
    control characters, so every line is escaped."""
    print(printable(text))


def _line(label: str, value: object) -> str:
    return f"  {label:<22} {value}"


def identity_text(s: ReplaySummary) -> str:
    """Where workload identities came from, and how many flows had an end nothing named."""
    parts = [f"{s.inventory_entries:,} inventory entries" if s.inventory_entries
             else "no inventory"]
    if s.source_identity_flows:
        parts.append(f"the source named {s.source_identity_flows:,} flows"
                     + (" (it wins over the inventory)" if s.inventory_entries else ""))
    share = f" ({s.unidentified_flows / s.flows:.1%})" if s.flows else ""
    parts.append(f"{s.unidentified_flows:,} flows{share} had an internal end with no identity")
    return "; ".join(parts)


def readiness_text(s: ReplaySummary) -> str:
    """How many apps are ready to enforce, and the least settled of the others."""
    ready = [r for r in s.readiness if r.ready]
    waiting = sorted((r for r in s.readiness if not r.ready), key=lambda r: (r.quiet_days, r.key))
    text = f"{len(ready):,} of {len(s.readiness):,} apps ready to enforce"
    if waiting:
        text += "; not yet: " + ", ".join(
            f"{r.key} ({r.quiet_days} quiet day(s))" for r in waiting[:3]) + (
            f" and {len(waiting) - 3:,} more" if len(waiting) > 3 else "")
    return text


def print_replay_summary(
    s: ReplaySummary,
    *,
    store_url: str | None,
    truth: list[dict[str, Any]] | None = None,
    outputs: Mapping[str, Path | None] | None = None,
) -> None:
    """Print what a user wants to see after a replay."""
    _say()
    _say("segflow replay")
    skipped = sum(s.skip_reasons.values())
    _say(_line("input", f"{s.files} file(s), {s.records:,} records, {s.flows:,} flows, "
                         f"{s.rejected:,} rejected"
                         + (f", {skipped:,} skipped" if skipped else "")))
    if s.reject_reasons:
        reasons = ", ".join(f"{k} {v:,}" for k, v in s.reject_reasons.most_common(5))
        _say(_line("rejected by reason", reasons))
    if skipped:
        reasons = ", ".join(f"{k} {v:,}" for k, v in s.skip_reasons.most_common())
        _say(_line("skipped (not flows)", reasons))
    if s.empty_files:
        _say(_line("empty files", f"{len(s.empty_files)} skipped"))
    _say(_line("identity", identity_text(s)))
    _say(_line("throughput", f"{s.flows_per_second:,.0f} records/s ({s.seconds:.1f} s)"))
    if s.audit_start is not None and s.audit_end is not None:
        _say(_line("audit phase", f"{iso(s.audit_start)} → {iso(s.audit_end)} "
                                   f"({s.audit_flows:,} flows learned from)"))
    _say(_line("learned", f"{s.workloads:,} workloads, {s.edges:,} edges"
                           + (f", {s.saturated_workloads} workload(s) hit the edge bound"
                              if s.saturated_workloads else "")))
    _say(_line("after audit", f"{s.enforce_flows:,} flows checked"
                + (f", {s.blocked_external_flows:,} rejected internet flows not alerted"
                   if s.blocked_external_flows else "")))
    if s.local_scope_flows:
        print(_line("local scope", f"{s.local_scope_flows:,} broadcast/multicast/link-local flows "
                                   "(aggregated; not learned, not alerted)"))
    if s.provisional_edges or s.audit_findings:
        _say(_line("audit trust", f"{s.edges - s.provisional_edges:,} edges trusted, "
                                  f"{s.provisional_edges:,} provisional (too few days or flows: "
                                  "no allow rule, listed for review, alerted if they recur)"
                   + (f"; {s.audit_findings:,} audit finding(s) (scans …) not learned"
                      if s.audit_findings else "")))
    if s.readiness:
        _say(_line("readiness", readiness_text(s)))
    for message in s.audit_warnings:
        _say(_line("WARNING", message))
    if s.late_audit_flows:
        _say(_line("WARNING", f"{s.late_audit_flows:,} audit-phase flows arrived after the audit "
                               "ended and were not learned: pass files in time order"))
    by_type = Counter(v["type"] for v in s.violations)
    by_sev = Counter(v["severity"]["label"] for v in s.violations)
    _say(_line("violations", f"{len(s.violations):,}"
                + (" — " + ", ".join(f"{t} {n}" for t, n in sorted(by_type.items()))
                   if by_type else "")
                + (f" ({s.violation_versions:,} events: first flows and updates)"
                   if s.violation_versions > len(s.violations) else "")))
    if by_sev:
        _say(_line("by severity", ", ".join(f"{k} {by_sev[k]}" for k in
                                             ("critical", "high", "medium", "low") if by_sev[k])))
    incs = sorted(s.incidents.values(), key=lambda i: (-i["severity"]["score"], i["ts"], i["id"]))
    inc_sev = Counter(i["severity"]["label"] for i in incs)
    _say(_line("incidents", f"{len(incs):,}" + (" — " + ", ".join(
        f"{k} {inc_sev[k]}" for k in ("critical", "high", "medium", "low") if inc_sev[k])
        if incs else "")))
    apps = {r["app"] for r in s.rules}
    _say(_line("candidate rules", f"{len(s.rules):,} for {len(apps):,} workloads"))
    if truth is not None:
        ev = evaluate(s.violations, truth)
        _say()
        _say(f"ground truth: {len(ev.caught)}/{len(ev.caught) + len(ev.missed)} attack episodes "
              f"caught (recall {ev.recall:.0%}), {len(ev.unexplained)} violation(s) not explained "
              f"by an attack, {ev.benign_episodes} benign churn episodes in the data")
        for ep in ev.caught:
            _say(f"  caught  {ep['type']:<18} {ep.get('src_workload')} → "
                  f"{ep.get('dst_workload') or 'several'}  by {', '.join(ep['types'])}")
        for ep in ev.missed:
            _say(f"  MISSED  {ep['type']:<18} {ep.get('src_workload')} → "
                  f"{ep.get('dst_workload') or 'several'}  expected {', '.join(ep['expected'])}")
        for v in ev.unexplained[:5]:
            _say(f"  unexplained {v['type']}: {v['reason']}")
    if incs and truth is None:
        _say()
        _say("top incidents:")
        for i in incs[:5]:
            _say(f"  [{i['severity']['label']:>8}] {i['first_seen']}  {i['reason']}")
    top = sorted(s.violations, key=lambda v: -v["severity"]["score"])[:5]
    if top and truth is None:
        _say()
        _say("top violations:")
        for v in top:
            _say(f"  [{v['severity']['label']:>8}] {v['ts']}  {v['reason']}")
    _say()
    if store_url:
        _say(_line("store", f"{redact(store_url)} ({s.edge_minute_rows:,} edge-minute rows)"))
    for name, path in (outputs or {}).items():
        if path is not None:
            extra = ""
            if name == "policies":
                extra = f" ({len(s.policy_files)} files" + (
                    f", {s.policy_skipped} rules not expressible" if s.policy_skipped else "") + ")"
            _say(_line(name, f"{path}{extra}"))


__all__ = ["identity_text", "print_replay_summary", "readiness_text"]
