"""Candidate rules and their decisions in the store: read them back as intents, record
accept/reject decisions (who, when), compare a new audit run with the accepted set.

A rule's status is its latest decision in ``rule_status`` (``proposed`` without one); the
"current" candidates are those of the latest audit run (the greatest ``version``, which is
the audit end in milliseconds).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from pipeline.core.intents import CandidateRule, Evidence, rule_from_dict
from pipeline.errors import InputError, StorageError

_RULES_SQL = """
SELECT r.id, r.intent, r.flows, r.bytes, toFloat64(r.first_seen), toFloat64(r.last_seen),
       r.days_observed, r.confidence, r.version, d.status, d.actor, d.decided
FROM (SELECT * FROM candidate_rules FINAL {where}) AS r
LEFT JOIN (
    SELECT rule_id, argMax(status, decided_at) AS status, argMax(actor, decided_at) AS actor,
           toFloat64(max(decided_at)) AS decided
    FROM rule_status GROUP BY rule_id
) AS d ON d.rule_id = r.id
ORDER BY r.id
"""


@dataclass(frozen=True, slots=True)
class StoredRule:
    """A candidate rule as stored: the intent, its audit run and its latest decision."""

    rule: CandidateRule
    run: int  # audit run (version)
    actor: str = ""
    decided_at: float | None = None


def load_rules(store: Any, *, latest_run: bool = True) -> tuple[list[StoredRule], int]:
    """Rules of the latest audit run (or every run), and how many lack a stored intent."""
    where = ("WHERE version = (SELECT max(version) FROM candidate_rules FINAL)"
             if latest_run else "")
    try:
        rows = store.query_rows(_RULES_SQL.format(where=where))
    except StorageError as exc:
        if "rule_status" in str(exc) or "candidate_rules" in str(exc):
            raise StorageError(f"{exc}; run `segflow migrate --store ...` first") from exc
        raise
    out: list[StoredRule] = []
    missing = 0
    for (rid, intent, flows, nbytes, first, last, days, conf, version, status, actor,
         decided) in rows:
        try:
            data = orjson.loads(intent) if intent else {}
        except orjson.JSONDecodeError:
            data = {}
        if not data:
            missing += 1
            continue
        ev = Evidence(int(flows), int(nbytes), float(first), float(last), int(days))
        try:
            rule = rule_from_dict(str(rid), data, ev, float(conf), status or "proposed")
        except (ValueError, KeyError, TypeError):
            missing += 1
            continue
        out.append(StoredRule(rule, int(version), actor or "", decided if status else None))
    return out, missing


def record_decisions(store: Any, rule_ids: Iterable[str], status: str, actor: str,
                     note: str = "", now: float | None = None) -> int:
    """Append one decision per rule (the wall-clock time of the decision is kept)."""
    if status not in ("accepted", "rejected", "proposed"):
        raise InputError(f"unknown status {status!r}")
    if not actor.strip():
        raise InputError("a decision needs --by NAME (who decided)")
    when = datetime.now(UTC).timestamp() if now is None else now
    stamp = datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    events = [{"rule_id": rid, "status": status, "actor": actor.strip()[:200],
               "decided_at": stamp, "note": note[:2000], "version": int(when * 1000)}
              for rid in sorted(set(rule_ids))]
    return int(store.write_events("rule_status", events))


@dataclass(frozen=True, slots=True)
class RuleDiff:
    """Current candidates against the accepted set, by (app, direction, peer, protocol)."""

    new: list[CandidateRule]  # no accepted rule for this key
    gone: list[CandidateRule]  # accepted, but the latest audit no longer proposes the key
    widened: list[tuple[CandidateRule, CandidateRule]]  # (accepted, current): more ports
    narrowed: list[tuple[CandidateRule, CandidateRule]]  # (accepted, current): fewer ports


def _key(r: CandidateRule) -> tuple[str, str, str, str, int]:
    p = r.peer
    peer = p.workload.key if p.workload is not None and p.kind != "cidr" else (p.cidr or "")
    return (r.app.key, r.direction, p.kind, peer, r.proto)


def diff_rules(current: Iterable[StoredRule], every: Iterable[StoredRule]) -> RuleDiff:
    accepted = {_key(s.rule): s.rule for s in every if s.rule.status == "accepted"}
    latest: dict[tuple[str, str, str, str, int], list[CandidateRule]] = {}
    for s in current:
        if s.rule.status != "rejected":
            latest.setdefault(_key(s.rule), []).append(s.rule)
    new, widened, narrowed = [], [], []
    for key, rules in sorted(latest.items()):
        ports = {p for r in rules for p in r.ports}
        old = accepted.get(key)
        if old is None:
            new.extend(rules)
            continue
        before = set(old.ports)  # empty = every port
        if (not ports and before) or (ports and before and not ports <= before):
            widened.append((old, rules[0]))
        elif (ports and not before) or (ports and ports < before):
            narrowed.append((old, rules[0]))
    gone = [r for k, r in sorted(accepted.items()) if k not in latest]
    return RuleDiff(new, gone, widened, narrowed)


__all__ = ["RuleDiff", "StoredRule", "diff_rules", "load_rules", "record_decisions"]
